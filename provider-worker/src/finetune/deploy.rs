//! Serving a job's adapter as a chat service of this provider: the adapter merged into the base
//! GGUF (its projections re-quantized to q8_0), loaded as a model of its own, and registered on
//! chain with the merged file's hash, the base chat service's prices and the model name
//! `ft:<base>:job-<id>`. Paid chats with it go through the normal paid path (the voucher's
//! service picks the model); its weights are served by hash like the base model's, so its
//! answers can be audited and challenged. Deployments survive a restart (the merged file is
//! kept in the job's directory and reloaded).

use super::{record::Stage, FineTuner};
use crate::worker::{StartError, Weights, Worker};
use compute_client::{finetune_api::fine_tuned_model_name, ServiceTerms};
use compute_inference::{
    finetune::{merge_file, Adapter, AdapterLimits},
    read_gguf_metadata, Engine,
};
use compute_primitives::{JobId, ServiceId, ServiceKind};
use polkadot_sdk::sp_core::H256;
use std::{path::PathBuf, sync::Arc};

/// Service ids of deployed adapters start here (a provider's own services use lower ones).
pub const FIRST_DEPLOYED_ID: ServiceId = 100;
/// Adapters one user may have deployed at once.
pub const PER_USER: usize = 2;

/// A deployed adapter's model.
pub struct DeployedModel {
    pub engine: Arc<Engine>,
    pub name: String,
    pub weights: Weights,
    pub job: JobId,
}

/// Why a deployment failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("job {0} is not paid yet: its adapter is deployed once the key is revealed")]
    NotPaid(JobId),
    #[error(
        "{0} adapters are deployed already, the most this worker serves (or this user may have)"
    )]
    Full(usize),
    #[error("the chain allows no more services for this provider")]
    NoServiceId,
    #[error("{0}")]
    Failed(String),
}

fn merged_path(ft: &FineTuner, id: JobId) -> PathBuf {
    ft.jobs.dir(id).join("model.gguf")
}

/// Merge (unless merged before) and load job `id`'s model (blocking).
fn load(w: &Worker, ft: &FineTuner, id: JobId) -> Result<DeployedModel, String> {
    let base = &ft.base_model;
    let path = merged_path(ft, id);
    if !path.exists() {
        let bytes = std::fs::read(ft.jobs.adapter(id)).map_err(|e| format!("adapter: {e}"))?;
        let content = read_gguf_metadata(base).map_err(|e| e.to_string())?;
        let adapter = Adapter::from_safetensors(&bytes, &content, &AdapterLimits::default())
            .map_err(|e| e.to_string())?;
        merge_file(base, &adapter, &path).map_err(|e| e.to_string())?;
    }
    let weights = Weights::of(path.clone()).map_err(|e| e.to_string())?;
    let chat = w.config.chat.as_ref().ok_or("no [chat] model")?;
    let engine = Engine::load_with(&path, chat.weights, candle_core::Device::Cpu, chat.parallel)
        .map_err(|e| e.to_string())?;
    let base_name = w.model_name(ServiceKind::Chat);
    Ok(DeployedModel {
        engine: Arc::new(engine),
        name: fine_tuned_model_name(&base_name, id),
        weights,
        job: id,
    })
}

/// Deploy job `id`'s adapter (the user asked; the job must be paid). Returns the service id.
pub async fn deploy(w: &Arc<Worker>, id: JobId) -> Result<ServiceId, DeployError> {
    let ft = w.finetune.clone().ok_or_else(|| DeployError::Failed("no fine-tuning".into()))?;
    let _one = ft.deploying.lock().await;
    let r = ft.record(id).ok_or(DeployError::NotPaid(id))?;
    if let Some(sid) = r.service_id {
        return Ok(sid);
    }
    if r.stage != Stage::Revealed {
        return Err(DeployError::NotPaid(id));
    }
    let count = w.deployed.read().unwrap_or_else(|p| p.into_inner()).len();
    if count >= ft.config.max_deployed {
        return Err(DeployError::Full(count));
    }
    let mine = ft.records().iter().filter(|o| o.user == r.user && o.service_id.is_some()).count();
    if mine >= PER_USER {
        return Err(DeployError::Full(mine));
    }
    let (w2, ft2) = (w.clone(), ft.clone());
    let model = tokio::task::spawn_blocking(move || load(&w2, &ft2, id))
        .await
        .map_err(|e| DeployError::Failed(e.to_string()))?
        .map_err(DeployError::Failed)?;
    let on_chain =
        w.chain.services_of(&w.provider).await.map_err(|e| DeployError::Failed(e.to_string()))?;
    let sid = (FIRST_DEPLOYED_ID..)
        .take(1024)
        .find(|s| !on_chain.iter().any(|c| c.service_id == *s))
        .ok_or(DeployError::NoServiceId)?;
    let base = w
        .config
        .services
        .iter()
        .find(|s| s.kind == ServiceKind::Chat)
        .ok_or_else(|| DeployError::Failed("no chat service to price the deployment".into()))?;
    let terms = ServiceTerms {
        kind: ServiceKind::Chat,
        model: model.name.clone(),
        model_hash: model.weights.hash,
        url: w.config.public_url.clone().unwrap_or_else(|| format!("http://{}", w.config.listen)),
        input_price: base.input_price,
        output_price: base.output_price,
        verifiability: base.verifiability.clone(),
    };
    // Serve first, so the service answers as soon as the chain names it.
    w.deployed.write().unwrap_or_else(|p| p.into_inner()).insert(sid, Arc::new(model));
    if let Err(e) = w.chain.register_service(&w.signer, sid, &terms, false).await {
        w.deployed.write().unwrap_or_else(|p| p.into_inner()).remove(&sid);
        return Err(DeployError::Failed(match e.to_string() {
            s if s.contains("TooManyServices") => return Err(DeployError::NoServiceId),
            s => s,
        }));
    }
    ft.update(id, |r| r.service_id = Some(sid));
    ft.event(id, "info", format!("deployed as chat service {sid} ({})", terms.model), None);
    if let Err(e) = w.refresh_services().await {
        tracing::warn!(error = %e, "reloading the services");
    }
    Ok(sid)
}

/// Load the models of the jobs deployed before a restart (blocking, at start-up).
pub fn reload(w: &Worker, ft: &FineTuner) -> Result<(), StartError> {
    for r in ft.records().into_iter().filter(|r| r.service_id.is_some()) {
        let sid = r.service_id.unwrap_or_default();
        match load(w, ft, r.id) {
            Ok(model) => {
                tracing::info!(job = r.id, service = sid, "deployed adapter loaded");
                w.deployed.write().unwrap_or_else(|p| p.into_inner()).insert(sid, Arc::new(model));
            }
            Err(e) => tracing::error!(job = r.id, error = %e, "cannot load a deployed adapter"),
        }
    }
    Ok(())
}

/// Whether `service` is a deployed adapter's (loaded or not).
pub fn is_deployed(w: &Worker, service: ServiceId) -> bool {
    w.finetune.as_ref().is_some_and(|ft| ft.records().iter().any(|r| r.service_id == Some(service)))
}

/// The deployed model serving `service`, if any.
pub fn model_of(w: &Worker, service: ServiceId) -> Option<Arc<DeployedModel>> {
    w.deployed.read().unwrap_or_else(|p| p.into_inner()).get(&service).cloned()
}

/// The weights of a deployed model by hash.
pub fn weights_by_hash(w: &Worker, hash: &H256) -> Option<Weights> {
    w.deployed
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .find(|m| m.weights.hash == *hash)
        .map(|m| m.weights.clone())
}
