//! Storage migrations.
//!
//! Version 2 holds what settlement pays in each escrow until its dispute window closes (new
//! escrow fields `held`, `held_until`, `held_next`, `held_next_until`) and locks a provider's
//! bond until the last of those windows (`bond_locked_until`). Records written by version 1
//! paid the provider at once, so they hold nothing; the bond stays locked for one dispute
//! window after the provider's last settlement, as version 1 ruled. Escrow records of version 1
//! were opened without the record deposit and keep none.

use crate::{pallet::*, types::*};
use codec::{Decode, Encode};
use polkadot_sdk::{
    frame_support::{
        migrations::VersionedMigration,
        traits::{Get, UncheckedOnRuntimeUpgrade},
        weights::Weight,
    },
    frame_system::pallet_prelude::BlockNumberFor,
    sp_runtime::traits::Saturating,
};

/// The records as version 1 stored them.
pub mod v1 {
    use super::*;

    /// An escrow record of version 1.
    #[derive(Encode, Decode, Clone, PartialEq, Eq, Debug, Default)]
    pub struct Escrow<BlockNumber> {
        pub balance: Balance,
        pub pending_refund: Balance,
        pub unlock_at: BlockNumber,
        pub settled_nonce: Nonce,
        pub settled_through: Nonce,
        pub settled_total: Balance,
        pub last_claimed_total: Balance,
        pub last_settled_at: BlockNumber,
    }

    /// A provider record of version 1.
    #[derive(Encode, Decode, Clone, PartialEq, Eq, Debug, Default)]
    pub struct ProviderInfo<BlockNumber> {
        pub bond: Balance,
        pub services: u32,
        pub unbonding: bool,
        pub claims_settled: u64,
        pub requests_settled: u64,
        pub earned: Balance,
        pub disputes_lost: u32,
        pub last_settled_at: BlockNumber,
    }
}

/// Translates every escrow and provider record from version 1 to version 2.
pub struct InnerMigrateV1ToV2<T>(core::marker::PhantomData<T>);

impl<T: Config> UncheckedOnRuntimeUpgrade for InnerMigrateV1ToV2<T> {
    fn on_runtime_upgrade() -> Weight {
        let window = DisputeWindow::<T>::get();
        let mut records: u64 = 0;
        Escrows::<T>::translate::<v1::Escrow<BlockNumberFor<T>>, _>(|_, _, old| {
            records.saturating_inc();
            Some(Escrow {
                balance: old.balance,
                pending_refund: old.pending_refund,
                unlock_at: old.unlock_at,
                settled_nonce: old.settled_nonce,
                settled_through: old.settled_through,
                settled_total: old.settled_total,
                last_claimed_total: old.last_claimed_total,
                last_settled_at: old.last_settled_at,
                held: 0,
                held_until: old.last_settled_at,
                held_next: 0,
                held_next_until: old.last_settled_at,
            })
        });
        Providers::<T>::translate::<v1::ProviderInfo<BlockNumberFor<T>>, _>(|_, old| {
            records.saturating_inc();
            Some(ProviderInfo {
                bond: old.bond,
                services: old.services,
                unbonding: old.unbonding,
                claims_settled: old.claims_settled,
                requests_settled: old.requests_settled,
                earned: old.earned,
                disputes_lost: old.disputes_lost,
                last_settled_at: old.last_settled_at,
                bond_locked_until: old.last_settled_at.saturating_add(window),
            })
        });
        T::DbWeight::get().reads_writes(records.saturating_add(1), records)
    }
}

/// [`InnerMigrateV1ToV2`], run only when the on-chain storage version is 1; sets it to 2.
pub type MigrateV1ToV2<T> = VersionedMigration<
    1,
    2,
    InnerMigrateV1ToV2<T>,
    crate::pallet::Pallet<T>,
    <T as polkadot_sdk::frame_system::Config>::DbWeight,
>;
