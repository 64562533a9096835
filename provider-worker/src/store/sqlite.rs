//! The embedded backend: SQLite in WAL mode.

use super::{Durability, Sequence, StoreError, StoredReceipt, Trace, UserView};
use codec::{Decode, Encode};
use compute_primitives::{AccountId, Balance, Nonce, SignedReceipt, SignedVoucher};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::{path::Path, sync::Mutex};

/// A trace row: voucher, receipt, status, response body, creation time.
type RawTrace = (Vec<u8>, Option<Vec<u8>>, Option<u16>, Option<String>, i64);

/// The store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

use super::{now, u128_of};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sequencer (
    user BLOB PRIMARY KEY,
    last_nonce INTEGER NOT NULL,
    last_total TEXT NOT NULL,
    sealed_nonce INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS traces (
    user BLOB NOT NULL,
    nonce INTEGER NOT NULL,
    voucher BLOB NOT NULL,
    cap TEXT NOT NULL,
    receipt BLOB,
    total TEXT,
    status INTEGER,
    response TEXT,
    created_at INTEGER NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, nonce)
);
CREATE INDEX IF NOT EXISTS traces_unsettled ON traces (settled, user, nonce);
CREATE INDEX IF NOT EXISTS traces_in_flight ON traces (user, nonce) WHERE receipt IS NULL;
CREATE TABLE IF NOT EXISTS workers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seen_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    submitted_at INTEGER NOT NULL,
    trace_root BLOB NOT NULL,
    claims INTEGER NOT NULL,
    block_hash BLOB,
    paid TEXT,
    error TEXT
);
";

impl SqliteStore {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn, durability)
    }

    /// A store in memory (tests and benchmarks).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?, Durability::Os)
    }

    fn init(conn: Connection, durability: Durability) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Fsync => "FULL",
            Durability::Os => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        // Stores created before requests carried their worker process.
        let has_owner: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('traces') WHERE name = 'owner'",
            [],
            |r| r.get(0),
        )?;
        if !has_owner {
            conn.execute_batch("ALTER TABLE traces ADD COLUMN owner INTEGER")?;
        }
        // Stores created before receipts committed to activation proofs: their receipts are of
        // the older format, which cannot be decoded nor settled any more.
        let has_proof: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('traces') WHERE name = 'proof'",
            [],
            |r| r.get(0),
        )?;
        if !has_proof {
            let receipts: i64 =
                conn.query_row("SELECT COUNT(*) FROM traces WHERE receipt IS NOT NULL", [], |r| {
                    r.get(0)
                })?;
            if receipts > 0 {
                return Err(StoreError::OldReceiptFormat);
            }
            conn.execute_batch("ALTER TABLE traces ADD COLUMN proof BLOB")?;
        }
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_seq(conn: &Connection, user: &[u8]) -> Result<Sequence, StoreError> {
        let row = conn
            .query_row(
                "SELECT last_nonce, last_total, sealed_nonce FROM sequencer WHERE user = ?1",
                params![user],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)),
            )
            .optional()?;
        Ok(match row {
            Some((n, t, s)) => {
                Sequence { last_nonce: n as u64, last_total: u128_of(t)?, sealed_nonce: s as u64 }
            }
            None => Sequence::default(),
        })
    }

    /// Take `voucher`'s nonce if `check` accepts the user's current view, atomically.
    /// The voucher is stored as in flight. `check`'s error is returned unchanged and nothing is
    /// written.
    pub fn admit<E>(
        &self,
        voucher: &SignedVoucher,
        window: u32,
        owner: i64,
        check: impl FnOnce(&UserView) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let v = &voucher.voucher;
        let user = v.user.encode();
        let seq = Self::read_seq(&tx, &user)?;
        let mut recent = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT nonce, total FROM traces WHERE user = ?1 AND total IS NOT NULL \
                 ORDER BY nonce DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![user, window.max(1)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (n, t) = row?;
                recent.push((n as u64, u128_of(t)?));
            }
        }
        let (in_flight, caps) = {
            let mut stmt =
                tx.prepare_cached("SELECT cap FROM traces WHERE user = ?1 AND receipt IS NULL")?;
            let caps: Vec<String> =
                stmt.query_map(params![user], |r| r.get(0))?.collect::<Result<_, _>>()?;
            let mut sum: Balance = 0;
            for c in &caps {
                sum = sum.saturating_add(u128_of(c.clone())?);
            }
            (caps.len() as u32, sum)
        };
        let view = UserView { seq, recent_totals: recent, in_flight_caps: caps, in_flight };
        if let Err(e) = check(&view) {
            return Ok(Err(e));
        }
        tx.execute(
            "INSERT INTO traces (user, nonce, voucher, cap, created_at, owner) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![user, v.nonce as i64, voucher.encode(), v.cap.to_string(), now() as i64, owner],
        )?;
        tx.execute(
            "INSERT INTO sequencer (user, last_nonce, last_total, sealed_nonce) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(user) DO UPDATE SET last_nonce = excluded.last_nonce",
            params![user, v.nonce as i64, seq.last_total.to_string(), seq.sealed_nonce as i64],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// The user's sequencer row.
    pub fn sequence(&self, user: &AccountId) -> Result<Sequence, StoreError> {
        Self::read_seq(&self.conn(), &user.encode())
    }

    /// Seal an admitted request with its receipt and the response sent. The receipt's total
    /// must continue the sealed sequence (checked: a bug here must not sign a second history).
    pub fn seal(
        &self,
        receipt: &SignedReceipt,
        proof: Option<&[u8]>,
        status: u16,
        response: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let r = &receipt.receipt;
        let user = r.user.encode();
        let seq = Self::read_seq(&tx, &user)?;
        if r.nonce <= seq.sealed_nonce || seq.last_total.checked_add(r.fee) != Some(r.total) {
            return Err(StoreError::Corrupt("receipt sequence"));
        }
        let changed = tx.execute(
            "UPDATE traces SET receipt = ?3, total = ?4, status = ?5, response = ?6, proof = ?7 \
             WHERE user = ?1 AND nonce = ?2 AND receipt IS NULL",
            params![
                user,
                r.nonce as i64,
                receipt.encode(),
                r.total.to_string(),
                status,
                response,
                proof
            ],
        )?;
        if changed != 1 {
            return Err(StoreError::Corrupt("trace to seal"));
        }
        tx.execute(
            "UPDATE sequencer SET last_total = ?2, sealed_nonce = ?3 WHERE user = ?1",
            params![user, r.total.to_string(), r.nonce as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Take a nonce and seal it at once (a rejected request with a fee-0 receipt). Fails with
    /// `Ok(false)` if the sequence moved (another request took the nonce, or one is in flight).
    pub fn admit_and_seal(
        &self,
        voucher: &SignedVoucher,
        receipt: &SignedReceipt,
        status: u16,
        response: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let v = &voucher.voucher;
        let user = v.user.encode();
        let seq = Self::read_seq(&tx, &user)?;
        let r = &receipt.receipt;
        if v.nonce <= seq.last_nonce
            || seq.last_nonce != seq.sealed_nonce
            || r.total != seq.last_total
            || r.fee != 0
        {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO traces (user, nonce, voucher, cap, receipt, total, status, response, \
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                user,
                v.nonce as i64,
                voucher.encode(),
                v.cap.to_string(),
                receipt.encode(),
                r.total.to_string(),
                status,
                response,
                now() as i64
            ],
        )?;
        tx.execute(
            "INSERT INTO sequencer (user, last_nonce, last_total, sealed_nonce) \
             VALUES (?1, ?2, ?3, ?2) \
             ON CONFLICT(user) DO UPDATE SET last_nonce = ?2, sealed_nonce = ?2",
            params![user, v.nonce as i64, r.total.to_string()],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn trace_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawTrace> {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
    }

    fn decode_trace(raw: RawTrace) -> Result<Trace, StoreError> {
        let (v, r, status, body, created) = raw;
        let voucher =
            SignedVoucher::decode(&mut &v[..]).map_err(|_| StoreError::Corrupt("voucher"))?;
        let receipt = r
            .map(|r| SignedReceipt::decode(&mut &r[..]).map_err(|_| StoreError::Corrupt("receipt")))
            .transpose()?;
        let response = status.zip(body);
        Ok(Trace { voucher, receipt, response, created_at: created as u64 })
    }

    /// The trace of (user, nonce).
    pub fn trace(&self, user: &AccountId, nonce: Nonce) -> Result<Option<Trace>, StoreError> {
        let conn = self.conn();
        let raw = conn
            .query_row(
                "SELECT voucher, receipt, status, response, created_at FROM traces \
                 WHERE user = ?1 AND nonce = ?2",
                params![user.encode(), nonce as i64],
                Self::trace_of,
            )
            .optional()?;
        raw.map(Self::decode_trace).transpose()
    }

    /// A user's receipts with nonce above `after`, each with the voucher it answers, oldest
    /// first, at most `limit`.
    pub fn receipts(
        &self,
        user: &AccountId,
        after: Nonce,
        limit: u32,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT voucher, receipt, proof FROM traces WHERE user = ?1 AND nonce > ?2 \
             AND receipt IS NOT NULL ORDER BY nonce LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![user.encode(), after as i64, limit], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Option<Vec<u8>>>(2)?))
        })?;
        rows.map(|r| {
            let (v, rc, proof) = r?;
            Ok(StoredReceipt {
                voucher: SignedVoucher::decode(&mut &v[..])
                    .map_err(|_| StoreError::Corrupt("voucher"))?,
                receipt: SignedReceipt::decode(&mut &rc[..])
                    .map_err(|_| StoreError::Corrupt("receipt"))?,
                proof,
            })
        })
        .collect()
    }

    /// Whether a lower nonce of `user` is still being served.
    pub fn in_flight_before(&self, user: &AccountId, nonce: Nonce) -> Result<bool, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM traces WHERE user = ?1 AND nonce < ?2 AND receipt IS NULL",
            params![user.encode(), nonce as i64],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Register a new worker process; returns its id.
    pub fn register_instance(&self) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute("INSERT INTO workers (seen_at) VALUES (?1)", params![now() as i64])?;
        Ok(conn.last_insert_rowid())
    }

    /// Mark worker process `id` alive now.
    pub fn heartbeat(&self, id: i64) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE workers SET seen_at = ?2 WHERE id = ?1", params![id, now() as i64])?;
        Ok(())
    }

    /// Requests admitted but never sealed by earlier worker processes, and those of `me` older
    /// than `stale_before`, in order. One process uses a SQLite store, so every process but `me`
    /// is gone.
    pub fn orphans(&self, me: i64, stale_before: u64) -> Result<Vec<SignedVoucher>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT voucher FROM traces WHERE receipt IS NULL \
             AND (owner IS NOT ?1 OR created_at < ?2) ORDER BY user, nonce",
        )?;
        let rows = stmt.query_map(params![me, stale_before as i64], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| {
            let r = r?;
            SignedVoucher::decode(&mut &r[..]).map_err(|_| StoreError::Corrupt("voucher"))
        })
        .collect()
    }

    /// Traces stored, of `user` or of everyone.
    pub fn trace_count(&self, user: Option<&AccountId>) -> Result<u64, StoreError> {
        let conn = self.conn();
        let n: i64 = match user {
            Some(u) => conn.query_row(
                "SELECT COUNT(*) FROM traces WHERE user = ?1",
                params![u.encode()],
                |r| r.get(0),
            )?,
            None => conn.query_row("SELECT COUNT(*) FROM traces", [], |r| r.get(0))?,
        };
        Ok(n as u64)
    }

    /// Users with sealed, unsettled traces: `(user, oldest unsettled created_at, count)`.
    pub fn unsettled_users(&self) -> Result<Vec<(AccountId, u64, u32)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT user, MIN(created_at), COUNT(*) FROM traces \
             WHERE settled = 0 AND receipt IS NOT NULL GROUP BY user",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })?;
        rows.map(|r| {
            let (u, t, c) = r?;
            let user = AccountId::decode(&mut &u[..]).map_err(|_| StoreError::Corrupt("user"))?;
            Ok((user, t as u64, c as u32))
        })
        .collect()
    }

    /// A user's sealed traces with nonce above `after` (vouchers and receipts), oldest first.
    pub fn sealed_after(
        &self,
        user: &AccountId,
        after: Nonce,
    ) -> Result<Vec<(SignedVoucher, SignedReceipt)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT voucher, receipt FROM traces WHERE user = ?1 AND nonce > ?2 \
             AND receipt IS NOT NULL ORDER BY nonce",
        )?;
        let rows = stmt.query_map(params![user.encode(), after as i64], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        rows.map(|r| {
            let (v, rc) = r?;
            Ok((
                SignedVoucher::decode(&mut &v[..]).map_err(|_| StoreError::Corrupt("voucher"))?,
                SignedReceipt::decode(&mut &rc[..]).map_err(|_| StoreError::Corrupt("receipt"))?,
            ))
        })
        .collect()
    }

    /// Users with traces settled on chain (whose escrows may hold payments).
    pub fn settled_users(&self) -> Result<Vec<AccountId>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT DISTINCT user FROM traces WHERE settled = 1")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|u| AccountId::decode(&mut &u?[..]).map_err(|_| StoreError::Corrupt("user")))
            .collect()
    }

    /// Mark a user's traces up to `nonce` as settled on chain.
    pub fn mark_settled(&self, user: &AccountId, nonce: Nonce) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE traces SET settled = 1 WHERE user = ?1 AND nonce <= ?2 AND settled = 0 \
             AND receipt IS NOT NULL",
            params![user.encode(), nonce as i64],
        )?;
        Ok(())
    }

    /// Record a submitted batch and its outcome.
    pub fn record_batch(
        &self,
        trace_root: &[u8],
        claims: u32,
        block_hash: Option<&[u8]>,
        paid: Option<Balance>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO batches (submitted_at, trace_root, claims, block_hash, paid, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                now() as i64,
                trace_root,
                claims,
                block_hash,
                paid.map(|p| p.to_string()),
                error
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compute_client::{wire, Signer};
    use compute_primitives::{Receipt, Voucher};
    use polkadot_sdk::sp_core::H256;

    /// A store written before receipts committed to proofs: opened empty, it gains the column;
    /// holding receipts of the older format, it is refused with the reason.
    #[test]
    fn a_store_of_older_receipts_is_refused() {
        let path = std::env::temp_dir().join(format!("old-store-{}.sqlite", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let old = |with_receipt: bool| {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            if with_receipt {
                conn.execute(
                    "INSERT INTO traces (user, nonce, voucher, cap, receipt, created_at) \
                     VALUES (x'00', 1, x'00', '0', x'00', 0)",
                    [],
                )
                .unwrap();
            }
        };
        old(false);
        drop(SqliteStore::open(&path, Durability::Os).expect("an empty old store is brought up"));
        let _ = std::fs::remove_file(&path);
        old(true);
        assert!(matches!(
            SqliteStore::open(&path, Durability::Os),
            Err(StoreError::OldReceiptFormat)
        ));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn receipts_come_with_the_voucher_they_answer() {
        let store = SqliteStore::in_memory().unwrap();
        let (user, provider) =
            (Signer::from_uri("//Alice").unwrap(), Signer::from_uri("//Bob").unwrap());
        let genesis = H256::repeat_byte(1);
        let mut pairs = Vec::new();
        for nonce in 1..=3 {
            let v = Voucher {
                user: user.account_id(),
                provider: provider.account_id(),
                service_id: 0,
                price_version: 0,
                nonce,
                request_hash: H256::repeat_byte(nonce as u8),
                spent: 0,
                cap: 10,
            };
            let r = Receipt {
                user: user.account_id(),
                provider: provider.account_id(),
                service_id: 0,
                nonce,
                request_hash: v.request_hash,
                response_hash: H256::zero(),
                proof_hash: Default::default(),
                model_hash: Default::default(),
                input_tokens: 0,
                output_tokens: 0,
                fee: 0,
                total: 0,
            };
            let (sv, sr) = (
                wire::sign_voucher(&user, v, &genesis),
                wire::sign_receipt(&provider, r, &genesis),
            );
            assert!(store.admit_and_seal(&sv, &sr, 400, "{}").unwrap());
            pairs.push(StoredReceipt { voucher: sv, receipt: sr, proof: None });
        }
        // A served request's proof comes back with its receipt.
        let v = Voucher { nonce: 4, ..pairs[2].voucher.voucher.clone() };
        let sv = wire::sign_voucher(&user, v.clone(), &genesis);
        assert!(store.admit(&sv, 1, 7, |_| Ok::<(), ()>(())).unwrap().is_ok());
        let mut r = pairs[2].receipt.receipt.clone();
        r.nonce = 4;
        let sr = wire::sign_receipt(&provider, r, &genesis);
        store.seal(&sr, Some(&[1, 2, 3]), 200, "{}").unwrap();
        pairs.push(StoredReceipt { voucher: sv, receipt: sr, proof: Some(vec![1, 2, 3]) });
        assert_eq!(store.receipts(&user.account_id(), 1, 100).unwrap(), pairs[1..].to_vec());
        assert_eq!(store.receipts(&user.account_id(), 0, 1).unwrap(), pairs[..1].to_vec());
    }
}
