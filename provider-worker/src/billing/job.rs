//! The paid-request lifecycle after admission. An admitted request's nonce is taken, so it must
//! end in a sealed receipt whatever its client does. The request runs as a job owned by the
//! worker (a task of its own, never the client's connection): it waits for a slot in a bounded
//! queue, runs until done or until the request's deadline, and is sealed with a receipt for
//! what it produced. A [`Ticket`] dropped unsealed (a panic, a failed store write) seals itself
//! at fee 0 from a task of its own. Queue places and slots are guards released on drop.

use crate::{
    store::StoreError,
    worker::{Capacity, Served, Worker},
};
use compute_client::{
    wire::{self, ErrorBody, ReceiptJson},
    ServiceInfo,
};
use compute_primitives::{Balance, ServiceKind, SignedReceipt, Voucher};
use polkadot_sdk::sp_core::H256;
use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};
use tokio::sync::OwnedSemaphorePermit;

/// A sealed answer: what the client gets, and what a retry of the same voucher gets.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub status: u16,
    pub body: String,
    pub receipt: SignedReceipt,
}

/// Why a receipt could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("an earlier request of this user was not sealed in time")]
    EarlierUnsealed,
    #[error("fee above the voucher's cap: the request was not limited to it")]
    AboveCap,
    #[error("the user's total overflows")]
    Overflow,
}

/// An admitted request, until its receipt is sealed.
pub struct Ticket {
    worker: Arc<Worker>,
    voucher: Voucher,
    service: ServiceInfo,
    /// When the request arrived: its deadline counts from here.
    pub started: Instant,
    sealed: bool,
}

impl Ticket {
    /// The ticket of a request whose nonce admission just took.
    pub fn new(
        worker: Arc<Worker>,
        voucher: Voucher,
        service: ServiceInfo,
        started: Instant,
    ) -> Self {
        Ticket { worker, voucher, service, started, sealed: false }
    }

    pub fn voucher(&self) -> &Voucher {
        &self.voucher
    }

    /// When the request must be answered.
    pub fn deadline(&self) -> Instant {
        self.started + Duration::from_secs(self.worker.config.limits.request_timeout_secs)
    }

    /// Price what was served at the service's prices, sign the receipt (committing to
    /// `proof`, the response's activation proof, if any) and store it with the proof and the
    /// response `body` (built around the receipt's JSON, which carries the proof).
    pub async fn seal(
        mut self,
        response_hash: H256,
        proof: Option<Vec<u8>>,
        input_tokens: u64,
        output_tokens: u64,
        body: impl FnOnce(ReceiptJson) -> String,
    ) -> Result<Sealed, SealError> {
        let fee = self
            .service
            .fee(input_tokens, output_tokens)
            .filter(|f| *f <= self.voucher.cap)
            .ok_or(SealError::AboveCap)?;
        let proof_hash = proof.as_deref().map_or_else(H256::zero, wire::proof_hash);
        let model_hash = self.service.model_hash;
        let served =
            Served { response_hash, proof_hash, model_hash, input_tokens, output_tokens, fee };
        let sealed = seal(&self.worker, &self.voucher, served, proof.as_deref(), 200, body).await?;
        self.sealed = true;
        live(&self.worker, &self.voucher, false);
        let m = &self.worker.metrics;
        m.requests_ok.fetch_add(1, Relaxed);
        m.prompt_tokens.fetch_add(input_tokens, Relaxed);
        m.completion_tokens.fetch_add(output_tokens, Relaxed);
        m.observe_latency(self.started.elapsed().as_secs_f64());
        Ok(sealed)
    }

    /// The request could not be served: a stored error with a fee-0 receipt (the nonce is used;
    /// the user pays nothing).
    pub async fn unserved(
        mut self,
        status: u16,
        code: &'static str,
        message: String,
    ) -> Result<Sealed, SealError> {
        let sealed = unserved(&self.worker, &self.voucher, status, code, message).await?;
        self.sealed = true;
        live(&self.worker, &self.voucher, false);
        Ok(sealed)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.sealed {
            return;
        }
        let (w, v) = (Arc::clone(&self.worker), self.voucher.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            live(&w, &v, false);
            return;
        };
        runtime.spawn(async move {
            let message = "the request could not be completed; nothing was charged".to_string();
            // Backing off up to a minute for about ten minutes (a store that is down for a
            // while); then the recovery pass takes over.
            for attempt in 0..16u32 {
                match unserved(&w, &v, 500, "interrupted", message.clone()).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(user = %v.user, nonce = v.nonce, error = %e, attempt,
                            "cannot seal an abandoned request");
                        let wait = Duration::from_millis(500u64 << attempt.min(7));
                        tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
                    }
                }
            }
            live(&w, &v, false);
        });
    }
}

/// Mark `v`'s request as served by this process (or no longer).
fn live(w: &Worker, v: &Voucher, serving: bool) {
    let mut live = w.live.lock().unwrap_or_else(|p| p.into_inner());
    let key = (v.user.clone(), v.nonce);
    if serving {
        live.insert(key);
    } else {
        live.remove(&key);
    }
}

/// A stored error with a fee-0 receipt for an admitted voucher.
async fn unserved(
    w: &Worker,
    v: &Voucher,
    status: u16,
    code: &'static str,
    message: String,
) -> Result<Sealed, SealError> {
    w.metrics.rejected(code);
    seal(w, v, Served::default(), None, status, |receipt| {
        let mut body = ErrorBody::new("server_error", code, message);
        body.error.receipt = Some(receipt);
        serde_json::to_string(&body).unwrap_or_default()
    })
    .await
}

/// Sign and store the receipt for `v` at `fee`, after every lower nonce of the user is sealed.
async fn seal(
    w: &Worker,
    v: &Voucher,
    served: Served,
    proof: Option<&[u8]>,
    status: u16,
    body: impl FnOnce(ReceiptJson) -> String,
) -> Result<Sealed, SealError> {
    let previous = sealed_total_before(w, v).await?;
    let total = previous.checked_add(served.fee).ok_or(SealError::Overflow)?;
    let receipt = w.receipt(v, served, total);
    let mut json = ReceiptJson::from(&receipt);
    if let Some(proof) = proof {
        json = json.with_proof(proof);
    }
    let body = body(json);
    w.store.seal(&receipt, proof, status, &body).await?;
    w.sealed.notify_waiters();
    Ok(Sealed { status, body, receipt })
}

/// Wait until every lower nonce of this user is sealed (only matters with a window above 1),
/// then return the total to build on. Woken by each seal of this process; seals of other
/// processes sharing the store are seen by polling.
async fn sealed_total_before(w: &Worker, v: &Voucher) -> Result<Balance, SealError> {
    let deadline = Instant::now() + Duration::from_secs(w.config.limits.request_timeout_secs);
    loop {
        let sealed = w.sealed.notified();
        // In this order: once nothing lower is in flight, the sequence read after includes it.
        if !w.store.in_flight_before(&v.user, v.nonce).await? {
            return Ok(w.store.sequence(&v.user).await?.last_total);
        }
        if Instant::now() > deadline {
            return Err(SealError::EarlierUnsealed);
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), sealed).await;
    }
}

/// A place in a model's bounded queue, held from a request's arrival until it gets a slot or
/// ends.
pub struct QueuePlace {
    worker: Arc<Worker>,
    kind: ServiceKind,
}

impl QueuePlace {
    /// Whether the queue of `kind` has a place now (a cheap check before any work; the place
    /// itself is taken once the request passed its checks).
    pub fn has_room(worker: &Worker, kind: ServiceKind) -> bool {
        capacity(worker, kind).is_some_and(|c| c.waiting.load(Relaxed) < c.queue)
    }

    /// A place if the queue of `kind` has one.
    pub fn take(worker: &Arc<Worker>, kind: ServiceKind) -> Option<QueuePlace> {
        let capacity = capacity(worker, kind)?;
        if capacity.waiting.fetch_add(1, Relaxed) >= capacity.queue {
            capacity.waiting.fetch_sub(1, Relaxed);
            return None;
        }
        worker.metrics.queue_depth.fetch_add(1, Relaxed);
        Some(QueuePlace { worker: Arc::clone(worker), kind })
    }

    /// Wait for a slot until `deadline`; the queue place is given up either way.
    pub async fn into_slot(self, deadline: Instant) -> Option<Slot> {
        let slots = Arc::clone(&capacity(&self.worker, self.kind)?.slots);
        let wait = tokio::time::timeout_at(deadline.into(), slots.acquire_owned()).await;
        let permit = wait.ok()?.ok()?;
        self.worker.metrics.in_progress.fetch_add(1, Relaxed);
        Some(Slot { _permit: permit, worker: Arc::clone(&self.worker) })
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        if let Some(c) = capacity(&self.worker, self.kind) {
            c.waiting.fetch_sub(1, Relaxed);
        }
        self.worker.metrics.queue_depth.fetch_sub(1, Relaxed);
    }
}

fn capacity(w: &Worker, kind: ServiceKind) -> Option<&Capacity> {
    match kind {
        ServiceKind::Chat => w.chat.as_ref().map(|c| &c.capacity),
        ServiceKind::Embedding => w.embeddings.as_ref().map(|e| &e.capacity),
        ServiceKind::FineTune => None,
    }
}

/// One of a model's slots, held while the request runs.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    worker: Arc<Worker>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.worker.metrics.in_progress.fetch_sub(1, Relaxed);
    }
}
