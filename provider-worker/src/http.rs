//! The OpenAI-compatible HTTP API.

// Handler helpers return the error response itself (`Result<_, Response>`); it is sent at once,
// never propagated far, so boxing it would only add noise.
#![allow(clippy::result_large_err)]

use crate::{
    admission::{self, Needs, Rejection},
    model::{ChatMessage, FinishReason, GenParams, Generation},
    worker::Worker,
};
use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use compute_client::wire::{self, ReceiptJson, SignedAuth};
use compute_client::ServiceInfo;
use compute_primitives::{ServiceKind, SignedReceipt, SignedVoucher, Voucher};
use polkadot_sdk::sp_core::H256;
use serde::Deserialize;
use serde_json::{json, Value};
use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// The router.
pub fn router(worker: Arc<Worker>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/ack", post(ack))
        .route("/v1/receipts", get(receipts))
        .fallback(|| async {
            error(StatusCode::NOT_FOUND, "not_found", "no such endpoint".into(), None, None)
        })
        .with_state(worker)
}

fn kind_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "insufficient_funds",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

fn error(
    status: StatusCode,
    code: &str,
    message: String,
    expected: Option<Value>,
    receipt: Option<&SignedReceipt>,
) -> Response {
    let mut body = json!({ "error": {
        "message": message, "type": kind_of(status), "code": code } });
    if let Some(e) = expected {
        body["error"]["expected"] = e;
    }
    if let Some(r) = receipt {
        body["error"]["receipt"] =
            serde_json::to_value(ReceiptJson::from(r)).unwrap_or(Value::Null);
    }
    let mut resp = (status, Json(body)).into_response();
    if let Some(r) = receipt {
        add_receipt_header(&mut resp, r);
    }
    resp
}

fn add_receipt_header(resp: &mut Response, r: &SignedReceipt) {
    if let Ok(v) = HeaderValue::from_str(&wire::to_hex(r)) {
        resp.headers_mut().insert(wire::RECEIPT_HEADER, v);
    }
}

fn stored(status: u16, body: String, receipt: Option<&SignedReceipt>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut resp = (status, [("content-type", "application/json")], body).into_response();
    if let Some(r) = receipt {
        add_receipt_header(&mut resp, r);
    }
    resp
}

async fn health(State(w): State<Arc<Worker>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "provider": w.provider.to_string(),
        "genesis": format!("{:?}", w.genesis),
        "model": w.engine.as_ref().map(|_| w.model_name.clone()),
        "embedding_model": w.embeddings.as_ref().map(|_| w.embedding_model_name.clone()),
    }))
}

async fn metrics(State(w): State<Arc<Worker>>) -> impl IntoResponse {
    let passes = w.embeddings.as_ref().map(|b| b.stats.passes.load(Relaxed));
    ([("content-type", "text/plain; version=0.0.4")], w.metrics.render(passes))
}

async fn models(State(w): State<Arc<Worker>>) -> Json<Value> {
    let services = w.services.read().map(|s| s.clone()).unwrap_or_default();
    let mut data: Vec<Value> = services
        .values()
        .map(|s| {
            json!({
                "id": s.model, "object": "model", "owned_by": w.provider.to_string(),
                "created": 0,
                "service_id": s.service_id,
                "kind": match s.kind { ServiceKind::Chat => "chat", ServiceKind::Embedding => "embedding" },
                "input_price": s.input_price.to_string(),
                "output_price": s.output_price.to_string(),
                "price_version": s.price_version,
            })
        })
        .collect();
    data.sort_by_key(|v| v["service_id"].as_u64());
    Json(json!({ "object": "list", "data": data }))
}

/// The voucher from the request header, signature checked for this chain and provider.
fn voucher_of(w: &Worker, headers: &HeaderMap) -> Result<SignedVoucher, Response> {
    let Some(raw) = headers.get(wire::VOUCHER_HEADER) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "missing_voucher",
            format!("send a signed voucher in the `{}` header", wire::VOUCHER_HEADER),
            None,
            None,
        ));
    };
    let sv: SignedVoucher =
        raw.to_str().ok().and_then(|s| wire::from_hex("voucher", s).ok()).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "malformed_voucher",
                format!("`{}` is not a hex SCALE-encoded SignedVoucher", wire::VOUCHER_HEADER),
                None,
                None,
            )
        })?;
    if !sv.verify(&w.genesis) {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the voucher's signature does not verify for its user on this chain".into(),
            Some(json!({ "genesis": format!("{:?}", w.genesis) })),
            None,
        ));
    }
    if sv.voucher.provider != w.provider {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "wrong_provider",
            format!("the voucher names provider {}, this is {}", sv.voucher.provider, w.provider),
            Some(json!({ "provider": w.provider.to_string() })),
            None,
        ));
    }
    Ok(sv)
}

/// A retry of a request already answered gets the stored answer; another voucher with a used
/// nonce is refused.
async fn replay(w: &Worker, sv: &SignedVoucher) -> Option<Response> {
    match w.store.trace(&sv.voucher.user, sv.voucher.nonce).await {
        // sr25519 signatures are randomised: a retry re-signs the same voucher.
        Ok(Some(t)) if t.voucher.voucher == sv.voucher => Some(match (t.response, t.receipt) {
            (Some((status, body)), receipt) => stored(status, body, receipt.as_ref()),
            (None, _) => error(
                StatusCode::CONFLICT,
                "in_progress",
                "this request is still being served".into(),
                None,
                None,
            ),
        }),
        Ok(Some(_)) => Some(error(
            StatusCode::CONFLICT,
            "stale_nonce",
            format!("nonce {} was already used by another voucher", sv.voucher.nonce),
            None,
            None,
        )),
        Ok(None) => None,
        Err(e) => Some(internal(e)),
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "internal error");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string(), None, None)
}

/// Refuse; if the rejection uses the nonce, sign and store a fee-0 receipt and return it.
async fn refuse(
    w: &Worker,
    sv: &SignedVoucher,
    r: Rejection,
    last_total: Option<u128>,
) -> Response {
    w.metrics.rejected(r.code);
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let receipt = match (r.uses_nonce, last_total) {
        (true, Some(total)) => {
            let receipt = w.receipt(&sv.voucher, H256::zero(), 0, 0, 0, total);
            let body = error(status, r.code, r.message.clone(), r.expected.clone(), Some(&receipt));
            let _ = body;
            let mut stored_body = json!({ "error": {
                "message": r.message, "type": kind_of(status), "code": r.code,
                "receipt": ReceiptJson::from(&receipt) } });
            if let Some(e) = &r.expected {
                stored_body["error"]["expected"] = e.clone();
            }
            match w.store.admit_and_seal(sv, &receipt, r.status, &stored_body.to_string()).await {
                Ok(true) => Some(receipt),
                Ok(false) => None,
                Err(e) => return internal(e),
            }
        }
        _ => None,
    };
    error(status, r.code, r.message, r.expected, receipt.as_ref())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: Value,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<RawMessage>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    n: Option<u32>,
}

struct Parsed {
    model: String,
    messages: Vec<ChatMessage>,
    params: GenParams,
    stream: bool,
}

fn parse_chat(body: &[u8], limit: u64) -> Result<Parsed, Rejection> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request("invalid_json", format!("request body: {e}")))?;
    if req.messages.is_empty() {
        return Err(Rejection::bad_request("invalid_messages", "messages must not be empty"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer") {
            return Err(Rejection::bad_request(
                "invalid_messages",
                format!("unknown role `{}`", m.role),
            ));
        }
        let content = match m.content {
            Value::String(s) => s,
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            _ => {
                return Err(Rejection::bad_request(
                    "invalid_messages",
                    "message content must be a string or text parts",
                ))
            }
        };
        let role = if m.role == "developer" { "system".to_string() } else { m.role };
        messages.push(ChatMessage { role, content });
    }
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(Rejection::bad_request("invalid_temperature", "temperature must be in 0..=2"));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(Rejection::bad_request("invalid_top_p", "top_p must be in (0, 1]"));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(Rejection::bad_request("unsupported_n", "only n = 1 is served"));
    }
    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty()) {
        return Err(Rejection::bad_request("invalid_stop", "at most 4 non-empty stop strings"));
    }
    let max_tokens = req.max_completion_tokens.or(req.max_tokens).unwrap_or(limit).min(limit);
    if max_tokens == 0 {
        return Err(Rejection::bad_request("invalid_max_tokens", "max_tokens must be at least 1"));
    }
    let seed = req.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    Ok(Parsed {
        model: req.model,
        messages,
        params: GenParams { max_tokens: max_tokens as usize, temperature, top_p, seed, stop },
        stream: req.stream,
    })
}

/// Releases the queue position and the generation slot.
struct SlotGuard<'a> {
    w: &'a Worker,
}
impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.w.metrics.in_progress.fetch_sub(1, Relaxed);
    }
}

/// What a paid endpoint measured of its request body before admission.
struct Measured<T> {
    /// The parsed request, handed on once admitted.
    request: T,
    /// Model named in the body.
    model: String,
    /// Input tokens, counted with the model's tokenizer.
    prompt_tokens: u64,
    /// Output tokens asked for (0 for embeddings).
    max_tokens: u64,
}

/// A paid request that passed admission: its nonce is taken, so it must end in a sealed receipt.
struct Paid<T> {
    v: Voucher,
    service: ServiceInfo,
    /// Output budget lowered to fit the cap.
    max_tokens: u64,
    request: T,
}

/// Read the body, verify the voucher, answer a retry from the store, measure the request and
/// run admission inside the store transaction that takes the nonce. A refusal after the nonce
/// checks carries a signed fee-0 receipt.
async fn admit_paid<T>(
    w: &Worker,
    headers: &HeaderMap,
    body: Body,
    kind: ServiceKind,
    measure: impl FnOnce(&[u8]) -> Result<Measured<T>, Rejection>,
) -> Result<Paid<T>, Response> {
    let Ok(body) = axum::body::to_bytes(body, w.config.max_body_bytes).await else {
        w.metrics.rejected("body_too_large");
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {} bytes", w.config.max_body_bytes),
            None,
            None,
        ));
    };
    let sv = voucher_of(w, headers)?;
    if let Some(r) = replay(w, &sv).await {
        return Err(r);
    }
    let v = sv.voucher.clone();
    let escrow = w.escrow(&v.user).await.map_err(|e| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "chain_unavailable",
            format!("cannot read the escrow: {e}"),
            None,
            None,
        )
    })?;
    let measured = measure(&body);
    if w.waiting.load(Relaxed) >= w.config.queue {
        w.metrics.rejected("overloaded");
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests waiting; retry with the same voucher".into(),
            None,
            None,
        ));
    }
    let service = w.service(v.service_id);
    let body_hash = wire::request_hash(&body);
    let mut outcome = None;
    let mut last_total = None;
    let admitted = w
        .store
        .admit(&sv, w.config.window, |view| {
            admission::check_sequence(&v, view, escrow.as_ref(), w.config.window)?;
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
            outcome = Some(admission::admit(&v, &needs, view, escrow.as_ref(), w.config.window)?);
            Ok::<(), Rejection>(())
        })
        .await;
    match admitted {
        Err(e) => return Err(internal(e)),
        Ok(Err(rejection)) => {
            // The same voucher may have just been admitted by another request (another worker
            // process, or a retry racing the first try): answer as a retry.
            if rejection.code == "stale_nonce" {
                if let Some(r) = replay(w, &sv).await {
                    return Err(r);
                }
            }
            return Err(refuse(w, &sv, rejection, last_total).await);
        }
        Ok(Ok(())) => {}
    }
    let (Some(admitted), Ok(m), Some(service)) = (outcome, measured, service) else {
        return Err(internal("admission passed without its inputs"));
    };
    Ok(Paid { v, service, max_tokens: admitted.max_tokens, request: m.request })
}

/// Wait in the bounded queue (checked at admission) for one of `slots`.
async fn wait_for_slot(
    w: &Worker,
    slots: &Arc<Semaphore>,
) -> Result<tokio::sync::OwnedSemaphorePermit, Response> {
    w.waiting.fetch_add(1, Relaxed);
    w.metrics.queue_depth.fetch_add(1, Relaxed);
    let permit = Arc::clone(slots).acquire_owned().await;
    w.waiting.fetch_sub(1, Relaxed);
    w.metrics.queue_depth.fetch_sub(1, Relaxed);
    let permit = permit.map_err(|_| internal("the worker's slots are closed"))?;
    w.metrics.in_progress.fetch_add(1, Relaxed);
    Ok(permit)
}

async fn chat(State(w): State<Arc<Worker>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let Some(engine) = w.engine.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this worker serves no chat model".into(),
            None,
            None,
        );
    };
    let measure = |body: &[u8]| {
        let parsed = parse_chat(body, w.config.max_tokens)?;
        let prompt = match engine.chat_prompt(&parsed.messages) {
            Ok(ids) if ids.len() + 1 < engine.context_len => ids,
            Ok(ids) => {
                return Err(Rejection::bad_request(
                    "context_length_exceeded",
                    format!(
                        "prompt of {} tokens leaves no room in {}",
                        ids.len(),
                        engine.context_len
                    ),
                ))
            }
            Err(e) => return Err(Rejection::bad_request("invalid_messages", e.to_string())),
        };
        Ok(Measured {
            model: parsed.model.clone(),
            prompt_tokens: prompt.len() as u64,
            max_tokens: parsed.params.max_tokens as u64,
            request: (parsed, prompt),
        })
    };
    let paid = match admit_paid(&w, &headers, body, ServiceKind::Chat, measure).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Paid { v, service, max_tokens, request: (parsed, prompt) } = paid;
    let mut params = parsed.params;
    params.max_tokens = max_tokens as usize;

    // Wait for a generation slot (the queue is bounded above).
    let permit = match wait_for_slot(&w, &w.slots).await {
        Ok(p) => p,
        Err(r) => return r,
    };

    let deadline = started + Duration::from_secs(w.config.request_timeout_secs);
    let user_bytes: &[u8] = v.user.as_ref();
    let id = format!("chatcmpl-{}-{}", hex::encode(&user_bytes[..4]), v.nonce);
    let created = unix_now();
    let model = parsed.model.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let stream = parsed.stream;
    let gen = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        engine.generate(&prompt, &params, |piece| {
            Instant::now() < deadline && (!stream || tx.blocking_send(piece.to_string()).is_ok())
        })
    });

    if !stream {
        drop(rx);
        let result = gen.await;
        let _slot = SlotGuard { w: &w };
        let generation = match result {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => return generation_failed(&w, &v, e.to_string()).await,
            Err(e) => return generation_failed(&w, &v, e.to_string()).await,
        };
        let (receipt, body) =
            match finish(&w, &v, &service, &generation, &id, created, &model).await {
                Ok(x) => x,
                Err(r) => return r,
            };
        w.metrics.observe_latency(started.elapsed().as_secs_f64());
        return stored(200, body, Some(&receipt));
    }

    // Streaming: SSE chunks as text becomes final, then the receipt in the last chunk.
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let w2 = Arc::clone(&w);
    tokio::spawn(async move {
        let w = w2;
        let chunk = |delta: Value, finish: Value| {
            let c = json!({ "id": id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] });
            Bytes::from(format!("data: {c}\n\n"))
        };
        let _ = out_tx
            .send(Ok(chunk(json!({ "role": "assistant", "content": "" }), Value::Null)))
            .await;
        let mut rx = rx;
        while let Some(piece) = rx.recv().await {
            if out_tx.send(Ok(chunk(json!({ "content": piece }), Value::Null))).await.is_err() {
                break;
            }
        }
        drop(rx);
        let result = gen.await;
        let _slot = SlotGuard { w: &w };
        let generation = match result {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                let _ = generation_failed(&w, &v, e.to_string()).await;
                let _ = out_tx
                    .send(Ok(Bytes::from(format!(
                        "data: {}\n\n",
                        json!({"error": {"message": e.to_string(), "code": "generation_failed"}})
                    ))))
                    .await;
                return;
            }
            Err(e) => {
                let _ = generation_failed(&w, &v, e.to_string()).await;
                return;
            }
        };
        match finish(&w, &v, &service, &generation, &id, created, &model).await {
            Ok((receipt, _)) => {
                let mut last = json!({ "id": id, "object": "chat.completion.chunk",
                    "created": created, "model": model,
                    "choices": [{ "index": 0, "delta": {}, "finish_reason": generation.finish.as_str() }],
                    "usage": usage(&generation) });
                last["receipt"] =
                    serde_json::to_value(ReceiptJson::from(&receipt)).unwrap_or(Value::Null);
                let _ = out_tx.send(Ok(Bytes::from(format!("data: {last}\n\n")))).await;
                let _ = out_tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
                w.metrics.observe_latency(started.elapsed().as_secs_f64());
            }
            Err(_) => {
                let _ = out_tx.send(Ok(Bytes::from(format!(
                    "data: {}\n\n", json!({"error": {"message": "could not seal the receipt", "code": "internal"}})
                )))).await;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(out_rx)))
        .unwrap_or_else(internal)
}

fn usage(g: &Generation) -> Value {
    json!({ "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// How vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// JSON numbers (each f32 written in its shortest exact form).
    Float,
    /// The little-endian f32 bytes, base64.
    Base64,
}

struct ParsedEmbedding {
    model: String,
    inputs: Vec<String>,
    encoding: Encoding,
}

fn parse_embedding(
    body: &[u8],
    dim: usize,
    max_inputs: usize,
) -> Result<ParsedEmbedding, Rejection> {
    let req: EmbeddingRequest = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request("invalid_json", format!("request body: {e}")))?;
    let inputs = match req.input {
        Value::String(s) => vec![s],
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.into_iter().filter_map(|x| x.as_str().map(String::from)).collect()
        }
        Value::Array(items) if items.iter().all(|x| x.is_number() || x.is_array()) => {
            return Err(Rejection::bad_request(
                "token_input_unsupported",
                "send text: token ids from another tokenizer cannot be embedded by this model",
            ))
        }
        _ => {
            return Err(Rejection::bad_request(
                "invalid_input",
                "input must be a string or an array of strings",
            ))
        }
    };
    if inputs.is_empty() || inputs.len() > max_inputs {
        return Err(Rejection::bad_request(
            "invalid_input",
            format!("input must hold 1 to {max_inputs} strings, not {}", inputs.len()),
        ));
    }
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(Rejection::bad_request(
                "invalid_encoding_format",
                format!("encoding_format `{other}` is neither `float` nor `base64`"),
            ))
        }
    };
    if req.dimensions.is_some_and(|d| d != dim) {
        return Err(Rejection::bad_request(
            "unsupported_dimensions",
            format!("this model's vectors have {dim} dimensions and cannot be shortened"),
        ));
    }
    Ok(ParsedEmbedding { model: req.model, inputs, encoding })
}

async fn embeddings(State(w): State<Arc<Worker>>, headers: HeaderMap, body: Body) -> Response {
    use crate::model::EmbedError;
    use base64::Engine as _;
    let started = Instant::now();
    let Some(batcher) = w.embeddings.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this worker serves no embedding model".into(),
            None,
            None,
        );
    };
    let embedder = batcher.embedder();
    let measure = |body: &[u8]| {
        let parsed = parse_embedding(body, embedder.dim, w.config.max_embedding_inputs)?;
        let ids = embedder.tokenize(&parsed.inputs).map_err(|e| match e {
            EmbedError::TooLong { .. } => {
                Rejection::bad_request("context_length_exceeded", e.to_string())
            }
            e => Rejection::bad_request("invalid_input", e.to_string()),
        })?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let most = w.config.max_embedding_tokens;
        if tokens > most {
            return Err(Rejection::bad_request(
                "too_many_tokens",
                format!("the inputs hold {tokens} tokens; this worker embeds at most {most} per request"),
            ));
        }
        Ok(Measured {
            model: parsed.model.clone(),
            prompt_tokens: tokens as u64,
            max_tokens: 0,
            request: (parsed, ids),
        })
    };
    let paid = match admit_paid(&w, &headers, body, ServiceKind::Embedding, measure).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Paid { v, service, request: (parsed, ids), .. } = paid;
    let permit = match wait_for_slot(&w, &w.embed_slots).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let _slot = SlotGuard { w: &w };
    let tokens: u64 = ids.iter().map(|x| x.len() as u64).sum();
    // Time spent waiting for the slot counts: the request as a whole gets request_timeout_secs.
    let deadline = started + Duration::from_secs(w.config.request_timeout_secs);
    let result = batcher.embed(ids, Some(deadline)).await;
    drop(permit);
    let vectors = match result {
        Ok(v) => v,
        Err(e @ EmbedError::TimedOut { .. }) => {
            let message = format!("{e}; nothing is charged");
            return unserved(&w, &v, StatusCode::GATEWAY_TIMEOUT, "timeout", message).await;
        }
        Err(e) => return generation_failed(&w, &v, e.to_string()).await,
    };
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match parsed.encoding {
                Encoding::Float => json!(vector),
                Encoding::Base64 => {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let sealed =
        seal_paid(&w, &v, &service, wire::embedding_hash(&vectors), tokens, 0, |receipt| {
            json!({
                "object": "list", "data": data, "model": parsed.model,
                "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
                "receipt": receipt,
            })
        })
        .await;
    match sealed {
        Ok((receipt, body)) => {
            w.metrics.embedding_inputs.fetch_add(vectors.len() as u64, Relaxed);
            w.metrics.observe_latency(started.elapsed().as_secs_f64());
            stored(200, body, Some(&receipt))
        }
        Err(r) => r,
    }
}

/// Wait until every lower nonce of this user is sealed (only matters with a window above 1),
/// then return the total to build on.
async fn sealed_total_before(w: &Worker, v: &Voucher) -> Result<u128, Response> {
    let deadline = Instant::now() + Duration::from_secs(w.config.request_timeout_secs);
    loop {
        let seq = w.store.sequence(&v.user).await.map_err(internal)?;
        let pending_before = w.store.in_flight_before(&v.user, v.nonce).await.map_err(internal)?;
        if !pending_before {
            return Ok(seq.last_total);
        }
        if Instant::now() > deadline {
            return Err(internal("an earlier request of this user never finished"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Price a response, sign its receipt and store both; the body returned (built around the
/// receipt by `body`) is what a retry gets too.
#[allow(clippy::too_many_arguments)]
async fn seal_paid(
    w: &Worker,
    v: &Voucher,
    service: &ServiceInfo,
    response_hash: H256,
    input_tokens: u64,
    output_tokens: u64,
    body: impl FnOnce(Value) -> Value,
) -> Result<(SignedReceipt, String), Response> {
    let fee = service
        .fee(input_tokens, output_tokens)
        .filter(|f| *f <= v.cap)
        .ok_or_else(|| internal("fee above the cap: the request was not limited to it"))?;
    let previous = sealed_total_before(w, v).await?;
    let total = previous.checked_add(fee).ok_or_else(|| internal("total overflows"))?;
    let receipt = w.receipt(v, response_hash, input_tokens, output_tokens, fee, total);
    let body =
        body(serde_json::to_value(ReceiptJson::from(&receipt)).unwrap_or(Value::Null)).to_string();
    w.store.seal(&receipt, 200, &body).await.map_err(internal)?;
    w.metrics.requests_ok.fetch_add(1, Relaxed);
    w.metrics.prompt_tokens.fetch_add(input_tokens, Relaxed);
    w.metrics.completion_tokens.fetch_add(output_tokens, Relaxed);
    Ok((receipt, body))
}

/// Price the generation, sign and store the receipt with the response.
async fn finish(
    w: &Worker,
    v: &Voucher,
    service: &ServiceInfo,
    g: &Generation,
    id: &str,
    created: u64,
    model: &str,
) -> Result<(SignedReceipt, String), Response> {
    let sealed = seal_paid(
        w,
        v,
        service,
        wire::response_hash(&g.text),
        g.prompt_tokens,
        g.completion_tokens,
        |receipt| {
            json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": g.text },
                              "finish_reason": g.finish.as_str() }],
                "usage": usage(g),
                "receipt": receipt,
            })
        },
    )
    .await?;
    if g.finish == FinishReason::Cancelled {
        tracing::info!(user = %v.user, nonce = v.nonce, "client went away; billed what was generated");
    }
    Ok(sealed)
}

/// The model failed: seal a fee-0 receipt so the nonce is not left hanging.
async fn generation_failed(w: &Worker, v: &Voucher, reason: String) -> Response {
    tracing::error!(user = %v.user, nonce = v.nonce, %reason, "generation failed");
    let message = format!("generation failed: {reason}");
    unserved(w, v, StatusCode::INTERNAL_SERVER_ERROR, "generation_failed", message).await
}

/// An admitted request the worker could not serve: a stored server error with a fee-0 receipt
/// (the nonce is used; the user pays nothing).
async fn unserved(
    w: &Worker,
    v: &Voucher,
    status: StatusCode,
    code: &'static str,
    message: String,
) -> Response {
    let total = match sealed_total_before(w, v).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let receipt = w.receipt(v, H256::zero(), 0, 0, 0, total);
    let body = json!({ "error": { "message": message, "type": "server_error", "code": code,
        "receipt": ReceiptJson::from(&receipt) } })
    .to_string();
    if let Err(e) = w.store.seal(&receipt, status.as_u16(), &body).await {
        return internal(e);
    }
    w.metrics.rejected(code);
    stored(status.as_u16(), body, Some(&receipt))
}

async fn ack(State(w): State<Arc<Worker>>, headers: HeaderMap) -> Response {
    let sv = match voucher_of(&w, &headers) {
        Ok(sv) => sv,
        Err(r) => return r,
    };
    if let Some(r) = replay(&w, &sv).await {
        return r;
    }
    let v = sv.voucher.clone();
    let escrow = w.escrow(&v.user).await.ok().flatten();
    let mut last_total = None;
    let admitted = w
        .store
        .admit(&sv, w.config.window, |view| {
            admission::check_sequence(&v, view, escrow.as_ref(), w.config.window)?;
            last_total = Some(view.seq.last_total);
            admission::admit_ack(&v, view, escrow.as_ref(), w.config.window)
        })
        .await;
    match admitted {
        Err(e) => internal(e),
        Ok(Err(rejection)) => {
            // A malformed ack uses nothing: the user just sends a correct one.
            let rejection = rejection.keeps_nonce();
            refuse(&w, &sv, rejection, last_total).await
        }
        Ok(Ok(())) => {
            let total = last_total.unwrap_or(0);
            let receipt = w.receipt(&v, H256::zero(), 0, 0, 0, total);
            let body = json!({ "receipt": ReceiptJson::from(&receipt) }).to_string();
            match w.store.seal(&receipt, 200, &body).await {
                Ok(()) => stored(200, body, Some(&receipt)),
                Err(e) => internal(e),
            }
        }
    }
}

#[derive(Deserialize)]
struct ReceiptsQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

async fn receipts(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    Query(q): Query<ReceiptsQuery>,
) -> Response {
    let auth: Option<SignedAuth> = headers
        .get(wire::AUTH_HEADER)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| wire::from_hex("auth challenge", s).ok());
    let Some(auth) = auth else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing_auth",
            format!("send a signed auth challenge in `{}`", wire::AUTH_HEADER),
            None,
            None,
        );
    };
    let skew = unix_now().abs_diff(auth.challenge.timestamp);
    if !auth.verify(&w.genesis) || auth.challenge.provider != w.provider {
        return error(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "auth challenge does not verify for this provider and chain".into(),
            None,
            None,
        );
    }
    if skew > wire::AUTH_MAX_SKEW_SECS {
        return error(
            StatusCode::UNAUTHORIZED,
            "stale_auth",
            format!("auth timestamp is {skew} s off"),
            None,
            None,
        );
    }
    let limit = q.limit.unwrap_or(100).min(1000);
    match w.store.receipts(&auth.challenge.user, q.after.unwrap_or(0), limit).await {
        Ok(list) => {
            // Each receipt with the user's voucher it answers: a client catching up on
            // receipts it never saw adopts only those it signed a voucher for.
            let list: Vec<ReceiptJson> =
                list.iter().map(|(v, r)| ReceiptJson::from(r).with_voucher(v)).collect();
            Json(json!({ "object": "list", "data": list })).into_response()
        }
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_bodies_are_validated() {
        let one = parse_embedding(br#"{"model":"m","input":"hi"}"#, 4, 8).expect("valid");
        assert_eq!((one.inputs, one.encoding), (vec!["hi".to_string()], Encoding::Float));
        let many = br#"{"model":"m","input":["a","b"],"encoding_format":"base64","dimensions":4}"#;
        let many = parse_embedding(many, 4, 8).expect("valid");
        assert_eq!((many.inputs.len(), many.encoding), (2, Encoding::Base64));
        let cases: [(&[u8], &str); 7] = [
            (b"[1,2", "invalid_json"),
            (br#"{"model":"m","input":[]}"#, "invalid_input"),
            (br#"{"model":"m","input":{"text":"x"}}"#, "invalid_input"),
            (br#"{"model":"m","input":["a","b","c"]}"#, "invalid_input"),
            (br#"{"model":"m","input":[[1,2],[3]]}"#, "token_input_unsupported"),
            (br#"{"model":"m","input":"x","encoding_format":"int8"}"#, "invalid_encoding_format"),
            (br#"{"model":"m","input":"x","dimensions":2}"#, "unsupported_dimensions"),
        ];
        for (body, code) in cases {
            let r = parse_embedding(body, 4, 2).err().expect("refused");
            assert_eq!((r.status, r.code), (400, code));
        }
    }

    #[test]
    fn chat_bodies_are_validated() {
        let ok = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stop":"x"}"#;
        let p = parse_chat(ok, 100).expect("valid");
        assert_eq!(p.params.max_tokens, 5);
        assert_eq!(p.params.stop, vec!["x".to_string()]);
        let cases: [(&[u8], &str); 6] = [
            (b"{not json", "invalid_json"),
            (br#"{"model":"m","messages":[]}"#, "invalid_messages"),
            (br#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#, "invalid_messages"),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "invalid_temperature",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "invalid_max_tokens",
            ),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#, "unsupported_n"),
        ];
        for (body, code) in cases {
            let r = parse_chat(body, 100).err().expect("refused");
            assert_eq!(r.code, code);
            assert_eq!(r.status, 400);
        }
        // max_tokens above the worker's limit is clipped, not refused.
        let big =
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":100000}"#;
        assert_eq!(parse_chat(big, 100).expect("valid").params.max_tokens, 100);
    }
}
