//! OpenAI's fine-tuning routes (`compute_client::finetune_api`): datasets, jobs, their events,
//! the encrypted adapter. Every route needs the user's signed auth challenge; a job is shown
//! only to its user. What a job does next is the driver's (`crate::finetune`), never a
//! request's.

use super::{account::authenticated, error::ApiError};
use crate::{
    finetune::{
        files::FileMeta,
        record::{JobRecord, Stage},
        FineTuner,
    },
    worker::Worker,
};
use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use compute_client::finetune_api::{
    self as api, parse_job_api_id, EventList, FineTuningJob, Hyperparameters, JobError, JobFacts,
    JobStatus, MAX_DATASET_BYTES,
};
use compute_primitives::{AccountId, JobId};
use serde::Deserialize;
use std::{sync::Arc, time::Duration};

fn tuner(w: &Worker) -> Result<Arc<FineTuner>, ApiError> {
    w.finetune.clone().ok_or_else(|| ApiError::not_found("this worker offers no fine-tuning"))
}

fn bad(code: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// `POST /v1/files`: a `multipart/form-data` upload with `purpose=fine-tune` and `file`.
pub async fn upload(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ft = tuner(&w)?;
    let user = authenticated(&w, &headers)?;
    // A few uploads at once: each is buffered and tokenized.
    let _place = ft.uploads.clone().try_acquire_owned().map_err(|_| ApiError::overloaded())?;
    // Only users with a funded escrow here keep files on this disk.
    match w.escrow(&user).await {
        Ok(Some(e)) if e.spendable() > 0 => {}
        Ok(_) => {
            return Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "no_escrow",
                "deposit with this provider before uploading datasets",
            ))
        }
        Err(e) => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "chain", e.to_string()))
        }
    }
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let boundary =
        api::multipart_boundary(content_type).map_err(|e| bad("not_multipart", e.to_string()))?;
    let limit = MAX_DATASET_BYTES + 64 * 1024;
    let timeout = Duration::from_secs(w.config.limits.body_timeout_secs.max(60));
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a dataset is at most {MAX_DATASET_BYTES} bytes"),
            ))
        }
        Err(_) => return Err(bad("body_timeout", "the upload did not arrive in time")),
    };
    let parts =
        api::parse_multipart(&bytes, &boundary).map_err(|e| bad("bad_multipart", e.to_string()))?;
    let purpose = parts.iter().find(|p| p.name == "purpose").map(|p| p.data.as_slice());
    if purpose != Some(b"fine-tune".as_slice()) {
        return Err(bad("bad_purpose", "only purpose `fine-tune` is accepted"));
    }
    let file = parts
        .into_iter()
        .find(|p| p.name == "file")
        .ok_or_else(|| bad("no_file", "the form has no `file` part"))?;
    if file.data.len() > MAX_DATASET_BYTES {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "dataset too large"));
    }
    let data = file.data;
    let filename: String = file
        .filename
        .unwrap_or_else(|| "dataset.jsonl".into())
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect();
    let ft2 = ft.clone();
    let (meta, data) = tokio::task::spawn_blocking(move || {
        let dataset = ft2.dataset(&data)?;
        let meta = FileMeta {
            hash: polkadot_sdk::sp_io::hashing::blake2_256(&data),
            filename,
            bytes: data.len() as u64,
            created_at: crate::store::now(),
            examples: dataset.examples.len() as u64,
            tokens: dataset.token_count(),
            max_seq_len: ft2.config.max_seq_len as u64,
        };
        Ok::<_, String>((meta, data))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|reason| bad("invalid_dataset", reason))?;
    let in_use = |h: &[u8; 32]| ft.in_use(&user, h);
    ft.files
        .put(&user, &meta, &data, &in_use)
        .map_err(|e| ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage", e.to_string()))?;
    // A job created on chain before its dataset arrived can go on now.
    ft.nudge.notify_one();
    Ok(Json(meta.object()).into_response())
}

/// The job `id` of `user`, as this worker knows it.
fn job_of(ft: &FineTuner, id: &str, user: &AccountId) -> Result<JobRecord, ApiError> {
    let id = parse_job_api_id(id).ok_or_else(|| ApiError::not_found("no such job"))?;
    ft.record(id).filter(|r| &r.user == user).ok_or_else(|| ApiError::not_found("no such job"))
}

/// OpenAI's job object of a record.
fn job_object(w: &Worker, r: &JobRecord) -> FineTuningJob {
    let status = match r.stage {
        Stage::WaitingForFile => JobStatus::ValidatingFiles,
        Stage::Accepted => JobStatus::Queued,
        Stage::Training | Stage::Trained | Stage::Delivered => JobStatus::Running,
        Stage::Revealed => JobStatus::Succeeded,
        Stage::Rejected | Stage::Failed => JobStatus::Failed,
        Stage::Cancelled => JobStatus::Cancelled,
    };
    let base = w.model_name(compute_primitives::ServiceKind::Chat);
    FineTuningJob {
        id: api::job_api_id(r.id),
        object: "fine_tuning.job".into(),
        created_at: r.created_at,
        finished_at: r.finished_at,
        model: r.model.clone().unwrap_or_else(|| base.clone()),
        fine_tuned_model: r.service_id.map(|_| api::fine_tuned_model_name(&base, r.id)),
        organization_id: w.provider.to_string(),
        status,
        hyperparameters: Hyperparameters::default(),
        training_file: api::file_id(&r.dataset_hash),
        validation_file: None,
        result_files: Vec::new(),
        trained_tokens: r.trained_tokens,
        seed: 0,
        error: r.error.as_ref().map(|m| JobError {
            code: r.stage.as_str().into(),
            message: m.clone(),
            param: None,
        }),
        compute: JobFacts {
            job_id: r.id,
            stage: r.stage.as_str().into(),
            step: r.step,
            total_steps: r.total_steps,
            final_loss: r.final_loss,
            adapter_hash: r.adapter_hash.map(hex::encode),
            adapter_len: r.adapter_len,
            service_id: r.service_id,
            sealed_key: r.sealed_key.map(|(e, s)| (hex::encode(e), hex::encode(s))),
        },
    }
}

/// `POST /v1/fine_tuning/jobs`: the chain job `compute_job_id` runs on `training_file`. The
/// driver has usually seen the job already; this names it for OpenAI's clients and checks it.
pub async fn create(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    Json(req): Json<api::CreateJobRequest>,
) -> Result<Response, ApiError> {
    let ft = tuner(&w)?;
    let user = authenticated(&w, &headers)?;
    let id: JobId = req.compute_job_id;
    let job = w
        .chain
        .job(id)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "chain", e.to_string()))?
        .ok_or_else(|| ApiError::not_found("no open job with this id on chain"))?;
    if job.user != user || job.provider != w.provider {
        return Err(ApiError::not_found("no open job with this id on chain"));
    }
    let file = api::parse_file_id(&req.training_file)
        .ok_or_else(|| bad("bad_file", "training_file is not a file id of this worker"))?;
    if file != job.spec.dataset_hash.0 {
        return Err(bad("file_mismatch", "the chain job names another dataset"));
    }
    ft.nudge.notify_one();
    // The driver records the job within a pass; wait for it briefly.
    for _ in 0..50 {
        if ft.record(id).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = ft
        .update(id, |r| {
            r.model = Some(req.model.chars().take(128).collect());
            r.suffix = req.suffix.as_ref().map(|s| s.chars().take(64).collect());
        })
        .ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_seen", "the job is not seen yet")
        })?;
    Ok(Json(job_object(&w, &r)).into_response())
}

/// `GET /v1/fine_tuning/jobs/{id}`.
pub async fn retrieve(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ft = tuner(&w)?;
    let user = authenticated(&w, &headers)?;
    Ok(Json(job_object(&w, &job_of(&ft, &id, &user)?)).into_response())
}

#[derive(Deserialize)]
pub struct EventsQuery {
    limit: Option<usize>,
}

/// `GET /v1/fine_tuning/jobs/{id}/events`: newest first.
pub async fn events(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let ft = tuner(&w)?;
    let user = authenticated(&w, &headers)?;
    let r = job_of(&ft, &id, &user)?;
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let mut data = ft.jobs.events(r.id, limit + 1);
    let has_more = data.len() > limit;
    data.reverse();
    data.truncate(limit);
    Ok(Json(EventList { object: "list".into(), data, has_more }).into_response())
}

/// `POST /v1/fine_tuning/jobs/{id}/cancel`: stop training once the job is cancelled on chain
/// (the user's `cancel_job`). While the chain still expects a delivery, training goes on: a
/// stop asked over HTTP alone would leave the provider to pay for a late delivery.
pub async fn cancel(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ft = tuner(&w)?;
    let user = authenticated(&w, &headers)?;
    let r = job_of(&ft, &id, &user)?;
    let on_chain = w
        .chain
        .job(r.id)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "chain", e.to_string()))?;
    if on_chain.is_some_and(|j| matches!(j.state, compute_primitives::JobState::Accepted { .. })) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cancel_on_chain",
            "cancel the job on chain (`cancel_job`) first; training stops when the chain ends it",
        ));
    }
    ft.cancel_training(r.id);
    ft.nudge.notify_one();
    Ok(Json(job_object(&w, &r)).into_response())
}

/// `GET /v1/fine_tuning/jobs/{id}/adapter`: the encrypted adapter, once trained.
pub async fn adapter(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ft = tuner(&w)?;
    let user = authenticated(&w, &headers)?;
    let r = job_of(&ft, &id, &user)?;
    if r.adapter_hash.is_none() {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_trained", "no adapter yet"));
    }
    // Places of their own: weight downloads by strangers cannot hold them.
    let _place = ft.downloads.clone().try_acquire_owned().map_err(|_| ApiError::overloaded())?;
    let bytes = tokio::fs::read(ft.jobs.ciphertext(r.id)).await.map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `POST /v1/fine_tuning/jobs/{id}/deploy`: serve the paid job's adapter as a chat service of
/// this provider (merged, loaded, registered on chain). Runs to the end whatever happens to the
/// connection; asking again answers with the deployment made.
pub async fn deploy(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ft = tuner(&w)?;
    let user = authenticated(&w, &headers)?;
    let r = job_of(&ft, &id, &user)?;
    let w2 = w.clone();
    let result = tokio::spawn(async move { crate::finetune::deploy::deploy(&w2, r.id).await })
        .await
        .map_err(ApiError::internal)?;
    use crate::finetune::deploy::DeployError;
    match result {
        Ok(_) => {
            let r = ft.record(r.id).ok_or_else(|| ApiError::not_found("no such job"))?;
            Ok(Json(job_object(&w, &r)).into_response())
        }
        Err(e @ DeployError::NotPaid(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_paid", e.to_string()))
        }
        Err(e @ (DeployError::Full(_) | DeployError::NoServiceId)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_room", e.to_string()))
        }
        Err(DeployError::Failed(reason)) => Err(ApiError::internal(reason)),
    }
}
