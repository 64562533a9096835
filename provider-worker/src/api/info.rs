//! Public information: `/health`, `/metrics` (Prometheus), `/v1/models` (services, prices and
//! the per-user limits).

use crate::worker::Worker;
use axum::{extract::State, response::IntoResponse, Json};
use compute_primitives::ServiceKind;
use serde::Serialize;
use std::sync::{atomic::Ordering::Relaxed, Arc};

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
    provider: String,
    genesis: String,
    model: Option<String>,
    embedding_model: Option<String>,
}

pub async fn health(State(w): State<Arc<Worker>>) -> Json<Health> {
    Json(Health {
        status: "ok",
        provider: w.provider.to_string(),
        genesis: format!("{:?}", w.genesis),
        model: w.chat.as_ref().map(|c| c.name.clone()),
        embedding_model: w.embeddings.as_ref().map(|e| e.name.clone()),
    })
}

pub async fn metrics(State(w): State<Arc<Worker>>) -> impl IntoResponse {
    let passes = w.embeddings.as_ref().map(|e| e.batcher.stats.passes.load(Relaxed));
    ([("content-type", "text/plain; version=0.0.4")], w.metrics.render(passes))
}

/// What one user may take, as `/v1/models` reports it.
#[derive(Serialize)]
pub struct UserLimits {
    requests_per_minute: u32,
    tokens_per_minute: u64,
    /// Requests of one user in flight at once.
    concurrency: u32,
    max_tokens: Option<u64>,
}

#[derive(Serialize)]
pub struct Model {
    id: String,
    object: &'static str,
    owned_by: String,
    created: u64,
    service_id: u32,
    kind: ServiceKind,
    /// The weights committed on chain; `GET /v1/weights/{model_hash}` serves them.
    model_hash: String,
    input_price: String,
    output_price: String,
    price_version: u32,
    limits: UserLimits,
}

#[derive(Serialize)]
pub struct ModelList {
    object: &'static str,
    data: Vec<Model>,
}

pub async fn models(State(w): State<Arc<Worker>>) -> Json<ModelList> {
    let services = w.services.read().map(|s| s.clone()).unwrap_or_default();
    let l = &w.config.limits;
    let mut data: Vec<Model> = services
        .values()
        .map(|s| Model {
            id: s.model.clone(),
            object: "model",
            owned_by: w.provider.to_string(),
            created: 0,
            service_id: s.service_id,
            kind: s.kind,
            model_hash: format!("{:?}", s.model_hash),
            input_price: s.input_price.to_string(),
            output_price: s.output_price.to_string(),
            price_version: s.price_version,
            limits: UserLimits {
                requests_per_minute: l.requests_per_minute,
                tokens_per_minute: l.tokens_per_minute,
                concurrency: w.config.window,
                max_tokens: match s.kind {
                    ServiceKind::Chat => w.chat.as_ref().map(|c| c.max_tokens),
                    ServiceKind::Embedding => w.embeddings.as_ref().map(|e| e.max_tokens as u64),
                    ServiceKind::FineTune => None,
                },
            },
        })
        .collect();
    data.sort_by_key(|m| m.service_id);
    Json(ModelList { object: "list", data })
}
