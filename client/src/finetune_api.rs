//! The worker's fine-tuning HTTP API (OpenAI's shapes, with the chain's facts under `compute`),
//! the adapter's encryption, and the multipart reader both the worker and the proxy use for
//! `POST /v1/files`.
//!
//! Routes (every one needs a [`crate::wire::SignedAuth`] of the user in
//! [`crate::wire::AUTH_HEADER`]):
//!
//! | Route | What |
//! |---|---|
//! | `POST /v1/files` | upload a dataset (multipart, `purpose=fine-tune`) → [`FileObject`] |
//! | `POST /v1/fine_tuning/jobs` | start the chain job `compute_job_id` on an uploaded file → [`FineTuningJob`] |
//! | `GET /v1/fine_tuning/jobs/{id}` | the job → [`FineTuningJob`] |
//! | `GET /v1/fine_tuning/jobs/{id}/events` | progress and loss → [`EventList`] |
//! | `POST /v1/fine_tuning/jobs/{id}/cancel` | stop training (the chain call `cancel_job` is the user's) |
//! | `GET /v1/fine_tuning/jobs/{id}/adapter` | the encrypted adapter, once delivered |
//! | `POST /v1/fine_tuning/jobs/{id}/deploy` | serve the adapter as a chat service → [`FineTuningJob`] |

use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    ChaCha20Poly1305, Nonce,
};
use compute_primitives::JobId;
use serde::{Deserialize, Serialize};

/// Domain tag bound into the adapter's encryption (with the job id) as associated data.
pub const ADAPTER_AAD_TAG: &[u8] = b"compute/finetune/adapter/v1";

/// Largest dataset file a worker takes, in bytes.
pub const MAX_DATASET_BYTES: usize = 16 << 20;

/// Largest encrypted adapter a client downloads, in bytes (a rank-256 adapter of every
/// projection of a 7B llama is about 640 MiB).
pub const MAX_ADAPTER_BYTES: u64 = 1 << 30;

/// Highest learning rate a job may ask for (workers refuse more).
pub const MAX_LEARNING_RATE: f64 = 0.01;

/// OpenAI's id of an uploaded file: `file-` and the hex blake2-256 of its bytes.
pub fn file_id(hash: &[u8; 32]) -> String {
    format!("file-{}", hex::encode(hash))
}

/// The content hash a file id names.
pub fn parse_file_id(id: &str) -> Option<[u8; 32]> {
    let hex_part = id.strip_prefix("file-")?;
    let bytes = hex::decode(hex_part).ok()?;
    bytes.try_into().ok()
}

/// OpenAI's id of a fine-tuning job: `ftjob-` and the chain's job id.
pub fn job_api_id(id: JobId) -> String {
    format!("ftjob-{id}")
}

/// The chain's job id an API id names (`ftjob-7` or `7`).
pub fn parse_job_api_id(id: &str) -> Option<JobId> {
    id.strip_prefix("ftjob-").unwrap_or(id).parse().ok()
}

/// The model name a deployed adapter is served under.
pub fn fine_tuned_model_name(base: &str, id: JobId) -> String {
    format!("ft:{base}:job-{id}")
}

/// An uploaded file (OpenAI's `file` object).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    pub purpose: String,
    pub status: String,
    /// What the worker counted, for the job the user signs.
    pub compute: FileFacts,
}

/// The dataset's facts a job names on chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileFacts {
    /// blake2-256 of the file, hex: the job's `dataset_hash`.
    pub hash: String,
    /// Examples in the file.
    pub examples: u64,
    /// Tokens of the file with the model's tokenizer: the job's `dataset_tokens`.
    pub tokens: u64,
    /// Tokens kept of each example (longer ones are cut, and counted, at this length).
    pub max_seq_len: u64,
}

/// OpenAI's `hyperparameters` of a job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Hyperparameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_epochs: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate_multiplier: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<serde_json::Value>,
}

/// The body of `POST /v1/fine_tuning/jobs`: OpenAI's, plus the chain job it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateJobRequest {
    pub model: String,
    pub training_file: String,
    #[serde(default)]
    pub hyperparameters: Option<Hyperparameters>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub suffix: Option<String>,
    /// The id of the job created on chain with `create_job` (the proxy and CLI create it).
    pub compute_job_id: JobId,
}

/// A job's status, as OpenAI names them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// Why a job failed (OpenAI's `error`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
}

/// A fine-tuning job (OpenAI's `fine_tuning.job`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FineTuningJob {
    pub id: String,
    pub object: String,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    pub model: String,
    pub fine_tuned_model: Option<String>,
    pub organization_id: String,
    pub status: JobStatus,
    pub hyperparameters: Hyperparameters,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub result_files: Vec<String>,
    pub trained_tokens: Option<u64>,
    pub seed: u64,
    pub error: Option<JobError>,
    /// The chain's side of the job.
    pub compute: JobFacts,
}

/// The chain's facts of a job, as the worker knows them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobFacts {
    /// The chain's job id.
    pub job_id: JobId,
    /// The worker's stage: `waiting_for_file`, `accepted`, `training`, `delivered`,
    /// `revealed`, `rejected`, `cancelled`, `failed`.
    pub stage: String,
    /// Training steps done and in all.
    pub step: u64,
    pub total_steps: u64,
    /// Mean loss of the last epoch, once trained.
    pub final_loss: Option<f32>,
    /// blake2-256 of the encrypted adapter, hex, once delivered.
    pub adapter_hash: Option<String>,
    /// Its length in bytes.
    pub adapter_len: Option<u64>,
    /// The deployed chat service's id, once deployed.
    pub service_id: Option<u32>,
    /// The key as revealed on chain, hex (`ephemeral`, `sealed`): what opens the adapter with
    /// the user's job secret, kept here after the chain's record of the job is gone.
    #[serde(default)]
    pub sealed_key: Option<(String, String)>,
}

/// One event of a job (OpenAI's `fine_tuning.job.event`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobEvent {
    pub id: String,
    pub object: String,
    pub created_at: u64,
    pub level: String,
    pub message: String,
    /// `message` or `metrics`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For metrics: `step`, `total_steps`, `train_loss`, `tokens`.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// A page of events, newest first as OpenAI lists them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventList {
    pub object: String,
    pub data: Vec<JobEvent>,
    pub has_more: bool,
}

/// Why an adapter could not be decrypted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdapterError {
    /// The key does not open this ciphertext for this job (wrong key, job or bytes).
    #[error("the adapter does not decrypt with this key for job {0}")]
    Decrypt(JobId),
}

fn aad(job: JobId) -> Vec<u8> {
    [ADAPTER_AAD_TAG, &job.to_le_bytes()].concat()
}

/// Encrypt job `job`'s adapter under `key` (ChaCha20-Poly1305; each key encrypts one adapter,
/// so the nonce is fixed at zero).
pub fn encrypt_adapter(key: &[u8; 32], job: JobId, adapter: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(key.into());
    let aad = aad(job);
    cipher
        .encrypt(&Nonce::default(), Payload { msg: adapter, aad: &aad })
        .expect("ChaCha20-Poly1305 encrypts any length that fits in memory")
}

/// Decrypt job `job`'s adapter with `key`.
pub fn decrypt_adapter(
    key: &[u8; 32],
    job: JobId,
    ciphertext: &[u8],
) -> Result<Vec<u8>, AdapterError> {
    let cipher = ChaCha20Poly1305::new(key.into());
    let aad = aad(job);
    cipher
        .decrypt(&Nonce::default(), Payload { msg: ciphertext, aad: &aad })
        .map_err(|_| AdapterError::Decrypt(job))
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The form field's name.
    pub name: String,
    /// The file name, for file fields.
    pub filename: Option<String>,
    pub data: Vec<u8>,
}

/// Why a multipart body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultipartError {
    #[error("content type is not multipart/form-data with a boundary")]
    NotMultipart,
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
    #[error("more than {0} parts")]
    TooManyParts(usize),
}

/// Most parts read from one body (OpenAI's upload has two: `purpose` and `file`).
const MAX_PARTS: usize = 8;

/// The boundary of a `multipart/form-data` content type.
pub fn multipart_boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut fields = content_type.split(';').map(str::trim);
    if !fields.next().is_some_and(|t| t.eq_ignore_ascii_case("multipart/form-data")) {
        return Err(MultipartError::NotMultipart);
    }
    fields
        .find_map(|f| f.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or(MultipartError::NotMultipart)
}

/// Linear-time substring search, so a hostile body cannot make parsing quadratic.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// A quoted parameter of a `Content-Disposition` header (`name="file"`).
fn disposition_param(header: &str, key: &str) -> Option<String> {
    header.split(';').map(str::trim).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Split a `multipart/form-data` body (already bounded in size by the caller) into its parts.
pub fn parse_multipart(body: &[u8], boundary: &str) -> Result<Vec<Part>, MultipartError> {
    let delimiter = format!("--{boundary}").into_bytes();
    let start = find(body, &delimiter).ok_or(MultipartError::Malformed("no first boundary"))?;
    let mut rest = &body[start + delimiter.len()..];
    let next_delimiter = [b"\r\n".as_slice(), &delimiter].concat();
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest.strip_prefix(b"\r\n").ok_or(MultipartError::Malformed("boundary line"))?;
        let head_end =
            find(rest, b"\r\n\r\n").ok_or(MultipartError::Malformed("part without headers"))?;
        let head = std::str::from_utf8(&rest[..head_end])
            .map_err(|_| MultipartError::Malformed("headers not UTF-8"))?;
        rest = &rest[head_end + 4..];
        let end =
            find(rest, &next_delimiter).ok_or(MultipartError::Malformed("unterminated part"))?;
        let data = rest[..end].to_vec();
        rest = &rest[end + next_delimiter.len()..];
        let disposition = head
            .split("\r\n")
            .find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim().eq_ignore_ascii_case("content-disposition").then_some(v)
            })
            .ok_or(MultipartError::Malformed("part without Content-Disposition"))?;
        let name = disposition_param(disposition, "name")
            .ok_or(MultipartError::Malformed("part without a name"))?;
        let filename = disposition_param(disposition, "filename");
        if parts.len() == MAX_PARTS {
            return Err(MultipartError::TooManyParts(MAX_PARTS));
        }
        parts.push(Part { name, filename, data });
    }
}

/// A `multipart/form-data` body of `parts` with `boundary` (for clients that upload).
pub fn build_multipart(parts: &[Part], boundary: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let file = p.filename.as_ref().map(|f| format!("; filename=\"{f}\"")).unwrap_or_default();
        out.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{}\"{file}\r\n\r\n", p.name).as_bytes(),
        );
        out.extend_from_slice(&p.data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapter_decrypts_only_with_its_key_and_job() {
        let key = [3u8; 32];
        let sealed = encrypt_adapter(&key, 4, b"adapter bytes");
        assert_ne!(&sealed[..13], b"adapter bytes");
        assert_eq!(decrypt_adapter(&key, 4, &sealed).unwrap(), b"adapter bytes");
        assert_eq!(decrypt_adapter(&key, 5, &sealed), Err(AdapterError::Decrypt(5)));
        assert_eq!(decrypt_adapter(&[4u8; 32], 4, &sealed), Err(AdapterError::Decrypt(4)));
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(decrypt_adapter(&key, 4, &flipped).is_err());
    }

    #[test]
    fn ids_round_trip() {
        let hash = [0xab; 32];
        assert_eq!(parse_file_id(&file_id(&hash)), Some(hash));
        assert_eq!(parse_file_id("file-zz"), None);
        assert_eq!(parse_job_api_id(&job_api_id(12)), Some(12));
        assert_eq!(parse_job_api_id("12"), Some(12));
        assert_eq!(parse_job_api_id("ftjob-x"), None);
    }

    #[test]
    fn multipart_round_trips_and_refuses_malformed_bodies() {
        let parts = vec![
            Part { name: "purpose".into(), filename: None, data: b"fine-tune".to_vec() },
            Part {
                name: "file".into(),
                filename: Some("data.jsonl".into()),
                data: b"{\"a\":1}\r\n--not-the-boundary\n".to_vec(),
            },
        ];
        let body = build_multipart(&parts, "XyZ");
        let boundary = multipart_boundary("multipart/form-data; boundary=XyZ").unwrap();
        assert_eq!(parse_multipart(&body, &boundary).unwrap(), parts);
        assert_eq!(multipart_boundary("application/json"), Err(MultipartError::NotMultipart));
        assert!(parse_multipart(&body[..body.len() - 12], "XyZ").is_err());
        assert!(parse_multipart(b"--XyZ\r\nno headers end", "XyZ").is_err());
        let many: Vec<Part> =
            (0..9).map(|i| Part { name: format!("p{i}"), filename: None, data: vec![] }).collect();
        assert_eq!(
            parse_multipart(&build_multipart(&many, "b"), "b"),
            Err(MultipartError::TooManyParts(MAX_PARTS))
        );
    }
}
