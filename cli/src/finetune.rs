//! `compute finetune`: a user's side of a fine-tuning job (`docs/finetune.md`). Upload the
//! dataset, create the job on chain with a fresh per-job X25519 key, follow it, download the
//! encrypted adapter and check it against the provider's commitment before acknowledging, then
//! open the revealed key and decrypt. Each job's files are kept in
//! `<state dir>/finetune/<provider>/<job>/`: `secret` (the job key, `0600`), `adapter.enc`,
//! `adapter.safetensors`.

use crate::{files, session::Session};
use anyhow::{anyhow, bail, Context};
use codec::{Decode, Encode};
use compute_client::{
    finetune::OpenJob,
    finetune_api::{
        self as api, build_multipart, decrypt_adapter, CreateJobRequest, EventList, FileObject,
        FineTuningJob, Hyperparameters, Part,
    },
    wire, ComputeEvent, ServiceInfo,
};
use compute_primitives::{
    key_hash, public_key, unseal_key, Delivery, JobId, JobSpec, JobState, SealedKey, ServiceKind,
};
use polkadot_sdk::sp_core::H256;
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// What a job asks for besides its dataset.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub epochs: u32,
    pub rank: u32,
    /// Learning rate in millionths.
    pub learning_rate: u32,
    pub seed: u64,
}

/// A user's fine-tuning with one provider.
pub struct Tuner<'a> {
    pub sess: &'a Session,
    pub service: ServiceInfo,
    root: PathBuf,
}

/// How far [`Tuner::advance`] took a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Waiting for the provider (to accept, train, deliver or reveal).
    Waiting(&'static str),
    /// The adapter is decrypted at this path.
    Done(PathBuf),
    /// The job ended on chain without an adapter for us.
    Ended,
}

impl<'a> Tuner<'a> {
    /// The provider's fine-tuning service (`service`, else its first one).
    pub async fn new(sess: &'a Session, service: Option<u32>) -> anyhow::Result<Self> {
        let service = sess.service_of_kind(service, ServiceKind::FineTune).await?;
        let dir = sess.state_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let root = dir.join("finetune").join(sess.provider.to_string());
        Ok(Tuner { sess, service, root })
    }

    /// The directory of job `id`'s files.
    pub fn dir(&self, id: JobId) -> PathBuf {
        self.root.join(id.to_string())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.service.url.trim_end_matches('/'))
    }

    /// A request to the provider's fine-tuning API with our signed auth challenge, bounded by
    /// `timeout`.
    fn request(
        &self,
        method: reqwest::Method,
        url: String,
        timeout: Duration,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        Ok(self
            .sess
            .http
            .request(method, url)
            .header(wire::AUTH_HEADER, self.auth()?)
            .timeout(timeout))
    }

    /// Send a request to the provider.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        req.send()
            .await
            .with_context(|| format!("cannot reach the provider at {}", self.service.url))
    }

    fn auth(&self) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let auth = wire::SignedAuth::new(
            &self.sess.signer,
            self.sess.provider.clone(),
            now,
            &self.sess.genesis,
        );
        Ok(wire::to_hex(&auth))
    }

    async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
    ) -> anyhow::Result<T> {
        let status = resp.status();
        let body = resp.bytes().await.context("reading the provider's answer")?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            bail!("provider refused ({status}): {}", crate::session::untrusted_text(&text));
        }
        serde_json::from_slice(&body).context("the provider's answer is malformed")
    }

    /// Upload a dataset file; the provider answers with its hash and token count.
    pub async fn upload(&self, path: &Path) -> anyhow::Result<(FileObject, Vec<u8>)> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let file = self.upload_bytes(&name, data.clone()).await?;
        Ok((file, data))
    }

    /// Upload a dataset; the provider answers with its hash and token count, and with a
    /// recount model (`--recount-model`) the count is checked.
    pub async fn upload_bytes(&self, filename: &str, data: Vec<u8>) -> anyhow::Result<FileObject> {
        if data.len() > api::MAX_DATASET_BYTES {
            bail!("a dataset is at most {} bytes", api::MAX_DATASET_BYTES);
        }
        let boundary = format!("compute-{}", files::random_hex(12)?);
        let filename: String =
            filename.chars().filter(|c| *c != '"' && !c.is_control()).take(128).collect();
        let hash = polkadot_sdk::sp_io::hashing::blake2_256(&data);
        let body = build_multipart(
            &[
                Part { name: "purpose".into(), filename: None, data: b"fine-tune".to_vec() },
                Part { name: "file".into(), filename: Some(filename), data: data.clone() },
            ],
            &boundary,
        );
        let req = self
            .request(reqwest::Method::POST, self.url("/v1/files"), self.sess.timeout)?
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(body);
        let resp = self.send(req).await?;
        let file: FileObject = self.answer(resp).await?;
        if file.compute.hash != hex::encode(hash) {
            bail!("the provider reports another hash for the dataset than its bytes have");
        }
        if let Some(r) = &self.sess.recount {
            let ours = r.dataset_tokens(&data, file.compute.max_seq_len as usize)?;
            if ours != file.compute.tokens {
                bail!(
                    "the provider counts {} dataset tokens, the model's tokenizer {ours}",
                    file.compute.tokens
                );
            }
        }
        Ok(file)
    }

    /// Create the job on chain for an uploaded dataset of `tokens` tokens and tell the provider;
    /// the job key's secret is kept before the chain sees its public half.
    pub async fn create(
        &self,
        file: &FileObject,
        tokens: u64,
        s: Settings,
    ) -> anyhow::Result<(JobId, FineTuningJob)> {
        let hash = api::parse_file_id(&file.id).ok_or_else(|| anyhow!("malformed file id"))?;
        let secret: [u8; 32] =
            hex::decode(files::random_hex(32)?)?.try_into().map_err(|_| anyhow!("random key"))?;
        let user_key = public_key(&secret);
        let pending = self.root.join(format!("pending-{}", hex::encode(user_key)));
        files::write_private(&pending.join("secret"), &secret)?;
        // The job names the price and delivery promise shown to the user: a change made ahead
        // of the transaction fails it instead of charging more or delivering later.
        let terms = self
            .sess
            .chain
            .finetune_terms(&self.sess.provider, self.service.service_id)
            .await?
            .ok_or_else(|| anyhow!("the provider's fine-tuning service has no terms"))?;
        let spec = JobSpec {
            service_id: self.service.service_id,
            price_version: self.service.price_version,
            max_turnaround: terms.turnaround,
            dataset_hash: H256(hash),
            dataset_tokens: tokens,
            epochs: s.epochs,
            rank: s.rank,
            learning_rate: s.learning_rate,
            seed: s.seed,
            user_key,
        };
        let outcome =
            self.sess.chain.create_job(&self.sess.signer, &self.sess.provider, spec).await?;
        let id = outcome
            .events
            .iter()
            .find_map(|e| match e {
                ComputeEvent::JobCreated { id, .. } => Some(*id),
                _ => None,
            })
            .ok_or_else(|| anyhow!("create_job succeeded without a JobCreated event"))?;
        files::create_private_dir(&self.root)?;
        std::fs::rename(&pending, self.dir(id)).context("keeping the job key")?;
        let request = CreateJobRequest {
            model: self.service.model.clone(),
            training_file: file.id.clone(),
            hyperparameters: Some(Hyperparameters {
                n_epochs: Some(s.epochs.into()),
                ..Hyperparameters::default()
            }),
            seed: Some(s.seed),
            suffix: None,
            compute_job_id: id,
        };
        let url = self.url("/v1/fine_tuning/jobs");
        let req = self.request(reqwest::Method::POST, url, self.sess.timeout)?.json(&request);
        let resp = self.send(req).await?;
        Ok((id, self.answer(resp).await?))
    }

    /// The provider's view of the job.
    pub async fn status(&self, id: JobId) -> anyhow::Result<FineTuningJob> {
        let url = self.url(&format!("/v1/fine_tuning/jobs/{}", api::job_api_id(id)));
        let resp = self.send(self.request(reqwest::Method::GET, url, self.sess.timeout)?).await?;
        self.answer(resp).await
    }

    /// The job's latest events, newest first.
    pub async fn events(&self, id: JobId, limit: usize) -> anyhow::Result<EventList> {
        let path = format!("/v1/fine_tuning/jobs/{}/events?limit={limit}", api::job_api_id(id));
        let req = self.request(reqwest::Method::GET, self.url(&path), self.sess.timeout)?;
        let resp = self.send(req).await?;
        self.answer(resp).await
    }

    /// The job on chain, which must be ours with this provider.
    pub async fn chain_job(&self, id: JobId) -> anyhow::Result<Option<OpenJob>> {
        let job = self.sess.chain.job(id).await?;
        if let Some(j) = &job {
            if j.user != self.sess.signer.account_id() || j.provider != self.sess.provider {
                bail!("job {id} is not yours with {}", self.sess.provider);
            }
        }
        Ok(job)
    }

    /// Download the encrypted adapter and keep it only if it is what the provider committed
    /// to on chain (hash and length).
    pub async fn download(&self, id: JobId) -> anyhow::Result<PathBuf> {
        let Some(job) = self.chain_job(id).await? else {
            // Completed: what was downloaded and checked while the chain kept the job.
            let kept = self.dir(id).join("adapter.enc");
            if kept.exists() && self.dir(id).join("delivery").exists() {
                return Ok(kept);
            }
            bail!("job {id} is not open on chain");
        };
        let delivery = match job.state {
            JobState::Delivered { delivery, .. }
            | JobState::Acknowledged { delivery, .. }
            | JobState::Revealed { delivery, .. } => delivery,
            _ => bail!("job {id} is not delivered yet"),
        };
        let path = self.dir(id).join("adapter.enc");
        if let Ok(kept) = std::fs::read(&path) {
            if polkadot_sdk::sp_io::hashing::blake2_256(&kept) == delivery.adapter_hash.0 {
                return Ok(path);
            }
        }
        let url = self.url(&format!("/v1/fine_tuning/jobs/{}/adapter", api::job_api_id(id)));
        let timeout = self.sess.timeout.max(Duration::from_secs(600));
        let resp = self.send(self.request(reqwest::Method::GET, url, timeout)?).await?;
        if !resp.status().is_success() {
            bail!("provider refused the download ({})", resp.status());
        }
        if delivery.adapter_len > api::MAX_ADAPTER_BYTES {
            bail!(
                "the provider committed to an adapter of {} bytes; do not acknowledge",
                delivery.adapter_len
            );
        }
        if resp.content_length().is_some_and(|n| n != delivery.adapter_len) {
            bail!("the provider sends another length than it committed to");
        }
        let bytes = read_bounded(resp, delivery.adapter_len).await?;
        if polkadot_sdk::sp_io::hashing::blake2_256(&bytes) != delivery.adapter_hash.0 {
            bail!("the adapter the provider sends is not the one it committed to on chain; do not acknowledge");
        }
        files::write_private(&path, &bytes)?;
        // The commitment, for opening the key after the chain's record of the job is gone.
        files::write_private(&self.dir(id).join("delivery"), &delivery.encode())?;
        Ok(path)
    }

    /// Acknowledge the delivery on chain, once the ciphertext is here and checked.
    pub async fn ack(&self, id: JobId) -> anyhow::Result<()> {
        self.download(id).await?;
        self.sess.chain.acknowledge(&self.sess.signer, id).await?;
        Ok(())
    }

    /// Open the revealed key and decrypt the adapter. A key that does not open to the
    /// committed one is an error telling the user to contest it.
    pub async fn open(&self, id: JobId) -> anyhow::Result<PathBuf> {
        // The commitment and the sealed key from the chain while it keeps the job; after the
        // job completes, the commitment kept at download and the sealed key the provider keeps
        // (both checked below: the key must hash to the commitment).
        let (delivery, key) = match self.chain_job(id).await? {
            Some(job) => {
                let JobState::Revealed { delivery, key, .. } = job.state else {
                    bail!("job {id}'s key is not revealed yet");
                };
                (delivery, key)
            }
            None => {
                let kept = std::fs::read(self.dir(id).join("delivery"))
                    .with_context(|| format!("job {id} ended before its adapter was downloaded"))?;
                let delivery = Delivery::decode(&mut &kept[..])?;
                let facts = self.status(id).await?.compute;
                let (e, s) = facts
                    .sealed_key
                    .ok_or_else(|| anyhow!("the provider keeps no revealed key for job {id}"))?;
                let bytes32 = |h: &str| -> anyhow::Result<[u8; 32]> {
                    hex::decode(h)?.try_into().map_err(|_| anyhow!("malformed sealed key"))
                };
                (delivery, SealedKey { ephemeral: bytes32(&e)?, sealed: bytes32(&s)? })
            }
        };
        let secret = self.secret(id)?;
        let opened = unseal_key(id, &key, &secret);
        if key_hash(&opened) != delivery.key_hash {
            bail!(
                "the key the provider revealed does not open to the one it committed to: run \
                 `compute finetune contest {} {id}` before the contest window closes",
                self.sess.provider
            );
        }
        let path = self.dir(id).join("adapter.enc");
        let ciphertext = std::fs::read(&path)?;
        if polkadot_sdk::sp_io::hashing::blake2_256(&ciphertext) != delivery.adapter_hash.0 {
            bail!("the kept ciphertext {} is not the committed one", path.display());
        }
        let adapter = decrypt_adapter(&opened, id, &ciphertext)?;
        let path = self.dir(id).join("adapter.safetensors");
        files::write_private(&path, &adapter)?;
        Ok(path)
    }

    fn secret(&self, id: JobId) -> anyhow::Result<[u8; 32]> {
        let path = self.dir(id).join("secret");
        files::check_private(&path)?;
        std::fs::read(&path)
            .with_context(|| format!("the job key {} is missing", path.display()))?
            .try_into()
            .map_err(|_| anyhow!("{} is not a job key", path.display()))
    }

    /// Prove on chain that the revealed key does not open (reveals this job's secret).
    pub async fn contest(&self, id: JobId) -> anyhow::Result<()> {
        let secret = self.secret(id)?;
        self.sess.chain.contest_key(&self.sess.signer, id, secret).await?;
        Ok(())
    }

    /// End the job on chain whose current deadline has passed (`expire_job`).
    pub async fn expire(&self, id: JobId) -> anyhow::Result<()> {
        self.sess.chain.expire_job(&self.sess.signer, id).await?;
        Ok(())
    }

    /// Cancel the job on chain (free before acceptance; the abandonment share after) and stop
    /// the provider's training.
    pub async fn cancel(&self, id: JobId) -> anyhow::Result<()> {
        self.sess.chain.cancel_job(&self.sess.signer, id).await?;
        let url = self.url(&format!("/v1/fine_tuning/jobs/{}/cancel", api::job_api_id(id)));
        let _ = self.send(self.request(reqwest::Method::POST, url, self.sess.timeout)?).await;
        Ok(())
    }

    /// Ask the provider to serve the paid job's adapter as a chat service; returns the job with
    /// `fine_tuned_model` and `compute.service_id` set.
    pub async fn deploy(&self, id: JobId) -> anyhow::Result<FineTuningJob> {
        let url = self.url(&format!("/v1/fine_tuning/jobs/{}/deploy", api::job_api_id(id)));
        let timeout = self.sess.timeout.max(Duration::from_secs(300));
        let resp = self.send(self.request(reqwest::Method::POST, url, timeout)?).await?;
        self.answer(resp).await
    }

    /// Take the job one step as far as the chain allows: acknowledge a checked delivery, open
    /// a revealed key.
    pub async fn advance(&self, id: JobId) -> anyhow::Result<Progress> {
        if self.dir(id).join("adapter.safetensors").exists() {
            return Ok(Progress::Done(self.dir(id).join("adapter.safetensors")));
        }
        let Some(job) = self.chain_job(id).await? else {
            // Completed while nobody looked: open the key the provider keeps, if this job's
            // adapter was downloaded.
            return Ok(match self.open(id).await {
                Ok(path) => Progress::Done(path),
                Err(_) => Progress::Ended,
            });
        };
        Ok(match job.state {
            JobState::Created { .. } => Progress::Waiting("acceptance"),
            JobState::Accepted { .. } => Progress::Waiting("training and delivery"),
            JobState::Delivered { .. } => {
                self.ack(id).await?;
                Progress::Waiting("the key")
            }
            JobState::Acknowledged { .. } => Progress::Waiting("the key"),
            JobState::Revealed { .. } => Progress::Done(self.open(id).await?),
        })
    }

    /// Advance the job until its adapter is decrypted, it ends, or `timeout` passes; `on_wait`
    /// hears what is awaited whenever it changes.
    pub async fn wait(
        &self,
        id: JobId,
        timeout: Duration,
        mut on_wait: impl FnMut(&str),
    ) -> anyhow::Result<Progress> {
        let until = Instant::now() + timeout;
        let mut last = "";
        loop {
            match self.advance(id).await? {
                Progress::Waiting(what) => {
                    if what != last {
                        on_wait(what);
                        last = what;
                    }
                }
                done => return Ok(done),
            }
            if Instant::now() >= until {
                bail!("job {id} still waits for {last} after {} s", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// The body of `resp`, refused beyond `most` bytes.
async fn read_bounded(mut resp: reqwest::Response, most: u64) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("downloading the adapter")? {
        if out.len() as u64 + chunk.len() as u64 > most {
            bail!("the provider sends more than the {most} bytes it committed to");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
