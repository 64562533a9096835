//! `compute_*` JSON-RPC methods over the runtime's `ComputeApi`. Amounts are decimal strings
//! (u128 does not fit a JavaScript number); accounts are SS58 strings.

use crate::service::FullClient;
use compute_primitives::{Escrow, ProviderInfo, Service, ServiceId, ServiceKind};
use compute_runtime::{AccountId, BlockNumber, Hash};
use jsonrpsee::{
    core::RpcResult,
    proc_macros::rpc,
    types::{ErrorObject, ErrorObjectOwned},
};
use pallet_compute::runtime_api::{ComputeApi, ComputeParams};
use polkadot_sdk::{
    sp_api::{ApiError, ProvideRuntimeApi},
    sp_blockchain::HeaderBackend,
    sp_core::crypto::Ss58Codec,
};
use serde::Serialize;
use std::sync::Arc;

/// Default page size of the paginated methods.
const DEFAULT_PAGE: u32 = 100;

/// A service as JSON.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceJson {
    pub provider: String,
    pub service_id: ServiceId,
    pub kind: &'static str,
    pub model: String,
    pub url: String,
    pub input_price: String,
    pub output_price: String,
    pub verifiability: String,
    pub price_version: u32,
}

impl ServiceJson {
    fn new(provider: &AccountId, service_id: ServiceId, s: Service) -> Self {
        ServiceJson {
            provider: provider.to_ss58check(),
            service_id,
            kind: match s.kind {
                ServiceKind::Chat => "chat",
                ServiceKind::Embedding => "embedding",
            },
            model: String::from_utf8_lossy(&s.model).into_owned(),
            url: String::from_utf8_lossy(&s.url).into_owned(),
            input_price: s.input_price.to_string(),
            output_price: s.output_price.to_string(),
            verifiability: String::from_utf8_lossy(&s.verifiability).into_owned(),
            price_version: s.price_version,
        }
    }
}

/// An escrow as JSON.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EscrowJson {
    pub provider: String,
    pub balance: String,
    pub pending_refund: String,
    pub spendable: String,
    pub unlock_at: BlockNumber,
    pub settled_nonce: u64,
    pub settled_through: u64,
    pub settled_total: String,
    pub last_claimed_total: String,
    pub last_settled_at: BlockNumber,
    pub held: String,
    pub held_until: BlockNumber,
    pub held_next: String,
    pub held_next_until: BlockNumber,
}

impl EscrowJson {
    fn new(provider: &AccountId, e: Escrow<BlockNumber>) -> Self {
        EscrowJson {
            provider: provider.to_ss58check(),
            spendable: e.spendable().to_string(),
            balance: e.balance.to_string(),
            pending_refund: e.pending_refund.to_string(),
            unlock_at: e.unlock_at,
            settled_nonce: e.settled_nonce,
            settled_through: e.settled_through,
            settled_total: e.settled_total.to_string(),
            last_claimed_total: e.last_claimed_total.to_string(),
            last_settled_at: e.last_settled_at,
            held: e.held.to_string(),
            held_until: e.held_until,
            held_next: e.held_next.to_string(),
            held_next_until: e.held_next_until,
        }
    }
}

/// A provider's bond and statistics as JSON.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderJson {
    pub provider: String,
    pub bond: String,
    pub services: u32,
    pub unbonding: bool,
    pub claims_settled: u64,
    pub requests_settled: u64,
    pub earned: String,
    pub disputes_lost: u32,
    pub last_settled_at: BlockNumber,
    pub bond_locked_until: BlockNumber,
}

/// The pallet's parameters as JSON.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParamsJson {
    pub refund_lock: BlockNumber,
    pub dispute_window: BlockNumber,
    pub min_deposit: String,
    pub provider_bond: String,
    pub min_bond: String,
    pub max_batch: u32,
    pub escrow_deposit: String,
}

#[rpc(server, namespace = "compute")]
pub trait ComputeRpc {
    /// Services of all providers, `limit` (default 100, at most 256) starting after
    /// `[provider, serviceId]`.
    #[method(name = "services")]
    fn services(
        &self,
        start_after: Option<(AccountId, ServiceId)>,
        limit: Option<u32>,
        at: Option<Hash>,
    ) -> RpcResult<Vec<ServiceJson>>;

    /// All services of one provider.
    #[method(name = "servicesOf")]
    fn services_of(&self, provider: AccountId, at: Option<Hash>) -> RpcResult<Vec<ServiceJson>>;

    /// One service, or null.
    #[method(name = "service")]
    fn service(
        &self,
        provider: AccountId,
        service_id: ServiceId,
        at: Option<Hash>,
    ) -> RpcResult<Option<ServiceJson>>;

    /// The escrow of (user, provider), or null.
    #[method(name = "escrow")]
    fn escrow(
        &self,
        user: AccountId,
        provider: AccountId,
        at: Option<Hash>,
    ) -> RpcResult<Option<EscrowJson>>;

    /// Escrows of a user, `limit` starting after `provider`.
    #[method(name = "escrowsOf")]
    fn escrows_of(
        &self,
        user: AccountId,
        start_after: Option<AccountId>,
        limit: Option<u32>,
        at: Option<Hash>,
    ) -> RpcResult<Vec<EscrowJson>>;

    /// A provider's bond and statistics, or null.
    #[method(name = "provider")]
    fn provider(&self, provider: AccountId, at: Option<Hash>) -> RpcResult<Option<ProviderJson>>;

    /// Refund lock, dispute window and limits.
    #[method(name = "params")]
    fn params(&self, at: Option<Hash>) -> RpcResult<ParamsJson>;
}

/// Serves `compute_*` from the client's runtime API.
pub struct Compute {
    client: Arc<FullClient>,
}

impl Compute {
    pub fn new(client: Arc<FullClient>) -> Self {
        Compute { client }
    }

    fn at(&self, at: Option<Hash>) -> Hash {
        at.unwrap_or_else(|| self.client.info().best_hash)
    }
}

/// JSON-RPC error code of a failed runtime API call.
const RUNTIME_ERROR: i32 = 1;

fn runtime_error(e: ApiError) -> ErrorObjectOwned {
    ErrorObject::owned(RUNTIME_ERROR, "runtime API call failed", Some(e.to_string()))
}

impl ComputeRpcServer for Compute {
    fn services(
        &self,
        start_after: Option<(AccountId, ServiceId)>,
        limit: Option<u32>,
        at: Option<Hash>,
    ) -> RpcResult<Vec<ServiceJson>> {
        let api = self.client.runtime_api();
        let list = api
            .services(self.at(at), start_after, limit.unwrap_or(DEFAULT_PAGE))
            .map_err(runtime_error)?;
        Ok(list.into_iter().map(|(p, id, s)| ServiceJson::new(&p, id, s)).collect())
    }

    fn services_of(&self, provider: AccountId, at: Option<Hash>) -> RpcResult<Vec<ServiceJson>> {
        let list = self
            .client
            .runtime_api()
            .services_of(self.at(at), provider.clone())
            .map_err(runtime_error)?;
        Ok(list.into_iter().map(|(id, s)| ServiceJson::new(&provider, id, s)).collect())
    }

    fn service(
        &self,
        provider: AccountId,
        service_id: ServiceId,
        at: Option<Hash>,
    ) -> RpcResult<Option<ServiceJson>> {
        let s = self
            .client
            .runtime_api()
            .service(self.at(at), provider.clone(), service_id)
            .map_err(runtime_error)?;
        Ok(s.map(|s| ServiceJson::new(&provider, service_id, s)))
    }

    fn escrow(
        &self,
        user: AccountId,
        provider: AccountId,
        at: Option<Hash>,
    ) -> RpcResult<Option<EscrowJson>> {
        let e = self
            .client
            .runtime_api()
            .escrow(self.at(at), user, provider.clone())
            .map_err(runtime_error)?;
        Ok(e.map(|e| EscrowJson::new(&provider, e)))
    }

    fn escrows_of(
        &self,
        user: AccountId,
        start_after: Option<AccountId>,
        limit: Option<u32>,
        at: Option<Hash>,
    ) -> RpcResult<Vec<EscrowJson>> {
        let list = self
            .client
            .runtime_api()
            .escrows_of(self.at(at), user, start_after, limit.unwrap_or(DEFAULT_PAGE))
            .map_err(runtime_error)?;
        Ok(list.into_iter().map(|(p, e)| EscrowJson::new(&p, e)).collect())
    }

    fn provider(&self, provider: AccountId, at: Option<Hash>) -> RpcResult<Option<ProviderJson>> {
        let info: Option<ProviderInfo<BlockNumber>> = self
            .client
            .runtime_api()
            .provider(self.at(at), provider.clone())
            .map_err(runtime_error)?;
        Ok(info.map(|i| ProviderJson {
            provider: provider.to_ss58check(),
            bond: i.bond.to_string(),
            services: i.services,
            unbonding: i.unbonding,
            claims_settled: i.claims_settled,
            requests_settled: i.requests_settled,
            earned: i.earned.to_string(),
            disputes_lost: i.disputes_lost,
            last_settled_at: i.last_settled_at,
            bond_locked_until: i.bond_locked_until,
        }))
    }

    fn params(&self, at: Option<Hash>) -> RpcResult<ParamsJson> {
        let p: ComputeParams<BlockNumber> =
            self.client.runtime_api().params(self.at(at)).map_err(runtime_error)?;
        Ok(ParamsJson {
            refund_lock: p.refund_lock,
            dispute_window: p.dispute_window,
            min_deposit: p.min_deposit.to_string(),
            provider_bond: p.provider_bond.to_string(),
            min_bond: p.min_bond.to_string(),
            max_batch: p.max_batch,
            escrow_deposit: p.escrow_deposit.to_string(),
        })
    }
}
