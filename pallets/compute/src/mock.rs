//! A test runtime: system, balances and this pallet, with sr25519 dev accounts.

use crate as pallet_compute;
use polkadot_sdk::{
    frame_support::{
        derive_impl, parameter_types,
        traits::{ConstU128, ConstU32, ConstU64, Hooks},
    },
    frame_system, pallet_balances,
    sp_core::{sr25519, Pair, H256},
    sp_io::TestExternalities,
    sp_keyring::Sr25519Keyring,
    sp_runtime::{
        traits::{IdentityLookup, One},
        AccountId32, BuildStorage, FixedU128, Perbill,
    },
};

type Block = frame_system::mocking::MockBlock<Test>;

polkadot_sdk::frame_support::construct_runtime!(
    pub enum Test {
        System: frame_system,
        Balances: pallet_balances,
        Compute: pallet_compute,
    }
);

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
    type Block = Block;
    type AccountId = AccountId32;
    type Lookup = IdentityLookup<AccountId32>;
    type AccountData = pallet_balances::AccountData<u128>;
}

#[derive_impl(pallet_balances::config_preludes::TestDefaultConfig)]
impl pallet_balances::Config for Test {
    type Balance = u128;
    type AccountStore = System;
    type ExistentialDeposit = ExistentialDeposit;
}

pub const PROVIDER_BOND: u128 = 1_000;
pub const MIN_BOND: u128 = 500;
pub const MIN_DEPOSIT: u128 = 10;
pub const REFUND_LOCK: u64 = 10;
pub const DISPUTE_WINDOW: u64 = 20;
pub const MAX_BATCH: u32 = 16;
pub const ESCROW_DEPOSIT: u128 = 7;
pub const VERIFIER_BOND: u128 = 300;
pub const CHALLENGE_DEPOSIT: u128 = 40;
pub const VOTING_PERIOD: u64 = 5;
pub const MIN_CHALLENGE_SLASH: u128 = 50;
pub const ACCEPT_WINDOW: u64 = 5;
pub const ACK_WINDOW: u64 = 10;
pub const REVEAL_WINDOW: u64 = 5;
pub const MAX_JOBS_PER_USER: u32 = 3;

parameter_types! {
    /// 1 unless a test sets it (the property tests run with a larger one to exercise reaping).
    pub static ExistentialDeposit: u128 = 1;
    pub DisputePenalty: FixedU128 = FixedU128::one();
    pub const DisputeReward: Perbill = Perbill::from_percent(50);
    pub ChallengeSlash: FixedU128 = FixedU128::from_u32(9);
    pub Supermajority: Perbill = Perbill::from_rational(2u32, 3u32);
    pub const ChallengerReward: Perbill = Perbill::from_percent(30);
    pub const VerifierReward: Perbill = Perbill::from_percent(40);
    pub const VerifierPenalty: Perbill = Perbill::from_percent(10);
    pub static MinVerifiers: u32 = 1;
    pub const LateDeliveryPenalty: Perbill = Perbill::from_percent(10);
    pub const AbandonShare: Perbill = Perbill::from_percent(20);
    pub KeySlash: FixedU128 = FixedU128::from_u32(2);
    pub const ComputePalletId: polkadot_sdk::frame_support::PalletId =
        polkadot_sdk::frame_support::PalletId(*b"cmp/escr");
}

impl pallet_compute::Config for Test {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type PalletId = ComputePalletId;
    type ProviderBond = ConstU128<PROVIDER_BOND>;
    type MinBond = ConstU128<MIN_BOND>;
    type MinDeposit = ConstU128<MIN_DEPOSIT>;
    type MaxBatch = ConstU32<MAX_BATCH>;
    type MaxServicesPerProvider = ConstU32<4>;
    type DefaultRefundLock = ConstU64<REFUND_LOCK>;
    type MinRefundLock = ConstU64<1>;
    type MaxRefundLock = ConstU64<1_000>;
    type DefaultDisputeWindow = ConstU64<DISPUTE_WINDOW>;
    type MinDisputeWindow = ConstU64<1>;
    type MaxDisputeWindow = ConstU64<1_000>;
    type DisputePenalty = DisputePenalty;
    type DisputeReward = DisputeReward;
    type EscrowDeposit = ConstU128<ESCROW_DEPOSIT>;
    type VerifierBond = ConstU128<VERIFIER_BOND>;
    type MinVerifiers = MinVerifiers;
    type ChallengeDeposit = ConstU128<CHALLENGE_DEPOSIT>;
    type VotingPeriod = ConstU64<VOTING_PERIOD>;
    type Supermajority = Supermajority;
    type ChallengeSlash = ChallengeSlash;
    type MinChallengeSlash = ConstU128<MIN_CHALLENGE_SLASH>;
    type ChallengerReward = ChallengerReward;
    type VerifierReward = VerifierReward;
    type VerifierPenalty = VerifierPenalty;
    type AcceptWindow = ConstU64<ACCEPT_WINDOW>;
    type AckWindow = ConstU64<ACK_WINDOW>;
    type RevealWindow = ConstU64<REVEAL_WINDOW>;
    type MaxJobsPerUser = ConstU32<MAX_JOBS_PER_USER>;
    type LateDeliveryPenalty = LateDeliveryPenalty;
    type AbandonShare = AbandonShare;
    type KeySlash = KeySlash;
    type MaxTurnaround = ConstU32<1_000>;
    type WeightInfo = ();
}

/// Free balance every dev account starts with.
pub const ENDOWMENT: u128 = 1_000_000;

/// The dev accounts used as users and providers.
pub const KEYS: [Sr25519Keyring; 6] = [
    Sr25519Keyring::Alice,
    Sr25519Keyring::Bob,
    Sr25519Keyring::Charlie,
    Sr25519Keyring::Dave,
    Sr25519Keyring::Eve,
    Sr25519Keyring::Ferdie,
];

pub fn account(k: Sr25519Keyring) -> AccountId32 {
    k.to_account_id()
}

pub fn pair(k: Sr25519Keyring) -> sr25519::Pair {
    k.pair()
}

/// Externalities at block 1 with every dev account endowed.
pub fn new_test_ext() -> TestExternalities {
    let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
    pallet_balances::GenesisConfig::<Test> {
        balances: KEYS.iter().map(|k| (account(*k), ENDOWMENT)).collect(),
        ..Default::default()
    }
    .assimilate_storage(&mut storage)
    .unwrap();
    pallet_compute::GenesisConfig::<Test>::default().assimilate_storage(&mut storage).unwrap();
    let mut ext = TestExternalities::new(storage);
    ext.execute_with(|| System::set_block_number(1));
    ext
}

/// Advance to block `n`, running the pallet's hooks.
pub fn run_to(n: u64) {
    while System::block_number() < n {
        let next = System::block_number() + 1;
        System::set_block_number(next);
        Compute::on_initialize(next);
    }
}

/// The genesis hash signatures commit to in the test runtime.
pub fn genesis() -> H256 {
    Compute::genesis_hash()
}

/// Sign anything with a dev key.
pub fn sign(k: Sr25519Keyring, payload: &[u8]) -> polkadot_sdk::sp_runtime::MultiSignature {
    pair(k).sign(payload).into()
}

/// Externalities for the benchmark tests: genesis state plus an in-memory keystore, since the
/// benchmarks sign with keystore keys.
#[cfg(feature = "runtime-benchmarks")]
pub fn new_bench_ext() -> TestExternalities {
    use polkadot_sdk::sp_keystore::{testing::MemoryKeystore, KeystoreExt};
    use std::sync::Arc;
    let mut ext = new_test_ext();
    ext.register_extension(KeystoreExt(Arc::new(MemoryKeystore::new())));
    ext
}
