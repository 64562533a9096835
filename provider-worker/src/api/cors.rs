//! CORS for browser clients (the marketplace web app, `web/`), which are served from another
//! origin than the worker and must send the voucher in a custom header, so the browser asks
//! first with a preflight (`OPTIONS`).
//!
//! Any origin is allowed, on purpose: nothing here is authenticated by ambient credentials.
//! There are no cookies and no HTTP auth (`Access-Control-Allow-Credentials` is never sent);
//! every paid request carries a voucher signed by the user's key (`x-compute-voucher`) and
//! `GET /v1/receipts` a signed, time-bound challenge (`x-compute-auth`). A page at a foreign
//! origin can therefore do nothing that the same page could not do with `curl`: it cannot sign
//! for a user whose key it does not hold. So a permissive policy exposes nothing, and a list of
//! allowed origins would only break third-party frontends.

use axum::{
    extract::Request,
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

/// Request headers a browser client may send: the JSON body's type, the voucher, the auth
/// challenge.
const ALLOW_HEADERS: &str = "content-type, x-compute-voucher, x-compute-auth";
/// Response headers a browser client may read: the receipt of a non-streamed answer, and the
/// back-off and budget headers of refusals.
const EXPOSE_HEADERS: &str = "x-compute-receipt, x-model-hash, retry-after, \
    x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, \
    x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens";
/// How long a browser may cache a preflight answer.
const MAX_AGE_SECS: &str = "600";

/// Answer CORS preflights with 204 (before any route, queue or admission check: a preflight
/// carries no body and costs nothing), and mark every other answer readable from any origin.
pub async fn cors(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE_SECS));
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, http, routing::post, Router};
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route("/v1/chat/completions", post(|| async { "served" }))
            .layer(axum::middleware::from_fn(cors))
    }

    #[tokio::test]
    async fn a_preflight_for_the_voucher_header_is_answered_from_any_origin() {
        let request = http::Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/chat/completions")
            .header(header::ORIGIN, "http://127.0.0.1:5199")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type,x-compute-voucher")
            .body(Body::empty())
            .unwrap();
        let r = app().oneshot(request).await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let h = r.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(h[header::ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap().contains("POST"));
        let allowed = h[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
        assert!(allowed.contains("x-compute-voucher") && allowed.contains("content-type"));
        // No credentials: a foreign page gets nothing a signature does not already give it.
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[tokio::test]
    async fn answers_expose_the_receipt_header_and_other_requests_reach_the_route() {
        let request = http::Request::builder()
            .method(Method::POST)
            .uri("/v1/chat/completions")
            .header(header::ORIGIN, "http://127.0.0.1:5199")
            .body(Body::empty())
            .unwrap();
        let r = app().oneshot(request).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let exposed = r.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap();
        assert!(exposed.contains("x-compute-receipt"));
        // An OPTIONS that is not a preflight is routed as usual (here: no such method).
        let plain = http::Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/chat/completions")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app().oneshot(plain).await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
