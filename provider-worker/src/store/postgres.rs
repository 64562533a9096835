//! The shared backend: PostgreSQL, for several worker processes behind one provider account.
//! The sequencer row of a user is locked with `SELECT … FOR UPDATE` inside the transaction that
//! takes a nonce, so two processes can never both admit the same nonce; settlement is done by
//! whichever process holds a session advisory lock (taken over if that process dies).

use super::{now, u128_of, Sequence, StoreError, StoredReceipt, Trace, UserView};
use codec::{Decode, Encode};
use compute_primitives::{AccountId, Balance, Nonce, SignedReceipt, SignedVoucher};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Row, Transaction};

/// Advisory lock keys (arbitrary, fixed).
const SCHEMA_LOCK: i64 = 0x636f_6d70_7574_6501;
const SETTLEMENT_LOCK: i64 = 0x636f_6d70_7574_6502;
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sequencer (
    usr BYTEA PRIMARY KEY,
    last_nonce BIGINT NOT NULL,
    last_total TEXT NOT NULL,
    sealed_nonce BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS traces (
    usr BYTEA NOT NULL,
    nonce BIGINT NOT NULL,
    voucher BYTEA NOT NULL,
    cap TEXT NOT NULL,
    receipt BYTEA,
    total TEXT,
    status INTEGER,
    response TEXT,
    created_at BIGINT NOT NULL,
    settled BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (usr, nonce)
);
CREATE INDEX IF NOT EXISTS traces_unsettled ON traces (settled, usr, nonce);
CREATE INDEX IF NOT EXISTS traces_in_flight ON traces (usr, nonce) WHERE receipt IS NULL;
ALTER TABLE traces ADD COLUMN IF NOT EXISTS owner BIGINT;
CREATE TABLE IF NOT EXISTS workers (
    id BIGSERIAL PRIMARY KEY,
    seen_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id BIGSERIAL PRIMARY KEY,
    submitted_at BIGINT NOT NULL,
    trace_root BYTEA NOT NULL,
    claims INTEGER NOT NULL,
    block_hash BYTEA,
    paid TEXT,
    error TEXT
);
";

/// A connection to the shared database, opened again whenever it is lost (a database restart,
/// a network cut): the request that finds it lost fails, the next one reconnects.
pub struct PgStore {
    url: String,
    client: Mutex<Client>,
}

fn decode<T: Decode>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(&mut &bytes[..]).map_err(|_| StoreError::Corrupt(what))
}

impl PgStore {
    /// Connect and create the schema if needed.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = Self::open(url).await?;
        client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK]).await?;
        let created = Self::create_schema(&client).await;
        client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK]).await?;
        created?;
        Ok(PgStore { url: url.to_string(), client: Mutex::new(client) })
    }

    /// Create the schema, or bring an existing one up to date. Receipts written before they
    /// committed to activation proofs are of a format this chain no longer accepts: such a
    /// store is refused.
    async fn create_schema(client: &Client) -> Result<(), StoreError> {
        client.batch_execute(SCHEMA).await?;
        let has_proof: bool = client
            .query_one(
                "SELECT COUNT(*) > 0 FROM information_schema.columns \
                 WHERE table_name = 'traces' AND column_name = 'proof'",
                &[],
            )
            .await?
            .get(0);
        if !has_proof {
            let receipts: i64 = client
                .query_one("SELECT COUNT(*) FROM traces WHERE receipt IS NOT NULL", &[])
                .await?
                .get(0);
            if receipts > 0 {
                return Err(StoreError::OldReceiptFormat);
            }
            client.batch_execute("ALTER TABLE traces ADD COLUMN proof BYTEA").await?;
        }
        Ok(())
    }

    async fn open(url: &str) -> Result<Client, StoreError> {
        let connect = tokio_postgres::connect(url, NoTls);
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| StoreError::Unavailable("PostgreSQL did not answer in time"))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "PostgreSQL connection lost");
            }
        });
        Ok(client)
    }

    /// The connection, opened again if it was lost.
    async fn conn(&self) -> Result<tokio::sync::MutexGuard<'_, Client>, StoreError> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            tracing::warn!("reconnecting to PostgreSQL");
            *client = Self::open(&self.url).await?;
        }
        Ok(client)
    }

    /// See [`super::Store::register_instance`].
    pub async fn register_instance(&self) -> Result<i64, StoreError> {
        let client = self.conn().await?;
        let row = client
            .query_one(
                "INSERT INTO workers (seen_at) VALUES (extract(epoch FROM now())::bigint) \
                 RETURNING id",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// See [`super::Store::heartbeat`].
    pub async fn heartbeat(&self, id: i64) -> Result<(), StoreError> {
        // The database's clock, not this host's: liveness is compared across hosts.
        let client = self.conn().await?;
        client
            .execute(
                "UPDATE workers SET seen_at = extract(epoch FROM now())::bigint WHERE id = $1",
                &[&id],
            )
            .await?;
        // Processes gone for a day are forgotten; their requests were sealed long ago.
        client
            .execute(
                "DELETE FROM workers WHERE seen_at < extract(epoch FROM now())::bigint - 86400",
                &[],
            )
            .await?;
        Ok(())
    }

    /// See [`super::Store::orphans`]: requests of processes not seen for
    /// [`super::GONE_AFTER_SECS`] (by the database's clock), and stale ones of `me`.
    pub async fn orphans(
        &self,
        me: i64,
        stale_before: u64,
    ) -> Result<Vec<SignedVoucher>, StoreError> {
        let client = self.conn().await?;
        let gone_after = super::GONE_AFTER_SECS as i64;
        let rows = client
            .query(
                "SELECT voucher FROM traces WHERE receipt IS NULL AND (owner IS NULL \
                 OR (owner <> $1 AND owner NOT IN (SELECT id FROM workers \
                     WHERE seen_at >= extract(epoch FROM now())::bigint - $2)) \
                 OR (owner = $1 AND created_at < $3)) ORDER BY usr, nonce",
                &[&me, &gone_after, &(stale_before as i64)],
            )
            .await?;
        rows.iter().map(|r| decode("voucher", &r.get::<_, Vec<u8>>(0))).collect()
    }

    /// See [`super::Store::trace_count`].
    pub async fn trace_count(&self, user: Option<&AccountId>) -> Result<u64, StoreError> {
        let client = self.conn().await?;
        let row = match user {
            Some(u) => {
                client
                    .query_one("SELECT COUNT(*) FROM traces WHERE usr = $1", &[&u.encode()])
                    .await?
            }
            None => client.query_one("SELECT COUNT(*) FROM traces", &[]).await?,
        };
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn seq_for_update(tx: &Transaction<'_>, user: &[u8]) -> Result<Sequence, StoreError> {
        tx.execute(
            "INSERT INTO sequencer (usr, last_nonce, last_total, sealed_nonce) \
             VALUES ($1, 0, '0', 0) ON CONFLICT (usr) DO NOTHING",
            &[&user],
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT last_nonce, last_total, sealed_nonce FROM sequencer WHERE usr = $1 \
                 FOR UPDATE",
                &[&user],
            )
            .await?;
        Ok(Sequence {
            last_nonce: row.get::<_, i64>(0) as u64,
            last_total: u128_of(row.get(1))?,
            sealed_nonce: row.get::<_, i64>(2) as u64,
        })
    }

    /// See [`super::Store::admit`].
    pub async fn admit<E>(
        &self,
        voucher: &SignedVoucher,
        window: u32,
        owner: i64,
        check: impl FnOnce(&UserView) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;
        let v = &voucher.voucher;
        let user = v.user.encode();
        let seq = Self::seq_for_update(&tx, &user).await?;
        let rows = tx
            .query(
                "SELECT nonce, total FROM traces WHERE usr = $1 AND total IS NOT NULL \
                 ORDER BY nonce DESC LIMIT $2",
                &[&user, &i64::from(window.max(1))],
            )
            .await?;
        let mut recent = Vec::with_capacity(rows.len());
        for r in rows {
            recent.push((r.get::<_, i64>(0) as u64, u128_of(r.get(1))?));
        }
        let caps =
            tx.query("SELECT cap FROM traces WHERE usr = $1 AND receipt IS NULL", &[&user]).await?;
        let mut in_flight_caps: Balance = 0;
        for r in &caps {
            in_flight_caps = in_flight_caps.saturating_add(u128_of(r.get(0))?);
        }
        let view =
            UserView { seq, recent_totals: recent, in_flight_caps, in_flight: caps.len() as u32 };
        if let Err(e) = check(&view) {
            tx.rollback().await?;
            return Ok(Err(e));
        }
        tx.execute(
            "INSERT INTO traces (usr, nonce, voucher, cap, created_at, owner) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &user,
                &(v.nonce as i64),
                &voucher.encode(),
                &v.cap.to_string(),
                &(now() as i64),
                &owner,
            ],
        )
        .await?;
        tx.execute(
            "UPDATE sequencer SET last_nonce = $2 WHERE usr = $1",
            &[&user, &(v.nonce as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// See [`super::Store::sequence`].
    pub async fn sequence(&self, user: &AccountId) -> Result<Sequence, StoreError> {
        let client = self.conn().await?;
        let row = client
            .query_opt(
                "SELECT last_nonce, last_total, sealed_nonce FROM sequencer WHERE usr = $1",
                &[&user.encode()],
            )
            .await?;
        Ok(match row {
            Some(r) => Sequence {
                last_nonce: r.get::<_, i64>(0) as u64,
                last_total: u128_of(r.get(1))?,
                sealed_nonce: r.get::<_, i64>(2) as u64,
            },
            None => Sequence::default(),
        })
    }

    /// See [`super::Store::seal`].
    pub async fn seal(
        &self,
        receipt: &SignedReceipt,
        proof: Option<&[u8]>,
        status: u16,
        response: &str,
    ) -> Result<(), StoreError> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;
        let r = &receipt.receipt;
        let user = r.user.encode();
        let seq = Self::seq_for_update(&tx, &user).await?;
        if r.nonce <= seq.sealed_nonce || seq.last_total.checked_add(r.fee) != Some(r.total) {
            return Err(StoreError::Corrupt("receipt sequence"));
        }
        let changed = tx
            .execute(
                "UPDATE traces SET receipt = $3, total = $4, status = $5, response = $6, \
                 proof = $7 WHERE usr = $1 AND nonce = $2 AND receipt IS NULL",
                &[
                    &user,
                    &(r.nonce as i64),
                    &receipt.encode(),
                    &r.total.to_string(),
                    &i32::from(status),
                    &response,
                    &proof,
                ],
            )
            .await?;
        if changed != 1 {
            return Err(StoreError::Corrupt("trace to seal"));
        }
        tx.execute(
            "UPDATE sequencer SET last_total = $2, sealed_nonce = $3 WHERE usr = $1",
            &[&user, &r.total.to_string(), &(r.nonce as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// See [`super::Store::admit_and_seal`].
    pub async fn admit_and_seal(
        &self,
        voucher: &SignedVoucher,
        receipt: &SignedReceipt,
        status: u16,
        response: &str,
    ) -> Result<bool, StoreError> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;
        let v = &voucher.voucher;
        let user = v.user.encode();
        let seq = Self::seq_for_update(&tx, &user).await?;
        let r = &receipt.receipt;
        if v.nonce <= seq.last_nonce
            || seq.last_nonce != seq.sealed_nonce
            || r.total != seq.last_total
            || r.fee != 0
        {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO traces (usr, nonce, voucher, cap, receipt, total, status, response, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &user,
                &(v.nonce as i64),
                &voucher.encode(),
                &v.cap.to_string(),
                &receipt.encode(),
                &r.total.to_string(),
                &i32::from(status),
                &response,
                &(now() as i64),
            ],
        )
        .await?;
        tx.execute(
            "UPDATE sequencer SET last_nonce = $2, sealed_nonce = $2 WHERE usr = $1",
            &[&user, &(v.nonce as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    fn trace_of(row: &Row) -> Result<Trace, StoreError> {
        let receipt: Option<Vec<u8>> = row.get(1);
        let status: Option<i32> = row.get(2);
        let body: Option<String> = row.get(3);
        Ok(Trace {
            voucher: decode("voucher", &row.get::<_, Vec<u8>>(0))?,
            receipt: receipt.map(|r| decode("receipt", &r)).transpose()?,
            response: status.map(|s| s as u16).zip(body),
            created_at: row.get::<_, i64>(4) as u64,
        })
    }

    /// See [`super::Store::trace`].
    pub async fn trace(&self, user: &AccountId, nonce: Nonce) -> Result<Option<Trace>, StoreError> {
        let client = self.conn().await?;
        let row = client
            .query_opt(
                "SELECT voucher, receipt, status, response, created_at FROM traces \
                 WHERE usr = $1 AND nonce = $2",
                &[&user.encode(), &(nonce as i64)],
            )
            .await?;
        row.as_ref().map(Self::trace_of).transpose()
    }

    /// See [`super::Store::receipts`].
    pub async fn receipts(
        &self,
        user: &AccountId,
        after: Nonce,
        limit: u32,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        let client = self.conn().await?;
        let rows = client
            .query(
                "SELECT voucher, receipt, proof FROM traces WHERE usr = $1 AND nonce > $2 \
                 AND receipt IS NOT NULL ORDER BY nonce LIMIT $3",
                &[&user.encode(), &(after as i64), &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredReceipt {
                    voucher: decode("voucher", &r.get::<_, Vec<u8>>(0))?,
                    receipt: decode("receipt", &r.get::<_, Vec<u8>>(1))?,
                    proof: r.get(2),
                })
            })
            .collect()
    }

    /// See [`super::Store::in_flight_before`].
    pub async fn in_flight_before(
        &self,
        user: &AccountId,
        nonce: Nonce,
    ) -> Result<bool, StoreError> {
        let client = self.conn().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*) FROM traces WHERE usr = $1 AND nonce < $2 AND receipt IS NULL",
                &[&user.encode(), &(nonce as i64)],
            )
            .await?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    /// See [`super::Store::unsettled_users`].
    pub async fn unsettled_users(&self) -> Result<Vec<(AccountId, u64, u32)>, StoreError> {
        let client = self.conn().await?;
        let rows = client
            .query(
                "SELECT usr, MIN(created_at), COUNT(*) FROM traces \
                 WHERE NOT settled AND receipt IS NOT NULL GROUP BY usr",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    decode("user", &r.get::<_, Vec<u8>>(0))?,
                    r.get::<_, i64>(1) as u64,
                    r.get::<_, i64>(2) as u32,
                ))
            })
            .collect()
    }

    /// See [`super::Store::sealed_after`].
    pub async fn sealed_after(
        &self,
        user: &AccountId,
        after: Nonce,
    ) -> Result<Vec<(SignedVoucher, SignedReceipt)>, StoreError> {
        let client = self.conn().await?;
        let rows = client
            .query(
                "SELECT voucher, receipt FROM traces WHERE usr = $1 AND nonce > $2 \
                 AND receipt IS NOT NULL ORDER BY nonce",
                &[&user.encode(), &(after as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    decode("voucher", &r.get::<_, Vec<u8>>(0))?,
                    decode("receipt", &r.get::<_, Vec<u8>>(1))?,
                ))
            })
            .collect()
    }

    /// See [`super::Store::settled_users`].
    pub async fn settled_users(&self) -> Result<Vec<AccountId>, StoreError> {
        let client = self.conn().await?;
        let rows = client.query("SELECT DISTINCT usr FROM traces WHERE settled", &[]).await?;
        rows.iter().map(|r| decode("user", &r.get::<_, Vec<u8>>(0))).collect()
    }

    /// See [`super::Store::mark_settled`].
    pub async fn mark_settled(&self, user: &AccountId, nonce: Nonce) -> Result<(), StoreError> {
        let client = self.conn().await?;
        client
            .execute(
                "UPDATE traces SET settled = TRUE WHERE usr = $1 AND nonce <= $2 \
                 AND NOT settled AND receipt IS NOT NULL",
                &[&user.encode(), &(nonce as i64)],
            )
            .await?;
        Ok(())
    }

    /// See [`super::Store::record_batch`].
    pub async fn record_batch(
        &self,
        trace_root: &[u8],
        claims: u32,
        block_hash: Option<&[u8]>,
        paid: Option<Balance>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let client = self.conn().await?;
        client
            .execute(
                "INSERT INTO batches (submitted_at, trace_root, claims, block_hash, paid, error) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &(now() as i64),
                    &trace_root,
                    &(claims as i32),
                    &block_hash,
                    &paid.map(|p| p.to_string()),
                    &error,
                ],
            )
            .await?;
        Ok(())
    }

    /// Whether this process is the one that settles (holds the session advisory lock).
    pub async fn settlement_turn(&self) -> Result<bool, StoreError> {
        let client = self.conn().await?;
        let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&SETTLEMENT_LOCK]).await?;
        Ok(row.get(0))
    }
}
