//! Generate from a GGUF with the worker's engine and report speed: time to first token and
//! decode tokens per second. `cargo run --release -p provider-worker --example generate --
//! [MODEL] [fast_cpu|as_stored] [PROMPT]`; `--cuda` anywhere runs on the first CUDA GPU (build with
//! `--features cuda`).

use compute_inference::{ChatMessage, Engine, GenParams, WeightFormat};
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let cuda = std::env::args().any(|a| a == "--cuda");
    let mut args = std::env::args().skip(1).filter(|a| a != "--cuda");
    let model = args
        .next()
        .map(PathBuf::from)
        .or_else(compute_inference::default_model_path)
        .ok_or_else(|| anyhow::anyhow!("no model: run `make model`"))?;
    let format = match args.next().as_deref() {
        Some("as_stored") => WeightFormat::AsStored,
        _ => WeightFormat::FastCpu,
    };
    let prompt =
        args.next().unwrap_or_else(|| "Write a story about a dragon who learns to fly.".into());
    let device = if cuda { candle_core::Device::new_cuda(0)? } else { candle_core::Device::Cpu };
    let engine = Engine::load(&model, format, device)?;
    let ids = engine.chat_prompt(&[ChatMessage { role: "user".into(), content: prompt }])?;
    let params = GenParams { max_tokens: 64, ..GenParams::default() };
    let g = engine.generate(&ids, &params, |_| true)?;
    let decode = g.elapsed - g.time_to_first_token;
    println!("{}", g.text);
    println!(
        "{format:?} on {}: prompt {} tokens, completion {} tokens, first token {:.0} ms, decode {:.1} tokens/s",
        if cuda { "cuda" } else { "cpu" },
        g.prompt_tokens,
        g.completion_tokens,
        g.time_to_first_token.as_secs_f64() * 1e3,
        (g.completion_tokens.saturating_sub(1)) as f64 / decode.as_secs_f64().max(1e-9)
    );
    Ok(())
}
