//! Embedding speed of the worker's embedder: one short input alone (latency), then batches of
//! short and long inputs (throughput). `cargo run -p provider-worker --example embed -- [DIR]`
//! (default: models/all-MiniLM-L6-v2 from `make model`). Medians of several runs.

use candle_core::Device;
use provider_worker::model::Embedder;
use std::{path::PathBuf, time::Instant};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .or_else(provider_worker::model::default_embedding_model_path)
        .ok_or_else(|| anyhow::anyhow!("no embedding model: run `make model`"))?;
    let t = Instant::now();
    let e = Embedder::load(&dir, &Device::Cpu)?;
    println!("loaded {} in {:.0} ms", dir.display(), t.elapsed().as_secs_f64() * 1e3);
    let short = "The quick brown fox jumps over the lazy dog.".to_string();
    let long = "Decentralised inference markets let anyone with a GPU sell model answers, \
                paid per token from an escrow the buyer funds in advance. "
        .repeat(6);
    let cases: [(&str, Vec<String>); 4] = [
        ("1 short input", vec![short.clone()]),
        ("32 short inputs", vec![short.clone(); 32]),
        ("1 long input", vec![long.clone()]),
        ("16 long inputs", vec![long; 16]),
    ];
    for (name, texts) in cases {
        let ids = e.tokenize(&texts)?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
        e.embed(&ids)?; // warm up
        let runs: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                e.embed(&ids).map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?;
        let s = median(runs);
        println!(
            "{name:>16}: {tokens:>5} tokens, {:>7.1} ms, {:>6.0} inputs/s, {:>6.0} tokens/s",
            s * 1e3,
            texts.len() as f64 / s,
            tokens as f64 / s
        );
    }
    Ok(())
}
