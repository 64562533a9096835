//! # Compute marketplace pallet
//!
//! Providers bond and register AI services; users keep funds in escrow per provider (in this
//! pallet's escrow account, see [`Pallet::escrow_account`]); providers settle batches of
//! user-signed cumulative vouchers; users get unspent funds back after a lock
//! window. What settlement pays stays held in the escrow account for the dispute window, so a
//! user who proves an over-claim with a provider-signed receipt gets it back from there, and the
//! provider's bond pays a penalty on top. The rules are specified in `docs/protocol.md`; this
//! file declares the pallet and the call logic lives in [`dispatchable_impls`].

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub use pallet::*;

mod challenge_impls;
mod dispatchable_impls;
mod finetune_impls;
pub mod migrations;
pub mod runtime_api;
pub mod types;
pub mod weights;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

pub use types::*;
pub use weights::WeightInfo;

// FRAME's pallet macros derive `Clone` for `Event` and `Call` field by field, which newer clippy
// reports as `clone_on_copy` on our field spans.
#[allow(clippy::clone_on_copy)]
#[polkadot_sdk::frame_support::pallet]
pub mod pallet {
    use super::*;
    use polkadot_sdk::{
        frame_support::{
            pallet_prelude::*,
            traits::fungible::{Inspect, InspectHold, Mutate, MutateHold},
            PalletId,
        },
        frame_system::pallet_prelude::*,
        sp_core::H256,
        sp_runtime::{traits::Zero, AccountId32, FixedU128, Perbill},
    };

    /// The in-code storage version.
    pub const STORAGE_VERSION: StorageVersion = StorageVersion::new(3);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config:
        polkadot_sdk::frame_system::Config<
        AccountId = AccountId32,
        Hash = H256,
        RuntimeEvent: From<Event<Self>>,
    >
    {
        /// The currency of escrows (kept in the escrow account) and bonds (held).
        type Currency: Inspect<Self::AccountId, Balance = Balance>
            + Mutate<Self::AccountId>
            + InspectHold<Self::AccountId, Reason = Self::RuntimeHoldReason>
            + MutateHold<Self::AccountId>;

        /// The overarching hold reason.
        type RuntimeHoldReason: From<HoldReason>;

        /// Derives the keyless account that keeps every escrow's funds. Only this pallet's
        /// calls move funds out of it; genesis endows it with the existential deposit so that
        /// it never dies (see `GenesisConfig`).
        #[pallet::constant]
        type PalletId: Get<PalletId>;

        /// Bond held from a provider when it registers its first service.
        #[pallet::constant]
        type ProviderBond: Get<Balance>;

        /// Least bond with which a provider can settle and accept new escrows.
        #[pallet::constant]
        type MinBond: Get<Balance>;

        /// Smallest deposit into an escrow.
        #[pallet::constant]
        type MinDeposit: Get<Balance>;

        /// Most claims in one `settle` call.
        #[pallet::constant]
        type MaxBatch: Get<u32>;

        /// Most services one provider may register.
        #[pallet::constant]
        type MaxServicesPerProvider: Get<u32>;

        /// Refund lock at genesis, in blocks.
        #[pallet::constant]
        type DefaultRefundLock: Get<BlockNumberFor<Self>>;

        /// Bounds within which root may set the refund lock.
        #[pallet::constant]
        type MinRefundLock: Get<BlockNumberFor<Self>>;
        #[pallet::constant]
        type MaxRefundLock: Get<BlockNumberFor<Self>>;

        /// Dispute window at genesis, in blocks.
        #[pallet::constant]
        type DefaultDisputeWindow: Get<BlockNumberFor<Self>>;

        /// Bounds within which root may set the dispute window.
        #[pallet::constant]
        type MinDisputeWindow: Get<BlockNumberFor<Self>>;
        #[pallet::constant]
        type MaxDisputeWindow: Get<BlockNumberFor<Self>>;

        /// Penalty per unit of over-claim a dispute recovers, slashed from the bond (at most
        /// the whole bond) on top of the recovered amount.
        #[pallet::constant]
        type DisputePenalty: Get<FixedU128>;

        /// Share of the penalty paid to the user who won the dispute; the rest is burned. Below
        /// one whole, so that a provider disputing itself through another account always loses
        /// more than it moves.
        #[pallet::constant]
        type DisputeReward: Get<Perbill>;

        /// Held from a user when their escrow record with a provider is created. The record
        /// is never removed (it keeps the highest settled nonce, which stops every voucher the
        /// user ever signed for that provider from being replayed), so the deposit stays held.
        #[pallet::constant]
        type EscrowDeposit: Get<Balance>;

        /// Bond held from a verifier while it is one.
        #[pallet::constant]
        type VerifierBond: Get<Balance>;

        /// Least number of verifiers, other than the two parties, a challenge needs.
        #[pallet::constant]
        type MinVerifiers: Get<u32>;

        /// Held from a challenger until the challenge ends; paid to the verifiers when the
        /// challenge is rejected.
        #[pallet::constant]
        type ChallengeDeposit: Get<Balance>;

        /// Blocks after a challenge opens during which its verifiers vote.
        #[pallet::constant]
        type VotingPeriod: Get<BlockNumberFor<Self>>;

        /// Share of a challenge's verifiers (rounded up) whose equal votes decide it.
        #[pallet::constant]
        type Supermajority: Get<Perbill>;

        /// Slash of a provider found cheating, per unit of the challenged fee (on top of the
        /// fee's refund). Cheating on a fee `f` audited with probability `α` is unprofitable
        /// when this is at least `1/α − 1` (see `docs/verification.md`).
        #[pallet::constant]
        type ChallengeSlash: Get<FixedU128>;

        /// Least slash of a provider found cheating, whatever the fee.
        #[pallet::constant]
        type MinChallengeSlash: Get<Balance>;

        /// Share of a slash paid to the challenger.
        #[pallet::constant]
        type ChallengerReward: Get<Perbill>;

        /// Share of a slash split among the verifiers that voted with the deciding majority.
        #[pallet::constant]
        type VerifierReward: Get<Perbill>;

        /// Share of `VerifierBond` a verifier loses (burned) for a vote against the deciding
        /// majority.
        #[pallet::constant]
        type VerifierPenalty: Get<Perbill>;

        /// Blocks a provider has to accept or reject a new fine-tuning job.
        #[pallet::constant]
        type AcceptWindow: Get<BlockNumberFor<Self>>;

        /// Blocks a user has to acknowledge a delivered adapter.
        #[pallet::constant]
        type AckWindow: Get<BlockNumberFor<Self>>;

        /// Blocks a provider has to reveal the key of an acknowledged adapter.
        #[pallet::constant]
        type RevealWindow: Get<BlockNumberFor<Self>>;

        /// Most fine-tuning jobs one user has open at once.
        #[pallet::constant]
        type MaxJobsPerUser: Get<u32>;

        /// Share of a job's reserve slashed from the bond of a provider that accepted the job
        /// and did not deliver it in time.
        #[pallet::constant]
        type LateDeliveryPenalty: Get<Perbill>;

        /// Share of a job's fee a provider is paid when the user walks away: cancels after
        /// acceptance or does not acknowledge a delivery in time.
        #[pallet::constant]
        type AbandonShare: Get<Perbill>;

        /// Slash per unit of a job's fee (at least `MinChallengeSlash`) of a provider that
        /// withholds the key of an acknowledged adapter or reveals one that does not open.
        #[pallet::constant]
        type KeySlash: Get<FixedU128>;

        /// Longest delivery promise (`FineTuneTerms::turnaround`) a service may make, in blocks.
        #[pallet::constant]
        type MaxTurnaround: Get<u32>;

        /// Weights of this pallet's calls.
        type WeightInfo: WeightInfo;
    }

    /// Why this pallet holds funds.
    #[pallet::composite_enum]
    pub enum HoldReason {
        /// A provider's bond.
        ProviderBond,
        /// A user's storage deposit for an escrow record.
        EscrowRecord,
        /// A verifier's bond.
        VerifierBond,
        /// A challenger's deposit, until the challenge ends.
        ChallengeDeposit,
    }

    /// Registered services, keyed by (provider, service id).
    #[pallet::storage]
    pub type Services<T: Config> =
        StorageDoubleMap<_, Blake2_128Concat, T::AccountId, Twox64Concat, ServiceId, Service>;

    /// Provider bonds and statistics. A record stays after the bond is withdrawn.
    #[pallet::storage]
    pub type Providers<T: Config> =
        StorageMap<_, Blake2_128Concat, T::AccountId, ProviderInfo<BlockNumberFor<T>>>;

    /// Escrows, keyed by (user, provider). An emptied escrow keeps its record so that no
    /// voucher can be replayed; the user's `EscrowDeposit` pays for it.
    #[pallet::storage]
    pub type Escrows<T: Config> = StorageDoubleMap<
        _,
        Blake2_128Concat,
        T::AccountId,
        Blake2_128Concat,
        T::AccountId,
        Escrow<BlockNumberFor<T>>,
    >;

    /// Blocks between a refund request and its withdrawal.
    #[pallet::storage]
    pub type RefundLock<T: Config> =
        StorageValue<_, BlockNumberFor<T>, ValueQuery, T::DefaultRefundLock>;

    /// Blocks after a settlement during which it can be disputed.
    #[pallet::storage]
    pub type DisputeWindow<T: Config> =
        StorageValue<_, BlockNumberFor<T>, ValueQuery, T::DefaultDisputeWindow>;

    /// Bonded verifiers, at most `MAX_VERIFIERS`. A record stays until its bond is withdrawn.
    #[pallet::storage]
    pub type Verifiers<T: Config> =
        CountedStorageMap<_, Blake2_128Concat, T::AccountId, VerifierInfo>;

    /// Id of the next challenge.
    #[pallet::storage]
    pub type NextChallengeId<T: Config> = StorageValue<_, ChallengeId, ValueQuery>;

    /// Open challenges. A challenge is removed when it ends (its outcome is in the event).
    #[pallet::storage]
    pub type Challenges<T: Config> =
        StorageMap<_, Twox64Concat, ChallengeId, Challenge<BlockNumberFor<T>>>;

    /// Every receipt ever challenged, keyed by (provider, user, nonce): a voucher's fee is
    /// challenged at most once.
    #[pallet::storage]
    pub type ChallengedReceipts<T: Config> =
        StorageMap<_, Blake2_128Concat, (T::AccountId, T::AccountId, Nonce), ChallengeId>;

    /// Each provider's challenges: open, won, lost, undecided.
    #[pallet::storage]
    pub type ProviderChallenges<T: Config> =
        StorageMap<_, Blake2_128Concat, T::AccountId, ChallengeRecord, ValueQuery>;

    /// Fine-tuning terms of providers' `FineTune` services.
    #[pallet::storage]
    pub type FineTuneOffers<T: Config> =
        StorageDoubleMap<_, Blake2_128Concat, T::AccountId, Twox64Concat, ServiceId, FineTuneTerms>;

    /// Id of the next fine-tuning job.
    #[pallet::storage]
    pub type NextJobId<T: Config> = StorageValue<_, JobId, ValueQuery>;

    /// Fine-tuning jobs not yet ended (how each ended is in its `JobEnded` event).
    #[pallet::storage]
    pub type Jobs<T: Config> = StorageMap<_, Twox64Concat, JobId, Job<BlockNumberFor<T>>>;

    /// Jobs each user has open, at most `MaxJobsPerUser`.
    #[pallet::storage]
    pub type UserJobs<T: Config> = StorageMap<_, Blake2_128Concat, T::AccountId, u32, ValueQuery>;

    /// Each provider's jobs not yet ended, whatever their state: what a provider's worker reads
    /// to find its jobs.
    #[pallet::storage]
    pub type ProviderJobIds<T: Config> =
        StorageDoubleMap<_, Blake2_128Concat, T::AccountId, Twox64Concat, JobId, ()>;

    /// Accepted jobs each provider has not yet ended: its fine-tuning services and its bond
    /// stay while there are any.
    #[pallet::storage]
    pub type ProviderJobs<T: Config> =
        StorageMap<_, Blake2_128Concat, T::AccountId, u32, ValueQuery>;

    #[pallet::genesis_config]
    #[derive(polkadot_sdk::frame_support::DefaultNoBound)]
    pub struct GenesisConfig<T: Config> {
        /// Refund lock in blocks; `None` keeps `DefaultRefundLock`.
        pub refund_lock: Option<BlockNumberFor<T>>,
        /// Dispute window in blocks; `None` keeps `DefaultDisputeWindow`.
        pub dispute_window: Option<BlockNumberFor<T>>,
    }

    #[pallet::genesis_build]
    impl<T: Config> BuildGenesisConfig for GenesisConfig<T> {
        fn build(&self) {
            // The escrow account starts with the existential deposit and never goes below it
            // (every transfer out of it preserves it), so it can never be reaped with escrowed
            // funds in it.
            let escrow = Pallet::<T>::escrow_account();
            let missing =
                T::Currency::minimum_balance().saturating_sub(T::Currency::balance(&escrow));
            if missing > 0 {
                T::Currency::mint_into(&escrow, missing)
                    .expect("genesis can endow the escrow account");
            }
            if let Some(lock) = self.refund_lock {
                assert!(
                    lock >= T::MinRefundLock::get() && lock <= T::MaxRefundLock::get(),
                    "genesis refund_lock outside [MinRefundLock, MaxRefundLock]"
                );
                RefundLock::<T>::put(lock);
            }
            if let Some(window) = self.dispute_window {
                assert!(
                    window >= T::MinDisputeWindow::get() && window <= T::MaxDisputeWindow::get(),
                    "genesis dispute_window outside [MinDisputeWindow, MaxDisputeWindow]"
                );
                DisputeWindow::<T>::put(window);
            }
        }
    }

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// A provider registered a service.
        ServiceRegistered {
            /// The provider.
            provider: T::AccountId,
            /// The new service's id.
            service_id: ServiceId,
            /// Amount newly held to bring the bond to `ProviderBond`.
            bond_added: Balance,
        },
        /// A provider changed a service's terms.
        ServiceUpdated {
            /// The provider.
            provider: T::AccountId,
            /// The service changed.
            service_id: ServiceId,
            /// The new price version vouchers must name.
            price_version: u32,
        },
        /// A provider removed a service.
        ServiceRemoved {
            /// The provider.
            provider: T::AccountId,
            /// The service removed.
            service_id: ServiceId,
            /// Whether this was the last service, which starts unbonding.
            unbonding: bool,
        },
        /// An unbonded provider got its bond back.
        BondWithdrawn {
            /// The provider.
            provider: T::AccountId,
            /// Amount released.
            amount: Balance,
        },
        /// A user's escrow record with a provider was created.
        EscrowOpened {
            /// The user.
            user: T::AccountId,
            /// The provider the escrow is with.
            provider: T::AccountId,
            /// Storage deposit held from the user for the record.
            deposit: Balance,
        },
        /// A user funded an escrow.
        Deposited {
            /// The user.
            user: T::AccountId,
            /// The provider the escrow is with.
            provider: T::AccountId,
            /// Amount added.
            amount: Balance,
            /// Escrow balance afterwards.
            balance: Balance,
        },
        /// A user asked for part of an escrow back.
        RefundRequested {
            /// The user.
            user: T::AccountId,
            /// The provider the escrow is with.
            provider: T::AccountId,
            /// Amount added to the pending refund.
            amount: Balance,
            /// Whole pending refund afterwards.
            pending: Balance,
            /// Block from which it can be withdrawn.
            unlock_at: BlockNumberFor<T>,
        },
        /// A user cancelled a pending refund.
        RefundCancelled {
            /// The user.
            user: T::AccountId,
            /// The provider the escrow is with.
            provider: T::AccountId,
            /// Amount that became spendable again.
            amount: Balance,
        },
        /// A user withdrew a pending refund to their free balance.
        RefundWithdrawn {
            /// The user.
            user: T::AccountId,
            /// The provider the escrow was with.
            provider: T::AccountId,
            /// Amount released.
            amount: Balance,
        },
        /// A claim was paid in full.
        ClaimSettled {
            /// The provider paid.
            provider: T::AccountId,
            /// The user paying.
            user: T::AccountId,
            /// The voucher's nonce.
            nonce: Nonce,
            /// Amount moved from the escrow's balance to its held payments.
            paid: Balance,
        },
        /// A claim was paid as far as the escrow allowed.
        ClaimPartiallySettled {
            /// The provider paid.
            provider: T::AccountId,
            /// The user paying.
            user: T::AccountId,
            /// The voucher's nonce.
            nonce: Nonce,
            /// Amount moved from the escrow's balance to its held payments.
            paid: Balance,
            /// Amount still owed; claimable again with the same voucher.
            owed: Balance,
        },
        /// A claim was refused; nothing changed for it.
        ClaimRejected {
            /// The provider that submitted it.
            provider: T::AccountId,
            /// The user the voucher names.
            user: T::AccountId,
            /// The voucher's nonce.
            nonce: Nonce,
            /// Why.
            reason: RejectReason,
        },
        /// A settlement batch was processed.
        BatchSettled {
            /// The provider that submitted it.
            provider: T::AccountId,
            /// Merkle root of the receipts the batch covers.
            trace_root: H256,
            /// Claims accepted (in full or in part).
            accepted: u32,
            /// Claims rejected.
            rejected: u32,
            /// Sum paid by the claims (held until their dispute windows close).
            paid: Balance,
        },
        /// Held payments whose dispute window closed were moved to the provider.
        EarningsReleased {
            /// The provider paid.
            provider: T::AccountId,
            /// Amount moved from the escrow account to the provider's free balance.
            amount: Balance,
        },
        /// A user proved an over-claim with a provider-signed receipt.
        DisputeWon {
            /// The user.
            user: T::AccountId,
            /// The provider at fault.
            provider: T::AccountId,
            /// Nonce of the receipt shown.
            nonce: Nonce,
            /// Over-claim taken back from the held payments onto the user's escrow.
            refunded: Balance,
            /// Over-claim proven but no longer held (paid out before the dispute): it stays
            /// counted in `settled_total`, so later claims of this escrow pay that much less.
            unrecovered: Balance,
            /// Part of the penalty slashed from the bond to the user's free balance.
            rewarded: Balance,
            /// Part of the penalty slashed from the bond and burned.
            burned: Balance,
        },
        /// An account bonded as a verifier.
        VerifierJoined {
            /// The verifier.
            verifier: T::AccountId,
            /// Amount held.
            bond: Balance,
        },
        /// A verifier stopped taking new challenges.
        VerifierLeft {
            /// The verifier.
            verifier: T::AccountId,
        },
        /// An inactive verifier (left, or its bond cut below `VerifierBond`) with nothing
        /// assigned was removed to make room for a new one; its bond was released.
        VerifierRemoved {
            /// The verifier removed.
            verifier: T::AccountId,
            /// Amount released.
            amount: Balance,
        },
        /// A verifier that left got its bond back.
        VerifierBondWithdrawn {
            /// The verifier.
            verifier: T::AccountId,
            /// Amount released.
            amount: Balance,
        },
        /// A user challenged a response; the evidence is in this block's extrinsic.
        ChallengeOpened {
            /// The challenge.
            id: ChallengeId,
            /// The user.
            user: T::AccountId,
            /// The provider challenged.
            provider: T::AccountId,
            /// Nonce of the receipt challenged.
            nonce: Nonce,
            /// Weights the receipt names.
            model_hash: H256,
            /// Held from the user until the challenge ends.
            deposit: Balance,
            /// Verifiers assigned.
            verifiers: u32,
            /// Last block in which votes count.
            deadline: BlockNumberFor<T>,
        },
        /// A verifier voted on a challenge.
        Voted {
            /// The challenge.
            id: ChallengeId,
            /// The verifier.
            verifier: T::AccountId,
            /// Its finding.
            vote: Vote,
        },
        /// A challenge ended.
        ChallengeEnded {
            /// The challenge.
            id: ChallengeId,
            /// The user who opened it.
            user: T::AccountId,
            /// The provider challenged.
            provider: T::AccountId,
            /// How it ended.
            outcome: ChallengeOutcome,
            /// Fee put back onto the user's escrow (upheld).
            refunded: Balance,
            /// Part of `refunded` taken from the provider's bond, the payment being released
            /// already.
            from_bond: Balance,
            /// Slashed from the provider's bond besides the refund (upheld).
            slashed: Balance,
            /// Paid to the challenger from the slash (upheld).
            challenger_reward: Balance,
            /// Paid to the majority verifiers: from the slash (upheld) or the deposit (rejected).
            verifier_reward: Balance,
            /// Burned: the rest of the slash or of the deposit.
            burned: Balance,
        },
        /// A verifier lost part of its bond for a vote against the deciding majority.
        VerifierPenalized {
            /// The challenge.
            id: ChallengeId,
            /// The verifier.
            verifier: T::AccountId,
            /// Amount burned from its bond.
            amount: Balance,
        },
        /// A provider set the terms of a fine-tuning service.
        FineTuneTermsSet {
            /// The provider.
            provider: T::AccountId,
            /// The service.
            service_id: ServiceId,
            /// The terms.
            terms: FineTuneTerms,
        },
        /// A user created a fine-tuning job.
        JobCreated {
            /// The job.
            id: JobId,
            /// The user.
            user: T::AccountId,
            /// The provider asked.
            provider: T::AccountId,
            /// The fine-tuning service.
            service_id: ServiceId,
            /// Taken from the user's escrow for the job: dataset tokens × epochs × price.
            reserved: Balance,
            /// Last block in which the provider can accept it.
            accept_by: BlockNumberFor<T>,
        },
        /// A provider accepted a job.
        JobAccepted {
            /// The job.
            id: JobId,
            /// The provider.
            provider: T::AccountId,
            /// Last block in which it can deliver.
            deliver_by: BlockNumberFor<T>,
        },
        /// A provider delivered a job's adapter, encrypted.
        JobDelivered {
            /// The job.
            id: JobId,
            /// blake2-256 of the encrypted adapter.
            adapter_hash: H256,
            /// blake2-256 of its key.
            key_hash: H256,
            /// Tokens trained.
            trained_tokens: u64,
            /// Mean loss of the last epoch, in thousandths.
            final_loss: u32,
            /// The fee: trained tokens × price.
            fee: Balance,
            /// Last block in which the user can acknowledge it.
            ack_by: BlockNumberFor<T>,
        },
        /// A user acknowledged a delivery: it holds the ciphertext and checked its hash.
        JobAcknowledged {
            /// The job.
            id: JobId,
            /// The user.
            user: T::AccountId,
            /// Last block in which the provider can reveal the key.
            reveal_by: BlockNumberFor<T>,
        },
        /// A provider revealed a job's key, sealed to the user; the job keeps the fee until
        /// `contest_until`, then pays it to the provider.
        KeyRevealed {
            /// The job.
            id: JobId,
            /// The provider's ephemeral X25519 key.
            ephemeral: [u8; 32],
            /// The adapter key sealed to the user's job key.
            sealed: [u8; 32],
            /// Kept by the job for the provider.
            fee: Balance,
            /// Rest of the reserve put back onto the escrow.
            refunded: Balance,
            /// Until when the user can contest the key.
            contest_until: BlockNumberFor<T>,
        },
        /// A job ended.
        JobEnded {
            /// The job.
            id: JobId,
            /// The user.
            user: T::AccountId,
            /// The provider.
            provider: T::AccountId,
            /// How.
            end: JobEnd,
            /// Put back onto the user's escrow.
            refunded: Balance,
            /// Paid to the provider (completed and abandoned jobs; its `EarningsReleased` event
            /// follows).
            paid: Balance,
            /// Taken from the provider's bond.
            penalty: Balance,
            /// Part of the penalty paid to the user; the rest was burned.
            to_user: Balance,
        },
        /// Root set the refund lock.
        RefundLockSet {
            /// New lock in blocks.
            blocks: BlockNumberFor<T>,
        },
        /// Root set the dispute window.
        DisputeWindowSet {
            /// New window in blocks.
            blocks: BlockNumberFor<T>,
        },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// The provider already has a service with this id.
        ServiceAlreadyRegistered,
        /// The provider has no service with this id.
        ServiceNotFound,
        /// The provider already has `MaxServicesPerProvider` services.
        TooManyServices,
        /// The caller's free balance cannot cover the provider bond.
        InsufficientBalanceForBond,
        /// The account never registered as a provider.
        NotAProvider,
        /// The provider still has services registered; remove them first.
        ProviderHasServices,
        /// The provider bond is already withdrawn.
        BondAlreadyWithdrawn,
        /// A dispute window of one of the provider's settlements is still open.
        BondStillLocked,
        /// The provider's bond is below `MinBond`, being unbonded, or withdrawn.
        ProviderNotBonded,
        /// The deposit is below `MinDeposit`.
        DepositBelowMinimum,
        /// The user's free balance cannot cover the deposit (and, for a new escrow, the
        /// record's `EscrowDeposit`).
        InsufficientBalance,
        /// A provider cannot hold an escrow with itself or dispute its own receipts.
        SelfEscrow,
        /// The user has no escrow with this provider.
        EscrowNotFound,
        /// The amount asked is zero.
        ZeroAmount,
        /// The refund asked plus the pending refund exceeds the escrow balance.
        RefundExceedsBalance,
        /// No refund is pending.
        NoPendingRefund,
        /// The refund is still locked (see the escrow's `unlock_at`).
        RefundLocked,
        /// The value is outside the bounds set in the runtime.
        OutOfBounds,
        /// An amount overflowed.
        Overflow,
        /// The receipt's signature is not the provider's on this chain.
        BadReceiptSignature,
        /// The receipt names another provider.
        ReceiptProviderMismatch,
        /// Only the user named in the receipt can dispute it.
        NotReceiptUser,
        /// The receipt is older than the last paying voucher settled; it proves nothing.
        ReceiptTooOld,
        /// No payment of this escrow is held any more: every dispute window has closed.
        DisputeWindowClosed,
        /// The receipt's total is not below the settled total: nothing was over-claimed.
        NothingToDispute,
        /// The account is already a verifier.
        AlreadyVerifier,
        /// The account is not a verifier.
        NotAVerifier,
        /// `MAX_VERIFIERS` verifiers are bonded already, none of them inactive.
        TooManyVerifiers,
        /// The verifier has already left.
        VerifierAlreadyLeft,
        /// The verifier has not left; call `leave_verifiers` first.
        VerifierNotLeft,
        /// Challenges assigned to the verifier have not ended yet.
        VerifierHasChallenges,
        /// Challenges against the provider have not ended yet: its bond stays, and its services
        /// keep the weights they name.
        ChallengesOpen,
        /// The receipt charged nothing or carries no activation proof: nothing to challenge.
        NothingToChallenge,
        /// The receipt's fee is above its total: no provider signs that for a real response.
        InconsistentReceipt,
        /// The receipt names no weights: there is nothing to check it against.
        NoCommittedWeights,
        /// The request in the evidence does not hash to the receipt's `request_hash`.
        RequestMismatch,
        /// The response in the evidence does not hash to the receipt's `response_hash`.
        ResponseMismatch,
        /// The proof in the evidence does not hash to the receipt's `proof_hash`.
        ProofMismatch,
        /// This receipt's voucher was challenged before.
        AlreadyChallenged,
        /// The receipt's total is above what was settled: its fee has not been paid yet.
        ReceiptNotSettled,
        /// Fewer than `MinVerifiers` verifiers, other than the two parties, can vote.
        NotEnoughVerifiers,
        /// No open challenge has this id.
        ChallengeNotFound,
        /// The caller is not among the challenge's verifiers.
        NotAssignedVerifier,
        /// The verifier has voted on this challenge already.
        AlreadyVoted,
        /// The challenge's voting period is over.
        VotingClosed,
        /// The challenge's voting period is not over yet.
        VotingStillOpen,
        /// The service is not a `FineTune` service.
        NotFineTune,
        /// The fine-tuning service has no terms set.
        NoFineTuneTerms,
        /// Fine-tuning terms must allow some tokens, epochs, rank and turnaround.
        EmptyTerms,
        /// The job's dataset has no tokens.
        EmptyDataset,
        /// The job's dataset has more tokens than the service's terms allow.
        DatasetTooLarge,
        /// The job's epochs are zero or above the service's terms.
        EpochsOutOfRange,
        /// The job's LoRA rank is zero or above the service's terms.
        RankOutOfRange,
        /// The user's spendable escrow cannot cover the job's price.
        InsufficientEscrow,
        /// The user has `MaxJobsPerUser` jobs open already.
        TooManyJobs,
        /// No open job has this id.
        JobNotFound,
        /// Only the job's provider can do this.
        NotJobProvider,
        /// Only the job's user can do this.
        NotJobUser,
        /// The job is not waiting for acceptance.
        JobNotCreated,
        /// The job is not accepted and undelivered.
        JobNotAccepted,
        /// The job is not delivered and unacknowledged.
        JobNotDelivered,
        /// The job is not acknowledged and waiting for its key.
        JobNotAcknowledged,
        /// The job's key is not revealed.
        JobNotRevealed,
        /// An acknowledged or paid job cannot be cancelled.
        JobNotCancellable,
        /// The job's deadline for this step has passed.
        DeadlinePassed,
        /// The job's current deadline has not passed yet.
        DeadlineNotReached,
        /// The delivery claims more trained tokens than the job's dataset tokens × epochs.
        TooManyTrainedTokens,
        /// The delivery names an empty adapter.
        EmptyAdapter,
        /// The secret shown is not the one of the job's user key.
        WrongJobSecret,
        /// The sealed key opens to the committed key: nothing to contest.
        KeyOpens,
        /// Accepted fine-tuning jobs of the provider have not ended yet.
        JobsOpen,
        /// The service's prices or model changed since the `price_version` the job names.
        PriceChanged,
        /// The service promises delivery later than the job's `max_turnaround`.
        TurnaroundTooLong,
        /// The job would cost nothing: a service priced at zero takes no jobs.
        FreeJob,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        fn integrity_test() {
            assert!(T::MinBond::get() <= T::ProviderBond::get(), "MinBond above ProviderBond");
            assert!(T::MinBond::get() > 0, "MinBond must be positive");
            assert!(T::MinDeposit::get() > 0, "MinDeposit must be positive");
            assert!(T::MaxBatch::get() > 0, "MaxBatch must be positive");
            assert!(
                T::MaxServicesPerProvider::get() > 0,
                "MaxServicesPerProvider must be positive"
            );
            assert!(
                T::MinRefundLock::get() <= T::MaxRefundLock::get(),
                "refund lock bounds inverted"
            );
            assert!(
                T::MinDisputeWindow::get() <= T::MaxDisputeWindow::get(),
                "dispute window bounds inverted"
            );
            let lock = T::DefaultRefundLock::get();
            assert!(
                lock >= T::MinRefundLock::get() && lock <= T::MaxRefundLock::get(),
                "DefaultRefundLock out of bounds"
            );
            assert!(
                T::DisputeReward::get() < Perbill::from_percent(100),
                "DisputeReward must stay below one whole: self-disputes would cost nothing"
            );
            assert!(T::EscrowDeposit::get() > 0, "EscrowDeposit must be positive");
            assert!(T::MinDisputeWindow::get() > Zero::zero(), "MinDisputeWindow must be positive");
            assert!(T::VerifierBond::get() > 0, "VerifierBond must be positive");
            assert!(T::ChallengeDeposit::get() > 0, "ChallengeDeposit must be positive");
            assert!(
                T::MinVerifiers::get() > 0 && T::MinVerifiers::get() <= MAX_VERIFIERS,
                "MinVerifiers must be within [1, MAX_VERIFIERS]"
            );
            assert!(
                T::Supermajority::get() > Perbill::from_percent(50),
                "Supermajority must be above half, or both sides could win"
            );
            assert!(
                T::ChallengerReward::get().deconstruct() as u64
                    + T::VerifierReward::get().deconstruct() as u64
                    <= Perbill::one().deconstruct() as u64,
                "ChallengerReward and VerifierReward share out more than the slash"
            );
            assert!(
                T::ChallengerReward::get() < Perbill::one(),
                "ChallengerReward must stay below one whole: self-challenges would cost nothing"
            );
            assert!(T::VotingPeriod::get() > Zero::zero(), "VotingPeriod must be positive");
            assert!(T::AcceptWindow::get() > Zero::zero(), "AcceptWindow must be positive");
            assert!(T::AckWindow::get() > Zero::zero(), "AckWindow must be positive");
            assert!(T::RevealWindow::get() > Zero::zero(), "RevealWindow must be positive");
            assert!(T::MaxJobsPerUser::get() > 0, "MaxJobsPerUser must be positive");
            assert!(T::MaxTurnaround::get() > 0, "MaxTurnaround must be positive");
            assert!(
                T::AbandonShare::get() < Perbill::one(),
                "AbandonShare must stay below one whole: a user walking away would pay in full"
            );
            let window = T::DefaultDisputeWindow::get();
            assert!(
                window >= T::MinDisputeWindow::get() && window <= T::MaxDisputeWindow::get(),
                "DefaultDisputeWindow out of bounds"
            );
        }

        #[cfg(feature = "try-runtime")]
        fn try_state(
            _n: BlockNumberFor<T>,
        ) -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Register a service. The first one holds `ProviderBond` from the caller (a later one
        /// tops the bond back up to it) and cancels unbonding.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::register_service())]
        pub fn register_service(
            origin: OriginFor<T>,
            service_id: ServiceId,
            terms: ServiceTerms,
        ) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_register_service(provider, service_id, Service::new(terms, 0))
        }

        /// Change a service's terms; its `price_version` goes up by one.
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::update_service())]
        pub fn update_service(
            origin: OriginFor<T>,
            service_id: ServiceId,
            terms: ServiceTerms,
        ) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_update_service(provider, service_id, Service::new(terms, 0))
        }

        /// Remove a service. Removing the last one starts unbonding.
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::remove_service())]
        pub fn remove_service(origin: OriginFor<T>, service_id: ServiceId) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_remove_service(provider, service_id)
        }

        /// Release the bond of a provider without services once the dispute windows of all its
        /// settlements have closed (`bond_locked_until`).
        #[pallet::call_index(3)]
        #[pallet::weight(T::WeightInfo::withdraw_bond())]
        pub fn withdraw_bond(origin: OriginFor<T>) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_withdraw_bond(provider)
        }

        /// Move `amount` of the caller's free balance into their escrow with `provider`. The
        /// first deposit also holds `EscrowDeposit` for the escrow's record.
        #[pallet::call_index(4)]
        #[pallet::weight(T::WeightInfo::deposit())]
        pub fn deposit(
            origin: OriginFor<T>,
            provider: T::AccountId,
            #[pallet::compact] amount: Balance,
        ) -> DispatchResult {
            let user = ensure_signed(origin)?;
            Self::do_deposit(user, provider, amount)
        }

        /// Ask for `amount` of the escrow back; withdrawable after `RefundLock` blocks. The
        /// lock restarts for the whole pending amount.
        #[pallet::call_index(5)]
        #[pallet::weight(T::WeightInfo::request_refund())]
        pub fn request_refund(
            origin: OriginFor<T>,
            provider: T::AccountId,
            #[pallet::compact] amount: Balance,
        ) -> DispatchResult {
            let user = ensure_signed(origin)?;
            Self::do_request_refund(user, provider, amount)
        }

        /// Make the pending refund spendable again.
        #[pallet::call_index(6)]
        #[pallet::weight(T::WeightInfo::cancel_refund())]
        pub fn cancel_refund(origin: OriginFor<T>, provider: T::AccountId) -> DispatchResult {
            let user = ensure_signed(origin)?;
            Self::do_cancel_refund(user, provider)
        }

        /// Release the unlocked pending refund (at most the escrow balance) to free balance.
        #[pallet::call_index(7)]
        #[pallet::weight(T::WeightInfo::withdraw_refund())]
        pub fn withdraw_refund(origin: OriginFor<T>, provider: T::AccountId) -> DispatchResult {
            let user = ensure_signed(origin)?;
            Self::do_withdraw_refund(user, provider)
        }

        /// Settle a batch of claims. Each claim runs in its own storage layer and ends in a
        /// `ClaimSettled`, `ClaimPartiallySettled` or `ClaimRejected` event; one bad claim never
        /// fails the batch. What a claim pays is held in the escrow account until the dispute
        /// window closes; held payments of the batch's escrows whose window has closed are
        /// released to the provider.
        #[pallet::call_index(8)]
        #[pallet::weight(T::WeightInfo::settle(items.len() as u32))]
        pub fn settle(
            origin: OriginFor<T>,
            items: BoundedVec<Claim, T::MaxBatch>,
            trace_root: H256,
        ) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_settle(provider, items, trace_root)
        }

        /// Prove an over-claim with a receipt the provider signed: the excess still held goes
        /// back onto the caller's escrow, and `DisputePenalty` times that amount is slashed from
        /// the bond, `DisputeReward` of it to the caller and the rest burned.
        #[pallet::call_index(9)]
        #[pallet::weight(T::WeightInfo::dispute())]
        pub fn dispute(
            origin: OriginFor<T>,
            provider: T::AccountId,
            signed_receipt: SignedReceipt,
        ) -> DispatchResult {
            let user = ensure_signed(origin)?;
            Self::do_dispute(user, provider, signed_receipt)
        }

        /// Bond `VerifierBond` and take part in every challenge opened from now on (except
        /// those where the caller is a party). When the set is full, an inactive verifier with
        /// nothing assigned makes room (its bond is released).
        #[pallet::call_index(13)]
        #[pallet::weight(T::WeightInfo::join_verifiers())]
        pub fn join_verifiers(origin: OriginFor<T>) -> DispatchResult {
            let verifier = ensure_signed(origin)?;
            Self::do_join_verifiers(verifier)
        }

        /// Stop taking new challenges; the bond can be withdrawn once the ones assigned end.
        #[pallet::call_index(14)]
        #[pallet::weight(T::WeightInfo::leave_verifiers())]
        pub fn leave_verifiers(origin: OriginFor<T>) -> DispatchResult {
            let verifier = ensure_signed(origin)?;
            Self::do_leave_verifiers(verifier)
        }

        /// Release the bond of a verifier that left and has no challenge assigned.
        #[pallet::call_index(15)]
        #[pallet::weight(T::WeightInfo::withdraw_verifier_bond())]
        pub fn withdraw_verifier_bond(origin: OriginFor<T>) -> DispatchResult {
            let verifier = ensure_signed(origin)?;
            Self::do_withdraw_verifier_bond(verifier)
        }

        /// Challenge a paid response: the caller (the receipt's user) shows the receipt and the
        /// evidence it commits to, holds `ChallengeDeposit`, and every active verifier but the
        /// two parties is assigned to vote within `VotingPeriod` blocks. Like a dispute, it
        /// must come while the escrow still holds payments (the dispute window).
        #[pallet::call_index(16)]
        #[pallet::weight(T::WeightInfo::challenge(evidence.len()))]
        pub fn challenge(
            origin: OriginFor<T>,
            provider: T::AccountId,
            signed_receipt: SignedReceipt,
            evidence: Evidence,
        ) -> DispatchResult {
            let user = ensure_signed(origin)?;
            Self::do_challenge(user, provider, signed_receipt, evidence)
        }

        /// Vote on a challenge assigned to the caller. The vote that gives one side
        /// `Supermajority` of the assigned verifiers ends the challenge.
        #[pallet::call_index(17)]
        #[pallet::weight(T::WeightInfo::vote())]
        pub fn vote(origin: OriginFor<T>, id: ChallengeId, vote: Vote) -> DispatchResult {
            let verifier = ensure_signed(origin)?;
            Self::do_vote(verifier, id, vote)
        }

        /// End a challenge whose voting period is over. With a quorum (half of the assigned
        /// verifiers voted), the side with `Supermajority` of the votes cast wins, as if it had
        /// reached it early; otherwise it ends undecided: the deposit goes back to the
        /// challenger and the receipt can be challenged again. Anyone may call it.
        #[pallet::call_index(18)]
        #[pallet::weight(T::WeightInfo::close_challenge())]
        pub fn close_challenge(origin: OriginFor<T>, id: ChallengeId) -> DispatchResult {
            ensure_signed(origin)?;
            Self::do_close_challenge(id)
        }

        /// Set the fine-tuning terms of one of the caller's `FineTune` services. Jobs already
        /// created keep the terms they were created on.
        #[pallet::call_index(19)]
        #[pallet::weight(T::WeightInfo::set_finetune_terms())]
        pub fn set_finetune_terms(
            origin: OriginFor<T>,
            service_id: ServiceId,
            terms: FineTuneTerms,
        ) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_set_finetune_terms(provider, service_id, terms)
        }

        /// Create a fine-tuning job with `provider`, taking its price (dataset tokens × epochs
        /// × the service's price) from the caller's escrow with it.
        #[pallet::call_index(20)]
        #[pallet::weight(T::WeightInfo::create_job())]
        pub fn create_job(
            origin: OriginFor<T>,
            provider: T::AccountId,
            spec: JobSpec,
        ) -> DispatchResult {
            let user = ensure_signed(origin)?;
            Self::do_create_job(user, provider, spec)
        }

        /// Accept a job (its provider): delivery is due `turnaround` blocks from now.
        #[pallet::call_index(21)]
        #[pallet::weight(T::WeightInfo::accept_job())]
        pub fn accept_job(origin: OriginFor<T>, id: JobId) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_accept_job(provider, id)
        }

        /// Reject a job not yet accepted (its provider); the reserve goes back to the escrow.
        #[pallet::call_index(22)]
        #[pallet::weight(T::WeightInfo::end_job())]
        pub fn reject_job(origin: OriginFor<T>, id: JobId) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_reject_job(provider, id)
        }

        /// Commit to the encrypted adapter of an accepted job (its provider).
        #[pallet::call_index(23)]
        #[pallet::weight(T::WeightInfo::deliver())]
        pub fn deliver(origin: OriginFor<T>, id: JobId, delivery: Delivery) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_deliver(provider, id, delivery)
        }

        /// Acknowledge a delivery (its user): the caller holds the ciphertext and checked it
        /// against `adapter_hash`.
        #[pallet::call_index(24)]
        #[pallet::weight(T::WeightInfo::acknowledge())]
        pub fn acknowledge(origin: OriginFor<T>, id: JobId) -> DispatchResult {
            let user = ensure_signed(origin)?;
            Self::do_acknowledge(user, id)
        }

        /// Reveal the key of an acknowledged job sealed to the user's job key (its provider);
        /// the fee is paid.
        #[pallet::call_index(25)]
        #[pallet::weight(T::WeightInfo::reveal_key())]
        pub fn reveal_key(origin: OriginFor<T>, id: JobId, key: SealedKey) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_reveal_key(provider, id, key)
        }

        /// Show that a revealed key does not open to the committed one (its user), by revealing
        /// the job's secret: fee refunded, bond slashed.
        #[pallet::call_index(26)]
        #[pallet::weight(T::WeightInfo::contest_key())]
        pub fn contest_key(origin: OriginFor<T>, id: JobId, secret: [u8; 32]) -> DispatchResult {
            let user = ensure_signed(origin)?;
            Self::do_contest_key(user, id, secret)
        }

        /// Cancel a job (its user): free before acceptance; after it, or on a delivery not yet
        /// acknowledged, the provider is paid `AbandonShare` of the fee.
        #[pallet::call_index(27)]
        #[pallet::weight(T::WeightInfo::end_job())]
        pub fn cancel_job(origin: OriginFor<T>, id: JobId) -> DispatchResult {
            let user = ensure_signed(origin)?;
            Self::do_cancel_job(user, id)
        }

        /// End a job whose current deadline has passed (anyone), as the deadline says: not
        /// accepted or not delivered (refund; a penalty for the latter), not acknowledged
        /// (`AbandonShare` paid), key withheld (refund and slash), contest window over (record
        /// removed).
        #[pallet::call_index(28)]
        #[pallet::weight(T::WeightInfo::end_job())]
        pub fn expire_job(origin: OriginFor<T>, id: JobId) -> DispatchResult {
            ensure_signed(origin)?;
            Self::do_expire_job(id)
        }

        /// Set the refund lock, within `[MinRefundLock, MaxRefundLock]`.
        #[pallet::call_index(10)]
        #[pallet::weight(T::WeightInfo::set_refund_lock())]
        pub fn set_refund_lock(origin: OriginFor<T>, blocks: BlockNumberFor<T>) -> DispatchResult {
            ensure_root(origin)?;
            ensure!(
                blocks >= T::MinRefundLock::get() && blocks <= T::MaxRefundLock::get(),
                Error::<T>::OutOfBounds
            );
            RefundLock::<T>::put(blocks);
            Self::deposit_event(Event::RefundLockSet { blocks });
            Ok(())
        }

        /// Set the dispute window, within `[MinDisputeWindow, MaxDisputeWindow]`.
        #[pallet::call_index(11)]
        #[pallet::weight(T::WeightInfo::set_dispute_window())]
        pub fn set_dispute_window(
            origin: OriginFor<T>,
            blocks: BlockNumberFor<T>,
        ) -> DispatchResult {
            ensure_root(origin)?;
            ensure!(
                blocks >= T::MinDisputeWindow::get() && blocks <= T::MaxDisputeWindow::get(),
                Error::<T>::OutOfBounds
            );
            DisputeWindow::<T>::put(blocks);
            Self::deposit_event(Event::DisputeWindowSet { blocks });
            Ok(())
        }

        /// Move to the caller (a provider) the held payments of its escrows with `users` whose
        /// dispute windows have closed. Escrows without such payments are skipped.
        #[pallet::call_index(12)]
        #[pallet::weight(T::WeightInfo::release(users.len() as u32))]
        pub fn release(
            origin: OriginFor<T>,
            users: BoundedVec<T::AccountId, T::MaxBatch>,
        ) -> DispatchResult {
            let provider = ensure_signed(origin)?;
            Self::do_release(provider, users)
        }
    }
}
