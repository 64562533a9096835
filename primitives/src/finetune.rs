//! Fine-tuning jobs: a user pays a provider to train a LoRA adapter on a dataset, and the chain
//! makes the exchange fair (`docs/finetune.md`).
//!
//! The provider delivers the adapter encrypted under a random key and commits on chain to the
//! hash of the ciphertext and the hash of the key. The user downloads the ciphertext, checks it
//! against the commitment and acknowledges. The provider then reveals the key sealed to a
//! per-job X25519 key of the user, which releases the payment. A sealed key that does not open
//! to the committed key is proven on chain by the user revealing the per-job secret
//! ([`unseal_key`]), which the chain recomputes.

use crate::{AccountId, Balance, ServiceId};
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use polkadot_sdk::{sp_core::H256, sp_io::hashing::blake2_256};
use scale_info::TypeInfo;

/// Numbers jobs in the order they were created.
pub type JobId = u64;

/// Domain tag of the pad a provider seals a job's key with.
pub const SEAL_TAG: &[u8] = b"compute/finetune/seal/v1";

/// What a fine-tuning service accepts, set by its provider with `set_finetune_terms`. The price
/// per trained token is the service's `input_price`; a trained token is one token of the
/// dataset, counted with the base model's tokenizer, trained once (so a job of `n` dataset
/// tokens and `e` epochs trains `n × e` tokens).
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct FineTuneTerms {
    /// Most dataset tokens in one job.
    pub max_dataset_tokens: u64,
    /// Most epochs in one job.
    pub max_epochs: u32,
    /// Highest LoRA rank offered.
    pub max_rank: u32,
    /// Blocks from acceptance within which the provider promises delivery; the job's delivery
    /// deadline.
    pub turnaround: u32,
}

/// What a user asks for: the argument of `create_job`.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
)]
pub struct JobSpec {
    /// The fine-tuning service.
    pub service_id: ServiceId,
    /// The service's `price_version` the user accepts: a price or model changed since (even by
    /// a transaction ahead of this one) fails the creation.
    pub price_version: u32,
    /// Longest delivery promise (the service's `turnaround`) the user accepts, in blocks.
    pub max_turnaround: u32,
    /// blake2-256 of the dataset file (OpenAI chat fine-tuning JSONL) the user uploads.
    pub dataset_hash: H256,
    /// The dataset's tokens with the base model's tokenizer; the provider checks it before
    /// accepting.
    pub dataset_tokens: u64,
    /// Passes over the dataset.
    pub epochs: u32,
    /// LoRA rank.
    pub rank: u32,
    /// Learning rate in millionths.
    pub learning_rate: u32,
    /// Seed of the adapter's initialisation and the example order.
    pub seed: u64,
    /// The user's X25519 public key for this job, to which the adapter's key is sealed.
    pub user_key: [u8; 32],
}

impl JobSpec {
    /// Tokens a job on this spec trains: dataset tokens × epochs.
    pub fn trained_tokens(&self) -> Option<u64> {
        self.dataset_tokens.checked_mul(u64::from(self.epochs))
    }
}

/// A provider's delivery: the argument of `deliver`.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
)]
pub struct Delivery {
    /// blake2-256 of the encrypted adapter the user downloads.
    pub adapter_hash: H256,
    /// Its length in bytes.
    pub adapter_len: u64,
    /// blake2-256 of the 32-byte key that decrypts it.
    pub key_hash: H256,
    /// Tokens trained; at most the spec's dataset tokens × epochs. The fee is this × price.
    pub trained_tokens: u64,
    /// Mean training loss over the last epoch, in thousandths.
    pub final_loss: u32,
}

/// The adapter's key sealed to the user's job key: the argument of `reveal_key`.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
)]
pub struct SealedKey {
    /// The provider's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// The key XOR the pad derived from the shared secret ([`seal_pad`]).
    pub sealed: [u8; 32],
}

/// Where a job is.
#[derive(
    Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug,
)]
pub enum JobState<BlockNumber> {
    /// Waiting for the provider to accept or reject it until `accept_by`.
    Created { accept_by: BlockNumber },
    /// Being trained; due by `deliver_by`.
    Accepted { deliver_by: BlockNumber },
    /// Delivered; the user acknowledges by `ack_by`.
    Delivered { delivery: Delivery, fee: Balance, ack_by: BlockNumber },
    /// Acknowledged; the provider reveals the key by `reveal_by`.
    Acknowledged { delivery: Delivery, fee: Balance, reveal_by: BlockNumber },
    /// The key is revealed; the fee stays in the job (its `reserved`) until `contest_until`,
    /// while the user may contest the key, and is paid to the provider when the job completes.
    Revealed { delivery: Delivery, fee: Balance, key: SealedKey, contest_until: BlockNumber },
}

/// A fine-tuning job.
#[derive(
    Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug,
)]
pub struct Job<BlockNumber> {
    pub user: AccountId,
    pub provider: AccountId,
    pub spec: JobSpec,
    /// Price per trained token, fixed at creation.
    pub price: Balance,
    /// Kept in the escrow account for the job: from creation, `dataset_tokens × epochs ×
    /// price` taken from the user's escrow; from the reveal, the fee alone, paid to the provider
    /// when the job completes.
    pub reserved: Balance,
    /// Delivery promise of the service at creation, in blocks from acceptance.
    pub turnaround: u32,
    pub created_at: BlockNumber,
    pub state: JobState<BlockNumber>,
}

/// How a job ended (or, for `Paid`, paid).
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
)]
pub enum JobEnd {
    /// The provider rejected it: reserve refunded.
    Rejected,
    /// The user cancelled it before acceptance: reserve refunded.
    Cancelled,
    /// The provider neither accepted nor rejected it in time: reserve refunded.
    NotAccepted,
    /// The user cancelled it after acceptance or walked away from a delivery: the provider was
    /// paid the abandonment share, the rest refunded.
    Abandoned,
    /// No delivery by the deadline: reserve refunded, bond penalized.
    NotDelivered,
    /// No key revealed after acknowledgement by the deadline: reserve refunded, bond slashed.
    KeyWithheld,
    /// The revealed key did not open to the committed key: fee refunded, bond slashed.
    KeyContested,
    /// The key was revealed and the contest window closed: the fee is paid to the provider.
    Completed,
}

/// The public X25519 key of a 32-byte secret (clamped as X25519 does).
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

/// The pad that seals job `job`'s key: blake2-256 of the tag, the job id, both public keys and
/// their X25519 shared secret.
pub fn seal_pad(
    job: JobId,
    ephemeral: &[u8; 32],
    user_key: &[u8; 32],
    shared: &[u8; 32],
) -> [u8; 32] {
    let mut input = alloc::vec::Vec::with_capacity(SEAL_TAG.len() + 8 + 96);
    input.extend_from_slice(SEAL_TAG);
    input.extend_from_slice(&job.to_le_bytes());
    input.extend_from_slice(ephemeral);
    input.extend_from_slice(user_key);
    input.extend_from_slice(shared);
    blake2_256(&input)
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    core::array::from_fn(|i| a[i] ^ b[i])
}

/// Seal `key` for job `job` to the user's `user_key` with the provider's `ephemeral_secret`.
pub fn seal_key(
    job: JobId,
    key: &[u8; 32],
    ephemeral_secret: &[u8; 32],
    user_key: &[u8; 32],
) -> SealedKey {
    let ephemeral = public_key(ephemeral_secret);
    let shared = x25519_dalek::x25519(*ephemeral_secret, *user_key);
    SealedKey { ephemeral, sealed: xor(key, &seal_pad(job, &ephemeral, user_key, &shared)) }
}

/// Open a sealed key with the user's job secret. The chain runs this when a user contests a
/// key, so it needs nothing but the secret the user reveals.
pub fn unseal_key(job: JobId, sealed: &SealedKey, user_secret: &[u8; 32]) -> [u8; 32] {
    let user_key = public_key(user_secret);
    let shared = x25519_dalek::x25519(*user_secret, sealed.ephemeral);
    xor(&sealed.sealed, &seal_pad(job, &sealed.ephemeral, &user_key, &shared))
}

/// The commitment to an adapter key.
pub fn key_hash(key: &[u8; 32]) -> H256 {
    H256(blake2_256(key))
}

/// The fee of `trained_tokens` at `price`.
pub fn job_fee(trained_tokens: u64, price: Balance) -> Option<Balance> {
    Balance::from(trained_tokens).checked_mul(price)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_the_users_secret_and_job() {
        let user_secret = [7u8; 32];
        let user_key = public_key(&user_secret);
        let key = [42u8; 32];
        let sealed = seal_key(9, &key, &[3u8; 32], &user_key);
        assert_ne!(sealed.sealed, key);
        assert_eq!(unseal_key(9, &sealed, &user_secret), key);
        assert_ne!(unseal_key(10, &sealed, &user_secret), key);
        assert_ne!(unseal_key(9, &sealed, &[8u8; 32]), key);
        assert_eq!(key_hash(&key), key_hash(&unseal_key(9, &sealed, &user_secret)));
    }

    #[test]
    fn trained_tokens_and_fee_refuse_overflow() {
        let spec = JobSpec {
            service_id: 0,
            price_version: 0,
            max_turnaround: 1,
            dataset_hash: H256::zero(),
            dataset_tokens: u64::MAX,
            epochs: 2,
            rank: 8,
            learning_rate: 1000,
            seed: 0,
            user_key: [0; 32],
        };
        assert_eq!(spec.trained_tokens(), None);
        assert_eq!(job_fee(1000, 3), Some(3000));
        assert_eq!(job_fee(u64::MAX, Balance::MAX), None);
    }
}
