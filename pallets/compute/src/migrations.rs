//! Storage migrations.
//!
//! Version 2 holds what settlement pays in each escrow until its dispute window closes (new
//! escrow fields `held`, `held_until`, `held_next`, `held_next_until`) and locks a provider's
//! bond until the last of those windows (`bond_locked_until`). Records written by version 1
//! paid the provider at once, so they hold nothing; the bond stays locked for one dispute
//! window after the provider's last settlement, as version 1 ruled. Escrow records of version 1
//! were opened without the record deposit and keep none.
//!
//! Version 3 names the weights behind each service (`Service::model_hash`). Services registered
//! under version 2 committed to none: they get the zero hash, which clients show as "no weights
//! committed" until the provider updates its terms.

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

/// The records as version 2 stored them, where they differ from version 3.
pub mod v2 {
    use super::*;
    use compute_primitives::{ModelName, ServiceKind, Url, Verifiability};

    /// A service of version 2: no `model_hash`.
    #[derive(Encode, Decode, Clone, PartialEq, Eq, Debug)]
    pub struct Service {
        pub kind: ServiceKind,
        pub model: ModelName,
        pub url: Url,
        pub input_price: Balance,
        pub output_price: Balance,
        pub verifiability: Verifiability,
        pub price_version: u32,
    }
}

/// Translates every service from version 2 to version 3 (the zero `model_hash`).
pub struct InnerMigrateV2ToV3<T>(core::marker::PhantomData<T>);

impl<T: Config> UncheckedOnRuntimeUpgrade for InnerMigrateV2ToV3<T> {
    fn on_runtime_upgrade() -> Weight {
        let mut records: u64 = 0;
        Services::<T>::translate::<v2::Service, _>(|_, _, old| {
            records.saturating_inc();
            Some(Service {
                kind: old.kind,
                model: old.model,
                model_hash: Default::default(),
                url: old.url,
                input_price: old.input_price,
                output_price: old.output_price,
                verifiability: old.verifiability,
                price_version: old.price_version,
            })
        });
        T::DbWeight::get().reads_writes(records.saturating_add(1), records)
    }
}

/// [`InnerMigrateV2ToV3`], run only when the on-chain storage version is 2; sets it to 3.
pub type MigrateV2ToV3<T> = VersionedMigration<
    2,
    3,
    InnerMigrateV2ToV3<T>,
    crate::pallet::Pallet<T>,
    <T as polkadot_sdk::frame_system::Config>::DbWeight,
>;

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
