//! `POST /v1/embeddings`. Once admitted, the request is a job of its own (see `chat`): it waits
//! for a slot, is encoded by the batcher (merged with concurrent requests), and is sealed
//! whatever the client's connection does; a retry of the same voucher gets the kept answer.

use super::{
    error::{quota_headers, sealed, ApiError},
    openai::{parse_embedding, EmbeddingData, EmbeddingList, Encoding, ParsedEmbedding, Usage},
    paid::{admit_paid, Admitted, Measured},
};
use crate::{
    billing::{
        admission::Rejection,
        job::{QueuePlace, SealError, Sealed, Ticket},
    },
    model::EmbedError,
    worker::Worker,
};
use axum::{
    body::Body,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use compute_client::wire;
use compute_primitives::ServiceKind;
use serde_json::json;
use std::sync::{atomic::Ordering::Relaxed, Arc};

async fn run(
    w: Arc<Worker>,
    ticket: Ticket,
    place: QueuePlace,
    parsed: ParsedEmbedding,
    ids: Vec<Vec<u32>>,
) -> Result<Sealed, SealError> {
    let deadline = ticket.deadline();
    let Some(slot) = place.into_slot(deadline).await else {
        let message = "no slot came free before the request's deadline; nothing was charged";
        return ticket.unserved(504, "timeout", message.into()).await;
    };
    let Some(service) = w.embeddings.as_ref() else {
        return ticket.unserved(500, "internal", "no embedding model".into()).await;
    };
    let tokens: u64 = ids.iter().map(|x| x.len() as u64).sum();
    let result = service.batcher.embed(ids, Some(deadline)).await;
    drop(slot);
    let vectors = match result {
        Ok(v) => v,
        Err(e @ EmbedError::TimedOut { .. }) => {
            return ticket.unserved(504, "timeout", format!("{e}; nothing is charged")).await;
        }
        Err(e) => {
            let v = ticket.voucher();
            tracing::error!(user = %v.user, nonce = v.nonce, error = %e, "embedding failed");
            return ticket
                .unserved(500, "generation_failed", format!("embedding failed: {e}"))
                .await;
        }
    };
    let data: Vec<EmbeddingData> = vectors
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
            EmbeddingData { object: "embedding", index, embedding }
        })
        .collect();
    let hash = wire::embedding_hash(&vectors);
    let model = parsed.model;
    let sealed = ticket
        .seal(hash, None, tokens, 0, |receipt| {
            let list = EmbeddingList {
                object: "list",
                data,
                model,
                usage: Usage::embedding(tokens),
                receipt,
            };
            serde_json::to_string(&list).unwrap_or_default()
        })
        .await?;
    w.metrics.embedding_inputs.fetch_add(vectors.len() as u64, Relaxed);
    Ok(sealed)
}

pub async fn embeddings(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(service) = &w.embeddings else {
        return Err(ApiError::not_found("this worker serves no embedding model"));
    };
    if !QueuePlace::has_room(&w, ServiceKind::Embedding) {
        w.metrics.rejected("overloaded");
        return Err(ApiError::overloaded());
    }
    let embedder = service.batcher.embedder();
    let (max_inputs, most) = (service.max_inputs, service.max_tokens);
    let measure = |body: &[u8]| {
        let parsed = parse_embedding(body, embedder.dim, max_inputs)?;
        let ids = embedder.tokenize(&parsed.inputs).map_err(|e| match e {
            EmbedError::TooLong { .. } => {
                Rejection::bad_request("context_length_exceeded", e.to_string())
            }
            e => Rejection::bad_request("invalid_input", e.to_string()),
        })?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
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
    let admitted = match admit_paid(&w, &headers, body, ServiceKind::Embedding, measure).await? {
        Ok(a) => a,
        Err(answer) => return Ok(answer),
    };
    let Admitted { ticket, place, request: (parsed, ids), quota, .. } = admitted;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = run(Arc::clone(&w), ticket, place, parsed, ids);
    tokio::spawn(async move {
        let _ = tx.send(job.await);
    });
    let mut resp = match rx.await {
        Ok(Ok(s)) => sealed(s),
        Ok(Err(e)) => ApiError::internal(e).into_response(),
        Err(_) => ApiError::internal("the request's job ended without an answer").into_response(),
    };
    quota_headers(resp.headers_mut(), &quota);
    Ok(resp)
}
