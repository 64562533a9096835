//! Challenges: a user shows the chain a response it paid for, with its request and activation
//! proof, and claims the provider did not compute it with the weights the receipt names; bonded
//! verifiers recompute the proof and vote. The rules are in `docs/verification.md`.

use crate::{AccountId, Balance, Nonce, ServiceId};
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use polkadot_sdk::{
    sp_core::{ConstU32, H256},
    sp_runtime::BoundedVec,
};
use scale_info::TypeInfo;

/// Numbers challenges in the order they were opened.
pub type ChallengeId = u64;

/// Largest part of a challenge's evidence, in bytes: a request body, a response text, or a proof
/// (20 bytes a token, so about 6 500 generated tokens).
pub const MAX_EVIDENCE_LEN: u32 = 128 * 1024;

/// Most verifiers bonded at once, and so most assigned to one challenge.
pub const MAX_VERIFIERS: u32 = 32;

/// One part of the evidence.
pub type EvidenceBytes = BoundedVec<u8, ConstU32<MAX_EVIDENCE_LEN>>;

/// What a challenge shows: the exact request body the voucher's `request_hash` commits to, the
/// response text the receipt's `response_hash` commits to, and the activation proof its
/// `proof_hash` commits to. Carried in the extrinsic, so verifiers read it from the block; only
/// its hashes (already in the receipt) go to state.
#[derive(
    Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug,
)]
pub struct Evidence {
    /// The request body (OpenAI chat JSON).
    pub request: EvidenceBytes,
    /// The response text.
    pub response: EvidenceBytes,
    /// The activation proof.
    pub proof: EvidenceBytes,
}

impl Evidence {
    /// Bytes of evidence in all.
    pub fn len(&self) -> u32 {
        (self.request.len() + self.response.len() + self.proof.len()) as u32
    }

    /// Whether there is no evidence at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A verifier's finding on a challenge.
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
pub enum Vote {
    /// The proof holds for the committed weights and the request: the provider served honestly.
    Honest,
    /// The proof does not hold (or the weights are withheld): the provider cheated.
    Cheated,
}

/// How a challenge ended.
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
pub enum ChallengeOutcome {
    /// A supermajority found the provider cheated: fee refunded, bond slashed.
    Upheld,
    /// A supermajority found the response honest: the challenger's deposit paid the verifiers.
    Rejected,
    /// The voting period ended without a supermajority: the deposit went back to the challenger.
    Undecided,
}

/// An open challenge. Only hashes of the evidence are kept.
#[derive(Encode, Decode, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug)]
pub struct Challenge<BlockNumber> {
    /// The user who paid for the response and challenges it.
    pub user: AccountId,
    /// The provider that signed the receipt.
    pub provider: AccountId,
    /// The receipt's nonce.
    pub nonce: Nonce,
    /// The receipt's service.
    pub service_id: ServiceId,
    /// Weights the receipt says served the response.
    pub model_hash: H256,
    /// The receipt's `request_hash`, `response_hash` and `proof_hash`.
    pub request_hash: H256,
    pub response_hash: H256,
    pub proof_hash: H256,
    /// The receipt's fee: refunded when the challenge is upheld.
    pub fee: Balance,
    /// Held from the user until the challenge ends.
    pub deposit: Balance,
    /// Block the challenge was opened in (its extrinsic carries the evidence).
    pub opened_at: BlockNumber,
    /// Last block in which votes count.
    pub deadline: BlockNumber,
    /// The verifiers assigned (every active verifier but the two parties, at opening) and
    /// their votes so far.
    pub verifiers: BoundedVec<(AccountId, Option<Vote>), ConstU32<MAX_VERIFIERS>>,
}

impl<BlockNumber> Challenge<BlockNumber> {
    /// Votes cast for `vote`.
    pub fn count(&self, vote: Vote) -> u32 {
        self.verifiers.iter().filter(|(_, v)| *v == Some(vote)).count() as u32
    }
}

/// A bonded verifier.
#[derive(Encode, Decode, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug, Default)]
pub struct VerifierInfo {
    /// Amount held as the verifier bond (less what votes against a majority cost).
    pub bond: Balance,
    /// Set by `leave_verifiers`: no new challenges are assigned.
    pub leaving: bool,
    /// Challenges assigned and not yet ended: the bond stays until this is zero.
    pub assigned: u32,
    /// Votes with the deciding supermajority.
    pub with_majority: u32,
    /// Votes against it (each cost part of the bond).
    pub against_majority: u32,
    /// Challenges that ended without this verifier's vote.
    pub missed: u32,
}

/// A provider's challenge record.
#[derive(Encode, Decode, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug, Default)]
pub struct ChallengeRecord {
    /// Challenges against it not yet ended: its bond stays until this is zero.
    pub open: u32,
    /// Challenges it won (found honest).
    pub won: u32,
    /// Challenges it lost (found cheating).
    pub lost: u32,
    /// Challenges that ended undecided.
    pub undecided: u32,
}
