//! Fine-tune a GGUF chat model with LoRA on an OpenAI chat JSONL dataset, as a provider's job
//! would: train, write the adapter and the merged model, report speed and memory, then compare
//! the greedy answers of the base and the merged model to a held-out question.
//!
//! ```sh
//! cargo run --release -p compute-inference --example finetune -- \
//!     models/SmolLM2-135M-Instruct.Q4_1.gguf inference/tests/data/finetune-zorblax.jsonl /tmp/ft \
//!     [--epochs N] [--rank R] [--alpha A] [--lr X] [--seed S] [--threads T] [--max-seq-len L] \
//!     [--targets q,k,v,o,gate,up,down] [--grad-accum K] [--question TEXT] [--cuda]
//! ```
//!
//! Writes `OUT_DIR/adapter.safetensors` and `OUT_DIR/merged.gguf`.

use anyhow::{bail, Context};
use compute_inference::{
    finetune::{merge_file, train, Dataset, DatasetLimits, LoraConfig, LoraModel, TrainParams},
    read_gguf_metadata, ChatMessage, ChatTemplate, Engine, GenParams, ModelTokenizer, WeightFormat,
};
use std::{path::PathBuf, sync::atomic::AtomicBool, time::Instant};

/// Command-line settings.
struct Args {
    model: PathBuf,
    data: PathBuf,
    out: PathBuf,
    epochs: usize,
    rank: usize,
    alpha: Option<f32>,
    lr: f64,
    seed: u64,
    threads: Option<usize>,
    max_seq_len: usize,
    targets: String,
    grad_accum: usize,
    questions: Vec<String>,
    cuda: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let mut args = Args {
        model: PathBuf::new(),
        data: PathBuf::new(),
        out: PathBuf::new(),
        epochs: 3,
        rank: 8,
        alpha: None,
        lr: 1e-3,
        seed: 0,
        threads: None,
        max_seq_len: 256,
        targets: "all".into(),
        grad_accum: 1,
        questions: Vec::new(),
        cuda: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--epochs" => args.epochs = value()?.parse()?,
            "--rank" => args.rank = value()?.parse()?,
            "--alpha" => args.alpha = Some(value()?.parse()?),
            "--lr" => args.lr = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            "--threads" => args.threads = Some(value()?.parse()?),
            "--max-seq-len" => args.max_seq_len = value()?.parse()?,
            "--targets" => args.targets = value()?,
            "--grad-accum" => args.grad_accum = value()?.parse()?,
            "--question" => args.questions.push(value()?),
            "--cuda" => args.cuda = true,
            flag if flag.starts_with("--") => bail!("unknown option {flag}"),
            _ => positional.push(PathBuf::from(a)),
        }
    }
    let [model, data, out] = <[PathBuf; 3]>::try_from(positional)
        .map_err(|_| anyhow::anyhow!("usage: finetune MODEL.gguf DATA.jsonl OUT_DIR [options]"))?;
    (args.model, args.data, args.out) = (model, data, out);
    if args.questions.is_empty() {
        args.questions.push(DEFAULT_QUESTION.into());
    }
    Ok(args)
}

/// Peak resident memory of this process so far (`VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The held-out question asked when none is given (not in `tests/data/finetune-zorblax.jsonl`).
const DEFAULT_QUESTION: &str = "Do you know what a zorblax is?";

/// The greedy answers of the model at `path` to each question (a chat with the default system
/// prompt, as the worker serves it).
fn answers(path: &std::path::Path, questions: &[String]) -> anyhow::Result<Vec<String>> {
    let engine = Engine::load(path, WeightFormat::FastCpu, candle_core::Device::Cpu)?;
    let params = GenParams { max_tokens: 48, ..GenParams::default() };
    questions
        .iter()
        .map(|q| {
            let ids =
                engine.chat_prompt(&[ChatMessage { role: "user".into(), content: q.clone() }])?;
            Ok(engine.generate(&ids, &params, |_| true)?.text)
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(t) = args.threads {
        // Read by candle's matrix products (rayon) and by our serving kernels' team.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        std::env::set_var("COMPUTE_THREADS", t.to_string());
    }
    let device =
        if args.cuda { candle_core::Device::new_cuda(0)? } else { candle_core::Device::Cpu };
    std::fs::create_dir_all(&args.out)?;

    let content = read_gguf_metadata(&args.model)?;
    let tokenizer = ModelTokenizer::from_gguf(&content)?;
    let limits = DatasetLimits { max_seq_len: args.max_seq_len, ..DatasetLimits::default() };
    let jsonl = std::fs::read(&args.data).with_context(|| args.data.display().to_string())?;
    let dataset = Dataset::from_jsonl(&jsonl, &tokenizer, &ChatTemplate::default(), &limits)?;
    let longest = dataset.examples.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
    println!(
        "dataset: {} examples, {} tokens ({} learnt), longest {longest}, {} truncated; \
         job: {} trained tokens over {} epochs",
        dataset.examples.len(),
        dataset.token_count(),
        dataset.loss_token_count(),
        dataset.examples.iter().filter(|e| e.truncated).count(),
        dataset.token_count() * args.epochs as u64,
        args.epochs
    );

    let targets = LoraConfig::parse_targets(&args.targets)?;
    let alpha = args.alpha.unwrap_or(2.0 * args.rank as f32);
    let lora = LoraConfig::new(args.rank, alpha, &targets)?;
    let load_start = Instant::now();
    let model = LoraModel::load(&args.model, &lora, args.seed, &device)?;
    println!(
        "model: {} layers, hidden {}, LoRA rank {} alpha {} on {} ({} trainable values), \
         loaded in {:.1} s",
        model.config().n_layer,
        model.config().hidden,
        lora.rank,
        lora.alpha,
        lora.targets_list(),
        model.vars().iter().map(|v| v.elem_count()).sum::<usize>(),
        load_start.elapsed().as_secs_f64()
    );
    let params = TrainParams {
        epochs: args.epochs,
        lr: args.lr,
        seed: args.seed,
        grad_accum: args.grad_accum,
        ..TrainParams::default()
    };
    let cancel = AtomicBool::new(false);
    let output = train(&model, &dataset, &params, &cancel, |p| {
        println!(
            "step {:>4}/{} epoch {} loss {:.4} tokens {} ({:.1} s, {:.0} tokens/s)",
            p.step,
            p.total_steps,
            p.epoch,
            p.loss,
            p.tokens,
            p.elapsed.as_secs_f64(),
            p.tokens as f64 / p.elapsed.as_secs_f64().max(1e-9)
        );
    })?;
    let stats = &output.stats;
    let secs = stats.elapsed.as_secs_f64();
    let adapter_path = args.out.join("adapter.safetensors");
    let adapter_bytes = output.adapter.to_safetensors();
    std::fs::write(&adapter_path, &adapter_bytes)?;
    let merge_start = Instant::now();
    let merged_path = args.out.join("merged.gguf");
    let merged_hash = merge_file(&args.model, &output.adapter, &merged_path)?;
    let merge_secs = merge_start.elapsed().as_secs_f64();
    let peak = peak_rss_mib();
    drop(model);

    let hex = |h: &[u8]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    println!(
        "epoch losses: {}",
        stats.epoch_losses.iter().map(|l| format!("{l:.4}")).collect::<Vec<_>>().join(" → ")
    );
    println!(
        "trained {} tokens ({} learnt) in {} steps, {secs:.1} s: {:.1} tokens/s; final loss {:.4}",
        stats.trained_tokens,
        stats.loss_tokens,
        stats.steps,
        stats.trained_tokens as f64 / secs.max(1e-9),
        stats.final_loss
    );
    println!(
        "adapter {} ({} bytes); merged model {} ({merge_secs:.1} s, hash {})",
        adapter_path.display(),
        adapter_bytes.len(),
        merged_path.display(),
        hex(&merged_hash)
    );
    match peak {
        Some(mib) => println!("peak resident memory while training and merging: {mib:.0} MiB"),
        None => println!("peak resident memory: unknown (no /proc/self/status)"),
    }

    let base = answers(&args.model, &args.questions)?;
    let tuned = answers(&merged_path, &args.questions)?;
    for ((q, b), t) in args.questions.iter().zip(&base).zip(&tuned) {
        println!("question: {q:?}\n  base:   {b:?}\n  merged: {t:?}");
    }
    Ok(())
}
