//! Weights of `pallet-compute`.
//!
//! PROVISIONAL: these figures are estimates written by hand (one sr25519 verification is about
//! 50 µs of reference time; a storage read 25 µs and a write 100 µs on RocksDB-weighted
//! `RocksDbWeight`) until `benchmarking.rs` is run on the reference machine and this file is
//! regenerated with the command in the pallet README. They are deliberately pessimistic.

#![allow(unused_parens, unused_imports, missing_docs)]

use core::marker::PhantomData;
use polkadot_sdk::frame_support::{
    traits::Get,
    weights::{constants::RocksDbWeight, Weight},
};

/// Weight functions needed for `pallet-compute`.
pub trait WeightInfo {
    fn register_service() -> Weight;
    fn update_service() -> Weight;
    fn remove_service() -> Weight;
    fn withdraw_bond() -> Weight;
    fn deposit() -> Weight;
    fn request_refund() -> Weight;
    fn cancel_refund() -> Weight;
    fn withdraw_refund() -> Weight;
    fn settle(n: u32) -> Weight;
    fn dispute() -> Weight;
    fn set_refund_lock() -> Weight;
    fn set_dispute_window() -> Weight;
}

/// Weights for `pallet-compute` using the runtime's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);

const SIG_CHECK: u64 = 60_000_000;
const BASE: u64 = 30_000_000;
// Proof size: an escrow record, a provider record, two account records.
const PROOF_PER_CLAIM: u64 = 4_000;

impl<T: polkadot_sdk::frame_system::Config> WeightInfo for SubstrateWeight<T> {
    fn register_service() -> Weight {
        Weight::from_parts(BASE, 6_000).saturating_add(T::DbWeight::get().reads_writes(4, 4))
    }
    fn update_service() -> Weight {
        Weight::from_parts(BASE, 3_000).saturating_add(T::DbWeight::get().reads_writes(1, 1))
    }
    fn remove_service() -> Weight {
        Weight::from_parts(BASE, 3_000).saturating_add(T::DbWeight::get().reads_writes(2, 2))
    }
    fn withdraw_bond() -> Weight {
        Weight::from_parts(BASE, 4_000).saturating_add(T::DbWeight::get().reads_writes(4, 3))
    }
    fn deposit() -> Weight {
        Weight::from_parts(BASE, 6_000).saturating_add(T::DbWeight::get().reads_writes(4, 3))
    }
    fn request_refund() -> Weight {
        Weight::from_parts(BASE, 3_000).saturating_add(T::DbWeight::get().reads_writes(2, 1))
    }
    fn cancel_refund() -> Weight {
        Weight::from_parts(BASE, 3_000).saturating_add(T::DbWeight::get().reads_writes(1, 1))
    }
    fn withdraw_refund() -> Weight {
        Weight::from_parts(BASE, 6_000).saturating_add(T::DbWeight::get().reads_writes(4, 3))
    }
    fn settle(n: u32) -> Weight {
        Weight::from_parts(BASE, 4_000)
            .saturating_add(T::DbWeight::get().reads_writes(2, 1))
            .saturating_add(
                Weight::from_parts(SIG_CHECK, PROOF_PER_CLAIM)
                    .saturating_add(T::DbWeight::get().reads_writes(4, 4))
                    .saturating_mul(n.into()),
            )
    }
    fn dispute() -> Weight {
        Weight::from_parts(BASE + SIG_CHECK, 10_000)
            .saturating_add(T::DbWeight::get().reads_writes(7, 6))
    }
    fn set_refund_lock() -> Weight {
        Weight::from_parts(10_000_000, 0).saturating_add(T::DbWeight::get().writes(1))
    }
    fn set_dispute_window() -> Weight {
        Weight::from_parts(10_000_000, 0).saturating_add(T::DbWeight::get().writes(1))
    }
}

// For tests and the unit-weight fallback.
impl WeightInfo for () {
    fn register_service() -> Weight {
        Weight::from_parts(BASE, 0)
    }
    fn update_service() -> Weight {
        Weight::from_parts(BASE, 0)
    }
    fn remove_service() -> Weight {
        Weight::from_parts(BASE, 0)
    }
    fn withdraw_bond() -> Weight {
        Weight::from_parts(BASE, 0)
    }
    fn deposit() -> Weight {
        Weight::from_parts(BASE, 0)
    }
    fn request_refund() -> Weight {
        Weight::from_parts(BASE, 0)
    }
    fn cancel_refund() -> Weight {
        Weight::from_parts(BASE, 0)
    }
    fn withdraw_refund() -> Weight {
        Weight::from_parts(BASE, 0)
    }
    fn settle(n: u32) -> Weight {
        Weight::from_parts(BASE, 0)
            .saturating_add(Weight::from_parts(SIG_CHECK, 0).saturating_mul(n.into()))
    }
    fn dispute() -> Weight {
        Weight::from_parts(BASE + SIG_CHECK, 0)
    }
    fn set_refund_lock() -> Weight {
        Weight::from_parts(BASE, 0)
    }
    fn set_dispute_window() -> Weight {
        Weight::from_parts(BASE, 0)
    }
}
