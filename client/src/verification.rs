//! The verifier and challenge side of the chain (`docs/verification.md` §5): calls, reads of
//! the pallet's challenge storage, and the evidence a challenge's extrinsic carried.

use crate::chain::{BlockNumber, Chain, ChainError, Scale, TxOutcome, Wait};
use crate::keys::Signer;
use codec::{Decode, Encode};
use compute_primitives::{
    AccountId, Challenge, ChallengeId, ChallengeRecord, Evidence, SignedReceipt, VerifierInfo, Vote,
};
use polkadot_sdk::sp_io::hashing::{blake2_128, blake2_256, twox_128, twox_64};
use subxt::rpcs::rpc_params;

/// An open challenge as stored.
pub type OpenChallenge = Challenge<BlockNumber>;

/// Storage keys read per page when listing open challenges.
const PAGE: u32 = 256;
/// Most open challenges listed at once: a verifier works through them page by page anyway.
const MAX_LISTED: usize = 4_096;

/// One block's values of the keys asked (`state_queryStorageAt`).
#[derive(serde::Deserialize)]
pub(crate) struct ChangeSet {
    pub(crate) changes: Vec<(String, Option<String>)>,
}

pub(crate) fn prefix(item: &str) -> Vec<u8> {
    [twox_128(b"Compute"), twox_128(item.as_bytes())].concat()
}

pub(crate) fn blake2_128_concat(key: &[u8]) -> Vec<u8> {
    [blake2_128(key).as_slice(), key].concat()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

impl Chain {
    async fn raw_storage(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ChainError> {
        const M: &str = "state_getStorage";
        let value: Option<String> = self.call(M, rpc_params![hex(key)]).await?;
        value
            .map(|v| {
                hex::decode(v.trim_start_matches("0x"))
                    .map_err(|e| ChainError::Decode { method: M, reason: e.to_string() })
            })
            .transpose()
    }

    pub(crate) async fn decoded<T: Decode>(&self, key: &[u8]) -> Result<Option<T>, ChainError> {
        self.raw_storage(key)
            .await?
            .map(|bytes| {
                T::decode(&mut &bytes[..]).map_err(|e| ChainError::Decode {
                    method: "state_getStorage",
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Bond `VerifierBond` and take part in challenges.
    pub async fn join_verifiers(&self, signer: &Signer) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "join_verifiers", (), Wait::Finalized).await
    }

    /// Stop taking new challenges.
    pub async fn leave_verifiers(&self, signer: &Signer) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "leave_verifiers", (), Wait::Finalized).await
    }

    /// Release the bond of a verifier that left and has no challenge assigned.
    pub async fn withdraw_verifier_bond(&self, signer: &Signer) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "withdraw_verifier_bond", (), Wait::Finalized).await
    }

    /// Challenge a paid response with the evidence its receipt commits to.
    pub async fn challenge(
        &self,
        signer: &Signer,
        provider: &AccountId,
        receipt: SignedReceipt,
        evidence: Evidence,
    ) -> Result<TxOutcome, ChainError> {
        let args = (Scale(provider.clone()), Scale(receipt), Scale(evidence));
        self.submit(signer, "challenge", args, Wait::Finalized).await
    }

    /// Vote on a challenge assigned to the signer.
    pub async fn vote(
        &self,
        signer: &Signer,
        id: ChallengeId,
        vote: Vote,
    ) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "vote", (Scale(id), Scale(vote)), Wait::Finalized).await
    }

    /// End a challenge whose voting period passed without a supermajority.
    pub async fn close_challenge(
        &self,
        signer: &Signer,
        id: ChallengeId,
    ) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "close_challenge", (Scale(id),), Wait::Finalized).await
    }

    /// Set the dispute window (during which settlements can be disputed and challenged) as
    /// root, through `Sudo`: for development and test chains, whose sudo key `sudo` holds.
    pub async fn sudo_set_dispute_window(
        &self,
        sudo: &Signer,
        blocks: BlockNumber,
    ) -> Result<TxOutcome, ChainError> {
        use subxt::dynamic::Value;
        let call = Value::unnamed_variant(
            "Compute",
            [Value::named_variant("set_dispute_window", [("blocks", Value::u128(blocks.into()))])],
        );
        self.submit_to("Sudo", sudo, "sudo", (call,), Wait::Finalized).await
    }

    /// A verifier's record, if bonded.
    pub async fn verifier(&self, who: &AccountId) -> Result<Option<VerifierInfo>, ChainError> {
        let key = [prefix("Verifiers"), blake2_128_concat(&who.encode())].concat();
        self.decoded(&key).await
    }

    /// A provider's challenges: open, won, lost, undecided.
    pub async fn challenge_record(
        &self,
        provider: &AccountId,
    ) -> Result<ChallengeRecord, ChainError> {
        let key = [prefix("ProviderChallenges"), blake2_128_concat(&provider.encode())].concat();
        Ok(self.decoded(&key).await?.unwrap_or_default())
    }

    /// One open challenge.
    pub async fn open_challenge(
        &self,
        id: ChallengeId,
    ) -> Result<Option<OpenChallenge>, ChainError> {
        let encoded = id.encode();
        let key = [prefix("Challenges"), twox_64(&encoded).to_vec(), encoded].concat();
        self.decoded(&key).await
    }

    /// Every open challenge (at most [`MAX_LISTED`]), by id.
    pub async fn open_challenges(&self) -> Result<Vec<(ChallengeId, OpenChallenge)>, ChainError> {
        self.id_map("Challenges").await
    }

    /// Every value of the pallet's map `item` keyed `Twox64Concat` by a `u64` id (at most
    /// [`MAX_LISTED`]), by id: the keys a page per call, each page's values in one read.
    pub(crate) async fn id_map<V: Decode>(&self, item: &str) -> Result<Vec<(u64, V)>, ChainError> {
        const M: &str = "state_getKeysPaged";
        let base = prefix(item);
        let mut out = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let keys: Vec<String> =
                self.call(M, rpc_params![hex(&base), PAGE, start.clone()]).await?;
            const Q: &str = "state_queryStorageAt";
            let sets: Vec<ChangeSet> = if keys.is_empty() {
                Vec::new()
            } else {
                self.call(Q, rpc_params![keys.clone()]).await?
            };
            for (key, value) in sets.into_iter().flat_map(|set| set.changes) {
                let bad = |reason: &str| ChainError::Decode { method: Q, reason: reason.into() };
                let raw = hex::decode(key.trim_start_matches("0x")).map_err(|_| bad("key"))?;
                // prefix (32) ++ twox64 (8) ++ id (8)
                let id = raw
                    .get(40..48)
                    .and_then(|b| u64::decode(&mut &b[..]).ok())
                    .ok_or_else(|| bad("id key"))?;
                let Some(value) = value else { continue };
                let bytes =
                    hex::decode(value.trim_start_matches("0x")).map_err(|_| bad("value"))?;
                let v = V::decode(&mut &bytes[..]).map_err(|e| bad(&e.to_string()))?;
                out.push((id, v));
            }
            if keys.len() < PAGE as usize || out.len() >= MAX_LISTED {
                out.sort_by_key(|(id, _)| *id);
                return Ok(out);
            }
            start = keys.last().cloned();
        }
    }

    /// The receipt and evidence challenge `c` was opened with, read from the extrinsics of the
    /// block it was opened in; `None` when no extrinsic there matches its hashes.
    pub async fn challenge_evidence(
        &self,
        c: &OpenChallenge,
    ) -> Result<Option<(SignedReceipt, Evidence)>, ChainError> {
        let fail = |e: String| ChainError::Rpc { method: "chain_getBlock", reason: e };
        let at = self.api.at_block(c.opened_at as u64).await.map_err(|e| fail(e.to_string()))?;
        let extrinsics = at.extrinsics().fetch().await.map_err(|e| fail(e.to_string()))?;
        for ext in extrinsics.iter() {
            let Ok(ext) = ext else { continue };
            if ext.pallet_name() != "Compute" || ext.call_name() != "challenge" {
                continue;
            }
            let Ok((provider, receipt, evidence)) =
                <(AccountId, SignedReceipt, Evidence)>::decode(&mut ext.call_data_field_bytes())
            else {
                continue;
            };
            let r = &receipt.receipt;
            let matches = provider == c.provider
                && r.user == c.user
                && r.nonce == c.nonce
                && blake2_256(&evidence.request) == c.request_hash.0
                && blake2_256(&evidence.response) == c.response_hash.0
                && blake2_256(&evidence.proof) == c.proof_hash.0;
            if matches {
                return Ok(Some((receipt, evidence)));
            }
        }
        Ok(None)
    }
}
