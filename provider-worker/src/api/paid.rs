//! What every paid endpoint does before its work: read the body (bounded in size and time),
//! verify the voucher, answer a retry from the store, refuse keys without an escrow before
//! storing anything, measure the request, take the user's rate budget, and run admission inside
//! the store transaction that takes the nonce. What passes comes out as a [`Ticket`]: from then
//! on the request is the worker's, and it always ends sealed.

use super::error::{stored, ApiError};
use crate::{
    billing::{
        admission::{self, Needs, Rejection},
        job::{QueuePlace, Ticket},
        limits::{Limited, Quota},
    },
    worker::{Served, Worker},
};
use axum::{
    body::Body,
    http::{HeaderMap, StatusCode},
};
use compute_client::wire;
use compute_primitives::{ServiceKind, SignedVoucher};
use serde_json::json;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// What a paid endpoint measured of its request body before admission.
pub struct Measured<T> {
    /// The parsed request, handed on once admitted.
    pub request: T,
    /// Model named in the body.
    pub model: String,
    /// Input tokens, counted with the model's tokenizer.
    pub prompt_tokens: u64,
    /// Output tokens asked for (0 for embeddings).
    pub max_tokens: u64,
}

/// A request that passed admission.
pub struct Admitted<T> {
    pub ticket: Ticket,
    /// Its place in the model's queue, until it gets a slot.
    pub place: QueuePlace,
    pub request: T,
    /// Output budget lowered to fit the cap.
    pub max_tokens: u64,
    /// The user's rate budget after this request.
    pub quota: Quota,
}

/// The voucher from the request header, signature checked for this chain and provider.
pub fn voucher_of(w: &Worker, headers: &HeaderMap) -> Result<SignedVoucher, ApiError> {
    let Some(raw) = headers.get(wire::VOUCHER_HEADER) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_voucher",
            format!("send a signed voucher in the `{}` header", wire::VOUCHER_HEADER),
        ));
    };
    let sv: SignedVoucher =
        raw.to_str().ok().and_then(|s| wire::from_hex("voucher", s).ok()).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_voucher",
                format!("`{}` is not a hex SCALE-encoded SignedVoucher", wire::VOUCHER_HEADER),
            )
        })?;
    if !sv.verify(&w.genesis) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the voucher's signature does not verify for its user on this chain",
        )
        .expected(json!({ "genesis": format!("{:?}", w.genesis) })));
    }
    if sv.voucher.provider != w.provider {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong_provider",
            format!("the voucher names provider {}, this is {}", sv.voucher.provider, w.provider),
        )
        .expected(json!({ "provider": w.provider.to_string() })));
    }
    Ok(sv)
}

/// A retry of a request already answered gets the stored answer; one still running gets 409
/// `in_progress` (its job completes whatever the first connection did); another voucher with a
/// used nonce is refused.
pub async fn replay(
    w: &Worker,
    sv: &SignedVoucher,
) -> Option<Result<axum::response::Response, ApiError>> {
    match w.store.trace(&sv.voucher.user, sv.voucher.nonce).await {
        // sr25519 signatures are randomised: a retry re-signs the same voucher.
        Ok(Some(t)) if t.voucher.voucher == sv.voucher => Some(match (t.response, t.receipt) {
            (Some((status, body)), receipt) => Ok(stored(status, body, receipt.as_ref())),
            (None, _) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "in_progress",
                "this request is still being served; retry for its answer",
            )
            .header("retry-after", "1".into())),
        }),
        Ok(Some(_)) => Some(Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_nonce",
            format!("nonce {} was already used by another voucher", sv.voucher.nonce),
        ))),
        Ok(None) => None,
        Err(e) => Some(Err(ApiError::internal(e))),
    }
}

/// Refuse; if the rejection uses the nonce, sign and store a fee-0 receipt and return it.
pub async fn refuse(
    w: &Worker,
    sv: &SignedVoucher,
    r: Rejection,
    last_total: Option<u128>,
) -> ApiError {
    w.metrics.rejected(r.code);
    let uses_nonce = r.uses_nonce;
    let error = ApiError::from(r);
    let (true, Some(total)) = (uses_nonce, last_total) else { return error };
    let receipt = w.receipt(&sv.voucher, Served::default(), total);
    let text =
        serde_json::to_string(&error.body.clone().with_receipt(&receipt)).unwrap_or_default();
    match w.store.admit_and_seal(sv, &receipt, error.status.as_u16(), &text).await {
        Ok(true) => error.receipt(receipt),
        Ok(false) => error,
        Err(e) => ApiError::internal(e),
    }
}

/// Read the body, verify the voucher, answer a retry, and admit (see the module's text).
pub async fn admit_paid<T>(
    w: &Arc<Worker>,
    headers: &HeaderMap,
    body: Body,
    kind: ServiceKind,
    measure: impl FnOnce(&[u8]) -> Result<Measured<T>, Rejection>,
) -> Result<Result<Admitted<T>, axum::response::Response>, ApiError> {
    let started = Instant::now();
    let limits = &w.config.limits;
    let read = axum::body::to_bytes(body, limits.max_body_bytes);
    let body = match tokio::time::timeout(Duration::from_secs(limits.body_timeout_secs), read).await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            w.metrics.rejected("body_too_large");
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body exceeds {} bytes", limits.max_body_bytes),
            ));
        }
        Err(_) => {
            w.metrics.rejected("body_timeout");
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("request body not received within {} s", limits.body_timeout_secs),
            ));
        }
    };
    let sv = voucher_of(w, headers)?;
    if let Some(answer) = replay(w, &sv).await {
        return answer.map(Err);
    }
    let v = sv.voucher.clone();
    let escrow = w.escrow(&v.user).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "chain_unavailable",
            format!("cannot read the escrow: {e}"),
        )
        .header("retry-after", "2".into())
    })?;
    // Nothing of a key without an escrow here is stored or measured.
    if let Err(r) = admission::require_escrow(&v, escrow.as_ref()) {
        w.metrics.rejected(r.code);
        return Err(r.into());
    }
    // Every request costs one of the user's budget, a malformed one too; its tokens are
    // counted once measured.
    w.limits.take_request(&v.user).map_err(|l| rate_limited(w, &l))?;
    let measured = crate::store::blocking(|| measure(&body));
    let quota = match &measured {
        Ok(m) => Some(
            w.limits
                .take_tokens(&v.user, m.prompt_tokens.saturating_add(m.max_tokens))
                .map_err(|l| rate_limited(w, &l))?,
        ),
        Err(_) => None,
    };
    // The queue place is taken last, by requests that passed every check: a client that only
    // opens connections cannot hold places.
    let place = QueuePlace::take(w, kind).ok_or_else(|| {
        w.metrics.rejected("overloaded");
        ApiError::overloaded()
    })?;
    let service = w.service(v.service_id);
    let body_hash = wire::request_hash(&body);
    let mut outcome = None;
    let mut last_total = None;
    let window = w.config.window;
    let admitted = w
        .store
        .admit(&sv, window, w.instance, |view| {
            admission::check_sequence(&v, view, escrow.as_ref(), window)?;
            // From here on a refusal uses the nonce and carries a fee-0 receipt.
            last_total = Some(view.seq.last_total);
            let m = measured.as_ref().map_err(Clone::clone)?;
            let needs = Needs {
                service: service.as_ref(),
                kind,
                body_hash,
                model: &m.model,
                prompt_tokens: m.prompt_tokens,
                max_tokens: m.max_tokens,
            };
            outcome = Some(admission::admit(&v, &needs, view, escrow.as_ref(), window)?);
            Ok::<(), Rejection>(())
        })
        .await;
    match admitted {
        Err(e) => return Err(ApiError::internal(e)),
        Ok(Err(rejection)) => {
            // The same voucher may have just been admitted by another request (another worker
            // process, or a retry racing the first try): answer as a retry.
            if rejection.code == "stale_nonce" {
                if let Some(answer) = replay(w, &sv).await {
                    return answer.map(Err);
                }
            }
            return Err(refuse(w, &sv, rejection, last_total).await);
        }
        Ok(Ok(())) => {}
    }
    let (Some(admitted), Ok(m), Some(service), Some(quota)) = (outcome, measured, service, quota)
    else {
        return Err(ApiError::internal("admission passed without its inputs"));
    };
    let ticket = Ticket::new(Arc::clone(w), v, service, started);
    Ok(Ok(Admitted { ticket, place, request: m.request, max_tokens: admitted.max_tokens, quota }))
}

fn rate_limited(w: &Worker, limited: &Limited) -> ApiError {
    w.metrics.rejected("rate_limited");
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "this user's {} per minute are used up; retry in {:.1} s",
            limited.budget,
            limited.retry_after.as_secs_f64()
        ),
    )
    .header("retry-after", limited.retry_after.as_secs_f64().ceil().to_string());
    super::error::quota_headers(&mut e.headers, &limited.quota);
    e
}
