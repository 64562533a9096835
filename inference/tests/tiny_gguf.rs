//! GGUF loading, re-quantization and sampling on a tiny llama model this test writes; with
//! `--features cuda`, the GPU checks of the chat model and the embedder (`scripts/gpu-check.sh`).

#![allow(clippy::unwrap_used)]

use candle_core::{
    quantized::{gguf_file, GgmlDType, QTensor},
    Device, Tensor,
};
use compute_inference::{Engine, FinishReason, GenParams, WeightFormat};
use std::path::PathBuf;

const DIM: usize = 32;
const FF: usize = 64;

fn vocab() -> Vec<String> {
    let mut v: Vec<String> =
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].iter().map(|s| s.to_string()).collect();
    v.extend(('a'..='z').map(|c| c.to_string()));
    v.extend(["Ġ", "Ċ", "."].iter().map(|s| s.to_string()));
    v
}

/// Deterministic pseudo-random weights.
fn weights(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..rows * cols)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.8
        })
        .collect();
    Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
}

fn write_tiny_model() -> PathBuf {
    write_tiny_model_with(FF, 2)
}

/// The tiny model with an MLP of `ff` and `n_kv` key/value heads (1: grouped-query attention,
/// two query heads sharing one).
fn write_tiny_model_with(ff: usize, n_kv: usize) -> PathBuf {
    let kv = DIM / 2 * n_kv;
    let v = vocab();
    let n = v.len();
    let q = |t: Tensor| QTensor::quantize(&t, GgmlDType::Q4_1).unwrap();
    let f = |t: Tensor| QTensor::quantize(&t, GgmlDType::F32).unwrap();
    let ones = Tensor::ones((DIM,), candle_core::DType::F32, &Device::Cpu).unwrap();
    let tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q(weights(n, DIM, 1))),
        ("output_norm.weight".into(), f(ones.clone())),
        ("output.weight".into(), q(weights(n, DIM, 2))),
        ("blk.0.attn_norm.weight".into(), f(ones.clone())),
        ("blk.0.attn_q.weight".into(), q(weights(DIM, DIM, 3))),
        ("blk.0.attn_k.weight".into(), q(weights(kv, DIM, 4))),
        ("blk.0.attn_v.weight".into(), q(weights(kv, DIM, 5))),
        ("blk.0.attn_output.weight".into(), q(weights(DIM, DIM, 6))),
        ("blk.0.ffn_norm.weight".into(), f(ones)),
        ("blk.0.ffn_gate.weight".into(), q(weights(ff, DIM, 7))),
        ("blk.0.ffn_up.weight".into(), q(weights(ff, DIM, 8))),
        ("blk.0.ffn_down.weight".into(), q(weights(DIM, ff, 9))),
    ];
    use gguf_file::Value as V;
    let tokens = V::Array(v.iter().map(|s| V::String(s.clone())).collect());
    let types = V::Array((0..n).map(|i| V::I32(if i < 3 { 3 } else { 1 })).collect());
    let md: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.attention.head_count", V::U32(2)),
        ("llama.attention.head_count_kv", V::U32(n_kv as u32)),
        ("llama.block_count", V::U32(1)),
        ("llama.embedding_length", V::U32(DIM as u32)),
        ("llama.feed_forward_length", V::U32(ff as u32)),
        ("llama.rope.dimension_count", V::U32(16)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("llama.context_length", V::U32(48)),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.merges", V::Array(vec![])),
        ("tokenizer.ggml.token_type", types),
        ("tokenizer.ggml.eos_token_id", V::U32(0)),
    ];
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("tiny-llama-{}-{n}.gguf", std::process::id()));
    let mut file = std::fs::File::create(&path).unwrap();
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut file, &md_refs, &t_refs).unwrap();
    path
}

#[test]
fn loads_requantizes_and_samples_deterministically() {
    let path = write_tiny_model();
    let fast = Engine::load(&path, WeightFormat::FastCpu, Device::Cpu).expect("loads");
    let requantized = if compute_inference::qmatmul::supported() { 0 } else { 9 };
    assert_eq!(fast.requantized, requantized, "q4_1 stays where our kernel runs, else q8_0");
    assert_eq!(fast.context_len, 48);
    let stored = Engine::load(&path, WeightFormat::AsStored, Device::Cpu).expect("loads");
    assert_eq!(stored.requantized, 0);

    // Tokenizer from the file's metadata: letters, the byte-level space, control tokens.
    let ids = fast.tokenizer.encode("<|im_start|>ab c").unwrap();
    assert_eq!(ids, vec![1, 3, 4, 29, 5]);
    assert_eq!(fast.tokenizer.decode(&ids).unwrap(), "ab c");

    let prompt = [1u32, 3, 4, 5, 6];
    let greedy = GenParams { max_tokens: 12, ..GenParams::default() };
    let a = fast.generate(&prompt, &greedy, |_| true).unwrap();
    let b = fast.generate(&prompt, &greedy, |_| true).unwrap();
    assert_eq!(a.text, b.text, "greedy decoding is deterministic (each request a fresh KV cache)");
    assert!(a.completion_tokens <= 12);
    if a.finish == FinishReason::Length {
        assert_eq!(a.completion_tokens, 12);
    }
    assert_eq!(a.prompt_tokens, 5);

    let sampled = GenParams {
        max_tokens: 12,
        temperature: 1.0,
        top_p: 0.9,
        seed: 42,
        ..GenParams::default()
    };
    let s1 = fast.generate(&prompt, &sampled, |_| true).unwrap();
    let s2 = fast.generate(&prompt, &sampled, |_| true).unwrap();
    assert_eq!(s1.text, s2.text, "the same seed samples the same tokens");

    // Streaming pieces add up to the text.
    let mut streamed = String::new();
    let c = fast
        .generate(&prompt, &greedy, |p| {
            streamed.push_str(p);
            true
        })
        .unwrap();
    assert_eq!(streamed, c.text);

    // A stop string ends generation before it; the consumer can cancel.
    if a.text.chars().count() >= 4 {
        let stop: String = a.text.chars().skip(2).take(2).collect();
        let p = GenParams { stop: vec![stop.clone()], ..greedy.clone() };
        let cut = fast.generate(&prompt, &p, |_| true).unwrap();
        assert_eq!(cut.finish, FinishReason::Stop);
        assert!(!cut.text.contains(&stop));
        assert!(a.text.starts_with(&cut.text));
    }
    let cancelled = fast.generate(&prompt, &greedy, |_| false).unwrap();
    // The refusal travels back to the scheduler thread, which may have finished this tiny
    // request meanwhile; either way nothing past what the consumer refused is produced twice.
    assert!(
        cancelled.finish == FinishReason::Cancelled
            || (cancelled.finish == a.finish && cancelled.text == a.text),
        "{:?} after {} tokens",
        cancelled.finish,
        cancelled.completion_tokens
    );

    // Prompts that do not fit are refused.
    let long = vec![3u32; 48];
    assert!(fast.generate(&long, &greedy, |_| true).is_err());
    let _ = std::fs::remove_file(path);
}

/// Largest absolute difference between two tensors of the same shape.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn batched_forward_matches_candles_reference_llama() {
    use candle_transformers::models::quantized_llama::ModelWeights;
    use compute_inference::{llama::Llama, read_gguf};
    let path = write_tiny_model();
    for format in [WeightFormat::AsStored, WeightFormat::FastCpu] {
        let loaded = read_gguf(&path, format).unwrap();
        let ours = Llama::from_gguf(&loaded.content, &loaded.bytes, &Device::Cpu).unwrap();
        let content = read_gguf(&path, format).unwrap().content;
        let mut reference = ModelWeights::from_gguf(
            content,
            &mut std::io::Cursor::new(&loaded.bytes),
            &Device::Cpu,
        )
        .unwrap();
        let row = |ids: &[u32]| Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();

        // The prompt in one pass, then three tokens one at a time.
        let prompt = [1u32, 3, 4, 5, 6];
        let mut cache = ours.new_cache(16).unwrap();
        let got = ours.prefill(&mut cache, &prompt).unwrap();
        let want = reference.forward(&row(&prompt), 0).unwrap().squeeze(0).unwrap();
        assert!(max_diff(&got, &want) < 1e-4, "{format:?} prefill differs");
        for (i, t) in [7u32, 8, 9].into_iter().enumerate() {
            let got = ours.decode(&mut [(&mut cache, t)]).unwrap().squeeze(0).unwrap();
            let want = reference.forward(&row(&[t]), prompt.len() + i).unwrap().squeeze(0).unwrap();
            assert!(max_diff(&got, &want) < 1e-4, "{format:?} decode step {i} differs");
        }
        assert_eq!(cache.len(), 8);

        // Two sequences at different positions in one batch: each row is what the sequence
        // gets alone.
        let (mut a, mut b) = (ours.new_cache(16).unwrap(), ours.new_cache(16).unwrap());
        ours.prefill(&mut a, &prompt).unwrap();
        ours.prefill(&mut b, &[1, 10, 11]).unwrap();
        let (mut a1, mut b1) = (ours.new_cache(16).unwrap(), ours.new_cache(16).unwrap());
        ours.prefill(&mut a1, &prompt).unwrap();
        ours.prefill(&mut b1, &[1, 10, 11]).unwrap();
        for (ta, tb) in [(12u32, 13u32), (14, 15)] {
            let both = ours.decode(&mut [(&mut a, ta), (&mut b, tb)]).unwrap();
            let alone_a = ours.decode(&mut [(&mut a1, ta)]).unwrap();
            let alone_b = ours.decode(&mut [(&mut b1, tb)]).unwrap();
            assert!(max_diff(&both.get(0).unwrap(), &alone_a.get(0).unwrap()) < 1e-4);
            assert!(max_diff(&both.get(1).unwrap(), &alone_b.get(0).unwrap()) < 1e-4);
        }
        // A full cache is an error, not a panic.
        let mut tiny = ours.new_cache(5).unwrap();
        ours.prefill(&mut tiny, &prompt).unwrap();
        assert!(ours.decode(&mut [(&mut tiny, 3)]).is_err());
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn concurrent_requests_share_decode_steps_and_match_running_alone() {
    let path = write_tiny_model();
    let engine = std::sync::Arc::new(
        Engine::load_with(&path, WeightFormat::FastCpu, Device::Cpu, 4).unwrap(),
    );
    let greedy = GenParams { max_tokens: 10, ..GenParams::default() };
    let prompts: Vec<Vec<u32>> =
        vec![vec![1, 3, 4], vec![1, 5, 6, 7, 8], vec![1, 9], vec![1, 10, 11, 12]];
    let alone: Vec<String> =
        prompts.iter().map(|p| engine.generate(p, &greedy, |_| true).unwrap().text).collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let (engine, greedy) = (&engine, &greedy);
                s.spawn(move || engine.generate(p, greedy, |_| true).unwrap().text)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together, "batching does not change greedy output");
    let _ = std::fs::remove_file(path);
}

/// `path`'s model with every tensor dequantized to f32: the exact arithmetic the quantized
/// paths approximate (weights as quantized, activations unquantized).
fn exact_copy(path: &std::path::Path) -> (gguf_file::Content, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let mut cursor = std::io::Cursor::new(&bytes);
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, QTensor)> = names
        .iter()
        .map(|n| {
            let f = content.tensor(&mut cursor, n, &Device::Cpu).unwrap().dequantize(&Device::Cpu);
            (n.to_string(), QTensor::quantize(&f.unwrap(), GgmlDType::F32).unwrap())
        })
        .collect();
    let md: Vec<(&str, &gguf_file::Value)> =
        content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &refs).unwrap();
    let bytes = out.into_inner();
    let content = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
    (content, bytes)
}

/// Checks of one forward pass on the GPU. With exact (f32) weights the GPU must give the
/// CPU's logits up to float rounding: that covers everything our code does (embedding, norms,
/// rotary angles, the KV cache, masks, attention, the batch layout). With the quantized weights
/// both devices approximate the exact logits (both quantize activations to 8 bits, candle's GPU
/// kernels in larger tiles and another order); the GPU passes when its distance is of the same
/// order as the CPU's (at most 4 times it).
#[cfg(feature = "cuda")]
fn compare(exact: &Tensor, gpu_exact: &Tensor, cpu: &Tensor, gpu: &Tensor, what: &str) {
    let cpu_side = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    let (gpu_exact, gpu) = (cpu_side(gpu_exact), cpu_side(gpu));
    let scale: f32 =
        exact.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    let e_f32 = max_diff(&gpu_exact, exact);
    let (e_cpu, e_gpu) = (max_diff(cpu, exact), max_diff(&gpu, exact));
    println!(
        "{what}: max |logit| {scale:.2}; f32 weights: cuda off the cpu by {e_f32:.1e}; \
         quantized: off the exact logits by cpu {e_cpu:.2e}, cuda {e_gpu:.2e}"
    );
    assert!(e_f32 <= 1e-4 * scale.max(1.0), "{what}: with f32 weights the GPU is {e_f32} off");
    assert!(e_gpu <= 4.0 * e_cpu + 1e-3 * scale, "{what}: the GPU is {e_gpu}, the CPU {e_cpu} off");
}

/// The same forward passes on the first CUDA GPU: prefill, decode and a batch of two sequences
/// stay as close to the exact (f32) arithmetic as the CPU's. Runs only with `--features cuda`
/// (the GPU check, `scripts/gpu-check.sh`).
#[cfg(feature = "cuda")]
#[test]
fn cuda_forward_matches_cpu() {
    use compute_inference::{llama::Llama, read_gguf};
    let gpu = Device::new_cuda(0).expect("a CUDA GPU");
    let path = write_tiny_model();
    let (c, b) = exact_copy(&path);
    let loaded = read_gguf(&path, WeightFormat::AsStored).unwrap();
    // Exact on the CPU, exact on the GPU, quantized on the CPU, quantized on the GPU.
    let models = [
        Llama::from_gguf(&c, &b, &Device::Cpu).unwrap(),
        Llama::from_gguf(&c, &b, &gpu).unwrap(),
        Llama::from_gguf(&loaded.content, &loaded.bytes, &Device::Cpu).unwrap(),
        Llama::from_gguf(&loaded.content, &loaded.bytes, &gpu).unwrap(),
    ];
    let check = |l: &[Tensor], what: &str| compare(&l[0], &l[1], &l[2], &l[3], what);
    let mut first: Vec<_> = models.iter().map(|m| m.new_cache(16).unwrap()).collect();
    let mut second: Vec<_> = models.iter().map(|m| m.new_cache(16).unwrap()).collect();
    let prompt = [1u32, 3, 4, 5, 6];
    let l: Vec<Tensor> =
        models.iter().zip(&mut first).map(|(m, c)| m.prefill(c, &prompt).unwrap()).collect();
    check(&l, "prefill");
    for t in [7u32, 8, 9] {
        let l: Vec<Tensor> =
            models.iter().zip(&mut first).map(|(m, c)| m.decode(&mut [(c, t)]).unwrap()).collect();
        check(&l, "decode");
    }
    for (m, c) in models.iter().zip(&mut second) {
        m.prefill(c, &[1, 10, 11]).unwrap();
    }
    let l: Vec<Tensor> = models
        .iter()
        .zip(first.iter_mut().zip(second.iter_mut()))
        .map(|(m, (a, b))| m.decode(&mut [(a, 12), (b, 13)]).unwrap())
        .collect();
    check(&l, "batched decode");
    let _ = std::fs::remove_file(path);
}

/// The real model (`COMPUTE_MODEL` or `make model`'s file) on the first CUDA GPU: logits after
/// a chat prompt as close to the exact ones as the CPU's, then greedy text, decode speed and the
/// aggregate throughput of 1, 4 and 16 concurrent streams. Runs only with `--features cuda`.
#[cfg(feature = "cuda")]
#[test]
fn cuda_serves_the_real_model() {
    use compute_inference::{default_model_path, llama::Llama, read_gguf, ChatMessage};
    use std::{sync::Arc, time::Instant};
    let model = default_model_path().expect("set COMPUTE_MODEL to the SmolLM2 GGUF");
    let gpu = Device::new_cuda(0).expect("a CUDA GPU");
    let cuda =
        Arc::new(Engine::load_with(&model, WeightFormat::AsStored, gpu.clone(), 16).unwrap());
    let cpu = Engine::load(&model, WeightFormat::AsStored, Device::Cpu).unwrap();
    let ask = |content: &str| vec![ChatMessage { role: "user".into(), content: content.into() }];
    let prompt = cuda.chat_prompt(&ask("What is the capital of France?")).unwrap();

    let (c, b) = exact_copy(&model);
    let exact = Llama::from_gguf(&c, &b, &Device::Cpu).unwrap();
    let gpu_exact = Llama::from_gguf(&c, &b, &gpu).unwrap();
    let loaded = read_gguf(&model, WeightFormat::AsStored).unwrap();
    let on_cpu = Llama::from_gguf(&loaded.content, &loaded.bytes, &Device::Cpu).unwrap();
    let on_gpu = Llama::from_gguf(&loaded.content, &loaded.bytes, &gpu).unwrap();
    let logits = |m: &Llama| m.prefill(&mut m.new_cache(64).unwrap(), &prompt).unwrap();
    let (x, w, y, z) = (logits(&exact), logits(&gpu_exact), logits(&on_cpu), logits(&on_gpu));
    let top = |t: &Tensor| -> Vec<u32> {
        let v: Vec<f32> = t.to_device(&Device::Cpu).unwrap().to_vec1().unwrap();
        let mut i: Vec<u32> = (0..v.len() as u32).collect();
        i.sort_by(|a, b| v[*b as usize].total_cmp(&v[*a as usize]));
        i.truncate(5);
        i
    };
    println!("top 5 next tokens: exact {:?}, cpu {:?}, cuda {:?}", top(&x), top(&y), top(&z));
    compare(&x, &w, &y, &z, "SmolLM2 after the prompt");

    let greedy = GenParams { max_tokens: 48, ..GenParams::default() };
    cuda.generate(&prompt, &greedy, |_| true).unwrap(); // warm-up: kernel loading
    let g = cuda.generate(&prompt, &greedy, |_| true).unwrap();
    let h = cpu.generate(&prompt, &greedy, |_| true).unwrap();
    let rate = |g: &compute_inference::Generation| {
        let decode = (g.elapsed - g.time_to_first_token).as_secs_f64().max(1e-9);
        g.completion_tokens.saturating_sub(1) as f64 / decode
    };
    println!("cuda: {:?}", g.text);
    println!("cpu:  {:?}", h.text);
    println!(
        "cuda: prompt {} tokens, first token {:.1} ms, decode {:.1} tokens/s (this machine's cpu {:.1})",
        g.prompt_tokens,
        g.time_to_first_token.as_secs_f64() * 1e3,
        rate(&g),
        rate(&h)
    );
    assert!(g.completion_tokens > 0);

    let topics = ["the sea", "a city", "music", "trees", "the moon", "bread", "rain", "chess"];
    for n in [1usize, 4, 16] {
        let start = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let engine = Arc::clone(&cuda);
                let ids =
                    cuda.chat_prompt(&ask(&format!("Write about {}.", topics[i % 8]))).unwrap();
                std::thread::spawn(move || {
                    let params = GenParams { max_tokens: 64, ..GenParams::default() };
                    engine.generate(&ids, &params, |_| true).unwrap().completion_tokens
                })
            })
            .collect();
        let tokens: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "cuda: {n:>2} streams: {tokens} tokens in {secs:.2} s = {:.1} tokens/s",
            tokens as f64 / secs
        );
    }
}

/// The embedding model (`COMPUTE_EMBEDDING_MODEL` or `make model`'s directory) on the first CUDA
/// GPU: the vectors of a mixed batch (two chunks, short inputs padded beside long ones) are the
/// CPU's up to float rounding, an input alone gives its vector in the batch, then the speed of
/// the benchmark's four cases on both devices. Runs only with `--features cuda`.
#[cfg(feature = "cuda")]
#[test]
fn cuda_embeds_like_the_cpu() {
    use compute_inference::{default_embedding_model_path, Embedder};
    use std::time::Instant;
    let dir = default_embedding_model_path().expect("set COMPUTE_EMBEDDING_MODEL to MiniLM");
    let gpu = Device::new_cuda(0).expect("a CUDA GPU");
    let on_cpu = Embedder::load(&dir, &Device::Cpu).unwrap();
    let on_gpu = Embedder::load(&dir, &gpu).unwrap();
    let short = "The quick brown fox jumps over the lazy dog.".to_string();
    let long = "Decentralised inference markets let anyone with a GPU sell model answers, \
                paid per token from an escrow the buyer funds in advance. "
        .repeat(6);
    let mut texts: Vec<String> = (0..20)
        .map(|i| match i % 4 {
            0 => format!("Question {i}: what is a blockchain?"),
            1 => format!("{} ({i})", &long[..40 + 9 * i]),
            2 => short.clone(),
            _ => format!("Item {i}. {long}"),
        })
        .collect();
    texts.push("a".into());
    let ids = on_cpu.tokenize(&texts).unwrap();
    assert_eq!(ids, on_gpu.tokenize(&texts).unwrap());
    let (a, b) = (on_cpu.embed(&ids).unwrap(), on_gpu.embed(&ids).unwrap());
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs());
        }
    }
    let alone = on_gpu.embed(&ids[3..4]).unwrap();
    let shift = alone[0].iter().zip(&b[3]).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    println!(
        "embeddings: {} inputs ({} tokens): cuda off the cpu by at most {worst:.1e}; \
         an input alone off its batch vector by {shift:.1e}",
        texts.len(),
        ids.iter().map(Vec::len).sum::<usize>()
    );
    assert!(worst <= 1e-4, "the GPU's vectors are {worst} off the CPU's");
    assert!(shift <= 1e-4, "an input alone is {shift} off its batch vector");

    let cases: [(&str, Vec<String>); 4] = [
        ("1 short input", vec![short.clone()]),
        ("32 short inputs", vec![short.clone(); 32]),
        ("1 long input", vec![long.clone()]),
        ("16 long inputs", vec![long; 16]),
    ];
    for (name, texts) in cases {
        let ids = on_cpu.tokenize(&texts).unwrap();
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let time = |e: &Embedder| {
            e.embed(&ids).unwrap(); // warm-up: kernel loading
            let mut runs: Vec<f64> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    e.embed(&ids).unwrap();
                    t.elapsed().as_secs_f64()
                })
                .collect();
            runs.sort_by(f64::total_cmp);
            runs[2]
        };
        let (g, c) = (time(&on_gpu), time(&on_cpu));
        println!(
            "{name:>16}: {tokens:>5} tokens: cuda {:>7.2} ms ({:>7.0} tokens/s), \
             this machine's cpu {:>7.2} ms ({:>6.0} tokens/s)",
            g * 1e3,
            tokens as f64 / g,
            c * 1e3,
            tokens as f64 / c
        );
    }
}

/// The real model (`COMPUTE_MODEL` or `make model`'s file), when present, on the CPU, after a
/// chat prompt and after each of four greedy decode steps:
/// - with every weight dequantized to f32, our forward pass (plain-vector prefill and decode,
///   grouped-query attention, rotary tables, KV cache) gives the logits of candle's reference
///   llama up to float rounding;
/// - with the file's quantized weights, our kernels stay as close to those exact logits as
///   candle's reference does with the same weights. (The two quantized passes are not equal to
///   each other: both round every activation to 8 bits per block, so a last-bit difference in a
///   sum, such as another summation order, moves a rounding and the logits by a few tenths.)
#[test]
fn real_model_matches_candles_reference_llama() {
    use candle_transformers::models::quantized_llama::ModelWeights;
    use compute_inference::{default_model_path, llama::Llama, read_gguf, ChatMessage};
    let Some(model) = default_model_path() else {
        eprintln!("skipped: no model (run `make model`)");
        return;
    };
    let engine = Engine::load(&model, WeightFormat::AsStored, Device::Cpu).unwrap();
    let msg = ChatMessage { role: "user".into(), content: "What is the capital of France?".into() };
    let prompt = engine.chat_prompt(&[msg]).unwrap();
    let reference = |content: gguf_file::Content, bytes: &[u8]| {
        ModelWeights::from_gguf(content, &mut std::io::Cursor::new(bytes), &Device::Cpu).unwrap()
    };
    let (exact_content, exact_bytes) = exact_copy(&model);
    let loaded = read_gguf(&model, WeightFormat::AsStored).unwrap();
    let ours_exact = Llama::from_gguf(&exact_content, &exact_bytes, &Device::Cpu).unwrap();
    let ours = Llama::from_gguf(&loaded.content, &loaded.bytes, &Device::Cpu).unwrap();
    let mut ref_exact = reference(exact_content, &exact_bytes);
    let mut ref_quant =
        reference(read_gguf(&model, WeightFormat::AsStored).unwrap().content, &loaded.bytes);
    let row = |ids: &[u32]| Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let (mut c_exact, mut c_quant) =
        (ours_exact.new_cache(64).unwrap(), ours.new_cache(64).unwrap());
    let mut fed: Vec<u32> = prompt.clone();
    let mut at = 0;
    for step in 0..5 {
        let tokens = &fed[at..];
        let (a, b) = if step == 0 {
            (
                ours_exact.prefill(&mut c_exact, tokens).unwrap(),
                ours.prefill(&mut c_quant, tokens).unwrap(),
            )
        } else {
            let t = tokens[0];
            (
                ours_exact.decode(&mut [(&mut c_exact, t)]).unwrap().squeeze(0).unwrap(),
                ours.decode(&mut [(&mut c_quant, t)]).unwrap().squeeze(0).unwrap(),
            )
        };
        let want = ref_exact.forward(&row(tokens), at).unwrap().squeeze(0).unwrap();
        let candle_quant = ref_quant.forward(&row(tokens), at).unwrap().squeeze(0).unwrap();
        let scale: f32 = want.abs().unwrap().max(0).unwrap().to_scalar().unwrap();
        let (e_exact, e_ours, e_candle) =
            (max_diff(&a, &want), max_diff(&b, &want), max_diff(&candle_quant, &want));
        println!(
            "step {step}: max |logit| {scale:.2}; f32 weights: ours off candle's by {e_exact:.1e}; \
             quantized: off the exact logits by ours {e_ours:.2}, candle {e_candle:.2}"
        );
        assert!(e_exact <= 1e-4 * scale, "step {step}: with f32 weights ours is {e_exact} off");
        assert!(
            e_ours <= 1.5 * e_candle + 0.02 * scale,
            "step {step}: quantized, ours is {e_ours} off the exact logits, candle's {e_candle}"
        );
        at = fed.len();
        fed.push(want.argmax(0).unwrap().to_scalar::<u32>().unwrap());
    }
}

/// A few chat examples over the tiny model's letters (the tiny vocabulary has no capitals, so
/// they are rendered without the default system prompt).
const TINY_JSONL: &str = concat!(
    r#"{"messages":[{"role":"user","content":"ab"},{"role":"assistant","content":"xyz xyz"}]}"#,
    "\n",
    r#"{"messages":[{"role":"user","content":"cd"},{"role":"assistant","content":"xyz q"}]}"#,
    "\n",
    r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"e"},{"role":"assistant","content":"xyz"}]}"#,
    "\n",
    r#"{"messages":[{"role":"user","content":"fg"},{"role":"assistant","content":"a"},{"role":"user","content":"h"},{"role":"assistant","content":"xyz xy"}]}"#,
    "\n",
);

fn tiny_dataset(path: &std::path::Path) -> compute_inference::finetune::Dataset {
    use compute_inference::{
        finetune::{Dataset, DatasetLimits},
        read_gguf_metadata, ChatTemplate, ModelTokenizer,
    };
    let tok = ModelTokenizer::from_gguf(&read_gguf_metadata(path).unwrap()).unwrap();
    let template = ChatTemplate { default_system: None };
    let limits = DatasetLimits { max_seq_len: 40, ..DatasetLimits::default() };
    Dataset::from_jsonl(TINY_JSONL.as_bytes(), &tok, &template, &limits).unwrap()
}

/// The training forward pass, adapters fresh (`B` = 0), computes the serving pass's function:
/// with f32 weights our serving `Llama` gives the same logits at every prefix (on the tiny
/// model, with and without grouped-query attention, and on the real SmolLM2 when present);
/// with the file's quantized weights the training model (which dequantizes them) is the exact
/// f32 model.
#[test]
fn lora_forward_with_zero_b_matches_serving() {
    use compute_inference::{
        default_model_path,
        finetune::{model_hash, LoraConfig, LoraModel},
        llama::Llama,
        read_gguf, ChatMessage,
    };
    let tiny_tokens = vec![1u32, 3, 4, 5, 6, 7, 8, 29, 9, 2, 30];
    let mut cases = vec![
        (write_tiny_model(), tiny_tokens.clone(), true),
        (write_tiny_model_with(FF, 1), tiny_tokens, true),
    ];
    if let Some(real) = default_model_path() {
        let engine = Engine::load(&real, WeightFormat::AsStored, Device::Cpu).unwrap();
        let msg = ChatMessage { role: "user".into(), content: "What is a zorblax?".into() };
        cases.push((real, engine.chat_prompt(&[msg]).unwrap(), false));
    } else {
        eprintln!("real model skipped: not downloaded (make model)");
    }
    for (path, tokens, tiny) in cases {
        let (content, bytes) = exact_copy(&path);
        let serving = Llama::from_gguf(&content, &bytes, &Device::Cpu).unwrap();
        let from_q = LoraModel::load(&path, &LoraConfig::default(), 1, &Device::Cpu).unwrap();
        let loaded = read_gguf(&path, WeightFormat::AsStored).unwrap();
        assert_eq!(from_q.base_model_hash(), model_hash(&loaded.bytes));
        assert_eq!(from_q.base_model_hash(), compute_inference::weights::file_hash(&path).unwrap());
        let all = from_q.logits(&tokens).unwrap();
        assert_eq!(all.dims(), &[tokens.len(), serving.config.vocab]);
        let scale: f32 =
            all.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        if tiny {
            let f32_model =
                LoraModel::from_gguf(&content, &bytes, &LoraConfig::default(), 1, &Device::Cpu)
                    .unwrap();
            let exact = f32_model.logits(&tokens).unwrap();
            assert!(max_diff(&all, &exact) < 1e-5, "dequantized weights are the f32 copy's");
        }
        let n = tokens.len();
        for len in [1, 2, n / 2, n] {
            let mut cache = serving.new_cache(n).unwrap();
            let want = serving.prefill(&mut cache, &tokens[..len]).unwrap();
            let diff = max_diff(&all.get(len - 1).unwrap(), &want);
            println!("{}: prefix {len}: max |logit| {scale:.1}, off by {diff:.1e}", path.display());
            assert!(diff <= 1e-4 * scale.max(1.0), "prefix {len}: {diff}");
        }
        if tiny {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Training on the tiny model: the loss falls; every token is counted (dataset count ×
/// epochs); the same seed gives the same adapter file byte for byte and another seed another
/// one; the adapter file reads back into the model it came from; merged into the base GGUF, it
/// is served (q8_0 projections) with logits as close to the LoRA forward's as the base file's
/// are to the exact base forward, and the merge is deterministic; cancellation stops at once;
/// adapters that do not fit are refused.
#[test]
fn lora_training_learns_deterministically_and_merges() {
    use compute_inference::{
        finetune::{
            merge, merge_file, train, Adapter, AdapterError, AdapterLimits, LoraConfig, LoraModel,
            MergeError, Target, TrainError, TrainParams,
        },
        llama::Llama,
        read_gguf,
    };
    use std::sync::atomic::AtomicBool;
    let path = write_tiny_model();
    let dataset = tiny_dataset(&path);
    assert_eq!(dataset.examples.len(), 4);
    let lora = LoraConfig::new(4, 8.0, &Target::ALL).unwrap();
    let params = TrainParams { epochs: 6, lr: 2e-2, seed: 7, ..TrainParams::default() };
    let never = AtomicBool::new(false);
    let run = |seed: u64, params: &TrainParams| {
        let model = LoraModel::load(&path, &lora, seed, &Device::Cpu).unwrap();
        let mut steps = Vec::new();
        let out = train(&model, &dataset, params, &never, |p| steps.push(p.clone())).unwrap();
        (model, out, steps)
    };
    let (model, out, steps) = run(7, &params);
    let stats = &out.stats;
    println!("epoch losses {:?}", stats.epoch_losses);
    assert_eq!(stats.steps, 24);
    assert_eq!(steps.len(), 24);
    assert_eq!((steps[23].step, steps[23].total_steps, steps[23].epoch), (24, 24, 6));
    assert_eq!(stats.trained_tokens, dataset.token_count() * 6);
    assert_eq!(steps[23].tokens, stats.trained_tokens);
    assert_eq!(stats.loss_tokens, dataset.loss_token_count() * 6);
    assert_eq!(stats.final_loss, stats.epoch_losses[5]);
    assert!(
        stats.final_loss < 0.5 * stats.epoch_losses[0],
        "the loss falls: {:?}",
        stats.epoch_losses
    );

    // Determinism of the delivered file.
    let file = out.adapter.to_safetensors();
    let (_, again, _) = run(7, &params);
    assert_eq!(again.adapter.to_safetensors(), file, "same seed, same bytes");
    let (_, other, _) = run(8, &TrainParams { seed: 8, ..params.clone() });
    assert_ne!(other.adapter.to_safetensors(), file, "another seed, another adapter");

    // The file reads back against its base and gives the trained model's function.
    let loaded = read_gguf(&path, WeightFormat::AsStored).unwrap();
    let adapter =
        Adapter::from_safetensors(&file, &loaded.content, &AdapterLimits::default()).unwrap();
    assert_eq!(adapter, out.adapter);
    let reloaded =
        LoraModel::with_adapter(&loaded.content, &loaded.bytes, &adapter, &Device::Cpu).unwrap();
    let prompt = dataset.examples[0].tokens.clone();
    let trained_logits = model.logits(&prompt).unwrap();
    assert!(max_diff(&reloaded.logits(&prompt).unwrap(), &trained_logits) == 0.0);

    // Merged and served.
    let merged = merge(&loaded.bytes, &adapter).unwrap();
    assert_eq!(merge(&loaded.bytes, &adapter).unwrap(), merged, "the merge is deterministic");
    let merged_content = gguf_file::Content::read(&mut std::io::Cursor::new(&merged)).unwrap();
    assert_eq!(merged_content.metadata.len(), loaded.content.metadata.len());
    for (name, info) in &merged_content.tensor_infos {
        let want = if name.starts_with("blk.0.attn_") && !name.contains("norm")
            || name.starts_with("blk.0.ffn_") && !name.contains("norm")
        {
            GgmlDType::Q8_0
        } else {
            loaded.content.tensor_infos[name].ggml_dtype
        };
        assert_eq!(info.ggml_dtype, want, "{name}");
    }
    let served = Llama::from_gguf(&merged_content, &merged, &Device::Cpu).unwrap();
    let base_served = Llama::from_gguf(&loaded.content, &loaded.bytes, &Device::Cpu).unwrap();
    let base_lora = LoraModel::load(&path, &lora, 7, &Device::Cpu).unwrap();
    for n in [prompt.len() / 2, prompt.len()] {
        let last = |m: &Llama| m.prefill(&mut m.new_cache(48).unwrap(), &prompt[..n]).unwrap();
        let merged_err = max_diff(&last(&served), &trained_logits.get(n - 1).unwrap());
        let base_err = max_diff(
            &last(&base_served),
            &base_lora.logits(&prompt[..n]).unwrap().get(n - 1).unwrap(),
        );
        println!("prefix {n}: merged off the LoRA forward by {merged_err:.3}, base {base_err:.3}");
        assert!(merged_err <= 2.0 * base_err + 0.05, "merged {merged_err}, base {base_err}");
    }
    // Written to a file: the engine serves it, its hash is the file's.
    let out_path = path.with_extension("merged.gguf");
    let hash = merge_file(&path, &adapter, &out_path).unwrap();
    assert_eq!(hash, compute_inference::weights::file_hash(&out_path).unwrap());
    let engine = Engine::load(&out_path, WeightFormat::FastCpu, Device::Cpu).unwrap();
    let greedy = GenParams { max_tokens: 8, ..GenParams::default() };
    let answer_at = dataset.examples[0].mask.iter().position(|m| *m).unwrap();
    let g = engine.generate(&prompt[..answer_at], &greedy, |_| true).unwrap();
    println!("merged model answers {:?} (trained on \"xyz xyz\")", g.text);
    assert!(g.text.starts_with("xyz"), "{:?}", g.text);

    // An adapter of another base is refused: other shapes, other file.
    let other_path = write_tiny_model_with(96, 2);
    let other = read_gguf(&other_path, WeightFormat::AsStored).unwrap();
    assert!(matches!(
        Adapter::from_safetensors(&file, &other.content, &AdapterLimits::default()),
        Err(AdapterError::Mismatch(_))
    ));
    assert!(matches!(merge(&other.bytes, &adapter), Err(MergeError::OtherBase { .. })));
    let only_down = LoraConfig::new(4, 8.0, &[Target::Down]).unwrap();
    let m = LoraModel::load(&other_path, &only_down, 1, &Device::Cpu).unwrap();
    let mut foreign = m.to_adapter().unwrap();
    foreign.base_model_hash = adapter.base_model_hash;
    assert!(merge(&loaded.bytes, &foreign).is_err(), "hash right, config differs: shapes checked");

    // Cancellation is checked before every step.
    let stop = AtomicBool::new(true);
    let fresh = LoraModel::load(&path, &lora, 7, &Device::Cpu).unwrap();
    assert!(matches!(
        train(&fresh, &dataset, &params, &stop, |_| {}),
        Err(TrainError::Cancelled { steps: 0 })
    ));
    for p in [path, other_path, out_path] {
        let _ = std::fs::remove_file(p);
    }
}
