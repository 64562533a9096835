//! Releasing held payments: a settled payment stays in the escrow until its dispute window
//! closes; a later `settle` of the escrow releases it, and for users who stopped asking the
//! worker submits `release` itself once due.

use super::{chain_timeout, store_err};
use crate::worker::Worker;
use compute_client::{ChainError, EscrowState};
use compute_primitives::AccountId;

/// The first block at which some of the escrow's held payments can be released.
fn next_release(e: &EscrowState) -> Option<compute_client::chain::BlockNumber> {
    [(e.held, e.held_until), (e.held_next, e.held_next_until)]
        .into_iter()
        .filter(|(held, _)| *held > 0)
        .map(|(_, until)| until)
        .min()
}

/// Read `user`'s escrow and remember when its held payments can be released.
pub(super) async fn track_release(worker: &Worker, user: &AccountId) -> Result<(), ChainError> {
    let escrow = chain_timeout(worker.chain.escrow(user, &worker.provider, None)).await?;
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
    let now = chain_timeout(worker.chain.block_number(None)).await?;
    let due: Vec<AccountId> = worker
        .releases
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(user, _)| user.clone())
        .collect();
    let max_batch = chain_timeout(worker.chain.params()).await?.max_batch.max(1) as usize;
    for chunk in due.chunks(max_batch) {
        tracing::info!(escrows = chunk.len(), "releasing held payments");
        super::tx_timeout(worker, worker.chain.release(&worker.signer, chunk.to_vec())).await?;
        for user in chunk {
            track_release(worker, user).await?;
        }
    }
    Ok(due.len())
}
