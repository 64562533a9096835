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
    let path = std::env::temp_dir().join(format!("tiny-llama-{}.gguf", std::process::id()));
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
