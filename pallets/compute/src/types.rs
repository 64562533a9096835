//! Types the pallet stores and takes, re-exported from `compute-primitives` so that the worker
//! and the CLI encode exactly what the chain decodes.

pub use compute_primitives::{
    job_fee, key_hash, public_key, unseal_key, Balance, Challenge, ChallengeId, ChallengeOutcome,
    ChallengeRecord, Claim, Delivery, Escrow, Evidence, FineTuneTerms, Job, JobEnd, JobId, JobSpec,
    JobState, ModelName, Nonce, ProviderInfo, Receipt, RejectReason, SealedKey, Service, ServiceId,
    ServiceKind, ServiceTerms, SignedReceipt, SignedVoucher, Url, Verifiability, VerifierInfo,
    Vote, Voucher, MAX_VERIFIERS,
};

/// What happened to one accepted settlement claim.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ClaimOutcome {
    /// Paid in full.
    Settled { paid: Balance },
    /// The escrow ran dry: `paid` moved, `owed` is still due.
    Partial { paid: Balance, owed: Balance },
}

impl ClaimOutcome {
    pub(crate) fn paid(&self) -> Balance {
        match *self {
            ClaimOutcome::Settled { paid } | ClaimOutcome::Partial { paid, .. } => paid,
        }
    }
}
