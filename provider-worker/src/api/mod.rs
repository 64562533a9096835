//! The OpenAI-compatible HTTP API: routes ([`chat`], [`embeddings`], [`account`], [`info`],
//! [`finetune`]),
//! the committed weights ([`weights`]), OpenAI's wire shapes ([`openai`]), the steps every paid request takes before its job starts
//! ([`paid`]), the one error type ([`error`]), and the server that bounds connections and how
//! long a client may take to send a request ([`serve`]).

pub mod account;
pub mod chat;
pub mod cors;
pub mod embeddings;
pub mod error;
pub mod finetune;
pub mod info;
pub mod openai;
pub mod paid;
pub mod weights;

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
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::Semaphore,
    time::Sleep,
};

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
        .route("/v1/weights/{hash}", get(weights::weights))
        .route("/v1/files", post(finetune::upload))
        .route("/v1/fine_tuning/jobs", post(finetune::create))
        .route("/v1/fine_tuning/jobs/{id}", get(finetune::retrieve))
        .route("/v1/fine_tuning/jobs/{id}/events", get(finetune::events))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(finetune::cancel))
        .route("/v1/fine_tuning/jobs/{id}/adapter", get(finetune::adapter))
        .route("/v1/fine_tuning/jobs/{id}/deploy", post(finetune::deploy))
        .fallback(|| async { error::ApiError::not_found("no such endpoint") })
        // Browser clients (web/) at another origin: preflights answered, the receipt header
        // readable. Safe for any origin: see `cors`.
        .layer(axum::middleware::from_fn(cors::cors))
        .with_state(worker)
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A connection whose writes must make progress: a write or flush blocked for longer than the
/// limit fails the connection, so a client that stops reading (a full receive window, pipelined
/// requests never read) cannot hold it. The clock runs only while a write is blocked.
struct WriteProgress<S> {
    inner: S,
    limit: Duration,
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteProgress<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteProgress { inner, limit, blocked: None }
    }

    /// After the inner write returned `Pending`: an error once blocked for too long.
    fn still_blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limit;
        let timer = self.blocked.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteProgress<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteProgress<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.still_blocked(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.still_blocked(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.still_blocked(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve `router` on `listener` until `shutdown` resolves, then let open requests finish (for at
/// most the request timeout). At most `max_connections` connections are open at once (more wait
/// in the listen backlog); a client that does not send a request's headers within
/// `header_timeout_secs` is disconnected, idle keep-alive connections included, and so is one
/// that stops reading for `write_timeout_secs`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &LimitsConfig,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let header_timeout = Duration::from_secs(limits.header_timeout_secs);
    let write_timeout = Duration::from_secs(limits.write_timeout_secs);
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
            let io = TokioIo::new(WriteProgress::new(stream, write_timeout));
            let conn = builder.serve_connection(io, service);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_after_the_limit() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut conn = WriteProgress::new(ours, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = conn.write_all(&[0u8; 4096]).await.expect_err("the peer never reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_served() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut got = 0;
            while got < 4096 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                got += tokio::io::AsyncReadExt::read(&mut theirs, &mut buf).await.unwrap();
            }
            got
        });
        let mut conn = WriteProgress::new(ours, Duration::from_millis(500));
        conn.write_all(&[0u8; 4096]).await.expect("progress resets the clock");
        assert_eq!(reader.await.unwrap(), 4096);
    }
}
