//! What the worker keeps of each job, in `<data_dir>/finetune/jobs/<id>/`: `record.json` (the
//! stage and figures), `events.jsonl` (progress, appended), `adapter.safetensors` (the trained
//! adapter), `adapter.enc` (it encrypted, what the user downloads) and `key` (its key, `0600`,
//! until the reveal).

use super::files::write_atomic;
use compute_client::finetune_api::{job_api_id, JobEvent};
use compute_primitives::{AccountId, JobId};
use serde::{Deserialize, Serialize};
use std::{io::Write, path::PathBuf};

/// Where a job stands on this worker.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Created on chain; the dataset is not here yet.
    WaitingForFile,
    /// Accepted on chain; waiting for the trainer.
    Accepted,
    Training,
    /// Trained and encrypted; not yet committed on chain.
    Trained,
    /// Committed on chain; waiting for the user's acknowledgement.
    Delivered,
    /// The key is revealed: paid.
    Revealed,
    /// Refused (on chain) for the reason in `error`.
    Rejected,
    /// Ended on chain before delivery (cancelled or expired).
    Cancelled,
    /// Training failed for the reason in `error` (retried while the chain expects delivery).
    Failed,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::WaitingForFile => "waiting_for_file",
            Stage::Accepted => "accepted",
            Stage::Training => "training",
            Stage::Trained => "trained",
            Stage::Delivered => "delivered",
            Stage::Revealed => "revealed",
            Stage::Rejected => "rejected",
            Stage::Cancelled => "cancelled",
            Stage::Failed => "failed",
        }
    }

    /// Whether nothing more happens to the job here (deployment aside).
    pub fn is_final(self) -> bool {
        matches!(self, Stage::Revealed | Stage::Rejected | Stage::Cancelled | Stage::Failed)
    }
}

/// A job as this worker knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub user: AccountId,
    #[serde(with = "hex32")]
    pub dataset_hash: [u8; 32],
    pub created_at: u64,
    pub stage: Stage,
    /// What the user's API request named (`model`, `suffix`), once it came.
    pub model: Option<String>,
    pub suffix: Option<String>,
    pub step: u64,
    pub total_steps: u64,
    pub trained_tokens: Option<u64>,
    pub final_loss: Option<f32>,
    #[serde(with = "hex32_opt")]
    pub adapter_hash: Option<[u8; 32]>,
    pub adapter_len: Option<u64>,
    pub error: Option<String>,
    pub finished_at: Option<u64>,
    /// Events written so far (the next event's number).
    pub events: u64,
    /// The chat service serving the adapter, once deployed.
    pub service_id: Option<u32>,
    /// Training attempts that failed.
    #[serde(default)]
    pub attempts: u32,
    /// The key as revealed on chain (ephemeral key, sealed key): public, and served to the user
    /// after the job's chain record is gone.
    #[serde(default)]
    pub sealed_key: Option<([u8; 32], [u8; 32])>,
}

impl JobRecord {
    /// Whether the job is over for its dataset: paid, rejected, or ended on chain (a failed or
    /// stopped training of a job the chain still expects is retried, with its dataset).
    pub fn ended(&self) -> bool {
        matches!(self.stage, Stage::Revealed | Stage::Rejected)
            || (self.stage == Stage::Cancelled && self.finished_at.is_some())
    }
}

/// The jobs directory.
pub struct JobDir {
    root: PathBuf,
}

impl JobDir {
    pub fn new(root: PathBuf) -> Self {
        JobDir { root }
    }

    pub fn dir(&self, id: JobId) -> PathBuf {
        self.root.join(id.to_string())
    }

    pub fn adapter(&self, id: JobId) -> PathBuf {
        self.dir(id).join("adapter.safetensors")
    }

    pub fn ciphertext(&self, id: JobId) -> PathBuf {
        self.dir(id).join("adapter.enc")
    }

    fn key_path(&self, id: JobId) -> PathBuf {
        self.dir(id).join("key")
    }

    /// Every record kept, by id.
    pub fn load_all(&self) -> Vec<JobRecord> {
        let Ok(dir) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut out: Vec<JobRecord> = dir
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path().join("record.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by_key(|r: &JobRecord| r.id);
        out
    }

    pub fn save(&self, r: &JobRecord) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir(r.id))?;
        let json = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
        write_atomic(&self.dir(r.id).join("record.json"), &json)
    }

    /// Append an event; `r.events` counts it.
    pub fn event(
        &self,
        r: &mut JobRecord,
        level: &str,
        message: String,
        data: Option<serde_json::Value>,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir(r.id))?;
        let event = JobEvent {
            id: format!("{}-event-{}", job_api_id(r.id), r.events),
            object: "fine_tuning.job.event".into(),
            created_at: crate::store::now(),
            level: level.into(),
            message,
            kind: if data.is_some() { "metrics" } else { "message" }.into(),
            data,
        };
        let mut line = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir(r.id).join("events.jsonl"))?
            .write_all(&line)?;
        r.events += 1;
        Ok(())
    }

    /// The job's events, oldest first, at most the last `limit`.
    pub fn events(&self, id: JobId, limit: usize) -> Vec<JobEvent> {
        let Ok(text) = std::fs::read(self.dir(id).join("events.jsonl")) else {
            return Vec::new();
        };
        let all: Vec<JobEvent> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        let skip = all.len().saturating_sub(limit);
        all.into_iter().skip(skip).collect()
    }

    /// Keep the adapter's key, readable by this user only.
    pub fn save_key(&self, id: JobId, key: &[u8; 32]) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(self.dir(id))?;
        let path = self.key_path(id);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key)?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    }

    pub fn key(&self, id: JobId) -> Option<[u8; 32]> {
        std::fs::read(self.key_path(id)).ok()?.try_into().ok()
    }
}

/// 32-byte hashes as hex in the record files.
pub(crate) mod hex32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| D::Error::custom("not 32 hex bytes"))
    }
}

mod hex32_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(h) => super::hex32::serialize(h, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::hex32")] [u8; 32]);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}
