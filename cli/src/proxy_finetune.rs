//! The proxy's fine-tuning routes: OpenAI's `files` and `fine_tuning.jobs` for any OpenAI client.
//! The proxy uploads the dataset, creates the job on chain with the user's key (the price
//! reserved from the escrow), and then follows the job in the background: it acknowledges the
//! delivery once the encrypted adapter matches the provider's commitment, opens the revealed
//! key, decrypts the adapter into the state directory, and has the provider deploy it, so that
//! `fine_tuned_model` names a chat model this proxy can pay for. A job's progress does not
//! depend on a client's connection; a proxy stopped mid-way is resumed by
//! `compute finetune wait`.

// Handlers return their error response directly.
#![allow(clippy::result_large_err)]

use crate::{
    finetune::{Progress, Settings, Tuner},
    proxy::{error, Proxy},
};
use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use compute_client::finetune_api::{
    self as api, FileObject, FineTuningJob, Hyperparameters, JobStatus,
};
use compute_primitives::JobId;
use serde::Deserialize;
use serde_json::Value;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

/// Base learning rate that OpenAI's `learning_rate_multiplier` scales.
pub const BASE_LEARNING_RATE: f64 = 1e-3;
/// LoRA rank of jobs created through the proxy.
pub const RANK: u32 = 8;
/// Longest the proxy follows a job.
const FOLLOW: Duration = Duration::from_secs(6 * 3600);
/// Most uploads remembered (their facts; the bytes are the provider's).
const MAX_UPLOADS: usize = 256;

/// What the proxy remembers of fine-tuning.
#[derive(Default)]
pub struct FineTuning {
    /// Uploads through this proxy, by file id.
    files: Mutex<HashMap<String, FileObject>>,
    /// Jobs being followed to deployment.
    following: Mutex<HashSet<JobId>>,
}

fn refused(e: anyhow::Error) -> Response {
    error(StatusCode::BAD_GATEWAY, "provider_refused", format!("{e:#}"))
}

/// `POST /v1/files`.
pub async fn upload(State(p): State<Arc<Proxy>>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let parts = match api::multipart_boundary(ct).and_then(|b| api::parse_multipart(&body, &b)) {
        Ok(parts) => parts,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_multipart", e.to_string()),
    };
    if parts.iter().find(|p| p.name == "purpose").map(|p| p.data.as_slice())
        != Some(b"fine-tune".as_slice())
    {
        return error(StatusCode::BAD_REQUEST, "bad_purpose", "only `fine-tune` files".into());
    }
    let Some(file) = parts.into_iter().find(|p| p.name == "file") else {
        return error(StatusCode::BAD_REQUEST, "no_file", "the form has no `file` part".into());
    };
    let tuner = match Tuner::new(&p.sess, None).await {
        Ok(t) => t,
        Err(e) => return error(StatusCode::NOT_FOUND, "no_finetuning", format!("{e:#}")),
    };
    let name = file.filename.unwrap_or_else(|| "dataset.jsonl".into());
    match tuner.upload_bytes(&name, file.data).await {
        Ok(f) => {
            let mut files = p.finetune.files.lock().unwrap_or_else(|e| e.into_inner());
            if files.len() >= MAX_UPLOADS {
                files.clear();
            }
            files.insert(f.id.clone(), f.clone());
            Json(f).into_response()
        }
        Err(e) => refused(e),
    }
}

#[derive(Deserialize)]
pub struct CreateJob {
    model: String,
    training_file: String,
    #[serde(default)]
    hyperparameters: Option<Hyperparameters>,
    #[serde(default)]
    seed: Option<u64>,
}

/// A hyper-parameter given as a number, or `"auto"`/absent for `default`.
fn number(v: &Option<Value>, default: f64) -> Option<f64> {
    match v {
        None | Some(Value::Null) => Some(default),
        Some(Value::String(s)) if s == "auto" => Some(default),
        Some(v) => v.as_f64(),
    }
}

/// `POST /v1/fine_tuning/jobs`: create the job on chain, tell the provider, follow it.
pub async fn create(State(p): State<Arc<Proxy>>, Json(req): Json<CreateJob>) -> Response {
    let Some(file) =
        p.finetune.files.lock().unwrap_or_else(|e| e.into_inner()).get(&req.training_file).cloned()
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "unknown_file",
            "upload the training file through this proxy first".into(),
        );
    };
    let hp = req.hyperparameters.unwrap_or_default();
    let (Some(epochs), Some(multiplier)) =
        (number(&hp.n_epochs, 3.0), number(&hp.learning_rate_multiplier, 1.0))
    else {
        return error(StatusCode::BAD_REQUEST, "bad_hyperparameters", "numbers or `auto`".into());
    };
    let lr = BASE_LEARNING_RATE * multiplier;
    if !(1.0..=1000.0).contains(&epochs) || !(lr > 0.0 && lr <= api::MAX_LEARNING_RATE) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_hyperparameters",
            "epochs or rate out of range".into(),
        );
    }
    let tuner = match Tuner::new(&p.sess, None).await {
        Ok(t) => t,
        Err(e) => return error(StatusCode::NOT_FOUND, "no_finetuning", format!("{e:#}")),
    };
    if req.model != tuner.service.model {
        return error(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("the provider fine-tunes `{}`", tuner.service.model),
        );
    }
    let settings = Settings {
        epochs: epochs as u32,
        rank: RANK,
        learning_rate: (lr * 1e6).round() as u32,
        seed: req.seed.unwrap_or(0),
    };
    let tokens = file.compute.tokens;
    let (id, job) = match tuner.create(&file, tokens, settings).await {
        Ok(j) => j,
        Err(e) => return error(StatusCode::PAYMENT_REQUIRED, "cannot_create", format!("{e:#}")),
    };
    follow(p.clone(), id);
    Json(job).into_response()
}

/// Follow job `id` in the background: acknowledge, open the key, decrypt, deploy.
fn follow(p: Arc<Proxy>, id: JobId) {
    if !p.finetune.following.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
        return;
    }
    tokio::spawn(async move {
        let result = async {
            let tuner = Tuner::new(&p.sess, None).await?;
            match tuner.wait(id, FOLLOW, |what| eprintln!("  job {id}: waiting for {what}")).await?
            {
                Progress::Done(path) => {
                    eprintln!("  job {id}: adapter decrypted to {}", path.display());
                    let job = tuner.deploy(id).await?;
                    eprintln!(
                        "  job {id}: deployed as `{}`",
                        job.fine_tuned_model.unwrap_or_default()
                    );
                }
                other => eprintln!("  job {id}: {other:?}"),
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            eprintln!("  job {id}: {e:#}");
        }
        p.finetune.following.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    });
}

/// The provider's job, `running` while this proxy still follows a paid job to deployment (so
/// `succeeded` means `fine_tuned_model` can be used).
async fn job(p: &Arc<Proxy>, id: &str) -> Result<FineTuningJob, Response> {
    let Some(id) = api::parse_job_api_id(id) else {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "no such job".into()));
    };
    let tuner = Tuner::new(&p.sess, None)
        .await
        .map_err(|e| error(StatusCode::NOT_FOUND, "no_finetuning", format!("{e:#}")))?;
    let mut job = tuner.status(id).await.map_err(refused)?;
    let followed = p.finetune.following.lock().unwrap_or_else(|e| e.into_inner()).contains(&id);
    if job.status == JobStatus::Succeeded && job.fine_tuned_model.is_none() && followed {
        job.status = JobStatus::Running;
    }
    Ok(job)
}

/// `GET /v1/fine_tuning/jobs/{id}`.
pub async fn retrieve(State(p): State<Arc<Proxy>>, Path(id): Path<String>) -> Response {
    match job(&p, &id).await {
        Ok(j) => Json(j).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    limit: Option<usize>,
}

/// `GET /v1/fine_tuning/jobs/{id}/events`.
pub async fn events(
    State(p): State<Arc<Proxy>>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let Some(id) = api::parse_job_api_id(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such job".into());
    };
    let tuner = match Tuner::new(&p.sess, None).await {
        Ok(t) => t,
        Err(e) => return error(StatusCode::NOT_FOUND, "no_finetuning", format!("{e:#}")),
    };
    match tuner.events(id, q.limit.unwrap_or(20).clamp(1, 1000)).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => refused(e),
    }
}

/// `POST /v1/fine_tuning/jobs/{id}/cancel`: cancel on chain (free before acceptance; the
/// abandonment share after) and stop the provider's training.
pub async fn cancel(State(p): State<Arc<Proxy>>, Path(id): Path<String>) -> Response {
    let Some(n) = api::parse_job_api_id(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such job".into());
    };
    let tuner = match Tuner::new(&p.sess, None).await {
        Ok(t) => t,
        Err(e) => return error(StatusCode::NOT_FOUND, "no_finetuning", format!("{e:#}")),
    };
    if let Err(e) = tuner.cancel(n).await {
        return error(StatusCode::CONFLICT, "cannot_cancel", format!("{e:#}"));
    }
    match job(&p, &id).await {
        Ok(j) => Json(j).into_response(),
        Err(r) => r,
    }
}
