//! Aggregate generation throughput with 1, 4 and 16 concurrent streams over one loaded model
//! (each stream its own KV cache, weights shared, running streams decoded together in batches of
//! up to `MAX_BATCH`, default 16), plus peak memory. Greedy, 32 tokens each.
//! `cargo run --release -p provider-worker --example throughput -- [MODEL] [STREAMS...]`;
//! `--cuda` anywhere runs on the first CUDA GPU (build with `--features cuda`; weights as stored).

use compute_inference::{ChatMessage, Engine, GenParams, WeightFormat};
use std::{path::PathBuf, sync::Arc, time::Instant};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let cuda = std::env::args().any(|a| a == "--cuda");
    let mut args = std::env::args().skip(1).filter(|a| a != "--cuda");
    let model = args
        .next()
        .map(PathBuf::from)
        .or_else(compute_inference::default_model_path)
        .ok_or_else(|| anyhow::anyhow!("no model: run `make model`"))?;
    let mut streams: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
    if streams.is_empty() {
        streams = vec![1, 4, 16];
    }
    let max_batch = std::env::var("MAX_BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(16);
    let (format, device) = if cuda {
        (WeightFormat::AsStored, candle_core::Device::new_cuda(0)?)
    } else {
        (WeightFormat::FastCpu, candle_core::Device::Cpu)
    };
    let engine = Arc::new(Engine::load_with(&model, format, device, max_batch)?);
    println!("model loaded; peak RSS {:.0} MiB", peak_rss_mib());
    let topics = ["the sea", "a city", "music", "trees", "the moon", "bread", "rain", "chess"];
    for n in streams {
        let start = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let engine = Arc::clone(&engine);
                let topic = topics[i % topics.len()];
                std::thread::spawn(move || {
                    let msg = ChatMessage {
                        role: "user".into(),
                        content: format!("Write about {topic}."),
                    };
                    let ids = engine.chat_prompt(&[msg]).expect("prompt");
                    let params = GenParams { max_tokens: 32, ..GenParams::default() };
                    engine.generate(&ids, &params, |_| true).expect("generates")
                })
            })
            .collect();
        let mut tokens = 0u64;
        let mut ttft = Vec::new();
        for h in handles {
            let g = h.join().map_err(|_| anyhow::anyhow!("stream panicked"))?;
            tokens += g.completion_tokens;
            ttft.push(g.time_to_first_token.as_secs_f64() * 1e3);
        }
        let secs = start.elapsed().as_secs_f64();
        ttft.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{n:>2} streams: {tokens} tokens in {secs:.2} s = {:.1} tokens/s aggregate; first token median {:.0} ms; peak RSS {:.0} MiB",
            tokens as f64 / secs,
            ttft[ttft.len() / 2],
            peak_rss_mib()
        );
    }
    Ok(())
}
