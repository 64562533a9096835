//! `compute_*` JSON-RPC methods over `pallet-compute`'s runtime API (`ComputeApi`), generic over
//! the node's client as `pallet-transaction-payment-rpc` is. The answers are the JSON types of
//! `compute_primitives::rpc`, which clients decode with the same definitions.

use codec::Codec;
use compute_primitives::{
    rpc::{EscrowJson, ParamsJson, ProviderJson, ServiceJson},
    Escrow, Service, ServiceId,
};
use jsonrpsee::{
    core::RpcResult,
    proc_macros::rpc,
    types::{ErrorObject, ErrorObjectOwned},
};
use pallet_compute::runtime_api::ComputeApi as ComputeRuntimeApi;
use polkadot_sdk::{
    sp_api::{ApiError, ProvideRuntimeApi},
    sp_blockchain::HeaderBackend,
    sp_core::crypto::Ss58Codec,
    sp_runtime::traits::Block as BlockT,
};
use serde::{de::DeserializeOwned, Serialize};
use std::{marker::PhantomData, sync::Arc};

/// Default page size of the paginated methods (the runtime caps every page at its `MAX_PAGE`).
pub const DEFAULT_PAGE: u32 = 100;

/// JSON-RPC error code of a failed runtime API call.
pub const RUNTIME_ERROR: i32 = 1;

#[rpc(server, namespace = "compute")]
pub trait ComputeApi<BlockHash, AccountId, BlockNumber> {
    /// Services of all providers, `limit` (default 100, at most 256) starting after
    /// `[provider, serviceId]`.
    #[method(name = "services")]
    fn services(
        &self,
        start_after: Option<(AccountId, ServiceId)>,
        limit: Option<u32>,
        at: Option<BlockHash>,
    ) -> RpcResult<Vec<ServiceJson>>;

    /// All services of one provider.
    #[method(name = "servicesOf")]
    fn services_of(
        &self,
        provider: AccountId,
        at: Option<BlockHash>,
    ) -> RpcResult<Vec<ServiceJson>>;

    /// One service, or null.
    #[method(name = "service")]
    fn service(
        &self,
        provider: AccountId,
        service_id: ServiceId,
        at: Option<BlockHash>,
    ) -> RpcResult<Option<ServiceJson>>;

    /// The escrow of (user, provider), or null.
    #[method(name = "escrow")]
    fn escrow(
        &self,
        user: AccountId,
        provider: AccountId,
        at: Option<BlockHash>,
    ) -> RpcResult<Option<EscrowJson<BlockNumber>>>;

    /// Escrows of a user, `limit` starting after `provider`.
    #[method(name = "escrowsOf")]
    fn escrows_of(
        &self,
        user: AccountId,
        start_after: Option<AccountId>,
        limit: Option<u32>,
        at: Option<BlockHash>,
    ) -> RpcResult<Vec<EscrowJson<BlockNumber>>>;

    /// A provider's bond and statistics, or null.
    #[method(name = "provider")]
    fn provider(
        &self,
        provider: AccountId,
        at: Option<BlockHash>,
    ) -> RpcResult<Option<ProviderJson<BlockNumber>>>;

    /// Refund lock, dispute window and limits.
    #[method(name = "params")]
    fn params(&self, at: Option<BlockHash>) -> RpcResult<ParamsJson<BlockNumber>>;
}

/// Serves `compute_*` from a client's runtime API.
pub struct Compute<C, Block> {
    client: Arc<C>,
    _block: PhantomData<Block>,
}

impl<C, Block> Compute<C, Block> {
    pub fn new(client: Arc<C>) -> Self {
        Compute { client, _block: PhantomData }
    }
}

fn runtime_error(e: ApiError) -> ErrorObjectOwned {
    ErrorObject::owned(RUNTIME_ERROR, "runtime API call failed", Some(e.to_string()))
}

/// A service as JSON.
pub fn service_json<A: Ss58Codec>(provider: &A, service_id: ServiceId, s: Service) -> ServiceJson {
    ServiceJson {
        provider: provider.to_ss58check(),
        service_id,
        kind: s.kind,
        model: String::from_utf8_lossy(&s.model).into_owned(),
        model_hash: s.model_hash,
        url: String::from_utf8_lossy(&s.url).into_owned(),
        input_price: s.input_price,
        output_price: s.output_price,
        verifiability: String::from_utf8_lossy(&s.verifiability).into_owned(),
        price_version: s.price_version,
    }
}

/// An escrow as JSON.
pub fn escrow_json<A: Ss58Codec, N: Copy + PartialOrd>(
    provider: &A,
    e: Escrow<N>,
) -> EscrowJson<N> {
    EscrowJson {
        provider: provider.to_ss58check(),
        spendable: e.spendable(),
        balance: e.balance,
        pending_refund: e.pending_refund,
        unlock_at: e.unlock_at,
        settled_nonce: e.settled_nonce,
        settled_through: e.settled_through,
        settled_total: e.settled_total,
        last_claimed_total: e.last_claimed_total,
        last_settled_at: e.last_settled_at,
        held: e.held,
        held_until: e.held_until,
        held_next: e.held_next,
        held_next_until: e.held_next_until,
    }
}

impl<C, Block, AccountId, BlockNumber>
    ComputeApiServer<<Block as BlockT>::Hash, AccountId, BlockNumber> for Compute<C, Block>
where
    Block: BlockT,
    C: ProvideRuntimeApi<Block> + HeaderBackend<Block> + Send + Sync + 'static,
    C::Api: ComputeRuntimeApi<Block, AccountId, BlockNumber>,
    AccountId: Codec + Clone + Ss58Codec + DeserializeOwned + Send + Sync + 'static,
    BlockNumber: Codec + Copy + PartialOrd + Serialize + Send + Sync + 'static,
{
    fn services(
        &self,
        start_after: Option<(AccountId, ServiceId)>,
        limit: Option<u32>,
        at: Option<Block::Hash>,
    ) -> RpcResult<Vec<ServiceJson>> {
        let at = at.unwrap_or_else(|| self.client.info().best_hash);
        let list = self
            .client
            .runtime_api()
            .services(at, start_after, limit.unwrap_or(DEFAULT_PAGE))
            .map_err(runtime_error)?;
        Ok(list.into_iter().map(|(p, id, s)| service_json(&p, id, s)).collect())
    }

    fn services_of(
        &self,
        provider: AccountId,
        at: Option<Block::Hash>,
    ) -> RpcResult<Vec<ServiceJson>> {
        let at = at.unwrap_or_else(|| self.client.info().best_hash);
        let list =
            self.client.runtime_api().services_of(at, provider.clone()).map_err(runtime_error)?;
        Ok(list.into_iter().map(|(id, s)| service_json(&provider, id, s)).collect())
    }

    fn service(
        &self,
        provider: AccountId,
        service_id: ServiceId,
        at: Option<Block::Hash>,
    ) -> RpcResult<Option<ServiceJson>> {
        let at = at.unwrap_or_else(|| self.client.info().best_hash);
        let s = self
            .client
            .runtime_api()
            .service(at, provider.clone(), service_id)
            .map_err(runtime_error)?;
        Ok(s.map(|s| service_json(&provider, service_id, s)))
    }

    fn escrow(
        &self,
        user: AccountId,
        provider: AccountId,
        at: Option<Block::Hash>,
    ) -> RpcResult<Option<EscrowJson<BlockNumber>>> {
        let at = at.unwrap_or_else(|| self.client.info().best_hash);
        let e =
            self.client.runtime_api().escrow(at, user, provider.clone()).map_err(runtime_error)?;
        Ok(e.map(|e| escrow_json(&provider, e)))
    }

    fn escrows_of(
        &self,
        user: AccountId,
        start_after: Option<AccountId>,
        limit: Option<u32>,
        at: Option<Block::Hash>,
    ) -> RpcResult<Vec<EscrowJson<BlockNumber>>> {
        let at = at.unwrap_or_else(|| self.client.info().best_hash);
        let list = self
            .client
            .runtime_api()
            .escrows_of(at, user, start_after, limit.unwrap_or(DEFAULT_PAGE))
            .map_err(runtime_error)?;
        Ok(list.into_iter().map(|(p, e)| escrow_json(&p, e)).collect())
    }

    fn provider(
        &self,
        provider: AccountId,
        at: Option<Block::Hash>,
    ) -> RpcResult<Option<ProviderJson<BlockNumber>>> {
        let at = at.unwrap_or_else(|| self.client.info().best_hash);
        let info =
            self.client.runtime_api().provider(at, provider.clone()).map_err(runtime_error)?;
        Ok(info.map(|i| ProviderJson {
            provider: provider.to_ss58check(),
            bond: i.bond,
            services: i.services,
            unbonding: i.unbonding,
            claims_settled: i.claims_settled,
            requests_settled: i.requests_settled,
            earned: i.earned,
            disputes_lost: i.disputes_lost,
            last_settled_at: i.last_settled_at,
            bond_locked_until: i.bond_locked_until,
        }))
    }

    fn params(&self, at: Option<Block::Hash>) -> RpcResult<ParamsJson<BlockNumber>> {
        let at = at.unwrap_or_else(|| self.client.info().best_hash);
        let p = self.client.runtime_api().params(at).map_err(runtime_error)?;
        Ok(ParamsJson {
            refund_lock: p.refund_lock,
            dispute_window: p.dispute_window,
            min_deposit: p.min_deposit,
            provider_bond: p.provider_bond,
            min_bond: p.min_bond,
            max_batch: p.max_batch,
            escrow_deposit: p.escrow_deposit,
        })
    }
}
