//! The one error type of the API: the OpenAI error body (`compute_client::wire::ErrorBody`,
//! with the protocol's `expected` and `receipt`), its HTTP status and extra headers.

use crate::billing::{admission::Rejection, job::Sealed, limits::Quota};
use axum::{
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use compute_client::wire::{self, ErrorBody};
use compute_primitives::SignedReceipt;
use std::time::Duration;

/// An error answer (boxed: handlers return it by value on every path).
#[derive(Debug)]
pub struct ApiError(Box<ErrorParts>);

/// What an error answer is made of.
#[derive(Debug)]
pub struct ErrorParts {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub receipt: Option<SignedReceipt>,
    pub headers: HeaderMap,
}

impl std::ops::Deref for ApiError {
    type Target = ErrorParts;
    fn deref(&self) -> &ErrorParts {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ErrorParts {
        &mut self.0
    }
}

/// OpenAI's error `type` for a status.
pub fn kind_of(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "insufficient_funds",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError(Box::new(ErrorParts {
            status,
            body: ErrorBody::new(kind_of(status.as_u16()), code, message),
            receipt: None,
            headers: HeaderMap::new(),
        }))
    }

    /// The parts, taken out.
    pub fn into_parts(self) -> ErrorParts {
        *self.0
    }

    /// With the values the worker expected.
    pub fn expected(mut self, expected: serde_json::Value) -> Self {
        self.body.error.expected = Some(expected);
        self
    }

    /// With the fee-0 receipt that answers the voucher.
    pub fn receipt(mut self, receipt: SignedReceipt) -> Self {
        self.body.error.receipt = Some((&receipt).into());
        self.receipt = Some(receipt);
        self
    }

    /// With a header.
    pub fn header(mut self, name: &'static str, value: String) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.headers.insert(HeaderName::from_static(name), v);
        }
        self
    }

    /// A failure of the worker itself (logged; the client sees the reason).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }

    pub fn not_found(message: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn overloaded() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests waiting; retry with the same voucher",
        )
        .header("retry-after", "1".into())
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut e = ApiError::new(status, r.code, r.message);
        e.body.error.expected = r.expected;
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ErrorParts { status, body, receipt, headers } = self.into_parts();
        let mut resp = (status, Json(body)).into_response();
        resp.headers_mut().extend(headers);
        if let Some(r) = &receipt {
            add_receipt_header(&mut resp, r);
        }
        resp
    }
}

pub fn add_receipt_header(resp: &mut Response, r: &SignedReceipt) {
    if let Ok(v) = HeaderValue::from_str(&wire::to_hex(r)) {
        resp.headers_mut().insert(wire::RECEIPT_HEADER, v);
    }
}

/// A stored answer (a sealed request, or a retry of one) as sent.
pub fn stored(status: u16, body: String, receipt: Option<&SignedReceipt>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut resp = (status, [("content-type", "application/json")], body).into_response();
    if let Some(r) = receipt {
        add_receipt_header(&mut resp, r);
    }
    resp
}

/// A sealed answer as sent.
pub fn sealed(s: Sealed) -> Response {
    stored(s.status, s.body, Some(&s.receipt))
}

fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64().ceil() as u64)
    }
}

/// The `x-ratelimit-*` headers OpenAI clients read.
pub fn quota_headers(headers: &mut HeaderMap, q: &Quota) {
    let pairs = [
        ("x-ratelimit-limit-requests", q.limit_requests.to_string()),
        ("x-ratelimit-remaining-requests", q.remaining_requests.to_string()),
        ("x-ratelimit-reset-requests", seconds(q.reset_requests)),
        ("x-ratelimit-limit-tokens", q.limit_tokens.to_string()),
        ("x-ratelimit-remaining-tokens", q.remaining_tokens.to_string()),
        ("x-ratelimit-reset-tokens", seconds(q.reset_tokens)),
    ];
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}
