//! The fine-tuning side of the chain (`docs/finetune.md`): the job calls of both parties and
//! reads of jobs and fine-tuning terms.

use crate::chain::{BlockNumber, Chain, ChainError, Scale, TxOutcome, Wait};
use crate::keys::Signer;
use crate::verification::{blake2_128_concat, hex, prefix, ChangeSet};
use codec::{Decode, Encode};
use compute_primitives::{
    AccountId, Delivery, FineTuneTerms, Job, JobId, JobSpec, SealedKey, ServiceId,
};
use polkadot_sdk::sp_io::hashing::twox_64;
use subxt::rpcs::rpc_params;

/// Index keys read per page.
const PAGE: u32 = 256;
/// Most jobs of one provider listed.
const MAX_LISTED: usize = 65_536;

/// A job as stored.
pub type OpenJob = Job<BlockNumber>;

impl Chain {
    /// Set the terms of one of the signer's `FineTune` services.
    pub async fn set_finetune_terms(
        &self,
        signer: &Signer,
        service_id: ServiceId,
        terms: FineTuneTerms,
    ) -> Result<TxOutcome, ChainError> {
        let args = (Scale(service_id), Scale(terms));
        self.submit(signer, "set_finetune_terms", args, Wait::Finalized).await
    }

    /// Create a job with `provider`, reserving its price from the signer's escrow.
    pub async fn create_job(
        &self,
        signer: &Signer,
        provider: &AccountId,
        spec: JobSpec,
    ) -> Result<TxOutcome, ChainError> {
        let args = (Scale(provider.clone()), Scale(spec));
        self.submit(signer, "create_job", args, Wait::Finalized).await
    }

    /// Accept a job (its provider).
    pub async fn accept_job(&self, signer: &Signer, id: JobId) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "accept_job", (Scale(id),), Wait::Finalized).await
    }

    /// Reject a job not yet accepted (its provider).
    pub async fn reject_job(&self, signer: &Signer, id: JobId) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "reject_job", (Scale(id),), Wait::Finalized).await
    }

    /// Commit to a job's encrypted adapter (its provider).
    pub async fn deliver(
        &self,
        signer: &Signer,
        id: JobId,
        delivery: Delivery,
    ) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "deliver", (Scale(id), Scale(delivery)), Wait::Finalized).await
    }

    /// Acknowledge a delivery (its user).
    pub async fn acknowledge(&self, signer: &Signer, id: JobId) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "acknowledge", (Scale(id),), Wait::Finalized).await
    }

    /// Reveal a job's key sealed to the user (its provider); the fee is paid.
    pub async fn reveal_key(
        &self,
        signer: &Signer,
        id: JobId,
        key: SealedKey,
    ) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "reveal_key", (Scale(id), Scale(key)), Wait::Finalized).await
    }

    /// Show that a revealed key does not open, with the job's secret (its user).
    pub async fn contest_key(
        &self,
        signer: &Signer,
        id: JobId,
        secret: [u8; 32],
    ) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "contest_key", (Scale(id), Scale(secret)), Wait::Finalized).await
    }

    /// Cancel a job (its user).
    pub async fn cancel_job(&self, signer: &Signer, id: JobId) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "cancel_job", (Scale(id),), Wait::Finalized).await
    }

    /// End a job whose current deadline has passed (anyone).
    pub async fn expire_job(&self, signer: &Signer, id: JobId) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "expire_job", (Scale(id),), Wait::Finalized).await
    }

    /// A job not yet ended, by id.
    pub async fn job(&self, id: JobId) -> Result<Option<OpenJob>, ChainError> {
        let encoded = id.encode();
        let key = [prefix("Jobs"), twox_64(&encoded).to_vec(), encoded].concat();
        self.decoded(&key).await
    }

    /// Every job of `provider` not yet ended, by id, read through the chain's per-provider
    /// index a page at a time (each page's jobs in one read).
    pub async fn provider_jobs(
        &self,
        provider: &AccountId,
    ) -> Result<Vec<(JobId, OpenJob)>, ChainError> {
        const M: &str = "state_getKeysPaged";
        const Q: &str = "state_queryStorageAt";
        let base = [prefix("ProviderJobIds"), blake2_128_concat(&provider.encode())].concat();
        let bad = |reason: String| ChainError::Decode { method: Q, reason };
        let mut out = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let keys: Vec<String> =
                self.call(M, rpc_params![hex(&base), PAGE, start.clone()]).await?;
            let mut ids = Vec::with_capacity(keys.len());
            for key in &keys {
                let raw =
                    ::hex::decode(key.trim_start_matches("0x")).map_err(|e| bad(e.to_string()))?;
                // ... ++ twox64 (8) ++ id (8)
                let id = raw
                    .len()
                    .checked_sub(8)
                    .and_then(|at| JobId::decode(&mut &raw[at..]).ok())
                    .ok_or_else(|| bad("job index key".into()))?;
                ids.push(id);
            }
            if !ids.is_empty() {
                let job_keys: Vec<String> = ids
                    .iter()
                    .map(|id| {
                        let e = id.encode();
                        hex(&[prefix("Jobs"), twox_64(&e).to_vec(), e].concat())
                    })
                    .collect();
                let sets: Vec<ChangeSet> = self.call(Q, rpc_params![job_keys.clone()]).await?;
                let values: std::collections::HashMap<String, Option<String>> =
                    sets.into_iter().flat_map(|s| s.changes).collect();
                for (id, key) in ids.iter().zip(&job_keys) {
                    let Some(Some(value)) = values.get(key) else { continue };
                    let bytes = ::hex::decode(value.trim_start_matches("0x"))
                        .map_err(|e| bad(e.to_string()))?;
                    out.push((
                        *id,
                        OpenJob::decode(&mut &bytes[..]).map_err(|e| bad(e.to_string()))?,
                    ));
                }
            }
            if keys.len() < PAGE as usize || out.len() >= MAX_LISTED {
                out.sort_by_key(|(id, _)| *id);
                return Ok(out);
            }
            start = keys.last().cloned();
        }
    }

    /// The id the next job will get.
    pub async fn next_job_id(&self) -> Result<JobId, ChainError> {
        Ok(self.decoded(&prefix("NextJobId")).await?.unwrap_or_default())
    }

    /// The terms of a provider's fine-tuning service, if set.
    pub async fn finetune_terms(
        &self,
        provider: &AccountId,
        service_id: ServiceId,
    ) -> Result<Option<FineTuneTerms>, ChainError> {
        let encoded = service_id.encode();
        let key = [
            prefix("FineTuneOffers"),
            blake2_128_concat(&provider.encode()),
            twox_64(&encoded).to_vec(),
            encoded,
        ]
        .concat();
        self.decoded(&key).await
    }
}
