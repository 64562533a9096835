//! A user's own records: `POST /v1/ack` (closing a session with a signed total) and
//! `GET /v1/receipts` (catching up on receipts, each with the voucher it answers).

use super::{
    error::{stored, ApiError},
    paid::{refuse, replay, voucher_of},
};
use crate::{
    billing::admission,
    worker::{Served, Worker},
};
use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use compute_client::wire::{self, ReceiptJson, SignedAuth};
use compute_primitives::AccountId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Serialize)]
struct AckAnswer {
    receipt: ReceiptJson,
}

pub async fn ack(State(w): State<Arc<Worker>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let sv = voucher_of(&w, &headers)?;
    if let Some(answer) = replay(&w, &sv).await {
        return answer;
    }
    let v = sv.voucher.clone();
    let escrow = w.escrow(&v.user).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "chain_unavailable",
            format!("cannot read the escrow: {e}"),
        )
    })?;
    // A key without an escrow here stores nothing, acks included; an ack costs a request of the
    // user's budget.
    if let Err(r) = admission::require_escrow(&v, escrow.as_ref()) {
        w.metrics.rejected(r.code);
        return Err(r.into());
    }
    if w.limits.take_request(&v.user).is_err() {
        w.metrics.rejected("rate_limited");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this user's requests per minute are used up",
        ));
    }
    let mut last_total = None;
    let window = w.config.window;
    let admitted = w
        .store
        .admit(&sv, window, w.instance, |view| {
            admission::check_sequence(&v, view, escrow.as_ref(), window)?;
            last_total = Some(view.seq.last_total);
            admission::admit_ack(&v, view, escrow.as_ref(), window)
        })
        .await;
    match admitted {
        Err(e) => Err(ApiError::internal(e)),
        // A malformed ack uses nothing: the user just sends a correct one.
        Ok(Err(rejection)) => Err(refuse(&w, &sv, rejection.keeps_nonce(), last_total).await),
        Ok(Ok(())) => {
            // Nothing is in flight (admission checked), so the ack seals right after the
            // latest receipt.
            let total = last_total.unwrap_or(0);
            let receipt = w.receipt(&v, Served::default(), total);
            let body = serde_json::to_string(&AckAnswer { receipt: (&receipt).into() })
                .map_err(ApiError::internal)?;
            w.store.seal(&receipt, None, 200, &body).await.map_err(ApiError::internal)?;
            w.sealed.notify_waiters();
            Ok(stored(200, body, Some(&receipt)))
        }
    }
}

#[derive(Deserialize)]
pub struct ReceiptsQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

#[derive(Serialize)]
struct ReceiptList {
    object: &'static str,
    data: Vec<ReceiptJson>,
}

pub async fn receipts(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    Query(q): Query<ReceiptsQuery>,
) -> Result<Response, ApiError> {
    let user = authenticated(&w, &headers)?;
    // Each receipt may carry a proof of some kilobytes: pages stay at most 100 receipts.
    let limit = q.limit.unwrap_or(100).min(100);
    let list =
        w.store.receipts(&user, q.after.unwrap_or(0), limit).await.map_err(ApiError::internal)?;
    // Each receipt with the user's voucher it answers: a client catching up on receipts it
    // never saw adopts only those it signed a voucher for.
    let data = list
        .iter()
        .map(|s| {
            let json = ReceiptJson::from(&s.receipt).with_voucher(&s.voucher);
            match &s.proof {
                Some(p) => json.with_proof(p),
                None => json,
            }
        })
        .collect();
    Ok(Json(ReceiptList { object: "list", data }).into_response())
}

/// The user whose signed auth challenge (`x-compute-auth`) came with the request: signed for
/// this provider on this chain within `AUTH_MAX_SKEW_SECS` of now.
pub fn authenticated(w: &Worker, headers: &HeaderMap) -> Result<AccountId, ApiError> {
    let auth: Option<SignedAuth> = headers
        .get(wire::AUTH_HEADER)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| wire::from_hex("auth challenge", s).ok());
    let Some(auth) = auth else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_auth",
            format!("send a signed auth challenge in `{}`", wire::AUTH_HEADER),
        ));
    };
    let skew = super::unix_now().abs_diff(auth.challenge.timestamp);
    if !auth.verify(&w.genesis) || auth.challenge.provider != w.provider {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "auth challenge does not verify for this provider and chain",
        ));
    }
    if skew > wire::AUTH_MAX_SKEW_SECS {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "stale_auth",
            format!("auth timestamp is {skew} s off"),
        ));
    }
    Ok(auth.challenge.user)
}
