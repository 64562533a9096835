//! A client for the compute chain: reads through the node's `compute_*` JSON-RPC methods, writes
//! through subxt with call arguments SCALE-encoded from the shared primitive types (so the
//! worker and CLI can never disagree with the pallet about a field), events decoded into
//! [`ComputeEvent`].

use crate::{events::ComputeEvent, keys::Signer};
use codec::Encode;
use compute_primitives::rpc::{EscrowJson, ParamsJson, ProviderJson, ServiceJson};
use compute_primitives::{
    AccountId, Balance, Claim, ModelName, Nonce, ServiceId, ServiceKind, SignedReceipt, Url,
    Verifiability,
};
use polkadot_sdk::sp_core::H256;
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};
use subxt::{
    ext::{scale_encode, scale_encode::EncodeAsType},
    rpcs::{rpc_params, RpcClient},
    OnlineClient, PolkadotConfig,
};

/// Block numbers on this chain.
pub type BlockNumber = u32;

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The node did not answer at this URL.
    #[error("cannot reach the node at {url}: {reason}")]
    Unreachable {
        /// Node URL.
        url: String,
        /// Last connection error.
        reason: String,
    },
    /// An RPC call failed.
    #[error("RPC {method} failed: {reason}")]
    Rpc {
        /// Method called.
        method: &'static str,
        /// Error text.
        reason: String,
    },
    /// The node answered something this client does not understand.
    #[error("unexpected answer from {method}: {reason}")]
    Decode {
        /// Method called.
        method: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The transaction could not be submitted or was not included.
    #[error("transaction {call} failed: {reason}")]
    Transaction {
        /// Call name.
        call: &'static str,
        /// Error text, with the pallet error name when the dispatch failed.
        reason: String,
    },
}

/// An escrow as the chain holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EscrowState {
    pub balance: Balance,
    pub pending_refund: Balance,
    pub unlock_at: BlockNumber,
    pub settled_nonce: Nonce,
    pub settled_through: Nonce,
    pub settled_total: Balance,
    pub last_claimed_total: Balance,
    pub last_settled_at: BlockNumber,
    /// Paid by settlement, kept in the escrow account until `held_until` (open to disputes).
    pub held: Balance,
    pub held_until: BlockNumber,
    /// Paid while `held` was locked; kept until `held_next_until`.
    pub held_next: Balance,
    pub held_next_until: BlockNumber,
}

impl EscrowState {
    /// Held payments whose dispute window has closed at block `now`: `release` moves them to
    /// the provider.
    pub fn releasable(&self, now: BlockNumber) -> Balance {
        let due = |held: Balance, until: BlockNumber| if now >= until { held } else { 0 };
        due(self.held, self.held_until).saturating_add(due(self.held_next, self.held_next_until))
    }

    /// Balance not asked back.
    pub fn spendable(&self) -> Balance {
        self.balance.saturating_sub(self.pending_refund)
    }
}

/// The terms a provider offers a service on (`register_service`, `update_service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTerms {
    pub kind: ServiceKind,
    /// Model name clients send.
    pub model: String,
    /// blake2-256 of the weight file served; zero to commit to none.
    pub model_hash: H256,
    /// Where the worker answers.
    pub url: String,
    /// Per input token.
    pub input_price: Balance,
    /// Per output token.
    pub output_price: Balance,
    /// How responses can be verified.
    pub verifiability: String,
}

/// A registered service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub provider: AccountId,
    pub service_id: ServiceId,
    pub kind: ServiceKind,
    pub model: String,
    /// blake2-256 of the weights served; zero when none is committed.
    pub model_hash: H256,
    pub url: String,
    pub input_price: Balance,
    pub output_price: Balance,
    pub verifiability: String,
    pub price_version: u32,
}

impl ServiceInfo {
    /// The terms it is offered on.
    pub fn terms(&self) -> ServiceTerms {
        ServiceTerms {
            kind: self.kind,
            model: self.model.clone(),
            model_hash: self.model_hash,
            url: self.url.clone(),
            input_price: self.input_price,
            output_price: self.output_price,
            verifiability: self.verifiability.clone(),
        }
    }

    /// Fee of a request at these prices; `None` on overflow.
    pub fn fee(&self, input_tokens: u64, output_tokens: u64) -> Option<Balance> {
        compute_primitives::fee(input_tokens, output_tokens, self.input_price, self.output_price)
    }
}

/// A provider's bond and statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderState {
    pub bond: Balance,
    pub services: u32,
    pub unbonding: bool,
    pub claims_settled: u64,
    pub requests_settled: u64,
    pub earned: Balance,
    pub disputes_lost: u32,
    pub last_settled_at: BlockNumber,
    /// The bond cannot be withdrawn before this block (the last dispute window closes).
    pub bond_locked_until: BlockNumber,
}

/// The pallet's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub refund_lock: BlockNumber,
    pub dispute_window: BlockNumber,
    pub min_deposit: Balance,
    pub provider_bond: Balance,
    pub min_bond: Balance,
    pub max_batch: u32,
    /// Held from a user, once per escrow record, for the record's life.
    pub escrow_deposit: Balance,
}

/// What an included transaction did.
#[derive(Debug, Clone)]
pub struct TxOutcome {
    /// Block that included it.
    pub block_hash: H256,
    /// The compute pallet's events of this transaction.
    pub events: Vec<ComputeEvent>,
}

/// How long to wait for a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Finalized and successful.
    Finalized,
}

/// Called with a line of text at each stage of a transaction (pool, block, finality).
pub type ProgressFn = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// A connection to a compute node.
#[derive(Clone)]
pub struct Chain {
    progress: Option<ProgressFn>,
    pub(crate) api: OnlineClient<PolkadotConfig>,
    rpc: RpcClient,
    genesis: H256,
    url: String,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chain({})", self.url)
    }
}

/// Already SCALE-encoded call arguments: the shared primitive types are the pallet's own types,
/// so their `Encode` is the metadata's encoding.
pub(crate) struct Scale<T>(pub(crate) T);

impl<T: Encode> EncodeAsType for Scale<T> {
    fn encode_as_type_to<R: scale_encode::TypeResolver>(
        &self,
        _type_id: R::TypeId,
        _types: &R,
        out: &mut Vec<u8>,
    ) -> Result<(), scale_encode::Error> {
        self.0.encode_to(out);
        Ok(())
    }
}

fn service_from_json(s: ServiceJson) -> Result<ServiceInfo, ChainError> {
    Ok(ServiceInfo {
        provider: s.provider.parse().map_err(|_| ChainError::Decode {
            method: "compute_service",
            reason: "bad provider".into(),
        })?,
        service_id: s.service_id,
        kind: s.kind,
        model: s.model,
        model_hash: s.model_hash,
        url: s.url,
        input_price: s.input_price,
        output_price: s.output_price,
        verifiability: s.verifiability,
        price_version: s.price_version,
    })
}

fn bounded<B: TryFrom<Vec<u8>>>(field: &'static str, s: &str) -> Result<B, ChainError> {
    B::try_from(s.as_bytes().to_vec()).map_err(|_| ChainError::Transaction {
        call: "register_service",
        reason: format!("{field} is too long"),
    })
}

impl Chain {
    /// Connect, retrying for up to `wait` while the node starts.
    pub async fn connect(url: &str, wait: Duration) -> Result<Chain, ChainError> {
        let deadline = Instant::now() + wait;
        loop {
            let attempt = async {
                let rpc = if url.starts_with("ws://") || url.starts_with("http://") {
                    RpcClient::from_insecure_url(url).await
                } else {
                    RpcClient::from_url(url).await
                }
                .map_err(|e| e.to_string())?;
                let api = OnlineClient::<PolkadotConfig>::from_rpc_client(rpc.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((rpc, api))
            };
            match attempt.await {
                Ok((rpc, api)) => {
                    let genesis = H256(api.genesis_hash().0);
                    return Ok(Chain { progress: None, api, rpc, genesis, url: url.to_string() });
                }
                Err(reason) if Instant::now() >= deadline => {
                    return Err(ChainError::Unreachable { url: url.to_string(), reason })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Report each stage of the transactions this client submits (for progress output).
    pub fn with_progress(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.progress = Some(std::sync::Arc::new(f));
        self
    }

    fn report(&self, stage: &str) {
        if let Some(f) = &self.progress {
            f(stage);
        }
    }

    /// The chain's genesis hash: the domain every voucher and receipt is signed for.
    pub fn genesis_hash(&self) -> H256 {
        self.genesis
    }

    /// The node URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: subxt::rpcs::client::RpcParams,
    ) -> Result<T, ChainError> {
        self.rpc
            .request(method, params)
            .await
            .map_err(|e| ChainError::Rpc { method, reason: e.to_string() })
    }

    /// Hash of the latest finalized block.
    pub async fn finalized_head(&self) -> Result<H256, ChainError> {
        self.call("chain_getFinalizedHead", rpc_params![]).await
    }

    /// Number of the best block (or of `at`).
    pub async fn block_number(&self, at: Option<H256>) -> Result<BlockNumber, ChainError> {
        const M: &str = "chain_getHeader";
        let header: serde_json::Value = self.call(M, rpc_params![at]).await?;
        let hex = header["number"]
            .as_str()
            .ok_or(ChainError::Decode { method: M, reason: "no number".into() })?;
        u32::from_str_radix(hex.trim_start_matches("0x"), 16)
            .map_err(|e| ChainError::Decode { method: M, reason: e.to_string() })
    }

    /// The escrow of (user, provider) at `at` (best block when `None`).
    pub async fn escrow(
        &self,
        user: &AccountId,
        provider: &AccountId,
        at: Option<H256>,
    ) -> Result<Option<EscrowState>, ChainError> {
        const M: &str = "compute_escrow";
        let e: Option<EscrowJson<BlockNumber>> =
            self.call(M, rpc_params![user.to_string(), provider.to_string(), at]).await?;
        Ok(e.map(|e| EscrowState {
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
        }))
    }

    /// One service, if registered.
    pub async fn service(
        &self,
        provider: &AccountId,
        service_id: ServiceId,
    ) -> Result<Option<ServiceInfo>, ChainError> {
        let s: Option<ServiceJson> = self
            .call("compute_service", rpc_params![provider.to_string(), service_id, None::<H256>])
            .await?;
        s.map(service_from_json).transpose()
    }

    /// The services of one provider.
    pub async fn services_of(&self, provider: &AccountId) -> Result<Vec<ServiceInfo>, ChainError> {
        let s: Vec<ServiceJson> =
            self.call("compute_servicesOf", rpc_params![provider.to_string()]).await?;
        s.into_iter().map(service_from_json).collect()
    }

    /// Every service, following the pages.
    pub async fn services(&self) -> Result<Vec<ServiceInfo>, ChainError> {
        let mut all = Vec::new();
        let mut after: Option<(String, ServiceId)> = None;
        loop {
            let page: Vec<ServiceJson> = self
                .call("compute_services", rpc_params![after.clone(), 256u32, None::<H256>])
                .await?;
            let n = page.len();
            for s in page {
                after = Some((s.provider.clone(), s.service_id));
                all.push(service_from_json(s)?);
            }
            if n < 256 {
                return Ok(all);
            }
        }
    }

    /// A provider's bond and statistics.
    pub async fn provider(
        &self,
        provider: &AccountId,
    ) -> Result<Option<ProviderState>, ChainError> {
        const M: &str = "compute_provider";
        let p: Option<ProviderJson<BlockNumber>> =
            self.call(M, rpc_params![provider.to_string()]).await?;
        Ok(p.map(|p| ProviderState {
            bond: p.bond,
            services: p.services,
            unbonding: p.unbonding,
            claims_settled: p.claims_settled,
            requests_settled: p.requests_settled,
            earned: p.earned,
            disputes_lost: p.disputes_lost,
            last_settled_at: p.last_settled_at,
            bond_locked_until: p.bond_locked_until,
        }))
    }

    /// The pallet's parameters.
    pub async fn params(&self) -> Result<Params, ChainError> {
        let p: ParamsJson<BlockNumber> = self.call("compute_params", rpc_params![]).await?;
        Ok(Params {
            refund_lock: p.refund_lock,
            dispute_window: p.dispute_window,
            min_deposit: p.min_deposit,
            provider_bond: p.provider_bond,
            min_bond: p.min_bond,
            max_batch: p.max_batch,
            escrow_deposit: p.escrow_deposit,
        })
    }

    /// Free balance of an account (best block).
    pub async fn free_balance(&self, who: &AccountId) -> Result<Balance, ChainError> {
        use subxt::{dynamic::Value, ext::scale_value::At};
        let at = self
            .api
            .at_current_block()
            .await
            .map_err(|e| ChainError::Rpc { method: "state_getStorage", reason: e.to_string() })?;
        let addr = subxt::dynamic::storage::<([u8; 32],), Value>("System", "Account");
        let raw: [u8; 32] = *who.as_ref();
        let value = at
            .storage()
            .try_fetch(addr, (raw,))
            .await
            .map_err(|e| ChainError::Rpc { method: "state_getStorage", reason: e.to_string() })?;
        let Some(value) = value else { return Ok(0) };
        let info = value.decode().map_err(|e| ChainError::Decode {
            method: "state_getStorage",
            reason: e.to_string(),
        })?;
        Ok(info.at("data").and_then(|d| d.at("free")).and_then(|f| f.as_u128()).unwrap_or(0))
    }

    pub(crate) async fn submit<Args: subxt::ext::scale_encode::EncodeAsFields>(
        &self,
        signer: &Signer,
        call: &'static str,
        args: Args,
        wait: Wait,
    ) -> Result<TxOutcome, ChainError> {
        self.submit_to("Compute", signer, call, args, wait).await
    }

    pub(crate) async fn submit_to<Args: subxt::ext::scale_encode::EncodeAsFields>(
        &self,
        pallet: &'static str,
        signer: &Signer,
        call: &'static str,
        args: Args,
        wait: Wait,
    ) -> Result<TxOutcome, ChainError> {
        let fail = |e: String| ChainError::Transaction { call, reason: e };
        let tx = subxt::dynamic::transaction(pallet, call, args);
        let at = self.api.at_current_block().await.map_err(|e| fail(e.to_string()))?;
        let mut progress = at
            .transactions()
            .sign_and_submit_then_watch_default(&tx, signer.keypair())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let Wait::Finalized = wait;
        let in_block = loop {
            use subxt::transactions::TransactionStatus as S;
            match progress.next().await {
                Some(Ok(S::Validated)) => self.report(&format!("{call}: accepted into the pool")),
                Some(Ok(S::Broadcasted)) => self.report(&format!("{call}: broadcast to peers")),
                Some(Ok(S::InBestBlock(b))) => self.report(&format!(
                    "{call}: in block {:?}, waiting for finality",
                    H256(b.block_hash().0)
                )),
                Some(Ok(S::NoLongerInBestBlock)) => {
                    self.report(&format!("{call}: block retracted, waiting for another"))
                }
                Some(Ok(S::InFinalizedBlock(b))) => {
                    self.report(&format!("{call}: finalized in {:?}", H256(b.block_hash().0)));
                    break b;
                }
                Some(Ok(S::Error { message }))
                | Some(Ok(S::Invalid { message }))
                | Some(Ok(S::Dropped { message })) => return Err(fail(message)),
                Some(Err(e)) => return Err(fail(e.to_string())),
                None => return Err(fail("the node closed the transaction's status stream".into())),
            }
        };
        let block_hash = H256(in_block.block_hash().0);
        let events = in_block.wait_for_success().await.map_err(|e| fail(e.to_string()))?;
        let mut out = Vec::new();
        for ev in events.iter() {
            let ev = ev.map_err(|e| fail(e.to_string()))?;
            if ev.pallet_name() == "Compute" {
                let decoded = ComputeEvent::decode(ev.event_name(), ev.field_bytes())
                    .map_err(|e| fail(format!("event {}: {e}", ev.event_name())))?;
                out.push(decoded);
            }
        }
        Ok(TxOutcome { block_hash, events: out })
    }

    /// Register a service on `terms` (holds the provider bond on the first one), or with `update`
    /// change the terms of one registered (a price change bumps its price version).
    pub async fn register_service(
        &self,
        signer: &Signer,
        service_id: ServiceId,
        terms: &ServiceTerms,
        update: bool,
    ) -> Result<TxOutcome, ChainError> {
        let model: ModelName = bounded("model", &terms.model)?;
        let url: Url = bounded("url", &terms.url)?;
        let verifiability: Verifiability = bounded("verifiability", &terms.verifiability)?;
        let call = if update { "update_service" } else { "register_service" };
        let on_chain = compute_primitives::ServiceTerms {
            kind: terms.kind,
            model,
            model_hash: terms.model_hash,
            url,
            input_price: terms.input_price,
            output_price: terms.output_price,
            verifiability,
        };
        self.submit(signer, call, (Scale(service_id), Scale(on_chain)), Wait::Finalized).await
    }

    /// Move `amount` of free balance to `to` (`Balances::transfer_keep_alive`).
    pub async fn transfer(
        &self,
        signer: &Signer,
        to: &AccountId,
        amount: Balance,
    ) -> Result<TxOutcome, ChainError> {
        // `MultiAddress::Id(to)`: variant 0, then the account.
        let dest = Scale((0u8, to.clone()));
        let args = (dest, Scale(codec::Compact(amount)));
        self.submit_to("Balances", signer, "transfer_keep_alive", args, Wait::Finalized).await
    }

    /// Fund the escrow with `provider`.
    pub async fn deposit(
        &self,
        signer: &Signer,
        provider: &AccountId,
        amount: Balance,
    ) -> Result<TxOutcome, ChainError> {
        self.submit(
            signer,
            "deposit",
            (Scale(provider.clone()), Scale(codec::Compact(amount))),
            Wait::Finalized,
        )
        .await
    }

    /// Ask for part of the escrow back.
    pub async fn request_refund(
        &self,
        signer: &Signer,
        provider: &AccountId,
        amount: Balance,
    ) -> Result<TxOutcome, ChainError> {
        let args = (Scale(provider.clone()), Scale(codec::Compact(amount)));
        self.submit(signer, "request_refund", args, Wait::Finalized).await
    }

    /// Cancel a pending refund.
    pub async fn cancel_refund(
        &self,
        signer: &Signer,
        provider: &AccountId,
    ) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "cancel_refund", (Scale(provider.clone()),), Wait::Finalized).await
    }

    /// Withdraw an unlocked refund.
    pub async fn withdraw_refund(
        &self,
        signer: &Signer,
        provider: &AccountId,
    ) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "withdraw_refund", (Scale(provider.clone()),), Wait::Finalized).await
    }

    /// Settle a batch of claims.
    pub async fn settle(
        &self,
        signer: &Signer,
        claims: Vec<Claim>,
        trace_root: H256,
    ) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "settle", (Scale(claims), Scale(trace_root)), Wait::Finalized).await
    }

    /// Move to the provider the held payments of its escrows with `users` whose dispute windows
    /// have closed.
    pub async fn release(
        &self,
        signer: &Signer,
        users: Vec<AccountId>,
    ) -> Result<TxOutcome, ChainError> {
        self.submit(signer, "release", (Scale(users),), Wait::Finalized).await
    }

    /// Prove an over-claim with a provider-signed receipt.
    pub async fn dispute(
        &self,
        signer: &Signer,
        provider: &AccountId,
        receipt: SignedReceipt,
    ) -> Result<TxOutcome, ChainError> {
        let args = (Scale(provider.clone()), Scale(receipt));
        self.submit(signer, "dispute", args, Wait::Finalized).await
    }

    /// Compute events of each new best block, in order, passed to `f` until it returns false or
    /// the subscription ends.
    pub async fn watch_best_events<F>(&self, mut f: F) -> Result<(), ChainError>
    where
        F: FnMut(u64, Vec<ComputeEvent>) -> bool,
    {
        let fail = |e: String| ChainError::Rpc { method: "chain_subscribeNewHeads", reason: e };
        let mut blocks = self.api.stream_best_blocks().await.map_err(|e| fail(e.to_string()))?;
        while let Some(block) = blocks.next().await {
            let block = block.map_err(|e| fail(e.to_string()))?;
            let at = block.at().await.map_err(|e| fail(e.to_string()))?;
            let events = at.events().fetch().await.map_err(|e| fail(e.to_string()))?;
            let mut out = Vec::new();
            for ev in events.iter() {
                let ev = ev.map_err(|e| fail(e.to_string()))?;
                if ev.pallet_name() == "Compute" {
                    if let Ok(decoded) = ComputeEvent::decode(ev.event_name(), ev.field_bytes()) {
                        out.push(decoded);
                    }
                }
            }
            if !f(block.number(), out) {
                break;
            }
        }
        Ok(())
    }
}
