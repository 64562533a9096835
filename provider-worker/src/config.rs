//! Worker configuration: a TOML file, every field overridable by a flag.

use crate::{model::WeightFormat, store::Durability};
use compute_primitives::{Balance, ServiceId, ServiceKind};
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, path::PathBuf};

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("config: {0}")]
    Invalid(String),
}

/// A service this worker offers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Id on chain (per provider).
    pub id: ServiceId,
    /// `chat` (served by `[chat]`), `embedding` (served by `[embeddings]`) or `fine_tune`
    /// (jobs trained over the `[chat]` model, on the terms of `[finetune]`; `input_price` is
    /// the price per trained token, `output_price` zero).
    #[serde(default = "chat")]
    pub kind: ServiceKind,
    /// Model name clients send; defaults to the GGUF file's stem (chat) or the embedding
    /// model's directory name (embedding).
    #[serde(default)]
    pub model_name: Option<String>,
    /// Price per input token, smallest units (decimal string or integer).
    #[serde(with = "amount")]
    pub input_price: Balance,
    /// Price per output token.
    #[serde(with = "amount")]
    pub output_price: Balance,
    /// How responses can be verified.
    #[serde(default)]
    pub verifiability: String,
    /// The weights this service commits to (`0x` and 64 hex digits): the worker refuses to
    /// start unless the model it loads hashes to this. Without it, the service commits to
    /// whatever the worker loaded.
    #[serde(default)]
    pub model_hash: Option<polkadot_sdk::sp_core::H256>,
}

fn chat() -> ServiceKind {
    ServiceKind::Chat
}

/// When to settle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SettlementConfig {
    /// Settle an escrow once what it owes reaches this share of its spendable balance.
    pub threshold_share: f64,
    /// Settle once the oldest unsettled receipt is this old.
    pub max_age_secs: u64,
    /// How often the scheduler looks.
    pub tick_ms: u64,
    /// Claims per `settle` extrinsic (the chain's `MaxBatch` bounds it too).
    pub max_batch: u32,
    /// Longest wait between retries after a failure.
    pub max_backoff_secs: u64,
    /// Longest a `settle` or `release` may take from submission to finality before the pass
    /// stops watching it (the next pass reads the chain again, so nothing is claimed twice).
    pub tx_timeout_secs: u64,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig {
            threshold_share: 0.5,
            max_age_secs: 3600,
            tick_ms: 2000,
            max_batch: 256,
            max_backoff_secs: 60,
            tx_timeout_secs: 120,
        }
    }
}

/// Where the trace store lives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of the SQLite store (`traces.sqlite`).
    pub data_dir: PathBuf,
    /// PostgreSQL URL of a trace store shared by several worker processes of this provider
    /// (`postgres://user@host:port/db`); SQLite in `data_dir` when unset.
    pub database_url: Option<String>,
    /// Commit durability of the SQLite store.
    pub durability: Durability,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("worker-data"),
            database_url: None,
            durability: Durability::default(),
        }
    }
}

/// The chat model and how it is served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// GGUF file.
    pub model: PathBuf,
    /// How weights are kept in memory.
    #[serde(default)]
    pub weights: WeightFormat,
    /// Generations that run at the same time: the most requests decoded together in one batched
    /// forward pass.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Admitted requests that may wait for a generation slot; more are refused with 503.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Largest `max_tokens` served.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u64,
}

/// The embedding model and how it is served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// A sentence-transformers directory (`model.safetensors`, `config.json`,
    /// `tokenizer.json`).
    pub model: PathBuf,
    /// Most inputs in one request.
    #[serde(default = "default_max_inputs")]
    pub max_inputs: usize,
    /// Most tokens, all inputs together, in one request: refused above it before any work, so
    /// that no request can hold the embedder for long (about 40 s on two cores at the default).
    #[serde(default = "default_max_embedding_tokens")]
    pub max_tokens: usize,
    /// Requests handed to the batcher at once; the batcher merges them into shared passes.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Admitted requests that may wait for a slot; more are refused with 503.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

/// Fine-tuning jobs: the terms offered on chain and how training runs here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FineTuneConfig {
    /// Most dataset tokens in one job.
    pub max_dataset_tokens: u64,
    /// Most epochs in one job.
    pub max_epochs: u32,
    /// Highest LoRA rank offered.
    pub max_rank: u32,
    /// Blocks from acceptance within which delivery is promised.
    pub turnaround_blocks: u32,
    /// CPU threads training uses; inference keeps the rest. 0: half the cores (at least one).
    pub threads: usize,
    /// Tokens kept of each example (longer ones are cut, and counted, at this length).
    pub max_seq_len: usize,
    /// Most examples in one dataset.
    pub max_examples: usize,
    /// Datasets one user may keep uploaded at once (the oldest not used by a job is dropped).
    pub max_files_per_user: usize,
    /// How often the job driver reads the chain, in milliseconds.
    pub tick_ms: u64,
    /// Most adapters served as chat services at once (each is a model in memory).
    pub max_deployed: usize,
}

impl Default for FineTuneConfig {
    fn default() -> Self {
        FineTuneConfig {
            max_dataset_tokens: 1_000_000,
            max_epochs: 10,
            max_rank: 16,
            turnaround_blocks: 600,
            threads: 0,
            max_seq_len: 512,
            max_examples: 10_000,
            max_files_per_user: 8,
            tick_ms: 2_000,
            max_deployed: 4,
        }
    }
}

impl FineTuneConfig {
    /// The training threads: `threads`, or half the cores (at least one) when 0.
    pub fn training_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / 2).max(1)
    }
}

/// What one client, one user and one request may take.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Longest a paid request may take from arrival to its receipt (queueing included); 0 times
    /// every request out at once (tests of that path).
    pub request_timeout_secs: u64,
    /// Longest a client may take to send a request's headers (slow clients are disconnected).
    pub header_timeout_secs: u64,
    /// Longest a client may take to send a request's body.
    pub body_timeout_secs: u64,
    /// Longest a write to a client may stay blocked (a client that stops reading is cut off, and
    /// a stream it stops reading is ended and billed for what was generated).
    pub write_timeout_secs: u64,
    /// Open connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// Requests per minute of one user (a token bucket: bursts up to this many).
    pub requests_per_minute: u32,
    /// Tokens per minute of one user: prompt tokens plus the `max_tokens` asked for, counted at
    /// admission as OpenAI counts them.
    pub tokens_per_minute: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 1 << 20,
            request_timeout_secs: 300,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            write_timeout_secs: 30,
            max_connections: 1024,
            requests_per_minute: 600,
            tokens_per_minute: 1_000_000,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node WebSocket RPC.
    #[serde(default = "default_node")]
    pub node_url: String,
    /// HTTP listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Public URL registered on chain.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Provider key: a secret URI or phrase (`//Bob` on a dev chain).
    #[serde(default)]
    pub provider_key: Option<String>,
    /// Or a file holding it.
    #[serde(default)]
    pub provider_key_file: Option<PathBuf>,
    /// Requests of one user that may be in flight at once (the protocol's `W`).
    #[serde(default = "one")]
    pub window: u32,
    /// Run on the first CUDA GPU (needs the `cuda` feature).
    #[serde(default)]
    pub cuda: bool,
    /// The trace store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The chat model, needed by `chat` services (a worker may serve embeddings only).
    #[serde(default)]
    pub chat: Option<ChatConfig>,
    /// The embedding model, needed by `embedding` services.
    #[serde(default)]
    pub embeddings: Option<EmbeddingsConfig>,
    /// Fine-tuning terms and training, needed by a `fine_tune` service.
    #[serde(default)]
    pub finetune: Option<FineTuneConfig>,
    /// Per-user, per-request and per-connection limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Register or update these services at start-up.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Settlement policy.
    #[serde(default)]
    pub settlement: SettlementConfig,
}

fn default_node() -> String {
    "ws://127.0.0.1:9944".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn one() -> u32 {
    1
}
fn default_parallel() -> usize {
    crate::model::DEFAULT_MAX_BATCH
}
fn default_queue() -> usize {
    64
}
fn default_max_inputs() -> usize {
    512
}
fn default_max_embedding_tokens() -> usize {
    65_536
}
fn default_max_tokens() -> u64 {
    1024
}

impl ChatConfig {
    /// The chat table with its defaults for `model`.
    pub fn new(model: PathBuf) -> Self {
        ChatConfig {
            model,
            weights: WeightFormat::default(),
            parallel: default_parallel(),
            queue: default_queue(),
            max_tokens: default_max_tokens(),
        }
    }
}

impl EmbeddingsConfig {
    /// The embeddings table with its defaults for `model`.
    pub fn new(model: PathBuf) -> Self {
        EmbeddingsConfig {
            model,
            max_inputs: default_max_inputs(),
            max_tokens: default_max_embedding_tokens(),
            parallel: default_parallel(),
            queue: default_queue(),
        }
    }
}

impl Config {
    /// Read a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: shown, source })
    }

    /// Reject settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.provider_key.is_none() && self.provider_key_file.is_none() {
            return bad("set provider_key or provider_key_file");
        }
        if self.window == 0 {
            return bad("window must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.settlement.threshold_share) {
            return bad("settlement.threshold_share must be within 0..=1");
        }
        if self.settlement.tx_timeout_secs == 0 {
            return bad("settlement.tx_timeout_secs must be at least 1");
        }
        if self.settlement.max_batch == 0 {
            return bad("settlement.max_batch must be at least 1");
        }
        if self.chat.is_none() && self.embeddings.is_none() {
            return bad("configure [chat] (a GGUF model) or [embeddings], or both");
        }
        if let Some(c) = &self.chat {
            if c.parallel == 0 || c.max_tokens == 0 {
                return bad("chat.parallel and chat.max_tokens must be at least 1");
            }
        }
        if let Some(e) = &self.embeddings {
            if e.parallel == 0 || e.max_inputs == 0 || e.max_tokens == 0 {
                return bad("embeddings.parallel, max_inputs and max_tokens must be at least 1");
            }
        }
        if self.chat.is_none() && self.services.iter().any(|s| s.kind == ServiceKind::Chat) {
            return bad("a chat service needs [chat] model (a GGUF file)");
        }
        if self.embeddings.is_none()
            && self.services.iter().any(|s| s.kind == ServiceKind::Embedding)
        {
            return bad(
                "an embedding service needs [embeddings] model (a sentence-transformers directory)",
            );
        }
        let tuning: Vec<_> =
            self.services.iter().filter(|s| s.kind == ServiceKind::FineTune).collect();
        if tuning.len() > 1 {
            return bad("at most one fine_tune service");
        }
        if !tuning.is_empty() && (self.chat.is_none() || self.finetune.is_none()) {
            return bad("a fine_tune service needs [chat] (the base model) and [finetune]");
        }
        if let Some(f) = &self.finetune {
            if f.max_dataset_tokens == 0
                || f.max_epochs == 0
                || f.max_rank == 0
                || f.turnaround_blocks == 0
                || f.max_seq_len < 2
                || f.max_examples == 0
                || f.max_files_per_user == 0
                || f.tick_ms == 0
            {
                return bad("every [finetune] bound must be positive (max_seq_len at least 2)");
            }
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.requests_per_minute == 0
            || l.tokens_per_minute == 0
            || l.header_timeout_secs == 0
            || l.body_timeout_secs == 0
            || l.write_timeout_secs == 0
        {
            return bad("every limit but request_timeout_secs must be at least 1");
        }
        let mut ids: Vec<_> = self.services.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.services.len() {
            return bad("service ids must be unique");
        }
        Ok(())
    }
}

/// Amounts as decimal strings or integers (u128 does not fit TOML integers).
mod amount {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(i) => Ok(i.into()),
            Raw::Str(s) => s.replace('_', "").parse().map_err(D::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("worker.example.toml");
        let c = Config::from_file(&path).expect("example config");
        c.validate().expect("valid");
        assert_eq!(c.services[0].input_price, 1_000_000);
        assert_eq!(c.window, 1);
        assert_eq!(c.limits, LimitsConfig::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let err = toml::from_str::<Config>("[chat]\nmodel = \"m\"\nno_such = 1\n").unwrap_err();
        assert!(err.to_string().contains("no_such"), "{err}");
        let c: Config =
            toml::from_str("window = 0\nprovider_key = \"//Bob\"\n[chat]\nmodel = \"m\"\n")
                .expect("parses");
        assert!(c.validate().unwrap_err().to_string().contains("window"));
        let c: Config = toml::from_str(
            "provider_key = \"//Bob\"\n[chat]\nmodel = \"m\"\n[[services]]\nid = 1\n\
             kind = \"embedding\"\ninput_price = 1\noutput_price = 0\n",
        )
        .expect("parses");
        assert!(c.validate().unwrap_err().to_string().contains("[embeddings]"));
        // An embeddings-only worker needs no chat model; a chat service does.
        let c: Config = toml::from_str(
            "provider_key = \"//Bob\"\n[embeddings]\nmodel = \"e\"\n[[services]]\nid = 1\n\
             kind = \"embedding\"\ninput_price = 1\noutput_price = 0\n",
        )
        .expect("parses");
        c.validate().expect("valid without a chat model");
        let c: Config = toml::from_str(
            "provider_key = \"//Bob\"\n[embeddings]\nmodel = \"e\"\n[[services]]\nid = 1\n\
             input_price = 1\noutput_price = 1\n",
        )
        .expect("parses");
        assert!(c.validate().unwrap_err().to_string().contains("chat service needs"));
        let c: Config = toml::from_str("provider_key = \"//Bob\"\n").expect("parses");
        assert!(c.validate().unwrap_err().to_string().contains("[chat]"));
        let c: Config = toml::from_str(
            "provider_key = \"//Bob\"\n[chat]\nmodel = \"m\"\n[limits]\nrequests_per_minute = 0\n",
        )
        .expect("parses");
        assert!(c.validate().unwrap_err().to_string().contains("limit"));
    }
}
