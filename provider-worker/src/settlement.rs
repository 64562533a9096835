//! The settlement scheduler: decides when an escrow is worth settling, builds the batch from
//! the store against the chain's current escrow state (so a claim the chain already settled is
//! never sent again), submits `settle`, and reads each claim's outcome from the events.

use crate::worker::Worker;
use compute_client::{ChainError, ComputeEvent, EscrowState};
use compute_primitives::{AccountId, Balance, Claim, Receipt, SignedReceipt, SignedVoucher};
use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

/// The best claim for one escrow and the receipts it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedClaim {
    pub claim: Claim,
    /// Receipts with nonces above the chain's settled nonce up to the claim's, in order.
    pub covers: Vec<Receipt>,
    /// What the chain will still owe after it (0 unless the escrow runs short).
    pub owed_total: Balance,
}

/// The claim that collects the most for an escrow: among the vouchers the chain can still take
/// (above `settled_nonce`, or the partially paid one again), the one with the largest
/// `spent + min(cap, total - spent)`; the highest nonce on ties so the chain advances.
pub fn plan_claim(
    escrow: &EscrowState,
    traces: &[(SignedVoucher, SignedReceipt)],
) -> Option<PlannedClaim> {
    let partial = escrow.settled_total < escrow.last_claimed_total;
    let mut best: Option<(Balance, &SignedVoucher, Balance)> = None;
    for (sv, sr) in traces {
        let v = &sv.voucher;
        let total = sr.receipt.total;
        let Some(above) = total.checked_sub(v.spent) else { continue };
        let fee_claim = above.min(v.cap);
        let Some(claimed) = v.spent.checked_add(fee_claim) else { continue };
        let eligible = v.nonce > escrow.settled_nonce
            || (partial && v.nonce == escrow.settled_nonce && claimed == escrow.last_claimed_total);
        if !eligible {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(c, b, _)| claimed > *c || (claimed == *c && v.nonce > b.voucher.nonce))
        {
            best = Some((claimed, sv, fee_claim));
        }
    }
    let (claimed, sv, fee_claim) = best?;
    let advances = sv.voucher.nonce > escrow.settled_nonce;
    if !advances && claimed <= escrow.settled_total {
        return None;
    }
    let covers = traces
        .iter()
        .filter(|(v, _)| {
            v.voucher.nonce > escrow.settled_nonce && v.voucher.nonce <= sv.voucher.nonce
        })
        .map(|(_, r)| r.receipt.clone())
        .collect();
    let latest = traces.last().map_or(0, |(_, r)| r.receipt.total);
    Some(PlannedClaim {
        claim: Claim { voucher: sv.clone(), fee_claim },
        covers,
        owed_total: latest.saturating_sub(claimed),
    })
}

/// Whether the policy says to settle this escrow now.
pub fn due(
    policy: &crate::config::SettlementConfig,
    escrow: &EscrowState,
    owed: Balance,
    oldest_age_secs: u64,
    count: u32,
) -> bool {
    let share = (escrow.spendable() as f64 * policy.threshold_share) as Balance;
    owed > 0 && owed >= share
        || escrow.pending_refund > 0
        || oldest_age_secs >= policy.max_age_secs
        || count >= policy.max_batch
}

/// The first block at which some of the escrow's held payments can be released.
fn next_release(e: &EscrowState) -> Option<compute_client::chain::BlockNumber> {
    [(e.held, e.held_until), (e.held_next, e.held_next_until)]
        .into_iter()
        .filter(|(held, _)| *held > 0)
        .map(|(_, until)| until)
        .min()
}

/// Read `user`'s escrow and remember when its held payments can be released.
async fn track_release(worker: &Worker, user: &AccountId) -> Result<(), ChainError> {
    let escrow = worker.chain.escrow(user, &worker.provider, None).await?;
    let mut releases = worker.releases.lock().unwrap_or_else(|p| p.into_inner());
    match escrow.as_ref().and_then(next_release) {
        Some(at) => releases.insert(user.clone(), at),
        None => releases.remove(user),
    };
    Ok(())
}

/// Learn which escrows hold payments from the users the store has settled (at start-up).
pub async fn load_releases(worker: &Worker) -> Result<usize, ChainError> {
    let users = worker.store.settled_users().await.map_err(store_err)?;
    for user in &users {
        track_release(worker, user).await?;
    }
    Ok(worker.releases.lock().unwrap_or_else(|p| p.into_inner()).len())
}

/// Submit `release` for the escrows whose held payments are past their dispute windows (a
/// settlement releases those of the escrows it touches; this covers users who stopped asking).
/// Returns the number of escrows released.
pub async fn release_due(worker: &Worker) -> Result<usize, ChainError> {
    if worker.releases.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
        return Ok(0);
    }
    let now = worker.chain.block_number(None).await?;
    let due: Vec<AccountId> = worker
        .releases
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(user, _)| user.clone())
        .collect();
    let max_batch = worker.chain.params().await?.max_batch.max(1) as usize;
    for chunk in due.chunks(max_batch) {
        tracing::info!(escrows = chunk.len(), "releasing held payments");
        worker.chain.release(&worker.signer, chunk.to_vec()).await?;
        for user in chunk {
            track_release(worker, user).await?;
        }
    }
    Ok(due.len())
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

/// One pass: settle every escrow that is due (or all with anything owed when `all`).
/// Returns the number of claims submitted.
pub async fn settle_due(worker: &Worker, all: bool) -> Result<usize, ChainError> {
    let policy = &worker.config.settlement;
    if !worker.store.settlement_turn().await.map_err(store_err)? {
        return Ok(0);
    }
    let users = worker.store.unsettled_users().await.map_err(store_err)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let max_batch = worker.chain.params().await?.max_batch.min(policy.max_batch) as usize;
    let mut planned: Vec<(AccountId, PlannedClaim)> = Vec::new();
    let mut unsettled: Balance = 0;
    for (user, oldest, count) in users {
        let escrow = worker.chain.escrow(&user, &worker.provider, None).await?.unwrap_or_default();
        let partial = escrow.settled_total < escrow.last_claimed_total;
        let from =
            if partial { escrow.settled_nonce.saturating_sub(1) } else { escrow.settled_nonce };
        let traces = worker.store.sealed_after(&user, from).await.map_err(store_err)?;
        let Some(plan) = plan_claim(&escrow, &traces) else {
            worker.store.mark_settled(&user, escrow.settled_nonce).await.map_err(store_err)?;
            continue;
        };
        let claimed = plan.claim.voucher.voucher.spent.saturating_add(plan.claim.fee_claim);
        let owed = claimed.saturating_sub(escrow.settled_total);
        unsettled = unsettled.saturating_add(owed);
        if all && owed > 0 || due(policy, &escrow, owed, now.saturating_sub(oldest), count) {
            planned.push((user, plan));
        }
    }
    *worker.metrics.unsettled.lock().unwrap_or_else(|p| p.into_inner()) = unsettled;
    let mut submitted = 0;
    planned.sort_by(|a, b| a.0.cmp(&b.0));
    for batch in planned.chunks(max_batch.max(1)) {
        submitted += submit(worker, batch).await?;
    }
    release_due(worker).await?;
    Ok(submitted)
}

fn store_err(e: crate::store::StoreError) -> ChainError {
    ChainError::Rpc { method: "trace store", reason: e.to_string() }
}

async fn submit(worker: &Worker, batch: &[(AccountId, PlannedClaim)]) -> Result<usize, ChainError> {
    let claims: Vec<Claim> = batch.iter().map(|(_, p)| p.claim.clone()).collect();
    let covered: Vec<&Receipt> = batch.iter().flat_map(|(_, p)| p.covers.iter()).collect();
    let root = compute_primitives::trace_root(covered);
    tracing::info!(claims = claims.len(), trace_root = ?root, "submitting settle");
    let outcome = match worker.chain.settle(&worker.signer, claims, root).await {
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
                track_release(worker, user).await?;
                tracing::info!(%user, nonce, paid, "claim settled");
            }
            ComputeEvent::ClaimPartiallySettled { user, nonce, paid, owed, .. } => {
                worker.invalidate(user);
                track_release(worker, user).await?;
                tracing::warn!(%user, nonce, paid, owed, "claim paid in part: escrow ran short");
            }
            ComputeEvent::ClaimRejected { user, nonce, reason, .. } => {
                worker.metrics.claims_rejected.fetch_add(1, Relaxed);
                worker.invalidate(user);
                tracing::error!(%user, nonce, ?reason, "claim rejected by the chain");
                // The chain's escrow state is the truth: whatever it holds as settled is done;
                // a voucher it refuses for any other reason can never be paid.
                if let Ok(Some(e)) = worker.chain.escrow(user, &worker.provider, None).await {
                    let upto = if matches!(reason, compute_primitives::RejectReason::StaleNonce) {
                        e.settled_nonce
                    } else {
                        *nonce
                    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use compute_client::{wire, Signer};
    use compute_primitives::Voucher;
    use polkadot_sdk::sp_core::H256;

    fn trace(
        nonce: u64,
        spent: Balance,
        cap: Balance,
        fee: Balance,
        total: Balance,
    ) -> (SignedVoucher, SignedReceipt) {
        let (u, p) = (Signer::from_uri("//Alice").unwrap(), Signer::from_uri("//Bob").unwrap());
        let g = H256::zero();
        let v = Voucher {
            user: u.account_id(),
            provider: p.account_id(),
            service_id: 0,
            price_version: 0,
            nonce,
            request_hash: H256::zero(),
            spent,
            cap,
        };
        let r = Receipt {
            user: u.account_id(),
            provider: p.account_id(),
            service_id: 0,
            nonce,
            request_hash: H256::zero(),
            response_hash: H256::zero(),
            input_tokens: 0,
            output_tokens: 0,
            fee,
            total,
        };
        (wire::sign_voucher(&u, v, &g), wire::sign_receipt(&p, r, &g))
    }

    #[test]
    fn the_latest_voucher_collects_everything() {
        let traces =
            vec![trace(1, 0, 100, 40, 40), trace(2, 40, 100, 30, 70), trace(3, 70, 100, 20, 90)];
        let p = plan_claim(&EscrowState { balance: 1_000, ..Default::default() }, &traces).unwrap();
        assert_eq!(p.claim.voucher.voucher.nonce, 3);
        assert_eq!(p.claim.fee_claim, 20);
        assert_eq!(p.covers.len(), 3);
        assert_eq!(p.owed_total, 0);
    }

    #[test]
    fn an_ack_beats_the_request_before_it_and_nothing_settled_is_claimed_again() {
        let traces = vec![trace(1, 0, 100, 40, 40), trace(2, 40, 0, 0, 40)];
        let p = plan_claim(&EscrowState { balance: 1_000, ..Default::default() }, &traces).unwrap();
        assert_eq!((p.claim.voucher.voucher.nonce, p.claim.fee_claim), (2, 0));
        let settled = EscrowState {
            balance: 960,
            settled_nonce: 2,
            settled_total: 40,
            last_claimed_total: 40,
            ..Default::default()
        };
        assert_eq!(plan_claim(&settled, &traces), None);
    }

    #[test]
    fn a_partial_is_collected_again_with_the_same_voucher() {
        let traces = vec![trace(1, 0, 100, 40, 40)];
        let partial = EscrowState {
            balance: 50,
            settled_nonce: 1,
            settled_total: 25,
            last_claimed_total: 40,
            ..Default::default()
        };
        let p = plan_claim(&partial, &traces).unwrap();
        assert_eq!((p.claim.voucher.voucher.nonce, p.claim.fee_claim), (1, 40));
        assert!(p.covers.is_empty());
    }

    #[test]
    fn policy_triggers() {
        let policy = crate::config::SettlementConfig::default();
        let e = EscrowState { balance: 1_000, ..Default::default() };
        assert!(!due(&policy, &e, 100, 10, 1));
        assert!(due(&policy, &e, 500, 10, 1));
        assert!(due(&policy, &e, 1, policy.max_age_secs, 1));
        assert!(due(&policy, &e, 1, 0, policy.max_batch));
        let refunding = EscrowState { pending_refund: 1, ..e };
        assert!(due(&policy, &refunding, 1, 0, 1));
    }
}
