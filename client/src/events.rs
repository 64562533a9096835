//! The compute pallet's events, decoded from an event's raw field bytes with the shared
//! primitive types (the pallet's field order is the contract; a test in the worker's end-to-end
//! suite checks every variant used here against a live chain).

use codec::{Decode, Error as CodecError};
use compute_primitives::{
    AccountId, Balance, ChallengeId, ChallengeOutcome, JobEnd, JobId, Nonce, RejectReason,
    ServiceId, Vote,
};
use polkadot_sdk::sp_core::H256;

/// Block numbers on this chain.
pub type BlockNumber = u32;

/// A compute pallet event the off-chain programs act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComputeEvent {
    /// A service was registered.
    ServiceRegistered { provider: AccountId, service_id: ServiceId, bond_added: Balance },
    /// A service's terms changed.
    ServiceUpdated { provider: AccountId, service_id: ServiceId, price_version: u32 },
    /// A user funded an escrow.
    Deposited { user: AccountId, provider: AccountId, amount: Balance, balance: Balance },
    /// A user asked for part of an escrow back.
    RefundRequested {
        user: AccountId,
        provider: AccountId,
        amount: Balance,
        pending: Balance,
        unlock_at: BlockNumber,
    },
    /// A pending refund was cancelled.
    RefundCancelled { user: AccountId, provider: AccountId, amount: Balance },
    /// A pending refund was withdrawn.
    RefundWithdrawn { user: AccountId, provider: AccountId, amount: Balance },
    /// A claim was paid in full.
    ClaimSettled { provider: AccountId, user: AccountId, nonce: Nonce, paid: Balance },
    /// A claim was paid in part.
    ClaimPartiallySettled {
        provider: AccountId,
        user: AccountId,
        nonce: Nonce,
        paid: Balance,
        owed: Balance,
    },
    /// A claim was refused.
    ClaimRejected { provider: AccountId, user: AccountId, nonce: Nonce, reason: RejectReason },
    /// A batch was processed.
    BatchSettled {
        provider: AccountId,
        trace_root: H256,
        accepted: u32,
        rejected: u32,
        paid: Balance,
    },
    /// A user's escrow record was created (its storage deposit held).
    EscrowOpened { user: AccountId, provider: AccountId, deposit: Balance },
    /// Held payments whose dispute windows closed went to the provider.
    EarningsReleased { provider: AccountId, amount: Balance },
    /// A user won a dispute.
    DisputeWon {
        user: AccountId,
        provider: AccountId,
        nonce: Nonce,
        refunded: Balance,
        unrecovered: Balance,
        rewarded: Balance,
        burned: Balance,
    },
    /// A user challenged a response.
    ChallengeOpened {
        id: ChallengeId,
        user: AccountId,
        provider: AccountId,
        nonce: Nonce,
        model_hash: H256,
        deposit: Balance,
        verifiers: u32,
        deadline: BlockNumber,
    },
    /// A verifier voted.
    Voted { id: ChallengeId, verifier: AccountId, vote: Vote },
    /// A challenge ended.
    ChallengeEnded {
        id: ChallengeId,
        user: AccountId,
        provider: AccountId,
        outcome: ChallengeOutcome,
        refunded: Balance,
        from_bond: Balance,
        slashed: Balance,
        challenger_reward: Balance,
        verifier_reward: Balance,
        burned: Balance,
    },
    /// A user created a fine-tuning job.
    JobCreated {
        id: JobId,
        user: AccountId,
        provider: AccountId,
        service_id: ServiceId,
        reserved: Balance,
        accept_by: BlockNumber,
    },
    /// A provider accepted a job.
    JobAccepted { id: JobId, provider: AccountId, deliver_by: BlockNumber },
    /// A provider delivered a job's encrypted adapter.
    JobDelivered {
        id: JobId,
        adapter_hash: H256,
        key_hash: H256,
        trained_tokens: u64,
        final_loss: u32,
        fee: Balance,
        ack_by: BlockNumber,
    },
    /// A user acknowledged a delivery.
    JobAcknowledged { id: JobId, user: AccountId, reveal_by: BlockNumber },
    /// A provider revealed a job's sealed key; the fee was paid.
    KeyRevealed {
        id: JobId,
        ephemeral: [u8; 32],
        sealed: [u8; 32],
        fee: Balance,
        refunded: Balance,
        contest_until: BlockNumber,
    },
    /// A job ended.
    JobEnded {
        id: JobId,
        user: AccountId,
        provider: AccountId,
        end: JobEnd,
        refunded: Balance,
        paid: Balance,
        penalty: Balance,
        to_user: Balance,
    },
    /// Any other compute event, by name.
    Other(String),
}

impl ComputeEvent {
    /// Decode the fields of the compute event called `name`.
    pub fn decode(name: &str, mut fields: &[u8]) -> Result<Self, CodecError> {
        let f = &mut fields;
        Ok(match name {
            "ServiceRegistered" => ComputeEvent::ServiceRegistered {
                provider: Decode::decode(f)?,
                service_id: Decode::decode(f)?,
                bond_added: Decode::decode(f)?,
            },
            "ServiceUpdated" => ComputeEvent::ServiceUpdated {
                provider: Decode::decode(f)?,
                service_id: Decode::decode(f)?,
                price_version: Decode::decode(f)?,
            },
            "Deposited" => ComputeEvent::Deposited {
                user: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                amount: Decode::decode(f)?,
                balance: Decode::decode(f)?,
            },
            "RefundRequested" => ComputeEvent::RefundRequested {
                user: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                amount: Decode::decode(f)?,
                pending: Decode::decode(f)?,
                unlock_at: Decode::decode(f)?,
            },
            "RefundCancelled" => ComputeEvent::RefundCancelled {
                user: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                amount: Decode::decode(f)?,
            },
            "RefundWithdrawn" => ComputeEvent::RefundWithdrawn {
                user: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                amount: Decode::decode(f)?,
            },
            "ClaimSettled" => ComputeEvent::ClaimSettled {
                provider: Decode::decode(f)?,
                user: Decode::decode(f)?,
                nonce: Decode::decode(f)?,
                paid: Decode::decode(f)?,
            },
            "ClaimPartiallySettled" => ComputeEvent::ClaimPartiallySettled {
                provider: Decode::decode(f)?,
                user: Decode::decode(f)?,
                nonce: Decode::decode(f)?,
                paid: Decode::decode(f)?,
                owed: Decode::decode(f)?,
            },
            "ClaimRejected" => ComputeEvent::ClaimRejected {
                provider: Decode::decode(f)?,
                user: Decode::decode(f)?,
                nonce: Decode::decode(f)?,
                reason: Decode::decode(f)?,
            },
            "BatchSettled" => ComputeEvent::BatchSettled {
                provider: Decode::decode(f)?,
                trace_root: Decode::decode(f)?,
                accepted: Decode::decode(f)?,
                rejected: Decode::decode(f)?,
                paid: Decode::decode(f)?,
            },
            "EscrowOpened" => ComputeEvent::EscrowOpened {
                user: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                deposit: Decode::decode(f)?,
            },
            "EarningsReleased" => ComputeEvent::EarningsReleased {
                provider: Decode::decode(f)?,
                amount: Decode::decode(f)?,
            },
            "DisputeWon" => ComputeEvent::DisputeWon {
                user: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                nonce: Decode::decode(f)?,
                refunded: Decode::decode(f)?,
                unrecovered: Decode::decode(f)?,
                rewarded: Decode::decode(f)?,
                burned: Decode::decode(f)?,
            },
            "ChallengeOpened" => ComputeEvent::ChallengeOpened {
                id: Decode::decode(f)?,
                user: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                nonce: Decode::decode(f)?,
                model_hash: Decode::decode(f)?,
                deposit: Decode::decode(f)?,
                verifiers: Decode::decode(f)?,
                deadline: Decode::decode(f)?,
            },
            "Voted" => ComputeEvent::Voted {
                id: Decode::decode(f)?,
                verifier: Decode::decode(f)?,
                vote: Decode::decode(f)?,
            },
            "ChallengeEnded" => ComputeEvent::ChallengeEnded {
                id: Decode::decode(f)?,
                user: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                outcome: Decode::decode(f)?,
                refunded: Decode::decode(f)?,
                from_bond: Decode::decode(f)?,
                slashed: Decode::decode(f)?,
                challenger_reward: Decode::decode(f)?,
                verifier_reward: Decode::decode(f)?,
                burned: Decode::decode(f)?,
            },
            "JobCreated" => ComputeEvent::JobCreated {
                id: Decode::decode(f)?,
                user: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                service_id: Decode::decode(f)?,
                reserved: Decode::decode(f)?,
                accept_by: Decode::decode(f)?,
            },
            "JobAccepted" => ComputeEvent::JobAccepted {
                id: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                deliver_by: Decode::decode(f)?,
            },
            "JobDelivered" => ComputeEvent::JobDelivered {
                id: Decode::decode(f)?,
                adapter_hash: Decode::decode(f)?,
                key_hash: Decode::decode(f)?,
                trained_tokens: Decode::decode(f)?,
                final_loss: Decode::decode(f)?,
                fee: Decode::decode(f)?,
                ack_by: Decode::decode(f)?,
            },
            "JobAcknowledged" => ComputeEvent::JobAcknowledged {
                id: Decode::decode(f)?,
                user: Decode::decode(f)?,
                reveal_by: Decode::decode(f)?,
            },
            "KeyRevealed" => ComputeEvent::KeyRevealed {
                id: Decode::decode(f)?,
                ephemeral: Decode::decode(f)?,
                sealed: Decode::decode(f)?,
                fee: Decode::decode(f)?,
                refunded: Decode::decode(f)?,
                contest_until: Decode::decode(f)?,
            },
            "JobEnded" => ComputeEvent::JobEnded {
                id: Decode::decode(f)?,
                user: Decode::decode(f)?,
                provider: Decode::decode(f)?,
                end: Decode::decode(f)?,
                refunded: Decode::decode(f)?,
                paid: Decode::decode(f)?,
                penalty: Decode::decode(f)?,
                to_user: Decode::decode(f)?,
            },
            other => ComputeEvent::Other(other.to_string()),
        })
    }

    /// The user an escrow-related event names, if any.
    pub fn user(&self) -> Option<&AccountId> {
        match self {
            ComputeEvent::Deposited { user, .. }
            | ComputeEvent::EscrowOpened { user, .. }
            | ComputeEvent::RefundRequested { user, .. }
            | ComputeEvent::RefundCancelled { user, .. }
            | ComputeEvent::RefundWithdrawn { user, .. }
            | ComputeEvent::ClaimSettled { user, .. }
            | ComputeEvent::ClaimPartiallySettled { user, .. }
            | ComputeEvent::ClaimRejected { user, .. }
            | ComputeEvent::DisputeWon { user, .. }
            | ComputeEvent::ChallengeEnded { user, .. }
            | ComputeEvent::JobCreated { user, .. }
            | ComputeEvent::JobEnded { user, .. } => Some(user),
            _ => None,
        }
    }
}
