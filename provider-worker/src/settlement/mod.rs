//! The settlement scheduler: decides when an escrow is worth settling ([`plan`]), builds the
//! batch from the store against the chain's current escrow state (so a claim the chain already
//! settled is never sent again), submits `settle`, reads each claim's outcome from the events,
//! and releases held payments ([`release`]). Every chain call has a timeout, one user's failure
//! never stops the others, and a claim that would collect nothing is never sent.

pub mod plan;
pub mod release;

pub use plan::{due, plan_claim, PlannedClaim};
pub use release::{load_releases, release_due};

use crate::worker::{Worker, CHAIN_READ_TIMEOUT};
use compute_client::{ChainError, ComputeEvent};
use compute_primitives::{AccountId, Balance, Claim, Receipt};
use std::{
    future::Future,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

async fn timeout<T>(
    limit: Duration,
    what: &'static str,
    call: impl Future<Output = Result<T, ChainError>>,
) -> Result<T, ChainError> {
    tokio::time::timeout(limit, call).await.map_err(|_| ChainError::Rpc {
        method: what,
        reason: format!("the node did not answer within {} s", limit.as_secs()),
    })?
}

/// A chain read, bounded by [`CHAIN_READ_TIMEOUT`].
pub(crate) async fn chain_timeout<T>(
    call: impl Future<Output = Result<T, ChainError>>,
) -> Result<T, ChainError> {
    timeout(CHAIN_READ_TIMEOUT, "chain read", call).await
}

/// A transaction, bounded by `settlement.tx_timeout_secs`.
pub(crate) async fn tx_timeout<T>(
    worker: &Worker,
    call: impl Future<Output = Result<T, ChainError>>,
) -> Result<T, ChainError> {
    let limit = Duration::from_secs(worker.config.settlement.tx_timeout_secs);
    timeout(limit, "transaction", call).await
}

/// Run the scheduler until the process ends.
pub async fn run(worker: Arc<Worker>) {
    let policy = worker.config.settlement.clone();
    let mut backoff = Duration::from_millis(policy.tick_ms);
    match load_releases(&worker).await {
        Ok(n) => tracing::info!(escrows = n, "escrows with held payments"),
        Err(e) => tracing::warn!(error = %e, "cannot read held payments; releasing as settled"),
    }
    loop {
        tokio::time::sleep(backoff).await;
        match settle_due(&worker, false).await {
            Ok(_) => backoff = Duration::from_millis(policy.tick_ms),
            Err(e) => {
                worker.metrics.settlement_failures.fetch_add(1, Relaxed);
                backoff = (backoff * 2).min(Duration::from_secs(policy.max_backoff_secs));
                tracing::warn!(error = %e, retry_in = ?backoff, "settlement failed");
            }
        }
    }
}

/// One pass: settle every escrow that is due (or all with anything owed when `all`). Only one
/// pass runs at a time in a process (the scheduler, or the settlement at exit). Returns the
/// number of claims submitted.
pub async fn settle_due(worker: &Worker, all: bool) -> Result<usize, ChainError> {
    let _turn = worker.settling.lock().await;
    let policy = &worker.config.settlement;
    if !worker.store.settlement_turn().await.map_err(store_err)? {
        return Ok(0);
    }
    let users = worker.store.unsettled_users().await.map_err(store_err)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let max_batch =
        chain_timeout(worker.chain.params()).await?.max_batch.min(policy.max_batch) as usize;
    let mut planned: Vec<(AccountId, PlannedClaim)> = Vec::new();
    let mut unsettled: Balance = 0;
    let mut failed = 0usize;
    for (user, oldest, count) in users {
        match plan_user(worker, &user).await {
            Ok(Some((plan, owed, escrow))) => {
                unsettled = unsettled.saturating_add(owed);
                let age = now.saturating_sub(oldest);
                if all || due(policy, &escrow, owed, age, count) {
                    planned.push((user, plan));
                }
            }
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                tracing::warn!(%user, error = %e, "cannot plan this user's claim; next pass");
            }
        }
    }
    *worker.metrics.unsettled.lock().unwrap_or_else(|p| p.into_inner()) = unsettled;
    let mut submitted = 0;
    planned.sort_by(|a, b| a.0.cmp(&b.0));
    let mut first_error = None;
    for batch in planned.chunks(max_batch.max(1)) {
        // One failed batch (a timeout, a refused transaction) leaves the others going.
        match submit(worker, batch).await {
            Ok(n) => submitted += n,
            Err(e) => {
                tracing::warn!(claims = batch.len(), error = %e, "batch not settled; next pass");
                first_error.get_or_insert(e);
            }
        }
    }
    if let Err(e) = release_due(worker).await {
        tracing::warn!(error = %e, "cannot release held payments; next pass");
    }
    if failed > 0 {
        worker.metrics.settlement_failures.fetch_add(1, Relaxed);
    }
    match first_error {
        // Every batch failed: back off (the chain or node is likely down).
        Some(e) if submitted == 0 => Err(e),
        _ => Ok(submitted),
    }
}

/// The claim worth sending for `user`, with what it collects and the escrow; `None` when there
/// is nothing to collect (then the user's traces are marked settled: no claim could pay them).
async fn plan_user(
    worker: &Worker,
    user: &AccountId,
) -> Result<Option<(PlannedClaim, Balance, compute_client::EscrowState)>, ChainError> {
    let escrow = chain_timeout(worker.chain.escrow(user, &worker.provider, None)).await?;
    let Some(escrow) = escrow else {
        // No escrow on chain: nothing can be collected from these traces, ever.
        tracing::warn!(%user, "no escrow on chain for unsettled traces; dropping them");
        worker.store.mark_settled(user, i64::MAX as u64).await.map_err(store_err)?;
        return Ok(None);
    };
    let partial = escrow.settled_total < escrow.last_claimed_total;
    let from = if partial { escrow.settled_nonce.saturating_sub(1) } else { escrow.settled_nonce };
    let traces = worker.store.sealed_after(user, from).await.map_err(store_err)?;
    let Some(plan) = plan_claim(&escrow, &traces) else {
        worker.store.mark_settled(user, escrow.settled_nonce).await.map_err(store_err)?;
        return Ok(None);
    };
    let claimed = plan.claim.voucher.voucher.spent.saturating_add(plan.claim.fee_claim);
    let owed = claimed.saturating_sub(escrow.settled_total);
    if owed > 0 && escrow.balance == 0 {
        // An empty escrow pays nothing now: wait for a deposit rather than pay fees for nothing.
        return Ok(None);
    }
    if owed == 0 {
        // Fee-0 receipts and acks collect nothing: never pay a transaction fee for them.
        let upto = plan.claim.voucher.voucher.nonce;
        worker.store.mark_settled(user, upto).await.map_err(store_err)?;
        return Ok(None);
    }
    Ok(Some((plan, owed, escrow)))
}

pub(crate) fn store_err(e: crate::store::StoreError) -> ChainError {
    ChainError::Rpc { method: "trace store", reason: e.to_string() }
}

async fn submit(worker: &Worker, batch: &[(AccountId, PlannedClaim)]) -> Result<usize, ChainError> {
    let claims: Vec<Claim> = batch.iter().map(|(_, p)| p.claim.clone()).collect();
    let covered: Vec<&Receipt> = batch.iter().flat_map(|(_, p)| p.covers.iter()).collect();
    let root = compute_primitives::trace_root(covered);
    tracing::info!(claims = claims.len(), trace_root = ?root, "submitting settle");
    let outcome = match tx_timeout(worker, worker.chain.settle(&worker.signer, claims, root)).await
    {
        Ok(o) => o,
        Err(e) => {
            let _ = worker
                .store
                .record_batch(root.as_bytes(), batch.len() as u32, None, None, Some(&e.to_string()))
                .await;
            return Err(e);
        }
    };
    worker.metrics.settlements.fetch_add(1, Relaxed);
    let mut paid_total: Balance = 0;
    for event in &outcome.events {
        match event {
            ComputeEvent::ClaimSettled { user, nonce, paid, .. } => {
                worker.store.mark_settled(user, *nonce).await.map_err(store_err)?;
                worker.invalidate(user);
                if let Err(e) = release::track_release(worker, user).await {
                    tracing::warn!(%user, error = %e, "cannot read held payments");
                }
                tracing::info!(%user, nonce, paid, "claim settled");
            }
            ComputeEvent::ClaimPartiallySettled { user, nonce, paid, owed, .. } => {
                worker.invalidate(user);
                if let Err(e) = release::track_release(worker, user).await {
                    tracing::warn!(%user, error = %e, "cannot read held payments");
                }
                tracing::warn!(%user, nonce, paid, owed, "claim paid in part: escrow ran short");
            }
            ComputeEvent::ClaimRejected { user, nonce, reason, .. } => {
                worker.metrics.claims_rejected.fetch_add(1, Relaxed);
                worker.invalidate(user);
                tracing::error!(%user, nonce, ?reason, "claim rejected by the chain");
                // The chain's escrow state is the truth: whatever it holds as settled in a
                // finalized block is done (a best block's settlement could still be reverted);
                // a voucher it refuses for any other reason can never be paid.
                let upto = if matches!(reason, compute_primitives::RejectReason::StaleNonce) {
                    let finalized = chain_timeout(worker.chain.finalized_head()).await.ok();
                    match finalized {
                        Some(at) => {
                            chain_timeout(worker.chain.escrow(user, &worker.provider, Some(at)))
                                .await
                                .ok()
                                .flatten()
                                .map(|e| e.settled_nonce)
                        }
                        None => None,
                    }
                } else {
                    Some(*nonce)
                };
                if let Some(upto) = upto {
                    worker.store.mark_settled(user, upto).await.map_err(store_err)?;
                }
            }
            ComputeEvent::BatchSettled { paid, .. } => paid_total = *paid,
            _ => {}
        }
    }
    *worker.metrics.earned.lock().unwrap_or_else(|p| p.into_inner()) += paid_total;
    let _ = worker
        .store
        .record_batch(
            root.as_bytes(),
            batch.len() as u32,
            Some(outcome.block_hash.as_bytes()),
            Some(paid_total),
            None,
        )
        .await;
    Ok(batch.len())
}
