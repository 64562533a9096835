//! Fine-tuning jobs on this worker (`docs/finetune.md`): uploaded datasets ([`files`]), what is
//! kept of each job ([`record`]), and the driver that moves every job of this provider on as
//! its chain state says (accept or reject a new job, train, deliver, reveal the key) — a
//! background task, so no job depends on a client's connection. Training runs on its own
//! thread pool of `[finetune] threads` cores, one job at a time.

pub mod deploy;
pub mod files;
pub mod record;

use crate::{config::FineTuneConfig, worker::Worker};
use compute_client::{finetune::OpenJob, finetune_api::encrypt_adapter, ChainError};
use compute_inference::{
    finetune::{Dataset, DatasetLimits, LoraConfig, LoraModel, Progress, Target, TrainParams},
    ChatTemplate, ModelTokenizer,
};
use compute_primitives::{key_hash, seal_key, Delivery, JobId, JobSpec, JobState, ServiceId};
use files::FileStore;
use polkadot_sdk::sp_core::H256;
use record::{JobDir, JobRecord, Stage};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::sync::Notify;

/// LoRA alpha per unit of rank: the update is scaled by `alpha / rank = 2`.
const ALPHA_PER_RANK: f32 = 2.0;
/// Highest learning rate taken, in millionths (0.01).
pub const MAX_LEARNING_RATE: u32 = 10_000;

/// The fine-tuning side of a worker.
pub struct FineTuner {
    pub config: FineTuneConfig,
    /// The `fine_tune` service jobs are created on.
    pub service_id: ServiceId,
    /// The base model (the chat GGUF).
    pub base_model: PathBuf,
    pub tokenizer: Arc<ModelTokenizer>,
    pub template: ChatTemplate,
    pub files: FileStore,
    pub jobs: JobDir,
    records: Mutex<BTreeMap<JobId, JobRecord>>,
    /// Wakes the driver before its next tick.
    pub nudge: Notify,
    /// The job training now, and its cancel flag.
    training: Mutex<Option<(JobId, Arc<AtomicBool>)>>,
    /// Held by a deployment (one at a time).
    pub deploying: tokio::sync::Mutex<()>,
    /// Places for dataset uploads (each buffered and tokenized).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Places for encrypted-adapter downloads.
    pub downloads: Arc<tokio::sync::Semaphore>,
}

fn random_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    getrandom::fill(&mut out).expect("the operating system provides randomness");
    out
}

impl FineTuner {
    pub fn new(
        config: FineTuneConfig,
        service_id: ServiceId,
        base_model: PathBuf,
        tokenizer: Arc<ModelTokenizer>,
        template: ChatTemplate,
        data_dir: &std::path::Path,
    ) -> Self {
        let root = data_dir.join("finetune");
        let jobs = JobDir::new(root.join("jobs"));
        let mut records: BTreeMap<JobId, JobRecord> =
            jobs.load_all().into_iter().map(|r| (r.id, r)).collect();
        // Training does not survive a restart: it starts again.
        for r in records.values_mut() {
            if r.stage == Stage::Training {
                r.stage = Stage::Accepted;
            }
        }
        FineTuner {
            files: FileStore::new(root.join("files"), config.max_files_per_user),
            config,
            service_id,
            base_model,
            tokenizer,
            template,
            jobs,
            records: Mutex::new(records),
            nudge: Notify::new(),
            training: Mutex::new(None),
            deploying: tokio::sync::Mutex::new(()),
            uploads: Arc::new(tokio::sync::Semaphore::new(2)),
            downloads: Arc::new(tokio::sync::Semaphore::new(4)),
        }
    }

    /// The dataset bounds of this worker.
    pub fn limits(&self) -> DatasetLimits {
        DatasetLimits {
            max_examples: self.config.max_examples,
            max_seq_len: self.config.max_seq_len,
            ..DatasetLimits::default()
        }
    }

    /// Parse and count a dataset as training will see it.
    pub fn dataset(&self, jsonl: &[u8]) -> Result<Dataset, String> {
        Dataset::from_jsonl(jsonl, &self.tokenizer, &self.template, &self.limits())
            .map_err(|e| e.to_string())
    }

    /// A job's record, if this worker knows the job.
    pub fn record(&self, id: JobId) -> Option<JobRecord> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Every record, by id.
    pub fn records(&self) -> Vec<JobRecord> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Change a job's record (and keep it on disk).
    pub fn update(&self, id: JobId, f: impl FnOnce(&mut JobRecord)) -> Option<JobRecord> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let r = records.get_mut(&id)?;
        f(r);
        if let Err(e) = self.jobs.save(r) {
            tracing::error!(job = id, error = %e, "cannot save the job record");
        }
        Some(r.clone())
    }

    /// Record an event of a job.
    pub fn event(&self, id: JobId, level: &str, message: String, data: Option<serde_json::Value>) {
        self.update(id, |r| {
            if let Err(e) = self.jobs.event(r, level, message, data) {
                tracing::error!(job = id, error = %e, "cannot write the job event");
            }
        });
    }

    /// Whether an open job of `user` names the dataset `hash`.
    pub fn in_use(&self, user: &compute_primitives::AccountId, hash: &[u8; 32]) -> bool {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|r| &r.user == user && &r.dataset_hash == hash && !r.ended())
    }

    /// Forget jobs that ended more than [`KEEP_ENDED`] ago and serve nothing: their records
    /// and files (a flood of jobs cannot fill the disk for good).
    pub fn prune(&self, now: u64) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let old: Vec<JobId> = records
            .values()
            .filter(|r| r.stage.is_final() && r.service_id.is_none())
            .filter(|r| r.finished_at.is_some_and(|at| now.saturating_sub(at) > KEEP_ENDED))
            .map(|r| r.id)
            .collect();
        for id in old {
            if std::fs::remove_dir_all(self.jobs.dir(id)).is_ok() {
                records.remove(&id);
            }
        }
    }

    /// Stop the training of `id`, if it is training.
    pub fn cancel_training(&self, id: JobId) {
        if let Some((training, flag)) =
            self.training.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
        {
            if *training == id {
                flag.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Move every job of this provider on, at each tick or nudge, until the process ends.
pub fn spawn_driver(w: Arc<Worker>) {
    tokio::spawn(async move {
        let Some(ft) = w.finetune.clone() else { return };
        let tick = Duration::from_millis(ft.config.tick_ms);
        loop {
            if let Err(e) = drive(&w, &ft).await {
                tracing::warn!(error = %e, "fine-tuning pass failed; retrying");
            }
            let _ = tokio::time::timeout(tick, ft.nudge.notified()).await;
        }
    });
}

/// Longest a job transaction may take from submission to finality before the pass moves on
/// (the next pass reads the chain again).
const TX_TIMEOUT: Duration = Duration::from_secs(120);
/// Training attempts of one job (each after a failure halves the learning rate).
const ATTEMPTS: u32 = 3;
/// Jobs rejected on chain in one pass (the others wait for the next, or expire unaccepted).
const MAX_REJECTIONS: usize = 4;
/// Ended jobs' files are kept this long (seconds), then removed; deployed ones are kept.
const KEEP_ENDED: u64 = 30 * 24 * 3600;

/// Submit a job transaction, bounded by [`TX_TIMEOUT`].
async fn submit<F, T>(what: &str, tx: F) -> Result<T, ChainError>
where
    F: std::future::Future<Output = Result<T, ChainError>>,
{
    tokio::time::timeout(TX_TIMEOUT, tx).await.map_err(|_| ChainError::Transaction {
        call: "job step",
        reason: format!("{what} not final within {} s", TX_TIMEOUT.as_secs()),
    })?
}

/// How urgent a job's next step is: what pays or what a deadline penalizes comes first.
fn urgency(job: &OpenJob) -> u8 {
    match job.state {
        JobState::Acknowledged { .. } => 0,
        JobState::Accepted { .. } => 1,
        JobState::Revealed { .. } => 2,
        JobState::Delivered { .. } => 3,
        JobState::Created { .. } => 4,
    }
}

/// One pass over this provider's jobs on chain, the most urgent first.
async fn drive(w: &Arc<Worker>, ft: &Arc<FineTuner>) -> Result<(), ChainError> {
    let mut open = w.chain.provider_jobs(&w.provider).await?;
    let mut rejections = 0;
    open.sort_by_key(|(id, job)| (urgency(job), *id));
    let now = w.chain.block_number(None).await?;
    for (id, job) in &open {
        if ft.record(*id).is_none() {
            let r = JobRecord {
                id: *id,
                user: job.user.clone(),
                dataset_hash: job.spec.dataset_hash.0,
                created_at: crate::store::now(),
                stage: Stage::WaitingForFile,
                model: None,
                suffix: None,
                step: 0,
                total_steps: 0,
                trained_tokens: None,
                final_loss: None,
                adapter_hash: None,
                adapter_len: None,
                error: None,
                finished_at: None,
                events: 0,
                service_id: None,
                attempts: 0,
                sealed_key: None,
            };
            if let Err(e) = ft.jobs.save(&r) {
                tracing::error!(job = id, error = %e, "cannot save the job record");
            }
            ft.records.lock().unwrap_or_else(|p| p.into_inner()).insert(*id, r);
            ft.event(*id, "info", format!("job {id} seen on chain"), None);
        }
        if let Err(e) = step(w, ft, *id, job, now, &mut rejections).await {
            tracing::warn!(job = id, error = %e, "fine-tuning step failed; retrying next pass");
        }
    }
    // Jobs this worker follows that are not listed: ended on chain, if the chain says so.
    let missing: Vec<JobId> = ft
        .records
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|r| !r.stage.is_final() && !open.iter().any(|(id, _)| *id == r.id))
        .map(|r| r.id)
        .collect();
    for id in missing {
        if w.chain.job(id).await?.is_some() {
            continue;
        }
        ft.cancel_training(id);
        ft.update(id, |r| {
            r.stage = Stage::Cancelled;
            r.finished_at = Some(crate::store::now());
        });
        ft.event(id, "warn", "the job ended on chain (cancelled or expired)".into(), None);
    }
    ft.prune(crate::store::now());
    Ok(())
}

/// Whether a job this worker accepted is still to be trained or delivered.
fn busy(ft: &FineTuner) -> bool {
    ft.records
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .any(|r| matches!(r.stage, Stage::Accepted | Stage::Training | Stage::Trained))
}

/// What the chain state of one job asks of this worker at block `now`.
async fn step(
    w: &Arc<Worker>,
    ft: &Arc<FineTuner>,
    id: JobId,
    job: &OpenJob,
    now: u32,
    rejections: &mut usize,
) -> Result<(), ChainError> {
    let Some(r) = ft.record(id) else { return Ok(()) };
    match (&job.state, r.stage) {
        (JobState::Created { accept_by }, Stage::WaitingForFile) => {
            // Accepted only when the trainer has nothing queued, so a job's turnaround starts
            // when its training can; others wait for their acceptance window.
            if now >= *accept_by || busy(ft) {
                return Ok(());
            }
            let Some(meta) = ft.files.get(&job.user, &job.spec.dataset_hash.0) else {
                return Ok(()); // the user uploads it next
            };
            match check_spec(ft, &job.spec, meta.tokens) {
                Ok(()) => {
                    submit("accept_job", w.chain.accept_job(&w.signer, id)).await?;
                    ft.update(id, |r| r.stage = Stage::Accepted);
                    ft.event(id, "info", "accepted on chain".into(), None);
                    ft.nudge.notify_one();
                }
                Err(_) if *rejections >= MAX_REJECTIONS => {}
                Err(reason) => {
                    // Bounded per pass: jobs made to be rejected cannot hold the pass up.
                    *rejections += 1;
                    submit("reject_job", w.chain.reject_job(&w.signer, id)).await?;
                    ft.update(id, |r| {
                        r.stage = Stage::Rejected;
                        r.error = Some(reason.clone());
                        r.finished_at = Some(crate::store::now());
                    });
                    ft.event(id, "error", format!("rejected: {reason}"), None);
                }
            }
        }
        (
            JobState::Accepted { .. },
            Stage::WaitingForFile | Stage::Accepted | Stage::Cancelled | Stage::Failed,
        ) => {
            // A training stopped or failed while the chain still expects a delivery: again,
            // with a lower learning rate after a failure, a bounded number of times.
            if r.stage == Stage::Failed && r.attempts >= ATTEMPTS {
                return Ok(());
            }
            ft.update(id, |r| r.stage = Stage::Accepted);
            start_training(w, ft, id, job);
        }
        // `now` is the head; the transaction lands in a later block.
        (JobState::Accepted { deliver_by }, Stage::Trained) if now < *deliver_by => {
            let (Some(key), Some(r)) = (ft.jobs.key(id), ft.record(id)) else {
                // The key was lost: train again.
                ft.update(id, |r| r.stage = Stage::Accepted);
                return Ok(());
            };
            let most = job.spec.trained_tokens().unwrap_or_default();
            let delivery = Delivery {
                adapter_hash: H256(r.adapter_hash.unwrap_or_default()),
                adapter_len: r.adapter_len.unwrap_or_default(),
                key_hash: key_hash(&key),
                trained_tokens: r.trained_tokens.unwrap_or_default().min(most),
                final_loss: (r.final_loss.unwrap_or_default().max(0.0) * 1000.0) as u32,
            };
            submit("deliver", w.chain.deliver(&w.signer, id, delivery)).await?;
            ft.update(id, |r| r.stage = Stage::Delivered);
            ft.event(id, "info", "delivered on chain".into(), None);
        }
        (JobState::Acknowledged { reveal_by, .. }, Stage::Delivered | Stage::Trained)
            if now < *reveal_by =>
        {
            let Some(key) = ft.jobs.key(id) else {
                tracing::error!(job = id, "the key of an acknowledged job is lost");
                return Ok(());
            };
            let sealed = seal_key(id, &key, &random_bytes(), &job.spec.user_key);
            submit("reveal_key", w.chain.reveal_key(&w.signer, id, sealed)).await?;
            ft.update(id, |r| {
                r.stage = Stage::Revealed;
                r.finished_at = Some(crate::store::now());
            });
            ft.update(id, |r| r.sealed_key = Some((sealed.ephemeral, sealed.sealed)));
            ft.event(
                id,
                "info",
                "key revealed on chain; the fee is paid after the contest window".into(),
                None,
            );
        }
        (JobState::Delivered { ack_by, .. }, s) => {
            // A delivery submitted by a pass that stopped watching it: the chain is ahead.
            if s == Stage::Trained {
                ft.update(id, |r| r.stage = Stage::Delivered);
            }
            // Never acknowledged: collect the abandonment share and free the bond.
            if now > *ack_by {
                submit("expire_job", w.chain.expire_job(&w.signer, id)).await?;
                ft.event(id, "warn", "not acknowledged in time: abandoned".into(), None);
            }
        }
        (JobState::Revealed { contest_until, key, .. }, _) => {
            if r.stage != Stage::Revealed || r.sealed_key.is_none() {
                ft.update(id, |r| {
                    r.stage = Stage::Revealed;
                    r.finished_at.get_or_insert(crate::store::now());
                    r.sealed_key = Some((key.ephemeral, key.sealed));
                });
            }
            // The contest window closed: collect the fee.
            if now >= *contest_until {
                submit("expire_job", w.chain.expire_job(&w.signer, id)).await?;
                ft.event(id, "info", "contest window closed; the fee is paid".into(), None);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether this worker takes a job on `spec` for a dataset of `tokens` tokens.
fn check_spec(ft: &FineTuner, spec: &JobSpec, tokens: u64) -> Result<(), String> {
    if spec.service_id != ft.service_id {
        return Err(format!(
            "service {} is not this worker's fine-tuning service",
            spec.service_id
        ));
    }
    if spec.dataset_tokens != tokens {
        return Err(format!(
            "the job names {} dataset tokens; the dataset has {tokens}",
            spec.dataset_tokens
        ));
    }
    let c = &ft.config;
    if spec.epochs > c.max_epochs || spec.rank > c.max_rank || tokens > c.max_dataset_tokens {
        return Err("the job is outside this worker's terms".into());
    }
    if spec.learning_rate == 0 || spec.learning_rate > MAX_LEARNING_RATE {
        return Err(format!("learning rate outside (0, {}]", f64::from(MAX_LEARNING_RATE) / 1e6));
    }
    Ok(())
}

/// Start training `id` on its own thread when nothing else trains.
fn start_training(w: &Arc<Worker>, ft: &Arc<FineTuner>, id: JobId, job: &OpenJob) {
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let mut training = ft.training.lock().unwrap_or_else(|p| p.into_inner());
        if training.is_some() {
            return;
        }
        *training = Some((id, cancel.clone()));
    }
    ft.update(id, |r| r.stage = Stage::Training);
    ft.event(id, "info", "training started".into(), None);
    let (ft2, w2, spec, user) = (ft.clone(), w.clone(), job.spec, job.user.clone());
    let spawned = std::thread::Builder::new().name(format!("finetune-{id}")).spawn(move || {
        let attempt = ft2.record(id).map_or(0, |r| r.attempts);
        let result = train_job(&ft2, id, &user, &spec, attempt, &cancel);
        *ft2.training.lock().unwrap_or_else(|p| p.into_inner()) = None;
        match result {
            Ok(()) => ft2.event(id, "info", "trained and encrypted".into(), None),
            Err(reason) => {
                let cancelled = cancel.load(Ordering::Relaxed);
                ft2.update(id, |r| {
                    r.stage = if cancelled { Stage::Cancelled } else { Stage::Failed };
                    r.error = Some(reason.clone());
                    if !cancelled {
                        r.attempts += 1;
                    }
                });
                ft2.event(id, "error", format!("training stopped: {reason}"), None);
            }
        }
        if let Some(ft) = &w2.finetune {
            ft.nudge.notify_one();
        }
    });
    if let Err(e) = spawned {
        *ft.training.lock().unwrap_or_else(|p| p.into_inner()) = None;
        ft.update(id, |r| r.stage = Stage::Accepted);
        tracing::error!(job = id, error = %e, "cannot start the training thread");
    }
}

/// Train, encrypt and keep a job's adapter (blocking; runs on the training thread).
fn train_job(
    ft: &FineTuner,
    id: JobId,
    user: &compute_primitives::AccountId,
    spec: &JobSpec,
    attempt: u32,
    cancel: &AtomicBool,
) -> Result<(), String> {
    let data = std::fs::read(ft.files.data_path(user, &spec.dataset_hash.0))
        .map_err(|e| format!("dataset: {e}"))?;
    let dataset = ft.dataset(&data)?;
    let rank = spec.rank as usize;
    let lora = LoraConfig::new(rank, ALPHA_PER_RANK * rank as f32, &Target::ALL)
        .map_err(|e| e.to_string())?;
    let params = TrainParams {
        epochs: spec.epochs as usize,
        // Each retry after a failure (a diverging loss) halves the rate.
        lr: f64::from(spec.learning_rate) / 1e6 / f64::from(1u32 << attempt.min(8)),
        seed: spec.seed,
        ..TrainParams::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(ft.config.training_threads())
        .thread_name(move |i| format!("finetune-{id}-{i}"))
        .build()
        .map_err(|e| e.to_string())?;
    let out = pool.install(|| {
        let model = LoraModel::load(&ft.base_model, &lora, spec.seed, &candle_core::Device::Cpu)
            .map_err(|e| e.to_string())?;
        compute_inference::finetune::train(&model, &dataset, &params, cancel, |p: &Progress| {
            ft.update(id, |r| {
                r.step = p.step as u64;
                r.total_steps = p.total_steps as u64;
            });
            ft.event(
                id,
                "info",
                format!("step {}/{}: loss {:.4}", p.step, p.total_steps, p.loss),
                Some(serde_json::json!({
                    "step": p.step,
                    "total_steps": p.total_steps,
                    "epoch": p.epoch,
                    "train_loss": p.loss,
                    "tokens": p.tokens,
                })),
            );
        })
        .map_err(|e| e.to_string())
    })?;
    let adapter = out.adapter.to_safetensors();
    let key = random_bytes();
    let ciphertext = encrypt_adapter(&key, id, &adapter);
    let hash = polkadot_sdk::sp_io::hashing::blake2_256(&ciphertext);
    std::fs::create_dir_all(ft.jobs.dir(id)).map_err(|e| e.to_string())?;
    files::write_atomic(&ft.jobs.adapter(id), &adapter).map_err(|e| e.to_string())?;
    files::write_atomic(&ft.jobs.ciphertext(id), &ciphertext).map_err(|e| e.to_string())?;
    ft.jobs.save_key(id, &key).map_err(|e| e.to_string())?;
    ft.update(id, |r| {
        r.stage = Stage::Trained;
        r.trained_tokens = Some(out.stats.trained_tokens);
        r.final_loss = Some(out.stats.final_loss);
        r.adapter_hash = Some(hash);
        r.adapter_len = Some(ciphertext.len() as u64);
    });
    Ok(())
}
