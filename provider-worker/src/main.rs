//! `compute-worker`: serve a model on the compute marketplace.

use anyhow::Context;
use clap::Parser;
use provider_worker::{
    api,
    config::{ChatConfig, Config, EmbeddingsConfig},
    settlement,
    worker::Worker,
};
use std::{net::SocketAddr, path::PathBuf};

/// Serve a GGUF model behind an OpenAI-compatible API, admit requests by signed vouchers, sign
/// receipts, and settle on chain.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration (see worker.example.toml). Flags override it.
    #[arg(long, short, env = "COMPUTE_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Node WebSocket RPC URL.
    #[arg(long)]
    node_url: Option<String>,
    /// HTTP listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Public URL to register on chain.
    #[arg(long)]
    public_url: Option<String>,
    /// Provider secret URI or phrase (prefer --provider-key-file).
    #[arg(long, env = "COMPUTE_PROVIDER_KEY", hide_env_values = true)]
    provider_key: Option<String>,
    /// File holding the provider's secret URI or phrase.
    #[arg(long)]
    provider_key_file: Option<PathBuf>,
    /// GGUF chat model file.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Embedding model directory (sentence-transformers layout), for `embedding` services.
    #[arg(long)]
    embedding_model: Option<PathBuf>,
    /// Trace store directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Chat generations side by side.
    #[arg(long)]
    parallel: Option<usize>,
    /// Requests of one user in flight at once.
    #[arg(long)]
    window: Option<u32>,
    /// Run on the first CUDA GPU (build with `--features cuda`).
    #[arg(long)]
    cuda: bool,
    /// Settle everything owed before exiting on SIGINT/SIGTERM.
    #[arg(long)]
    settle_on_exit: bool,
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let mut c = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => {
            if args.model.is_none() && args.embedding_model.is_none() {
                anyhow::bail!("give --config, or --model and/or --embedding-model");
            }
            toml::from_str::<Config>("")?
        }
    };
    if let Some(v) = &args.node_url {
        c.node_url = v.clone();
    }
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if let Some(v) = &args.public_url {
        c.public_url = Some(v.clone());
    }
    if let Some(v) = &args.provider_key {
        c.provider_key = Some(v.clone());
    }
    if let Some(v) = &args.provider_key_file {
        c.provider_key_file = Some(v.clone());
    }
    if let Some(v) = &args.model {
        match &mut c.chat {
            Some(chat) => chat.model = v.clone(),
            None => c.chat = Some(ChatConfig::new(v.clone())),
        }
    }
    if let Some(v) = &args.embedding_model {
        match &mut c.embeddings {
            Some(e) => e.model = v.clone(),
            None => c.embeddings = Some(EmbeddingsConfig::new(v.clone())),
        }
    }
    if let Some(v) = &args.data_dir {
        c.store.data_dir = v.clone();
    }
    if let (Some(v), Some(chat)) = (args.parallel, c.chat.as_mut()) {
        chat.parallel = v;
    }
    if let Some(v) = args.window {
        c.window = v;
    }
    c.cuda |= args.cuda;
    c.validate()?;
    Ok(c)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tokenizers=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = config(&args)?;
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let worker = Worker::start(config).await?;
    worker.spawn_event_watcher();
    worker.spawn_recovery();
    provider_worker::finetune::spawn_driver(worker.clone());
    let scheduler = tokio::spawn(settlement::run(worker.clone()));
    tracing::info!(%listen, provider = %worker.provider, instance = worker.instance, "serving");
    let limits = worker.config.limits.clone();
    api::serve(listener, api::router(worker.clone()), &limits, shutdown_signal()).await;
    if args.settle_on_exit {
        // The scheduler stops first; a pass it had begun finishes before this one starts.
        scheduler.abort();
        tracing::info!("settling everything owed before exit");
        let n = settlement::settle_due(&worker, true).await?;
        tracing::info!(claims = n, "settled");
    }
    Ok(())
}
