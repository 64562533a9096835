//! `GET /v1/weights/{model_hash}`: the exact weight file a service commits to, for anyone to
//! download and check against the hash on chain (and for verifiers to validate proofs with).
//! Only files this worker loaded are served, looked up by their hash: no path comes from the
//! request. Range requests are honoured (resumable downloads); at most [`MAX_DOWNLOADS`] run at
//! once, each holding its place until its body is sent or dropped, and a reader that stops
//! reading is cut off by the connection's write timeout.

use super::error::ApiError;
use crate::worker::Worker;
use axum::{
    body::{Body, HttpBody},
    extract::{Path, Request, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use polkadot_sdk::sp_core::H256;
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::sync::OwnedSemaphorePermit;
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// Weight downloads served at once.
pub const MAX_DOWNLOADS: usize = 4;

pub async fn weights(
    State(w): State<Arc<Worker>>,
    Path(hash): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let hash: H256 = hash.parse().map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_hash", "expected 0x and 64 hex digits")
    })?;
    let Some(file) = w.weights_by_hash(&hash) else {
        return Err(ApiError::not_found("this worker serves no weights with that hash"));
    };
    let Ok(permit) = Arc::clone(&w.downloads).try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("{MAX_DOWNLOADS} downloads are running; try again later"),
        ));
    };
    let served = ServeFile::new(&file.path)
        .oneshot(request)
        .await
        .map_err(|e| ApiError::internal(format!("reading the weights: {e}")))?;
    let (mut parts, body) = served.into_parts();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&format!("{hash:?}")) {
        parts.headers.insert("x-model-hash", v);
    }
    let body = Body::new(Guarded { inner: Body::new(body), _permit: permit });
    Ok(Response::from_parts(parts, body).into_response())
}

/// A body that holds a download place until it is sent or dropped.
struct Guarded {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for Guarded {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
