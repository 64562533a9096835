//! The worker's shared state: keys, chain, store, model, escrow cache; start-up (service
//! registration, recovery of requests cut off by a stop) and the chain event watcher.

use crate::{
    config::Config,
    metrics::Metrics,
    model::{EmbedBatcher, Embedder, Engine},
    store::{Store, StoreError},
};
use compute_client::{
    wire, Chain, ChainError, ComputeEvent, EscrowState, ServiceInfo, ServiceTerms, Signer,
};
use compute_primitives::{
    AccountId, Balance, Receipt, ServiceId, ServiceKind, SignedReceipt, Voucher,
};
use polkadot_sdk::sp_core::H256;
use std::{
    collections::HashMap,
    sync::{atomic::AtomicUsize, Arc, Mutex, RwLock},
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// How long a cached escrow is trusted without an event touching it.
const ESCROW_TTL: Duration = Duration::from_secs(6);
/// Most escrows cached at once (one entry per user seen in the last `ESCROW_TTL`).
const ESCROW_CACHE: usize = 16_384;
/// Longest a chain read may take before admission answers 503.
pub const CHAIN_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Key(#[from] compute_client::KeyError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] crate::model::LoadError),
    #[error(
        "service {service}: the config commits to weights {configured:?} but {path} hashes to \
         {loaded:?}; refusing to register a hash this worker does not serve"
    )]
    WrongModelHash { service: ServiceId, configured: H256, loaded: H256, path: String },
    #[error("{0}")]
    Other(String),
}

/// What a receipt says was served; the default is nothing (a refused or interrupted request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    pub response_hash: H256,
    /// blake2-256 of the activation proof; zero without one.
    pub proof_hash: H256,
    /// The weights that served it (the service's `model_hash`).
    pub model_hash: H256,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub fee: Balance,
}

/// Weights this worker loaded, as a service commits to them.
#[derive(Debug, Clone)]
pub struct Weights {
    /// The file read (the GGUF, or the embedding model's `model.safetensors`).
    pub path: std::path::PathBuf,
    /// blake2-256 of that file: the services' `model_hash`.
    pub hash: H256,
    /// Its size in bytes.
    pub len: u64,
}

impl Weights {
    /// Hash `path` (streamed; blocking).
    pub fn of(path: std::path::PathBuf) -> std::io::Result<Self> {
        let hash = H256(crate::model::weights::file_hash(&path)?);
        let len = std::fs::metadata(&path)?.len();
        Ok(Weights { path, hash, len })
    }
}

/// The chat model and what serving it needs.
pub struct ChatService {
    pub engine: Arc<Engine>,
    /// Model name clients send by default.
    pub name: String,
    /// Generation slots (`chat.parallel`) and the bounded queue before them.
    pub capacity: Capacity,
    /// Largest `max_tokens` served.
    pub max_tokens: u64,
    /// The GGUF served.
    pub weights: Weights,
}

/// The embedding model and what serving it needs.
pub struct EmbeddingService {
    /// The embedding model's thread: it encodes, merging concurrent requests into shared passes.
    pub batcher: EmbedBatcher,
    /// Model name clients send by default.
    pub name: String,
    /// Requests handed to the batcher at once (`embeddings.parallel`) and the queue before them.
    pub capacity: Capacity,
    /// Most inputs in one request.
    pub max_inputs: usize,
    /// Most tokens in one request.
    pub max_tokens: usize,
    /// The safetensors served.
    pub weights: Weights,
}

/// Slots of one model and the bounded queue of requests waiting for them.
pub struct Capacity {
    pub slots: Arc<Semaphore>,
    /// Requests holding a queue place (from arrival until they get a slot or are refused).
    pub waiting: AtomicUsize,
    /// Most queue places.
    pub queue: usize,
}

impl Capacity {
    fn new(parallel: usize, queue: usize) -> Self {
        Capacity { slots: Arc::new(Semaphore::new(parallel)), waiting: AtomicUsize::new(0), queue }
    }
}

/// Shared state.
pub struct Worker {
    pub config: Config,
    pub signer: Signer,
    pub provider: AccountId,
    pub genesis: H256,
    pub chain: Chain,
    pub store: Arc<Store>,
    /// This process among the workers sharing the store: requests it admitted carry it, so
    /// recovery seals only those of processes that are gone.
    pub instance: i64,
    /// The chat model, when `[chat]` is configured.
    pub chat: Option<ChatService>,
    /// The embedding model, when `[embeddings]` is configured.
    pub embeddings: Option<EmbeddingService>,
    pub services: RwLock<HashMap<ServiceId, ServiceInfo>>,
    escrows: Mutex<HashMap<AccountId, (Option<EscrowState>, Instant)>>,
    pub metrics: Metrics,
    /// Per-user request and token budgets.
    pub limits: crate::billing::limits::Limits,
    /// Woken whenever this process seals a receipt (requests waiting for an earlier nonce).
    pub sealed: tokio::sync::Notify,
    /// Held by whoever is settling (the scheduler, or the settlement at exit).
    pub settling: tokio::sync::Mutex<()>,
    /// Requests this process is serving (their tickets are alive): recovery leaves them alone.
    pub live: Mutex<std::collections::HashSet<(AccountId, compute_primitives::Nonce)>>,
    /// Escrows whose settled payments are still held, with the first block at which some of it
    /// can be released (see `settlement::release_due`).
    pub releases: Mutex<std::collections::BTreeMap<AccountId, compute_client::chain::BlockNumber>>,
    /// Places for weight downloads (`GET /v1/weights/{hash}`).
    pub downloads: Arc<Semaphore>,
    /// Fine-tuning jobs, when a `fine_tune` service is configured.
    pub finetune: Option<Arc<crate::finetune::FineTuner>>,
    /// Adapters deployed as chat services, by service id.
    pub deployed: RwLock<HashMap<ServiceId, Arc<crate::finetune::deploy::DeployedModel>>>,
}

impl Worker {
    /// Connect, open the store, load the models, register services, recover.
    pub async fn start(config: Config) -> Result<Arc<Worker>, StartError> {
        config.validate()?;
        let signer = match (&config.provider_key, &config.provider_key_file) {
            (Some(uri), _) => Signer::from_uri(uri)?,
            (None, Some(file)) => Signer::from_file(file)?,
            (None, None) => return Err(StartError::Other("no provider key".into())),
        };
        let provider = signer.account_id();
        tracing::info!(%provider, node = %config.node_url, "connecting to the chain");
        let chain = Chain::connect(&config.node_url, Duration::from_secs(60)).await?;
        let genesis = chain.genesis_hash();

        let data_dir = &config.store.data_dir;
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StartError::Other(format!("data dir {}: {e}", data_dir.display())))?;
        let store = Arc::new(match &config.store.database_url {
            Some(url) => {
                tracing::info!("trace store: PostgreSQL (shared)");
                Store::postgres(url).await?
            }
            None => Store::sqlite(&data_dir.join("traces.sqlite"), config.store.durability)?,
        });
        let instance = store.register_instance().await?;

        let on = device(config.cuda)?;
        let stem = |p: &std::path::Path, fallback: &str| {
            p.file_stem().map_or_else(|| fallback.to_string(), |s| s.to_string_lossy().into_owned())
        };
        let first_name = |kind: ServiceKind| {
            config.services.iter().find(|s| s.kind == kind).and_then(|s| s.model_name.clone())
        };
        let chat = match config.chat.clone() {
            Some(c) => {
                tracing::info!(model = %c.model.display(), "loading the chat model");
                let device = on.clone();
                let t = Instant::now();
                let (path, format, parallel) = (c.model.clone(), c.weights, c.parallel);
                let (engine, weights) = tokio::task::spawn_blocking(move || {
                    let weights = Weights::of(path.clone()).map_err(|e| {
                        StartError::Other(format!("hashing {}: {e}", path.display()))
                    })?;
                    Ok::<_, StartError>((
                        Engine::load_with(&path, format, device, parallel)?,
                        weights,
                    ))
                })
                .await
                .map_err(|e| StartError::Other(e.to_string()))??;
                tracing::info!(
                    secs = t.elapsed().as_secs_f32(),
                    requantized = engine.requantized,
                    context = engine.context_len,
                    "chat model loaded"
                );
                Some(ChatService {
                    engine: Arc::new(engine),
                    name: first_name(ServiceKind::Chat).unwrap_or_else(|| stem(&c.model, "model")),
                    capacity: Capacity::new(c.parallel, c.queue),
                    max_tokens: c.max_tokens,
                    weights,
                })
            }
            None => None,
        };
        let embeddings = match config.embeddings.clone() {
            Some(c) => {
                let device = on.clone();
                let t = Instant::now();
                let dir = c.model.clone();
                let (e, weights) = tokio::task::spawn_blocking(move || {
                    let file = crate::model::weights::embedding_weights_file(&dir);
                    let weights = Weights::of(file.clone()).map_err(|e| {
                        StartError::Other(format!("hashing {}: {e}", file.display()))
                    })?;
                    let e = Embedder::load(&dir, &device)
                        .map_err(|e| StartError::Other(e.to_string()))?;
                    Ok::<_, StartError>((e, weights))
                })
                .await
                .map_err(|e| StartError::Other(e.to_string()))??;
                tracing::info!(model = %c.model.display(), dim = e.dim, max_tokens = e.max_tokens,
                    secs = t.elapsed().as_secs_f32(), "embedding model loaded");
                let batcher = EmbedBatcher::start(Arc::new(e)).map_err(|e| {
                    StartError::Other(format!("starting the embedding thread: {e}"))
                })?;
                let name = first_name(ServiceKind::Embedding).unwrap_or_else(|| {
                    c.model
                        .file_name()
                        .map_or_else(|| stem(&c.model, "embedding"), |s| s.to_string_lossy().into())
                });
                Some(EmbeddingService {
                    batcher,
                    name,
                    capacity: Capacity::new(c.parallel, c.queue),
                    max_inputs: c.max_inputs,
                    max_tokens: c.max_tokens,
                    weights,
                })
            }
            None => None,
        };

        let finetune = match (
            config.services.iter().find(|s| s.kind == ServiceKind::FineTune),
            &config.finetune,
            &chat,
            &config.chat,
        ) {
            (Some(s), Some(f), Some(chat), Some(c)) => {
                tracing::info!(service = s.id, threads = f.training_threads(), "fine-tuning jobs");
                Some(Arc::new(crate::finetune::FineTuner::new(
                    f.clone(),
                    s.id,
                    c.model.clone(),
                    chat.engine.tokenizer.clone(),
                    chat.engine.template.clone(),
                    data_dir,
                )))
            }
            _ => None,
        };

        let limits = crate::billing::limits::Limits::new(&config.limits);
        let worker = Arc::new(Worker {
            config,
            signer,
            provider,
            genesis,
            chain,
            store,
            instance,
            chat,
            embeddings,
            services: RwLock::new(HashMap::new()),
            escrows: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            limits,
            sealed: tokio::sync::Notify::new(),
            settling: tokio::sync::Mutex::new(()),
            live: Mutex::new(Default::default()),
            releases: Mutex::new(Default::default()),
            downloads: Arc::new(Semaphore::new(crate::api::weights::MAX_DOWNLOADS)),
            finetune,
            deployed: RwLock::new(HashMap::new()),
        });
        if let Some(ft) = worker.finetune.clone() {
            let w = worker.clone();
            tokio::task::spawn_blocking(move || crate::finetune::deploy::reload(&w, &ft))
                .await
                .map_err(|e| StartError::Other(e.to_string()))??;
        }
        worker.register_services().await?;
        worker.recover().await?;
        Ok(worker)
    }

    /// Model name of a service kind served here.
    pub fn model_name(&self, kind: ServiceKind) -> String {
        match kind {
            ServiceKind::Chat => {
                self.chat.as_ref().map_or_else(|| "chat".into(), |c| c.name.clone())
            }
            ServiceKind::Embedding => {
                self.embeddings.as_ref().map_or_else(|| "embedding".into(), |e| e.name.clone())
            }
            // Fine-tuning trains over the chat model.
            ServiceKind::FineTune => self.model_name(ServiceKind::Chat),
        }
    }

    /// The weights serving a service kind, if that kind is loaded.
    pub fn weights(&self, kind: ServiceKind) -> Option<&Weights> {
        match kind {
            ServiceKind::Chat => self.chat.as_ref().map(|c| &c.weights),
            ServiceKind::Embedding => self.embeddings.as_ref().map(|e| &e.weights),
            ServiceKind::FineTune => self.weights(ServiceKind::Chat),
        }
    }

    /// The loaded weights whose hash is `hash` (deployed adapters' included).
    pub fn weights_by_hash(&self, hash: &H256) -> Option<Weights> {
        [ServiceKind::Chat, ServiceKind::Embedding]
            .into_iter()
            .filter_map(|k| self.weights(k))
            .find(|w| w.hash == *hash)
            .cloned()
            .or_else(|| crate::finetune::deploy::weights_by_hash(self, hash))
    }

    /// The weights serving a service of this provider.
    pub fn weights_of(&self, service: ServiceId, kind: ServiceKind) -> Option<Weights> {
        match crate::finetune::deploy::model_of(self, service) {
            Some(m) => Some(m.weights.clone()),
            None => self.weights(kind).cloned(),
        }
    }

    /// Register the configured services that are missing on chain, update those whose terms
    /// differ, then load the chain's view.
    pub async fn register_services(&self) -> Result<(), StartError> {
        let on_chain = self.chain.services_of(&self.provider).await?;
        let url = self
            .config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.config.listen));
        for s in &self.config.services {
            let model = s.model_name.clone().unwrap_or_else(|| self.model_name(s.kind));
            let loaded = self.weights(s.kind).map_or_else(H256::zero, |w| w.hash);
            if let Some(configured) = s.model_hash.filter(|h| *h != loaded) {
                return Err(StartError::WrongModelHash {
                    service: s.id,
                    configured,
                    loaded,
                    path: self
                        .weights(s.kind)
                        .map_or_else(|| "no model".into(), |w| w.path.display().to_string()),
                });
            }
            let terms = ServiceTerms {
                kind: s.kind,
                model,
                model_hash: loaded,
                url: url.clone(),
                input_price: s.input_price,
                output_price: s.output_price,
                verifiability: s.verifiability.clone(),
            };
            let existing = on_chain.iter().find(|c| c.service_id == s.id);
            if existing.is_some_and(|c| c.terms() == terms) {
                continue;
            }
            tracing::info!(service = s.id, update = existing.is_some(), "registering service");
            self.chain.register_service(&self.signer, s.id, &terms, existing.is_some()).await?;
        }
        if let (Some(ft), Some(f)) = (&self.finetune, &self.config.finetune) {
            let terms = compute_primitives::FineTuneTerms {
                max_dataset_tokens: f.max_dataset_tokens,
                max_epochs: f.max_epochs,
                max_rank: f.max_rank,
                turnaround: f.turnaround_blocks,
            };
            if self.chain.finetune_terms(&self.provider, ft.service_id).await? != Some(terms) {
                tracing::info!(service = ft.service_id, "setting the fine-tuning terms");
                self.chain.set_finetune_terms(&self.signer, ft.service_id, terms).await?;
            }
        }
        self.refresh_services().await?;
        Ok(())
    }

    /// Reload this provider's services from the chain.
    pub async fn refresh_services(&self) -> Result<(), ChainError> {
        let services = self.chain.services_of(&self.provider).await?;
        for s in &services {
            let loaded = self.weights_of(s.service_id, s.kind).map_or_else(H256::zero, |w| w.hash);
            if s.model_hash != loaded {
                // Receipts name the service's weights: every answer from now on can be
                // challenged, and will be lost, for weights this worker does not run.
                tracing::error!(
                    service = s.service_id,
                    on_chain = ?s.model_hash,
                    loaded = ?loaded,
                    "the service on chain names other weights than this worker serves; restart \
                     the worker to register what it loads"
                );
            }
        }
        let mut map = self.services.write().unwrap_or_else(|p| p.into_inner());
        *map = services.into_iter().map(|s| (s.service_id, s)).collect();
        Ok(())
    }

    /// A service of this provider.
    pub fn service(&self, id: ServiceId) -> Option<ServiceInfo> {
        self.services.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Requests admitted by a worker process that is gone (this one before a restart, or
    /// another sharing the PostgreSQL store), and requests of this process that nothing here is
    /// serving any more (a failed seal, a handler dropped between admission and its job), get a
    /// fee-0 receipt: the user was not served, so nothing is charged, and the nonce stays used.
    /// A user's requests are sealed in nonce order: one with a lower nonce still in flight (a
    /// live process serving it) waits for the next pass. A failure is reported and left for the
    /// next pass; it never stops the worker. Returns the number sealed.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let stale = self.config.limits.request_timeout_secs.saturating_mul(2).saturating_add(60);
        let stale_before = crate::store::now().saturating_sub(stale);
        let mut sealed = 0;
        let mut blocked = std::collections::HashSet::new();
        for sv in self.store.orphans(self.instance, stale_before).await? {
            let v = &sv.voucher;
            let key = (v.user.clone(), v.nonce);
            if blocked.contains(&v.user)
                || self.live.lock().unwrap_or_else(|p| p.into_inner()).contains(&key)
            {
                blocked.insert(v.user.clone());
                continue;
            }
            if self.store.in_flight_before(&v.user, v.nonce).await? {
                blocked.insert(v.user.clone());
                continue;
            }
            let seq = self.store.sequence(&v.user).await?;
            let receipt = self.receipt(v, Served::default(), seq.last_total);
            let body = serde_json::to_string(
                &wire::ErrorBody::new(
                    "server_error",
                    "interrupted",
                    "the worker stopped before answering; nothing was charged",
                )
                .with_receipt(&receipt),
            )
            .unwrap_or_default();
            match self.store.seal(&receipt, None, 500, &body).await {
                Ok(()) => {
                    sealed += 1;
                    self.sealed.notify_waiters();
                    tracing::warn!(user = %v.user, nonce = v.nonce,
                        "sealed an interrupted request at fee 0");
                }
                Err(e) => {
                    blocked.insert(v.user.clone());
                    tracing::error!(user = %v.user, nonce = v.nonce, error = %e,
                        "cannot seal an interrupted request");
                }
            }
        }
        Ok(sealed)
    }

    /// Keep this process marked alive in the store and seal the requests of processes that are
    /// gone, until the process ends.
    pub fn spawn_recovery(self: &Arc<Self>) {
        let w = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                // First thing: the model may have taken long to load since registration.
                match w.store.heartbeat(w.instance).await {
                    Ok(()) => {
                        if let Err(e) = w.recover().await {
                            tracing::warn!(error = %e, "recovery pass failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot mark this worker alive"),
                }
                tokio::time::sleep(crate::store::HEARTBEAT).await;
            }
        });
    }

    /// Sign a receipt for `v`.
    pub fn receipt(&self, v: &Voucher, served: Served, total: Balance) -> SignedReceipt {
        let receipt = Receipt {
            user: v.user.clone(),
            provider: self.provider.clone(),
            service_id: v.service_id,
            nonce: v.nonce,
            request_hash: v.request_hash,
            response_hash: served.response_hash,
            proof_hash: served.proof_hash,
            model_hash: served.model_hash,
            input_tokens: served.input_tokens,
            output_tokens: served.output_tokens,
            fee: served.fee,
            total,
        };
        wire::sign_receipt(&self.signer, receipt, &self.genesis)
    }

    /// The escrow of `user` with this provider as admission must see it: the balance of the
    /// finalized block (deposits count once final) and the pending refund of the best block
    /// (refund requests count at once). Cached; events invalidate.
    pub async fn escrow(&self, user: &AccountId) -> Result<Option<EscrowState>, ChainError> {
        if let Some((e, at)) = self.escrows.lock().unwrap_or_else(|p| p.into_inner()).get(user) {
            if at.elapsed() < ESCROW_TTL {
                return Ok(e.clone());
            }
        }
        let read = async {
            let finalized = self.chain.finalized_head().await?;
            let fin = self.chain.escrow(user, &self.provider, Some(finalized)).await?;
            let best = self.chain.escrow(user, &self.provider, None).await?;
            Ok::<_, ChainError>((fin, best))
        };
        let (fin, best) =
            tokio::time::timeout(CHAIN_READ_TIMEOUT, read).await.map_err(|_| {
                ChainError::Rpc {
                    method: "escrow",
                    reason: "the node did not answer in time".into(),
                }
            })??;
        let merged = match (fin, best) {
            (Some(f), Some(b)) => Some(EscrowState {
                balance: f.balance.min(b.balance),
                pending_refund: f.pending_refund.max(b.pending_refund),
                ..b
            }),
            (None, _) => None,
            (Some(f), None) => Some(f),
        };
        let mut cache = self.escrows.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= ESCROW_CACHE {
            // Expired entries first, then keys without an escrow; paying users stay.
            cache.retain(|_, (_, at)| at.elapsed() < ESCROW_TTL);
            if cache.len() >= ESCROW_CACHE {
                cache.retain(|_, (e, _)| e.is_some());
            }
        }
        if cache.len() < ESCROW_CACHE {
            cache.insert(user.clone(), (merged.clone(), Instant::now()));
        }
        Ok(merged)
    }

    /// Forget a cached escrow.
    pub fn invalidate(&self, user: &AccountId) {
        self.escrows.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
    }

    /// Watch best blocks: an event naming a user with this provider drops that user's cached
    /// escrow; a change to this provider's services reloads them. Resubscribes on failure.
    pub fn spawn_event_watcher(self: &Arc<Self>) {
        let w = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let me = w.provider.clone();
                let mut services_changed = false;
                let result = w
                    .chain
                    .watch_best_events(|_, events| {
                        for e in &events {
                            if let Some(user) = e.user() {
                                w.invalidate(user);
                            }
                            if let ComputeEvent::ServiceUpdated { provider, .. }
                            | ComputeEvent::ServiceRegistered { provider, .. } = e
                            {
                                services_changed |= *provider == me;
                            }
                        }
                        // Stop watching to reload the services, then watch again.
                        !services_changed
                    })
                    .await;
                if services_changed {
                    if let Err(e) = w.refresh_services().await {
                        tracing::warn!(error = %e, "reloading the services");
                    }
                    continue;
                }
                if let Err(e) = result {
                    tracing::warn!(error = %e, "event subscription ended; resubscribing");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
}

fn device(cuda: bool) -> Result<candle_core::Device, StartError> {
    if cuda {
        candle_core::Device::new_cuda(0).map_err(|e| {
            StartError::Other(format!(
                "cuda requested but unavailable (built with --features cuda?): {e}"
            ))
        })
    } else {
        Ok(candle_core::Device::Cpu)
    }
}
