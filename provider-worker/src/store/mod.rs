//! The durable trace store: every admitted voucher, every receipt and the response it went
//! with, the per-user sequencer, and settlement bookkeeping.
//!
//! Two backends with one schema: embedded SQLite (WAL journal) for a single worker process, and
//! PostgreSQL when several worker processes serve one provider account. Either way the
//! sequencer is a row per user changed inside one transaction (SQLite: an immediate
//! transaction; PostgreSQL: `SELECT … FOR UPDATE` on the row), so exactly one request can take
//! each nonce, whichever process receives it.

mod postgres;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use compute_primitives::{AccountId, Balance, Nonce, SignedReceipt, SignedVoucher};
use std::path::Path;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("trace store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("trace store (PostgreSQL): {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("trace store holds a corrupt {0}")]
    Corrupt(&'static str),
    #[error("trace store unavailable: {0}")]
    Unavailable(&'static str),
    #[error(
        "the trace store holds receipts of an older format (without `proof_hash`), which this \
         chain no longer accepts; settle them with the worker that wrote them, or start with a \
         new store"
    )]
    OldReceiptFormat,
}

/// A sealed receipt as `GET /v1/receipts` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    /// The user's voucher it answers.
    pub voucher: SignedVoucher,
    pub receipt: SignedReceipt,
    /// The activation proof whose hash the receipt carries (chat responses).
    pub proof: Option<Vec<u8>>,
}

/// How hard each commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fsync on every commit: survives power loss.
    #[default]
    Fsync,
    /// Written to the OS: survives a crash of the worker, not of the machine.
    Os,
}

/// A user's sequencer row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sequence {
    /// Highest nonce taken (sealed or in flight); 0 when none.
    pub last_nonce: Nonce,
    /// Total of the highest sealed receipt.
    pub last_total: Balance,
    /// Highest sealed nonce.
    pub sealed_nonce: Nonce,
}

/// What admission sees about a user, read in the same transaction that takes the nonce.
#[derive(Debug, Clone, Default)]
pub struct UserView {
    /// The sequencer row.
    pub seq: Sequence,
    /// `(nonce, total)` of the sealed receipts with the highest nonces (up to the window).
    pub recent_totals: Vec<(Nonce, Balance)>,
    /// Caps of requests in flight.
    pub in_flight_caps: Balance,
    /// Number of requests in flight.
    pub in_flight: u32,
}

/// A stored trace.
#[derive(Debug, Clone)]
pub struct Trace {
    pub voucher: SignedVoucher,
    pub receipt: Option<SignedReceipt>,
    /// HTTP status and JSON body sent (for retries).
    pub response: Option<(u16, String)>,
    pub created_at: u64,
}

pub(crate) fn u128_of(s: String) -> Result<Balance, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt("amount"))
}

/// How often a worker process marks itself alive in the store.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);
/// A worker process not seen for this long is gone: its unanswered requests are sealed by the
/// others (PostgreSQL; with SQLite there is one process, so every earlier one is gone).
pub const GONE_AFTER_SECS: u64 = 20;

/// Run a blocking SQLite call without stalling the async threads: on a multi-threaded runtime
/// the thread hands its other tasks away for the duration (`block_in_place`).
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The store, whichever backend.
pub enum Store {
    /// One worker process.
    Sqlite(SqliteStore),
    /// Several worker processes behind one provider account.
    Postgres(PgStore),
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr, $p:ident => $pe:expr) => {
        match $self {
            Store::Sqlite($s) => blocking(|| $e),
            Store::Postgres($p) => $pe,
        }
    };
}

impl Store {
    /// SQLite at `path`.
    pub fn sqlite(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        Ok(Store::Sqlite(SqliteStore::open(path, durability)?))
    }

    /// PostgreSQL at `url` (`postgres://user@host:port/db` or key=value form).
    pub async fn postgres(url: &str) -> Result<Self, StoreError> {
        Ok(Store::Postgres(PgStore::connect(url).await?))
    }

    /// Take `voucher`'s nonce if `check` accepts the user's current view, atomically; the
    /// request is recorded in flight, served by worker process `owner`.
    pub async fn admit<E>(
        &self,
        voucher: &SignedVoucher,
        window: u32,
        owner: i64,
        check: impl FnOnce(&UserView) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        both!(self,
            s => s.admit(voucher, window, owner, check),
            p => p.admit(voucher, window, owner, check).await)
    }

    /// Register a new worker process; returns its id.
    pub async fn register_instance(&self) -> Result<i64, StoreError> {
        both!(self, s => s.register_instance(), p => p.register_instance().await)
    }

    /// Mark worker process `id` alive now.
    pub async fn heartbeat(&self, id: i64) -> Result<(), StoreError> {
        both!(self, s => s.heartbeat(id), p => p.heartbeat(id).await)
    }

    /// The user's sequencer row.
    pub async fn sequence(&self, user: &AccountId) -> Result<Sequence, StoreError> {
        both!(self, s => s.sequence(user), p => p.sequence(user).await)
    }

    /// Seal an admitted request with its receipt, the activation proof the receipt commits to
    /// (if any) and the response.
    pub async fn seal(
        &self,
        receipt: &SignedReceipt,
        proof: Option<&[u8]>,
        status: u16,
        response: &str,
    ) -> Result<(), StoreError> {
        both!(self,
            s => s.seal(receipt, proof, status, response),
            p => p.seal(receipt, proof, status, response).await)
    }

    /// Take a nonce and seal it at once with a fee-0 receipt.
    pub async fn admit_and_seal(
        &self,
        voucher: &SignedVoucher,
        receipt: &SignedReceipt,
        status: u16,
        response: &str,
    ) -> Result<bool, StoreError> {
        both!(self,
            s => s.admit_and_seal(voucher, receipt, status, response),
            p => p.admit_and_seal(voucher, receipt, status, response).await)
    }

    /// The trace of (user, nonce).
    pub async fn trace(&self, user: &AccountId, nonce: Nonce) -> Result<Option<Trace>, StoreError> {
        both!(self, s => s.trace(user, nonce), p => p.trace(user, nonce).await)
    }

    /// A user's receipts above `after`, each with the voucher it answers, oldest first.
    pub async fn receipts(
        &self,
        user: &AccountId,
        after: Nonce,
        limit: u32,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        both!(self, s => s.receipts(user, after, limit), p => p.receipts(user, after, limit).await)
    }

    /// Whether a lower nonce of `user` is still being served.
    pub async fn in_flight_before(
        &self,
        user: &AccountId,
        nonce: Nonce,
    ) -> Result<bool, StoreError> {
        both!(self, s => s.in_flight_before(user, nonce), p => p.in_flight_before(user, nonce).await)
    }

    /// Requests admitted but never sealed, in order: those of worker processes that are gone
    /// (`me` is alive), and those of `me` admitted before `stale_before` (unix seconds; the
    /// caller skips the ones it is still serving).
    pub async fn orphans(
        &self,
        me: i64,
        stale_before: u64,
    ) -> Result<Vec<SignedVoucher>, StoreError> {
        both!(self, s => s.orphans(me, stale_before), p => p.orphans(me, stale_before).await)
    }

    /// Traces stored for `user` (tests and operators).
    pub async fn trace_count(&self, user: Option<&AccountId>) -> Result<u64, StoreError> {
        both!(self, s => s.trace_count(user), p => p.trace_count(user).await)
    }

    /// Users with sealed, unsettled traces.
    pub async fn unsettled_users(&self) -> Result<Vec<(AccountId, u64, u32)>, StoreError> {
        both!(self, s => s.unsettled_users(), p => p.unsettled_users().await)
    }

    /// A user's sealed traces above `after`.
    pub async fn sealed_after(
        &self,
        user: &AccountId,
        after: Nonce,
    ) -> Result<Vec<(SignedVoucher, SignedReceipt)>, StoreError> {
        both!(self, s => s.sealed_after(user, after), p => p.sealed_after(user, after).await)
    }

    /// Users with traces settled on chain.
    pub async fn settled_users(&self) -> Result<Vec<AccountId>, StoreError> {
        both!(self, s => s.settled_users(), p => p.settled_users().await)
    }

    /// Mark a user's traces up to `nonce` as settled.
    pub async fn mark_settled(&self, user: &AccountId, nonce: Nonce) -> Result<(), StoreError> {
        both!(self, s => s.mark_settled(user, nonce), p => p.mark_settled(user, nonce).await)
    }

    /// Record a submitted batch.
    pub async fn record_batch(
        &self,
        trace_root: &[u8],
        claims: u32,
        block_hash: Option<&[u8]>,
        paid: Option<Balance>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        both!(self,
            s => s.record_batch(trace_root, claims, block_hash, paid, error),
            p => p.record_batch(trace_root, claims, block_hash, paid, error).await)
    }

    /// Run `f` only if no other process is settling for this provider (PostgreSQL advisory
    /// lock); SQLite has one process, so always.
    pub async fn settlement_turn(&self) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(true),
            Store::Postgres(p) => p.settlement_turn().await,
        }
    }
}
