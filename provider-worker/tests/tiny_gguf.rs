//! GGUF loading, re-quantization and sampling on a tiny llama model this test writes.

#![allow(clippy::unwrap_used)]

use candle_core::{
    quantized::{gguf_file, GgmlDType, QTensor},
    Device, Tensor,
};
use provider_worker::model::{Engine, FinishReason, GenParams, WeightFormat};
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
        ("blk.0.attn_k.weight".into(), q(weights(DIM, DIM, 4))),
        ("blk.0.attn_v.weight".into(), q(weights(DIM, DIM, 5))),
        ("blk.0.attn_output.weight".into(), q(weights(DIM, DIM, 6))),
        ("blk.0.ffn_norm.weight".into(), f(ones)),
        ("blk.0.ffn_gate.weight".into(), q(weights(FF, DIM, 7))),
        ("blk.0.ffn_up.weight".into(), q(weights(FF, DIM, 8))),
        ("blk.0.ffn_down.weight".into(), q(weights(DIM, FF, 9))),
    ];
    use gguf_file::Value as V;
    let tokens = V::Array(v.iter().map(|s| V::String(s.clone())).collect());
    let types = V::Array((0..n).map(|i| V::I32(if i < 3 { 3 } else { 1 })).collect());
    let md: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.attention.head_count", V::U32(2)),
        ("llama.attention.head_count_kv", V::U32(2)),
        ("llama.block_count", V::U32(1)),
        ("llama.embedding_length", V::U32(DIM as u32)),
        ("llama.feed_forward_length", V::U32(FF as u32)),
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
    assert_eq!(fast.requantized, 9, "every q4_1 tensor becomes q8_0");
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
    assert!(cancelled.finish == FinishReason::Cancelled || cancelled.completion_tokens <= 1);

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
    use provider_worker::model::{llama::Llama, read_gguf};
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
