//! `compute proxy`: a local OpenAI-compatible endpoint that pays one provider. Any OpenAI client
//! (any language) points its base URL here; the proxy signs a voucher for each request, forwards
//! the exact body to the provider, passes streams through chunk by chunk, and verifies and
//! records every receipt before the client sees the end of the answer. Requests are sent one at a
//! time (the protocol's in-flight window is one voucher per user and provider).
//!
//! Every request must carry the proxy's token and come from a local client, not a web page (see
//! [`crate::proxy_auth`]). A provider that goes silent is answered with 504 after the session's
//! timeout.

// Handlers return their error response directly; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use crate::{
    proxy_auth::{self, Access},
    proxy_finetune as ft,
    session::{is_timeout, show, AnswerError, Session, Signed},
    sse::SseReader,
};
use anyhow::Context;
use axum::{
    body::{Body, Bytes},
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use compute_client::wire::{ErrorBody, ErrorDetail, ReceiptJson};
use compute_primitives::Balance;
use futures::StreamExt;
use serde_json::{json, Value};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};
use tokio::sync::{mpsc, Mutex};

/// Largest request body accepted from local clients.
const MAX_BODY: usize = 1 << 20;

pub struct Proxy {
    pub sess: Session,
    cap: Balance,
    /// Held from signing a voucher until its receipt is recorded.
    turn: Arc<Mutex<()>>,
    /// Fine-tuning uploads and the jobs followed (`crate::proxy_finetune`).
    pub finetune: crate::proxy_finetune::FineTuning,
}

/// Who may use the proxy (see [`crate::proxy_auth`]).
pub struct Options {
    pub listen: SocketAddr,
    /// Read the token from here instead of generating one.
    pub token_file: Option<PathBuf>,
    /// Browser origins allowed to call the proxy.
    pub allow_origins: Vec<String>,
    /// Listen on a non-loopback address.
    pub allow_remote: bool,
}

/// Serve until the process is stopped.
pub async fn serve(sess: Session, cap: Balance, opts: Options) -> anyhow::Result<()> {
    proxy_auth::check_listen(opts.listen, opts.allow_remote)?;
    let services = sess.chain.services_of(&sess.provider).await?;
    if services.is_empty() {
        anyhow::bail!("{} has no services (see `compute services`)", sess.provider);
    }
    let (token, written) = proxy_auth::token(opts.token_file.as_deref(), &sess.state_path)?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let local = listener.local_addr()?;
    eprintln!(
        "OpenAI-compatible proxy for {} on http://{local}/v1 (models: {}; at most {} per request)",
        sess.provider,
        services.iter().map(|s| s.model.as_str()).collect::<Vec<_>>().join(", "),
        show(cap)
    );
    announce_token(&token, written.as_deref(), opts.token_file.as_deref());
    let access = Arc::new(Access::new(token, local, opts.allow_remote, opts.allow_origins));
    let state =
        Arc::new(Proxy { sess, cap, turn: Arc::new(Mutex::new(())), finetune: Default::default() });
    let upload_limit = compute_client::finetune_api::MAX_DATASET_BYTES + 64 * 1024;
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route(
            "/v1/files",
            post(ft::upload).layer(axum::extract::DefaultBodyLimit::max(upload_limit)),
        )
        .route("/v1/fine_tuning/jobs", post(ft::create))
        .route("/v1/fine_tuning/jobs/{id}", get(ft::retrieve))
        .route("/v1/fine_tuning/jobs/{id}/events", get(ft::events))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(ft::cancel))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(access, proxy_auth::guard))
        .with_state(state);
    axum::serve(listener, app).await.context("the proxy stopped")
}

/// Tell the user which API key to configure.
fn announce_token(token: &str, written: Option<&Path>, given: Option<&Path>) {
    match (written, given) {
        (Some(path), _) => eprintln!(
            "proxy token (use it as the OpenAI API key; clients send `Authorization: Bearer \
             <token>`), also in {}: {token}",
            path.display()
        ),
        (None, Some(path)) => eprintln!(
            "proxy token: the contents of {} (use it as the OpenAI API key)",
            path.display()
        ),
        (None, None) => {}
    }
}

/// An OpenAI-style error answer.
pub fn error(status: StatusCode, code: &str, message: String) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        402 => "insufficient_funds",
        403 => "permission_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind: kind.into(),
            code: code.into(),
            receipt: None,
            expected: None,
        },
    };
    (status, Json(body)).into_response()
}

/// The provider did not answer (504 when it timed out, else 502).
fn unreachable(e: &anyhow::Error) -> Response {
    if is_timeout(e) {
        error(StatusCode::GATEWAY_TIMEOUT, "provider_timeout", format!("{e:#}"))
    } else {
        error(StatusCode::BAD_GATEWAY, "provider_unreachable", format!("{e:#}"))
    }
}

async fn models(State(p): State<Arc<Proxy>>) -> Response {
    let mut list = match p.sess.chain.services_of(&p.sess.provider).await {
        Ok(list) => list,
        Err(e) => return error(StatusCode::BAD_GATEWAY, "node_unreachable", e.to_string()),
    };
    list.sort_by_key(|s| s.service_id);
    // Models to call: a fine-tuning service names the model it trains, not one to call.
    let data: Vec<Value> = list
        .iter()
        .filter(|s| s.kind != compute_primitives::ServiceKind::FineTune)
        .map(|s| {
            json!({
                "id": s.model, "object": "model", "created": 0, "owned_by": s.provider.to_string(),
                "service_id": s.service_id,
                "kind": s.kind.as_str(),
                "input_price": s.input_price.to_string(),
                "output_price": s.output_price.to_string(),
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// The paid endpoints the proxy forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Embeddings,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }
}

async fn chat(State(p): State<Arc<Proxy>>, body: Bytes) -> Response {
    forward(p, body, Endpoint::Chat).await
}

async fn embeddings(State(p): State<Arc<Proxy>>, body: Bytes) -> Response {
    forward(p, body, Endpoint::Embeddings).await
}

async fn forward(p: Arc<Proxy>, body: Bytes, endpoint: Endpoint) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the body must be a JSON object".into(),
            )
        }
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, "invalid_json", format!("request body: {e}"))
        }
    };
    let Some(model) = request["model"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "missing_model", "`model` is required".into());
    };
    let kind = match endpoint {
        Endpoint::Chat => compute_primitives::ServiceKind::Chat,
        Endpoint::Embeddings => compute_primitives::ServiceKind::Embedding,
    };
    let svc = match p.sess.service_named(model, kind).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::NOT_FOUND, "model_not_found", format!("{e:#}")),
    };
    let guard = Arc::clone(&p.turn).lock_owned().await;
    let mut resynced = false;
    loop {
        let signed = match p.sess.sign(&svc, &body, p.cap).await {
            Ok(s) => s,
            // Signing may first catch up on the provider's receipts.
            Err(e) if is_timeout(&e) => return unreachable(&e),
            Err(e) => return error(StatusCode::PAYMENT_REQUIRED, "cannot_sign", format!("{e:#}")),
        };
        let resp = match p.sess.send(&signed, endpoint.path(), body.to_vec()).await {
            Ok(r) => r,
            Err(e) => return unreachable(&e),
        };
        let status = resp.status();
        let is_sse = crate::sse::is_event_stream(&resp);
        if status.is_success() && is_sse {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                let _turn = guard;
                pass_stream(&p.sess, &signed, &request, resp, tx).await;
            });
            return Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
                .unwrap_or_else(|e| {
                    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                });
        }
        let value: Value = match resp.json().await {
            Ok(v) => v,
            Err(e) if e.is_timeout() => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "provider_timeout",
                    format!("the provider did not finish its answer in time: {e}"),
                )
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "bad_provider_answer",
                    format!("not JSON: {e}"),
                )
            }
        };
        if !status.is_success() {
            match p.sess.refused(&signed, status.as_u16(), value.clone()) {
                AnswerError::Refused { code, .. }
                    if !resynced && (code == "stale_nonce" || code == "nonce_gap") =>
                {
                    if let Err(e) = p.sess.resync().await {
                        if is_timeout(&e) {
                            return unreachable(&e);
                        }
                        return error(StatusCode::BAD_GATEWAY, "resync_failed", format!("{e:#}"));
                    }
                    resynced = true;
                    continue;
                }
                AnswerError::Refused { status, message, hint, mut body, .. } => {
                    body["error"]["message"] = json!(format!("{message}{hint}"));
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                    return (status, Json(body)).into_response();
                }
                e @ AnswerError::BadReceipt(_) => {
                    return error(StatusCode::BAD_GATEWAY, "receipt_invalid", e.to_string())
                }
                AnswerError::Other(e) => {
                    return error(StatusCode::BAD_GATEWAY, "bad_provider_answer", format!("{e:#}"))
                }
            }
        }
        let recorded = serde_json::from_value::<ReceiptJson>(value["receipt"].clone())
            .map_err(|_| AnswerError::BadReceipt("the answer carries no receipt".into()))
            .and_then(|r| match endpoint {
                Endpoint::Chat => {
                    let text =
                        value["choices"][0]["message"]["content"].as_str().unwrap_or_default();
                    p.sess.record(&signed, &r, Some(text), Some(&request))
                }
                Endpoint::Embeddings => {
                    let hash =
                        crate::embed::vectors_hash(&value).map_err(AnswerError::BadReceipt)?;
                    p.sess.record_embeddings(&signed, &r, hash, Some(&request["input"]))
                }
            });
        drop(guard);
        return match recorded {
            Ok(_) => (StatusCode::OK, Json(value)).into_response(),
            Err(e) => error(StatusCode::BAD_GATEWAY, "receipt_invalid", e.to_string()),
        };
    }
}

/// Forward the provider's events as they come; check the receipt of the final chunk against the
/// text streamed. The client going away does not stop the reading: the request is paid for, so
/// its receipt is still verified and recorded.
async fn pass_stream(
    sess: &Session,
    signed: &Signed,
    asked: &Value,
    resp: reqwest::Response,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut reader = SseReader::default();
    let mut text = String::new();
    let mut receipt: Option<ReceiptJson> = None;
    let mut bytes = resp.bytes_stream();
    let fail = |message: String, code: &str| {
        let body = ErrorBody {
            error: ErrorDetail {
                message,
                kind: "server_error".into(),
                code: code.into(),
                receipt: None,
                expected: None,
            },
        };
        let json = serde_json::to_string(&body).unwrap_or_default();
        Bytes::from(format!("data: {json}\n\n"))
    };
    while let Some(chunk) = bytes.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let (what, code) = if e.is_timeout() {
                    ("went silent", "provider_timeout")
                } else {
                    ("broke", "provider_stream")
                };
                let _ = tx.send(Ok(fail(format!("the provider's stream {what}: {e}"), code))).await;
                return;
            }
        };
        for ev in reader.push(&chunk) {
            if ev.is_done() {
                let verdict = match &receipt {
                    Some(r) => sess.record(signed, r, Some(&text), Some(asked)).map(|_| ()),
                    None => {
                        Err(AnswerError::BadReceipt("the stream ended without a receipt".into()))
                    }
                };
                let last = match verdict {
                    Ok(()) => Bytes::from(ev.raw),
                    Err(e) => {
                        eprintln!("warning: {e}");
                        fail(e.to_string(), "receipt_invalid")
                    }
                };
                let _ = tx.send(Ok(last)).await;
                return;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                    text.push_str(piece);
                }
                if let Some(r) = v.get("receipt").filter(|r| !r.is_null()) {
                    receipt = serde_json::from_value(r.clone()).ok();
                }
            }
            let _ = tx.send(Ok(Bytes::from(ev.raw))).await;
        }
    }
    // No end marker: still keep a receipt that arrived (the request was paid for).
    if let Some(r) = &receipt {
        let _ = sess.record(signed, r, Some(&text), Some(asked));
    }
    let _ = tx.send(Ok(fail("the provider's stream ended early".into(), "provider_stream"))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response) -> ErrorBody {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A provider that accepts the connection and never answers: the proxy's client gets a 504
    /// in OpenAI's error shape, in about the timeout, instead of waiting forever.
    #[tokio::test]
    async fn a_silent_provider_is_a_504() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let http = reqwest::Client::new();
        let started = std::time::Instant::now();
        let e = http
            .post(format!("http://{addr}/v1/chat/completions"))
            .timeout(std::time::Duration::from_millis(200))
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e).context("cannot reach the provider"))
            .unwrap_err();
        let resp = unreachable(&e);
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = body_of(resp).await;
        assert_eq!(
            (body.error.code.as_str(), body.error.kind.as_str()),
            ("provider_timeout", "server_error")
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));

        // Nobody listening at all is a 502.
        let e = http
            .post("http://127.0.0.1:1/")
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e).context("cannot reach the provider"))
            .unwrap_err();
        let resp = unreachable(&e);
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(body_of(resp).await.error.code, "provider_unreachable");
    }
}
