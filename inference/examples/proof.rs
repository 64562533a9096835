//! What activation proofs cost (`docs/benchmarks.md`): greedy decoding of one stream with and
//! without recording the proof (the same forward passes, so the difference is the proof's own
//! work), the proof's bytes per token, and validation speed (one prefill without the output
//! head) against generation speed.
//!
//! ```sh
//! cargo test --workspace --no-run && target/debug/examples/proof [MODEL] [TOKENS] [ROUNDS]
//! ```

use candle_core::{DType, Device};
use compute_inference::{
    default_model_path,
    llama::Llama,
    proof::{proof_len, validate, ProofBuilder, THRESHOLDS},
    read_gguf, ChatMessage, ChatTemplate, ModelTokenizer, WeightFormat,
};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = match args.next() {
        Some(p) => p.into(),
        None => default_model_path().ok_or_else(|| anyhow::anyhow!("run `make model`"))?,
    };
    let tokens: usize = args.next().map_or(Ok(128), |s| s.parse())?;
    let rounds: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    let loaded = read_gguf(&path, WeightFormat::FastCpu)?;
    let model = Llama::from_gguf(&loaded.content, &loaded.bytes, &Device::Cpu)?;
    let tokenizer = ModelTokenizer::from_gguf(&loaded.content)?;
    let messages = [ChatMessage {
        role: "user".into(),
        content: "Write a long story about a lighthouse keeper and a storm.".into(),
    }];
    let prompt = tokenizer.encode(&ChatTemplate::default().render(&messages))?;

    // One greedy stream, `tokens` long (stop tokens ignored so every round is as long).
    let generate = |record: bool| -> anyhow::Result<(Duration, Vec<u32>, ProofBuilder)> {
        let mut cache = model.new_cache(prompt.len() + tokens)?;
        let mut proof = ProofBuilder::default();
        let mut out = Vec::with_capacity(tokens);
        let mut feed = prompt.clone();
        let t = Instant::now();
        for _ in 0..tokens {
            let step = model.step(&mut [(&mut cache, &feed[..])])?;
            let next = step.logits.get(0)?.to_dtype(DType::F32)?.argmax(0)?.to_scalar::<u32>()?;
            if record {
                proof.push(next, &step.hidden);
            }
            out.push(next);
            feed = vec![next];
        }
        Ok((t.elapsed(), out, proof))
    };
    generate(true)?; // warm-up
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..rounds {
        let (d, _, _) = generate(false)?;
        without.push(d.as_secs_f64());
        let (d, out, proof) = generate(true)?;
        with.push(d.as_secs_f64());
        last = Some((out, proof));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (t_with, t_without) = (median(&mut with), median(&mut without));
    let (_, proof) = last.ok_or_else(|| anyhow::anyhow!("no rounds"))?;
    let proof = proof.finish();

    // The proof's own work, alone: one push per token.
    let hidden: Vec<f32> =
        (0..model.config.hidden).map(|i| ((i * 7919) % 1000) as f32 - 500.0).collect();
    let mut builder = ProofBuilder::default();
    let pushes = 100_000;
    let t = Instant::now();
    for i in 0..pushes {
        builder.push(i as u32, &hidden);
    }
    let push = t.elapsed().as_secs_f64() / pushes as f64;

    // Validation: one prefill over the prompt and the generated tokens.
    let validator = read_gguf(&path, WeightFormat::AsStored)?;
    let validator = Llama::from_gguf(&validator.content, &validator.bytes, &Device::Cpu)?;
    validate(&validator, &prompt, &proof, THRESHOLDS);
    let mut checks = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let verdict = validate(&validator, &prompt, &proof, THRESHOLDS);
        checks.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(verdict.passed(), "the honest proof failed: {verdict:?}");
    }
    let t_check = median(&mut checks);

    let decode = tokens as f64 / t_without;
    println!(
        "model {} (hidden {}), prompt {} tokens, {tokens} generated, {rounds} rounds",
        path.display(),
        model.config.hidden,
        prompt.len()
    );
    println!("decode without proof   {decode:8.1} tokens/s");
    println!(
        "decode with proof      {:8.1} tokens/s  ({:+.2} %)",
        tokens as f64 / t_with,
        (t_with / t_without - 1.0) * 100.0
    );
    println!(
        "proof work per token   {:8.2} µs  ({:.3} % of a decode step)",
        push * 1e6,
        push * decode * 100.0
    );
    println!("proof bytes per token  {:8.1}", proof_len(tokens) as f64 / tokens as f64);
    println!(
        "validation             {:8.1} generated tokens/s  ({:.1}x generation; {} positions in one prefill)",
        tokens as f64 / t_check,
        t_without / t_check,
        prompt.len() + tokens - 1
    );
    Ok(())
}
