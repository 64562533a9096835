//! Runtime of the compute marketplace appchain: system, timestamp, Aura, GRANDPA, balances,
//! transaction payment, sudo, the validator set (authorship, collator selection, session; see
//! `validators`) and the compute pallet.

#![cfg_attr(not(feature = "std"), no_std)]
// `construct_runtime` and `impl_runtime_apis` expand to large types.
#![recursion_limit = "256"]

#[cfg(feature = "std")]
include!(concat!(env!("OUT_DIR"), "/wasm_binary.rs"));

extern crate alloc;

use alloc::vec::Vec;

mod apis;
#[cfg(feature = "runtime-benchmarks")]
mod benchmarks;
mod configs;
pub mod genesis_config_presets;
#[cfg(test)]
mod tests;
pub mod validators;

use polkadot_sdk::{
    frame_executive, frame_support, frame_system, pallet_aura, pallet_authorship, pallet_balances,
    pallet_collator_selection, pallet_grandpa, pallet_session, pallet_sudo, pallet_timestamp,
    pallet_transaction_payment,
    sp_runtime::{
        generic, impl_opaque_keys,
        traits::{BlakeTwo256, IdentifyAccount, Verify},
        MultiAddress, MultiSignature,
    },
    sp_version::RuntimeVersion,
};

pub use apis::RuntimeApi;
pub use compute_primitives as primitives;
pub use pallet_compute;

/// Block number.
pub type BlockNumber = u32;
/// Transaction signature: sr25519, ed25519 or ecdsa.
pub type Signature = MultiSignature;
/// Account identifier: the public key of the signing scheme.
pub type AccountId = <<Signature as Verify>::Signer as IdentifyAccount>::AccountId;
/// Account balance.
pub type Balance = u128;
/// Per-account transaction counter.
pub type Nonce = u32;
/// Block and state hash.
pub type Hash = polkadot_sdk::sp_core::H256;

/// Smallest units in one token.
pub const UNIT: Balance = 1_000_000_000_000;
/// A thousandth of a token.
pub const MILLI_UNIT: Balance = UNIT / 1_000;
/// A millionth of a token.
pub const MICRO_UNIT: Balance = UNIT / 1_000_000;
/// Least balance an account must keep to exist.
pub const EXISTENTIAL_DEPOSIT: Balance = MILLI_UNIT;

/// Target block time. Aura slots have this length.
pub const MILLI_SECS_PER_BLOCK: u64 = 6_000;
/// Slot length; cannot change once the chain runs.
pub const SLOT_DURATION: u64 = MILLI_SECS_PER_BLOCK;
/// Blocks per minute, hour and day at the target block time.
pub const MINUTES: BlockNumber = 60_000 / (MILLI_SECS_PER_BLOCK as BlockNumber);
pub const HOURS: BlockNumber = MINUTES * 60;
pub const DAYS: BlockNumber = HOURS * 24;

/// Types the node needs without knowing the runtime's extrinsic format.
pub mod opaque {
    use super::*;
    pub use polkadot_sdk::sp_runtime::OpaqueExtrinsic as UncheckedExtrinsic;

    /// Block header.
    pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
    /// Block.
    pub type Block = generic::Block<Header, UncheckedExtrinsic>;

    impl_opaque_keys! {
        /// Keys a validator holds.
        pub struct SessionKeys {
            pub aura: Aura,
            pub grandpa: Grandpa,
        }
    }
}

/// This runtime's version. `spec_version` goes up with every change of behaviour or storage.
#[cfg(not(feature = "upgrade-test"))]
#[polkadot_sdk::sp_version::runtime_version]
pub const VERSION: RuntimeVersion = RuntimeVersion {
    spec_name: alloc::borrow::Cow::Borrowed("compute-runtime"),
    impl_name: alloc::borrow::Cow::Borrowed("compute-runtime"),
    authoring_version: 1,
    spec_version: 105,
    impl_version: 1,
    apis: apis::RUNTIME_API_VERSIONS,
    transaction_version: 3,
    system_version: 1,
};

/// The same runtime one `spec_version` ahead: the upgrade the network test applies with
/// `sudo.set_code` (built by `build.rs` as `UPGRADE_TEST_WASM`, never a chain's genesis).
#[cfg(feature = "upgrade-test")]
#[polkadot_sdk::sp_version::runtime_version]
pub const VERSION: RuntimeVersion = RuntimeVersion {
    spec_name: alloc::borrow::Cow::Borrowed("compute-runtime"),
    impl_name: alloc::borrow::Cow::Borrowed("compute-runtime"),
    authoring_version: 1,
    spec_version: 106,
    impl_version: 1,
    apis: apis::RUNTIME_API_VERSIONS,
    transaction_version: 3,
    system_version: 1,
};

/// The upgrade-test runtime's wasm (see [`VERSION`]).
#[cfg(feature = "std")]
pub mod upgrade_test {
    include!(concat!(env!("OUT_DIR"), "/upgrade_test_wasm.rs"));
}

#[frame_support::runtime]
mod runtime {
    #[runtime::runtime]
    #[runtime::derive(
        RuntimeCall,
        RuntimeEvent,
        RuntimeError,
        RuntimeOrigin,
        RuntimeFreezeReason,
        RuntimeHoldReason,
        RuntimeSlashReason,
        RuntimeLockId,
        RuntimeTask,
        RuntimeViewFunction
    )]
    pub struct Runtime;

    #[runtime::pallet_index(0)]
    pub type System = frame_system;
    #[runtime::pallet_index(1)]
    pub type Timestamp = pallet_timestamp;
    #[runtime::pallet_index(2)]
    pub type Aura = pallet_aura;
    #[runtime::pallet_index(3)]
    pub type Grandpa = pallet_grandpa;
    #[runtime::pallet_index(4)]
    pub type Balances = pallet_balances;
    #[runtime::pallet_index(5)]
    pub type TransactionPayment = pallet_transaction_payment;
    #[runtime::pallet_index(6)]
    pub type Sudo = pallet_sudo;
    #[runtime::pallet_index(7)]
    pub type Authorship = pallet_authorship;
    #[runtime::pallet_index(8)]
    pub type CollatorSelection = pallet_collator_selection;
    #[runtime::pallet_index(9)]
    pub type Session = pallet_session;
    #[runtime::pallet_index(10)]
    pub type Compute = pallet_compute;
}

/// How extrinsics address accounts.
pub type Address = MultiAddress<AccountId, ()>;
/// Block header.
pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
/// Block.
pub type Block = generic::Block<Header, UncheckedExtrinsic>;
/// Checks every signed transaction goes through.
pub type TxExtension = (
    frame_system::CheckNonZeroSender<Runtime>,
    frame_system::CheckSpecVersion<Runtime>,
    frame_system::CheckTxVersion<Runtime>,
    frame_system::CheckGenesis<Runtime>,
    frame_system::CheckEra<Runtime>,
    frame_system::CheckNonce<Runtime>,
    frame_system::CheckWeight<Runtime>,
    pallet_transaction_payment::ChargeTransactionPayment<Runtime>,
);
/// Extrinsic as the runtime decodes it.
pub type UncheckedExtrinsic =
    generic::UncheckedExtrinsic<Address, RuntimeCall, Signature, TxExtension>;
/// What a transaction signer signs.
pub type SignedPayload = generic::SignedPayload<RuntimeCall, TxExtension>;
/// Storage migrations run at a runtime upgrade (each checks the state it expects and does
/// nothing otherwise).
type Migrations = (
    pallet_compute::migrations::MigrateV1ToV2<Runtime>,
    pallet_compute::migrations::MigrateV2ToV3<Runtime>,
    validators::InitializeValidatorSet,
);
/// Dispatches extrinsics to the pallets.
pub type RuntimeExecutive = frame_executive::Executive<
    Runtime,
    Block,
    frame_system::ChainContext<Runtime>,
    Runtime,
    AllPalletsWithSystem,
    Migrations,
>;
