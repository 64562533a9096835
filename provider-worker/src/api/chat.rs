//! `POST /v1/chat/completions`. Once admitted, the request is a job of its own: the handler
//! only waits for its answer (or relays its stream), so a client that disconnects changes
//! nothing but whether it reads the answer. A non-streamed job runs to completion and its
//! answer is kept for a retry of the same voucher; a streamed job stops when its reader goes
//! away and is billed for the tokens generated until then. Either way it is sealed.

use super::{
    error::{quota_headers, sealed, ApiError},
    openai::{parse_chat, ChatCompletion, Choice, Delta, Usage},
    paid::{admit_paid, Admitted, Measured},
};
use crate::{
    billing::{
        admission::Rejection,
        job::{QueuePlace, SealError, Sealed, Ticket},
    },
    model::{Engine, GenParams, Generation},
    worker::Worker,
};
use axum::{
    body::{Body, Bytes},
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use compute_client::wire;
use compute_primitives::ServiceKind;
use std::{sync::Arc, time::Instant};
use tokio::sync::mpsc;

/// What a chat job needs besides its ticket.
struct ChatJob {
    engine: Arc<Engine>,
    prompt: Vec<u32>,
    params: GenParams,
    id: String,
    created: u64,
    model: String,
}

impl ChatJob {
    fn completion(&self, g: &Generation, receipt: wire::ReceiptJson) -> String {
        let c = ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice {
                index: 0,
                message: Some(Delta {
                    role: Some("assistant".into()),
                    content: Some(g.text.clone()),
                }),
                delta: None,
                finish_reason: Some(g.finish.as_str().into()),
            }],
            usage: Some(Usage::chat(g.prompt_tokens, g.completion_tokens)),
            receipt: Some(receipt),
        };
        serde_json::to_string(&c).unwrap_or_default()
    }

    fn chunk(&self, delta: Delta, finish: Option<String>) -> ChatCompletion {
        ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice {
                index: 0,
                message: None,
                delta: Some(delta),
                finish_reason: finish,
            }],
            usage: None,
            receipt: None,
        }
    }

    /// Wait for a slot, generate (each piece of text to `pieces` if streaming), seal.
    async fn run(
        self: Arc<Self>,
        ticket: Ticket,
        place: QueuePlace,
        pieces: Option<mpsc::Sender<String>>,
    ) -> Result<(Sealed, Option<Generation>), SealError> {
        let deadline = ticket.deadline();
        let Some(slot) = place.into_slot(deadline).await else {
            let message = "no generation slot came free before the request's deadline; \
                           nothing was charged"
                .to_string();
            return ticket.unserved(504, "timeout", message).await.map(|s| (s, None));
        };
        let job = Arc::clone(&self);
        let generated = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            job.engine.generate(&job.prompt, &job.params, |piece| {
                Instant::now() < deadline
                    && pieces.as_ref().is_none_or(|tx| tx.blocking_send(piece.to_string()).is_ok())
            })
        })
        .await;
        let g = match generated {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => return failed(ticket, e.to_string()).await,
            Err(e) => return failed(ticket, e.to_string()).await,
        };
        let v = ticket.voucher().clone();
        let hash = wire::response_hash(&g.text);
        let proof = g.proof.to_bytes();
        let sealed = ticket
            .seal(hash, Some(proof), g.prompt_tokens, g.completion_tokens, |r| {
                self.completion(&g, r)
            })
            .await?;
        if g.finish == crate::model::FinishReason::Cancelled {
            tracing::info!(user = %v.user, nonce = v.nonce,
                "stopped early (reader gone or deadline); billed what was generated");
        }
        Ok((sealed, Some(g)))
    }
}

async fn failed(ticket: Ticket, reason: String) -> Result<(Sealed, Option<Generation>), SealError> {
    let v = ticket.voucher();
    tracing::error!(user = %v.user, nonce = v.nonce, %reason, "generation failed");
    let message = format!("generation failed: {reason}");
    ticket.unserved(500, "generation_failed", message).await.map(|s| (s, None))
}

pub async fn chat(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(service) = &w.chat else {
        return Err(ApiError::not_found("this worker serves no chat model"));
    };
    if !QueuePlace::has_room(&w, ServiceKind::Chat) {
        w.metrics.rejected("overloaded");
        return Err(ApiError::overloaded());
    }
    // A deployed adapter serves its own service; every other chat service is the base model.
    // A deployed adapter's service whose model is not loaded is refused, never served by the
    // base model under receipts naming the adapter's weights.
    let asked = super::paid::voucher_of(&w, &headers).ok().map(|sv| sv.voucher.service_id);
    let deployed = asked.and_then(|s| crate::finetune::deploy::model_of(&w, s));
    if deployed.is_none() && asked.is_some_and(|s| crate::finetune::deploy::is_deployed(&w, s)) {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "this fine-tuned model is not loaded on this worker",
        ));
    }
    let engine = deployed.map_or_else(|| Arc::clone(&service.engine), |m| m.engine.clone());
    let limit = service.max_tokens;
    let measure = |body: &[u8]| {
        let parsed = parse_chat(body, limit)?;
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
    let admitted = match admit_paid(&w, &headers, body, ServiceKind::Chat, measure).await? {
        Ok(a) => a,
        Err(answer) => return Ok(answer),
    };
    let Admitted { ticket, place, request: (parsed, prompt), max_tokens, quota } = admitted;
    let mut params = parsed.params;
    params.max_tokens = max_tokens as usize;
    let v = ticket.voucher();
    let user_bytes: &[u8] = v.user.as_ref();
    let job = Arc::new(ChatJob {
        engine,
        prompt,
        params,
        id: format!("chatcmpl-{}-{}", hex::encode(&user_bytes[..4]), v.nonce),
        created: super::unix_now(),
        model: parsed.model,
    });

    if !parsed.stream {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(job.run(ticket, place, None).await);
        });
        let mut resp = match rx.await {
            Ok(Ok((s, _))) => sealed(s),
            Ok(Err(e)) => ApiError::internal(e).into_response(),
            Err(_) => {
                ApiError::internal("the request's job ended without an answer").into_response()
            }
        };
        quota_headers(resp.headers_mut(), &quota);
        return Ok(resp);
    }

    // Streaming: SSE chunks as text becomes final, then the receipt in the last chunk (or the
    // error, with its fee-0 receipt).
    let (out_tx, out_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let (piece_tx, mut piece_rx) = mpsc::channel::<String>(64);
    // A reader that stops reading for `write_timeout_secs` is treated as gone: the stream
    // ends, generation stops, and what was generated is billed.
    let stall = std::time::Duration::from_secs(w.config.limits.write_timeout_secs);
    tokio::spawn(async move {
        let send = |bytes: Bytes| {
            let out = out_tx.clone();
            async move { matches!(tokio::time::timeout(stall, out.send(Ok(bytes))).await, Ok(Ok(()))) }
        };
        let first =
            job.chunk(Delta { role: Some("assistant".into()), content: Some(String::new()) }, None);
        let mut reading = send(sse(&first)).await;
        let running = tokio::spawn(Arc::clone(&job).run(ticket, place, Some(piece_tx)));
        while reading {
            let Some(piece) = piece_rx.recv().await else { break };
            reading = send(sse(&job.chunk(Delta { role: None, content: Some(piece) }, None))).await;
        }
        // Dropping the pieces stops generation if the reader is gone.
        drop(piece_rx);
        let last = match running.await {
            Ok(Ok((s, Some(g)))) => {
                let mut last = job.chunk(Delta::default(), Some(g.finish.as_str().into()));
                last.usage = Some(Usage::chat(g.prompt_tokens, g.completion_tokens));
                last.receipt =
                    Some(wire::ReceiptJson::from(&s.receipt).with_proof(&g.proof.to_bytes()));
                sse(&last)
            }
            Ok(Ok((s, None))) => Bytes::from(format!("data: {}\n\n", s.body)),
            Ok(Err(e)) => sse(&ApiError::internal(e).into_parts().body),
            Err(e) => {
                tracing::error!(error = %e, "a streaming job panicked");
                return;
            }
        };
        if reading && send(last).await {
            let _ = send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        }
    });
    let mut resp = Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(out_rx)))
        .map_err(ApiError::internal)?;
    quota_headers(resp.headers_mut(), &quota);
    Ok(resp)
}

/// One server-sent event carrying `value` as JSON.
fn sse<T: serde::Serialize>(value: &T) -> Bytes {
    Bytes::from(format!("data: {}\n\n", serde_json::to_string(value).unwrap_or_default()))
}
