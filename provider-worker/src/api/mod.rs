//! The OpenAI-compatible HTTP API: routes ([`chat`], [`embeddings`], [`account`], [`info`]),
//! OpenAI's wire shapes ([`openai`]), the steps every paid request takes before its job starts
//! ([`paid`]), the one error type ([`error`]), and the server that bounds connections and how
//! long a client may take to send a request ([`serve`]).

pub mod account;
pub mod chat;
pub mod embeddings;
pub mod error;
pub mod info;
pub mod openai;
pub mod paid;

use crate::{config::LimitsConfig, worker::Worker};
use axum::{
    routing::{get, post},
    Router,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use std::{future::Future, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::Semaphore};

/// The router.
pub fn router(worker: Arc<Worker>) -> Router {
    Router::new()
        .route("/health", get(info::health))
        .route("/metrics", get(info::metrics))
        .route("/v1/models", get(info::models))
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/ack", post(account::ack))
        .route("/v1/receipts", get(account::receipts))
        .fallback(|| async { error::ApiError::not_found("no such endpoint") })
        .with_state(worker)
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serve `router` on `listener` until `shutdown` resolves, then let open requests finish (for at
/// most the request timeout). At most `max_connections` connections are open at once (more wait
/// in the listen backlog); a client that does not send a request's headers within
/// `header_timeout_secs` is disconnected, idle keep-alive connections included.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &LimitsConfig,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let header_timeout = Duration::from_secs(limits.header_timeout_secs);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let builder = builder.http1_only();
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
                _ = stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let wait = Duration::from_secs(limits.request_timeout_secs);
    let _ = tokio::time::timeout(wait, connections.acquire_many(all)).await;
}
