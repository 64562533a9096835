//! Configuration of each pallet.

use super::*;
use frame_support::{
    derive_impl,
    dispatch::DispatchClass,
    parameter_types,
    traits::{ConstBool, ConstU128, ConstU32, ConstU64, ConstU8, VariantCountOf},
    weights::{
        constants::{ParityDbWeight, WEIGHT_REF_TIME_PER_SECOND},
        IdentityFee, Weight,
    },
};
use frame_system::{
    limits::{BlockLength, BlockWeights},
    EnsureRoot,
};
use pallet_transaction_payment::{ConstFeeMultiplier, FungibleAdapter, Multiplier};
use polkadot_sdk::{
    pallet_authorship, pallet_collator_selection, pallet_session,
    sp_consensus_aura::sr25519::AuthorityId as AuraId,
    sp_runtime::{
        traits::{One, OpaqueKeys},
        FixedU128, Perbill,
    },
};

const NORMAL_DISPATCH_RATIO: Perbill = Perbill::from_percent(75);
const MAX_BLOCK_LENGTH: u32 = 5 * 1024 * 1024;

parameter_types! {
    pub const BlockHashCount: BlockNumber = 2400;
    pub const Version: RuntimeVersion = VERSION;
    /// Two seconds of execution per six-second block.
    pub RuntimeBlockWeights: BlockWeights = BlockWeights::with_sensible_defaults(
        Weight::from_parts(2u64 * WEIGHT_REF_TIME_PER_SECOND, u64::MAX),
        NORMAL_DISPATCH_RATIO,
    );
    /// 5 MiB blocks, of which normal transactions may fill 75%.
    pub RuntimeBlockLength: BlockLength = BlockLength::builder()
        .max_length(MAX_BLOCK_LENGTH)
        .modify_max_length_for_class(DispatchClass::Normal, |max| *max = NORMAL_DISPATCH_RATIO * *max)
        .build();
    pub const SS58Prefix: u8 = 42;
}

#[derive_impl(frame_system::config_preludes::SolochainDefaultConfig)]
impl frame_system::Config for Runtime {
    type Block = Block;
    type BlockWeights = RuntimeBlockWeights;
    type BlockLength = RuntimeBlockLength;
    type AccountId = AccountId;
    type Nonce = Nonce;
    type Hash = Hash;
    type BlockHashCount = BlockHashCount;
    // The node's only database backend is ParityDB (`sc-cli` without its `rocksdb` feature).
    type DbWeight = ParityDbWeight;
    type Version = Version;
    type AccountData = pallet_balances::AccountData<Balance>;
    type SS58Prefix = SS58Prefix;
    type MaxConsumers = ConstU32<16>;
}

parameter_types! {
    /// Blocks per session: validator-set changes (joins, leaves, key rotations) take effect at
    /// session boundaries. Root may change it (`system.set_storage` of `:SessionLength:`; read
    /// through `SessionPeriod`, never below `MIN_SESSION_LENGTH`); the multi-validator tests set
    /// it to ten blocks.
    pub storage SessionLength: BlockNumber = HOURS;
    /// Sessions a bonded candidate may go without authoring a block before it is removed (at
    /// the next session change): the grace an operator has to restart or move a node. Root
    /// may change it (`system.set_storage` of `:IdleSessions:`; never below one session); the
    /// multi-validator tests raise it so that a node restarted on a busy machine is not removed.
    pub storage IdleSessions: BlockNumber = 2;
    /// `IdleSessions` in blocks.
    pub KickThreshold: BlockNumber = IdleSessions::get()
        .max(1)
        .saturating_mul(<SessionPeriod as frame_support::traits::Get<BlockNumber>>::get());
    /// Derives the account that collects authors' fee shares (`validators::FeesToAuthors`).
    pub const PotId: frame_support::PalletId = frame_support::PalletId(*b"cmp/pot ");
    pub const SessionOffset: BlockNumber = 0;
}

/// Shortest session, whatever `SessionLength` holds: `PeriodicSessions` divides by the period,
/// so a stored 0 would fail every block.
pub const MIN_SESSION_LENGTH: BlockNumber = 10;

/// The session length in use: `SessionLength`, at least `MIN_SESSION_LENGTH`.
pub struct SessionPeriod;
impl frame_support::traits::Get<BlockNumber> for SessionPeriod {
    fn get() -> BlockNumber {
        SessionLength::get().max(MIN_SESSION_LENGTH)
    }
}

/// Bond a validator candidate holds while it is one.
pub const CANDIDACY_BOND: Balance = 1_000 * UNIT;
/// Held while an account has session keys set: keeps `KeyOwner` from being filled for free.
pub const KEY_DEPOSIT: Balance = UNIT;
/// Most bonded candidates; with `MAX_INVULNERABLES` within Aura's and GRANDPA's 32 authorities.
pub const MAX_CANDIDATES: u32 = 16;
/// Most invulnerable validators.
pub const MAX_INVULNERABLES: u32 = 16;

impl pallet_authorship::Config for Runtime {
    type FindAuthor = pallet_session::FindAccountFromAuthorIndex<Self, Aura>;
    type EventHandler = (CollatorSelection,);
}

impl pallet_session::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type ValidatorId = AccountId;
    type ValidatorIdOf = pallet_collator_selection::IdentityCollator;
    type ShouldEndSession = pallet_session::PeriodicSessions<SessionPeriod, SessionOffset>;
    type NextSessionRotation = pallet_session::PeriodicSessions<SessionPeriod, SessionOffset>;
    type SessionManager = crate::validators::NeverEmpty;
    type SessionHandler = <opaque::SessionKeys as OpaqueKeys>::KeyTypeIdProviders;
    type Keys = opaque::SessionKeys;
    type DisablingStrategy = ();
    type WeightInfo = pallet_session::weights::SubstrateWeight<Runtime>;
    type Currency = Balances;
    type KeyDeposit = ConstU128<KEY_DEPOSIT>;
}

impl pallet_collator_selection::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type Currency = Balances;
    type UpdateOrigin = EnsureRoot<AccountId>;
    type PotId = PotId;
    type MaxCandidates = ConstU32<MAX_CANDIDATES>;
    type MinEligibleCollators = ConstU32<1>;
    type MaxInvulnerables = ConstU32<MAX_INVULNERABLES>;
    type KickThreshold = KickThreshold;
    type ValidatorId = AccountId;
    type ValidatorIdOf = pallet_collator_selection::IdentityCollator;
    type ValidatorRegistration = Session;
    type WeightInfo = pallet_collator_selection::weights::SubstrateWeight<Runtime>;
}

impl pallet_aura::Config for Runtime {
    type AuthorityId = AuraId;
    type DisabledValidators = ();
    type MaxAuthorities = ConstU32<32>;
    type AllowMultipleBlocksPerSlot = ConstBool<false>;
    type SlotDuration = pallet_aura::MinimumPeriodTimesTwo<Runtime>;
}

impl pallet_grandpa::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type WeightInfo = ();
    type MaxAuthorities = ConstU32<32>;
    type MaxNominators = ConstU32<0>;
    type MaxSetIdSessionEntries = ConstU64<0>;
    type KeyOwnerProof = polkadot_sdk::sp_core::Void;
    type EquivocationReportSystem = ();
}

impl pallet_timestamp::Config for Runtime {
    type Moment = u64;
    type OnTimestampSet = Aura;
    type MinimumPeriod = ConstU64<{ SLOT_DURATION / 2 }>;
    type WeightInfo = ();
}

impl pallet_balances::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type RuntimeHoldReason = RuntimeHoldReason;
    type RuntimeFreezeReason = RuntimeFreezeReason;
    type WeightInfo = pallet_balances::weights::SubstrateWeight<Runtime>;
    type Balance = Balance;
    type DustRemoval = ();
    type ExistentialDeposit = ConstU128<EXISTENTIAL_DEPOSIT>;
    type AccountStore = System;
    type ReserveIdentifier = [u8; 8];
    type FreezeIdentifier = RuntimeFreezeReason;
    type MaxLocks = ConstU32<50>;
    type MaxReserves = ();
    type MaxFreezes = VariantCountOf<RuntimeFreezeReason>;
    type DoneSlashHandler = ();
}

parameter_types! {
    pub FeeMultiplier: Multiplier = Multiplier::one();
}

impl pallet_transaction_payment::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type OnChargeTransaction = FungibleAdapter<Balances, crate::validators::FeesToAuthors>;
    type OperationalFeeMultiplier = ConstU8<5>;
    type WeightToFee = IdentityFee<Balance>;
    type LengthToFee = IdentityFee<Balance>;
    type FeeMultiplierUpdate = ConstFeeMultiplier<FeeMultiplier>;
    type WeightInfo = pallet_transaction_payment::weights::SubstrateWeight<Runtime>;
}

impl pallet_sudo::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type RuntimeCall = RuntimeCall;
    type WeightInfo = pallet_sudo::weights::SubstrateWeight<Runtime>;
}

parameter_types! {
    /// A lost dispute costs the provider the over-claim back plus as much again from its bond.
    pub DisputePenalty: FixedU128 = FixedU128::one();
    /// Half of that penalty goes to the user who proved the over-claim; the rest is burned.
    pub const DisputeReward: Perbill = Perbill::from_percent(50);
    /// Derives the account that keeps every escrow's funds.
    pub const ComputePalletId: frame_support::PalletId = frame_support::PalletId(*b"cmp/escr");
    /// A provider found cheating loses 99 times the challenged fee (at least
    /// `MIN_CHALLENGE_SLASH`) on top of the refund: cheating is unprofitable at an audit rate
    /// of 1 % (`docs/verification.md`).
    pub ChallengeSlash: FixedU128 = FixedU128::from_u32(99);
    /// Two thirds of a challenge's verifiers decide it.
    pub Supermajority: Perbill = Perbill::from_rational(2u32, 3u32);
    /// The challenger gets 30 % of a slash, the majority verifiers share 40 %, the rest burns.
    pub const ChallengerReward: Perbill = Perbill::from_percent(30);
    pub const VerifierReward: Perbill = Perbill::from_percent(40);
    /// A vote against the deciding majority burns 10 % of the verifier bond.
    pub const VerifierPenalty: Perbill = Perbill::from_percent(10);
    /// A provider that accepts a fine-tuning job and does not deliver it in time loses 10 % of
    /// the job's price from its bond (half to the user, see `DisputeReward`).
    pub const LateDeliveryPenalty: Perbill = Perbill::from_percent(10);
    /// A user who walks away from an accepted job or a delivery pays 20 % of its fee.
    pub const AbandonShare: Perbill = Perbill::from_percent(20);
    /// A provider that withholds an acknowledged adapter's key, or reveals one that does not
    /// open, loses twice the fee (at least `MIN_CHALLENGE_SLASH`) on top of the refund.
    pub KeySlash: FixedU128 = FixedU128::from_u32(2);
}

/// Bond a provider holds while it offers services.
pub const PROVIDER_BOND: Balance = 100 * UNIT;
/// Least bond with which a provider may settle and take deposits.
pub const MIN_BOND: Balance = 50 * UNIT;
/// Smallest escrow deposit.
pub const MIN_DEPOSIT: Balance = 10 * MILLI_UNIT;
/// Most claims in one `settle`.
pub const MAX_BATCH: u32 = 1_024;
/// Storage deposit of an escrow record (about 240 bytes with its key), held for the record's
/// life: 0.001 unit per byte, rounded up.
pub const ESCROW_DEPOSIT: Balance = 250 * MILLI_UNIT;
/// Bond a verifier holds while it is one.
pub const VERIFIER_BOND: Balance = 100 * UNIT;
/// Held from a challenger until the challenge ends; pays the verifiers when it is rejected.
pub const CHALLENGE_DEPOSIT: Balance = UNIT;
/// Least slash of a provider found cheating, whatever the fee: five challenge deposits.
pub const MIN_CHALLENGE_SLASH: Balance = 5 * UNIT;
/// Verifiers, other than the two parties, a challenge needs.
pub const MIN_VERIFIERS: u32 = 2;

impl pallet_compute::Config for Runtime {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type PalletId = ComputePalletId;
    type ProviderBond = ConstU128<PROVIDER_BOND>;
    type MinBond = ConstU128<MIN_BOND>;
    type MinDeposit = ConstU128<MIN_DEPOSIT>;
    type MaxBatch = ConstU32<MAX_BATCH>;
    type MaxServicesPerProvider = ConstU32<16>;
    type DefaultRefundLock = ConstU32<DAYS>;
    type MinRefundLock = ConstU32<1>;
    type MaxRefundLock = ConstU32<{ 30 * DAYS }>;
    type DefaultDisputeWindow = ConstU32<DAYS>;
    type MinDisputeWindow = ConstU32<1>;
    type MaxDisputeWindow = ConstU32<{ 30 * DAYS }>;
    type DisputePenalty = DisputePenalty;
    type DisputeReward = DisputeReward;
    type EscrowDeposit = ConstU128<ESCROW_DEPOSIT>;
    type VerifierBond = ConstU128<VERIFIER_BOND>;
    type MinVerifiers = ConstU32<MIN_VERIFIERS>;
    type ChallengeDeposit = ConstU128<CHALLENGE_DEPOSIT>;
    type VotingPeriod = ConstU32<HOURS>;
    type Supermajority = Supermajority;
    type ChallengeSlash = ChallengeSlash;
    type MinChallengeSlash = ConstU128<MIN_CHALLENGE_SLASH>;
    type ChallengerReward = ChallengerReward;
    type VerifierReward = VerifierReward;
    type VerifierPenalty = VerifierPenalty;
    type AcceptWindow = ConstU32<HOURS>;
    type AckWindow = ConstU32<DAYS>;
    type RevealWindow = ConstU32<{ 6 * HOURS }>;
    type MaxJobsPerUser = ConstU32<16>;
    type LateDeliveryPenalty = LateDeliveryPenalty;
    type AbandonShare = AbandonShare;
    type KeySlash = KeySlash;
    type MaxTurnaround = ConstU32<{ 30 * DAYS }>;
    type WeightInfo = pallet_compute::weights::SubstrateWeight<Runtime>;
}
