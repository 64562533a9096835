//! Embedding speed of the worker's embedder: one short input alone (latency), then batches of
//! short and long inputs (throughput), then many one-input requests at once through the
//! worker's batcher against the same requests one after another.
//! `cargo run -p provider-worker --example embed -- [DIR]` (default: models/all-MiniLM-L6-v2 from
//! `make model`). Medians of several runs.

use candle_core::Device;
use compute_inference::{EmbedBatcher, Embedder};
use std::{path::PathBuf, sync::Arc, time::Instant};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .or_else(compute_inference::default_embedding_model_path)
        .ok_or_else(|| anyhow::anyhow!("no embedding model: run `make model`"))?;
    let t = Instant::now();
    let e = Arc::new(Embedder::load(&dir, &Device::Cpu)?);
    println!("loaded {} in {:.0} ms", dir.display(), t.elapsed().as_secs_f64() * 1e3);
    let short = "The quick brown fox jumps over the lazy dog.".to_string();
    let long = "Decentralised inference markets let anyone with a GPU sell model answers, \
                paid per token from an escrow the buyer funds in advance. "
        .repeat(6);
    let cases: [(&str, Vec<String>); 4] = [
        ("1 short input", vec![short.clone()]),
        ("32 short inputs", vec![short.clone(); 32]),
        ("1 long input", vec![long.clone()]),
        ("16 long inputs", vec![long.clone(); 16]),
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

    // Concurrent requests of one input each: through the batcher all at once (they share
    // passes) against the same requests one after another.
    let batcher = Arc::new(EmbedBatcher::start(Arc::clone(&e))?);
    let rt = tokio::runtime::Runtime::new()?;
    for (kind, text) in [("short", short), ("long", long)] {
        let ids = e.tokenize(std::slice::from_ref(&text))?;
        for n in [1usize, 8, 32] {
            let one_by_one = || async {
                let t = Instant::now();
                for _ in 0..n {
                    batcher.embed(ids.clone(), None).await?;
                }
                Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64())
            };
            let together = || async {
                let t = Instant::now();
                let tasks: Vec<_> = (0..n)
                    .map(|_| {
                        let (b, ids) = (Arc::clone(&batcher), ids.clone());
                        tokio::spawn(async move { b.embed(ids, None).await })
                    })
                    .collect();
                for task in tasks {
                    task.await??;
                }
                Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64())
            };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                a.push(rt.block_on(one_by_one())?);
                b.push(rt.block_on(together())?);
            }
            let (a, b) = (median(a), median(b));
            println!(
                "{n:>2} {kind:>5} requests: one after another {:>7.1} ms, at once {:>7.1} ms \
                 ({:>5.0} requests/s, {:.1}x)",
                a * 1e3,
                b * 1e3,
                n as f64 / b,
                a / b
            );
        }
    }
    Ok(())
}
