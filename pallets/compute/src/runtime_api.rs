//! The `ComputeApi` runtime API and the pallet functions behind it. The node's `compute_*`
//! JSON-RPC methods call these; clients rank providers and check escrows with them.

use crate::{pallet::*, types::*};
use alloc::vec::Vec;
use codec::{Decode, Encode};
use polkadot_sdk::{frame_system::pallet_prelude::BlockNumberFor, sp_core::Get};
use scale_info::TypeInfo;

/// Most entries one paginated query returns.
pub const MAX_PAGE: u32 = 256;

/// The pallet's current parameters.
#[derive(Encode, Decode, TypeInfo, Clone, PartialEq, Eq, Debug)]
pub struct ComputeParams<BlockNumber> {
    /// Blocks between a refund request and its withdrawal.
    pub refund_lock: BlockNumber,
    /// Blocks a settlement's payment stays held, open to disputes (for settlements from now).
    pub dispute_window: BlockNumber,
    /// Smallest deposit.
    pub min_deposit: Balance,
    /// Bond held at registration.
    pub provider_bond: Balance,
    /// Least bond to settle and accept escrows.
    pub min_bond: Balance,
    /// Most claims per `settle`.
    pub max_batch: u32,
    /// Storage deposit held from a user for each escrow record, for the record's life.
    pub escrow_deposit: Balance,
}

polkadot_sdk::sp_api::decl_runtime_apis! {
    /// Queries over the compute marketplace. Version 2: escrows carry held payments,
    /// providers `bond_locked_until`, parameters `escrow_deposit`.
    #[api_version(2)]
    pub trait ComputeApi<AccountId, BlockNumber> where
        AccountId: codec::Codec,
        BlockNumber: codec::Codec,
    {
        /// Services of all providers in storage order, starting after `start_after`, at most
        /// `limit` (capped at `MAX_PAGE`).
        fn services(start_after: Option<(AccountId, ServiceId)>, limit: u32) -> Vec<(AccountId, ServiceId, Service)>;
        /// All services of one provider.
        fn services_of(provider: AccountId) -> Vec<(ServiceId, Service)>;
        /// One service.
        fn service(provider: AccountId, service_id: ServiceId) -> Option<Service>;
        /// The escrow of (user, provider).
        fn escrow(user: AccountId, provider: AccountId) -> Option<Escrow<BlockNumber>>;
        /// Escrows of a user by provider, starting after `start_after`, at most `limit`.
        fn escrows_of(user: AccountId, start_after: Option<AccountId>, limit: u32) -> Vec<(AccountId, Escrow<BlockNumber>)>;
        /// A provider's bond and statistics.
        fn provider(provider: AccountId) -> Option<ProviderInfo<BlockNumber>>;
        /// Current refund lock, dispute window and limits.
        fn params() -> ComputeParams<BlockNumber>;
    }
}

impl<T: Config> Pallet<T> {
    /// See [`ComputeApi::services`].
    pub fn services_page(
        start_after: Option<(T::AccountId, ServiceId)>,
        limit: u32,
    ) -> Vec<(T::AccountId, ServiceId, Service)> {
        let limit = limit.min(MAX_PAGE) as usize;
        match start_after {
            Some((provider, id)) => {
                Services::<T>::iter_from(Services::<T>::hashed_key_for(provider, id))
                    .take(limit)
                    .collect()
            }
            None => Services::<T>::iter().take(limit).collect(),
        }
    }

    /// See [`ComputeApi::services_of`].
    pub fn services_of(provider: T::AccountId) -> Vec<(ServiceId, Service)> {
        Services::<T>::iter_prefix(provider).take(MAX_PAGE as usize).collect()
    }

    /// See [`ComputeApi::escrows_of`].
    pub fn escrows_page(
        user: T::AccountId,
        start_after: Option<T::AccountId>,
        limit: u32,
    ) -> Vec<(T::AccountId, Escrow<BlockNumberFor<T>>)> {
        let limit = limit.min(MAX_PAGE) as usize;
        match start_after {
            Some(provider) => {
                let from = Escrows::<T>::hashed_key_for(&user, provider);
                Escrows::<T>::iter_prefix_from(user, from).take(limit).collect()
            }
            None => Escrows::<T>::iter_prefix(user).take(limit).collect(),
        }
    }

    /// See [`ComputeApi::params`].
    pub fn params() -> ComputeParams<BlockNumberFor<T>> {
        ComputeParams {
            refund_lock: RefundLock::<T>::get(),
            dispute_window: DisputeWindow::<T>::get(),
            min_deposit: T::MinDeposit::get(),
            provider_bond: T::ProviderBond::get(),
            min_bond: T::MinBond::get(),
            max_batch: T::MaxBatch::get(),
            escrow_deposit: T::EscrowDeposit::get(),
        }
    }
}
