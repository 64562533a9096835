//! A llama-architecture transformer over GGUF weights, shaped for serving many users at once:
//!
//! - **Batched decoding**: one forward pass advances every active sequence by one token, so the
//!   weight matrices are multiplied against a `[batch, hidden]` matrix instead of one vector per
//!   user (candle's quantized matmul reads each weight block once per tile of rows).
//! - **Fused projections**: q/k/v and gate/up are concatenated at load (their quantized rows are
//!   simply appended, bit for bit), so a layer runs four weight matmuls instead of seven.
//! - **Per-sequence KV caches** allocated once at the exact size the request can reach (prompt
//!   plus `max_tokens`), written in place instead of concatenated every token.
//! - Grouped-query attention without repeating the key/value heads: the query heads that share a
//!   key/value head are multiplied against it as one matrix.
//!
//! The arithmetic is the reference llama forward pass (RMSNorm, interleaved RoPE for GGUF llama
//! files, SiLU-gated MLP, tied or separate output head); `engine.rs` checks it against the
//! greedy output of llama.cpp through the generation benchmark.

use candle_core::{
    quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor},
    DType, Device, Module, Result, Tensor, D,
};
use std::{borrow::Cow, io::Cursor};

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub context: usize,
    pub rms_eps: f64,
    pub rope_base: f32,
    /// Rotary dimensions (≤ `head_dim`).
    pub rope_dim: usize,
}

/// Output rows of several projections stored as one matrix.
struct Fused {
    parts: Vec<QMatMul>,
    /// Output width of each logical projection.
    widths: Vec<usize>,
}

impl Fused {
    /// Concatenate `ts` (each `[out_i, in]`) into one `[Σ out_i, in]` matrix when they share a
    /// format; otherwise keep them apart.
    fn new(ts: Vec<QTensor>) -> Result<Self> {
        let widths: Vec<usize> = ts.iter().map(|t| t.shape().dims()[0]).collect();
        let same = ts.windows(2).all(|w| {
            w[0].dtype() == w[1].dtype() && w[0].shape().dims()[1..] == w[1].shape().dims()[1..]
        });
        if same && ts.len() > 1 {
            let dtype = ts[0].dtype();
            let cols = ts[0].shape().dims()[1];
            let mut bytes = Vec::new();
            for t in &ts {
                bytes.extend_from_slice(&t.data()?);
            }
            let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
            let rows: usize = widths.iter().sum();
            let fused = QTensor::new(storage, (rows, cols))?;
            return Ok(Fused { parts: vec![QMatMul::from_qtensor(fused)?], widths });
        }
        let parts = ts.into_iter().map(QMatMul::from_qtensor).collect::<Result<_>>()?;
        Ok(Fused { parts, widths })
    }

    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        if self.parts.len() == self.widths.len() {
            return self.parts.iter().map(|p| p.forward(x)).collect();
        }
        let y = self.parts[0].forward(x)?;
        let mut out = Vec::with_capacity(self.widths.len());
        let mut at = 0;
        for &w in &self.widths {
            out.push(y.narrow(D::Minus1, at, w)?);
            at += w;
        }
        Ok(out)
    }
}

struct Layer {
    attn_norm: Tensor,
    qkv: Fused,
    wo: QMatMul,
    ffn_norm: Tensor,
    gate_up: Fused,
    down: QMatMul,
}

/// The model's weights (shared by every sequence).
pub struct Llama {
    pub config: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// One sequence's key/value cache: per layer `[n_kv_head, capacity, head_dim]`, filled up to
/// `len` positions.
pub struct SeqCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl SeqCache {
    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Write `k`, `v` (`[n_kv, t, hd]`) of layer `l` at the current end; return the whole
    /// cached keys and values including them.
    fn append(&mut self, l: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(1)?;
        if self.len + t > self.capacity {
            candle_core::bail!("KV cache full: {} + {t} > {}", self.len, self.capacity);
        }
        self.k[l].slice_set(k, 1, self.len)?;
        self.v[l].slice_set(v, 1, self.len)?;
        Ok((self.k[l].narrow(1, 0, self.len + t)?, self.v[l].narrow(1, 0, self.len + t)?))
    }
}

fn md<'a>(c: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    c.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata lacks {key}")))
}

impl Llama {
    /// Build from a GGUF's content and bytes (as read by [`super::read_gguf`]).
    pub fn from_gguf(content: &gguf_file::Content, bytes: &[u8], device: &Device) -> Result<Self> {
        let arch = md(content, "general.architecture")?.to_string()?.clone();
        if arch != "llama" {
            candle_core::bail!("architecture `{arch}` is not llama");
        }
        let u = |k: &str| md(content, k).and_then(|v| v.to_u32()).map(|v| v as usize);
        let n_head = u("llama.attention.head_count")?;
        let hidden = u("llama.embedding_length")?;
        let head_dim = hidden / n_head;
        let mut reader = Cursor::new(bytes);
        let mut tensor = |name: &str| content.tensor(&mut reader, name, device);
        let embed_q = tensor("token_embd.weight")?;
        let vocab = embed_q.shape().dims()[0];
        let config = Config {
            n_layer: u("llama.block_count")?,
            n_head,
            n_kv_head: u("llama.attention.head_count_kv").unwrap_or(n_head),
            head_dim,
            hidden,
            vocab,
            context: u("llama.context_length").unwrap_or(4096),
            rms_eps: md(content, "llama.attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_base: md(content, "llama.rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(1e4),
            rope_dim: u("llama.rope.dimension_count").unwrap_or(head_dim),
        };
        if config.rope_dim != head_dim || n_head % config.n_kv_head != 0 {
            candle_core::bail!("unsupported head layout {config:?}");
        }
        let embed = embed_q.dequantize(device)?;
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        let output = match tensor("output.weight") {
            Ok(t) => t,
            Err(_) => embed_q,
        };
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let mut w = |n: &str| tensor(&format!("blk.{i}.{n}.weight"));
            layers.push(Layer {
                attn_norm: w("attn_norm")?.dequantize(device)?,
                qkv: Fused::new(vec![w("attn_q")?, w("attn_k")?, w("attn_v")?])?,
                wo: QMatMul::from_qtensor(w("attn_output")?)?,
                ffn_norm: w("ffn_norm")?.dequantize(device)?,
                gate_up: Fused::new(vec![w("ffn_gate")?, w("ffn_up")?])?,
                down: QMatMul::from_qtensor(w("ffn_down")?)?,
            });
        }
        // RoPE tables for every position of the context.
        let half = config.rope_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / config.rope_base.powf(2.0 * i as f32 / config.rope_dim as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let pos = Tensor::arange(0u32, config.context as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((config.context, 1))?;
        let angles = pos.broadcast_mul(&inv)?;
        Ok(Llama {
            config,
            embed,
            layers,
            norm,
            output: QMatMul::from_qtensor(output)?,
            cos: angles.cos()?,
            sin: angles.sin()?,
            device: device.clone(),
        })
    }

    /// An empty cache for a sequence of at most `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<SeqCache> {
        let c = &self.config;
        let capacity = capacity.min(c.context);
        let zeros = || Tensor::zeros((c.n_kv_head, capacity, c.head_dim), DType::F32, &self.device);
        Ok(SeqCache {
            k: (0..c.n_layer).map(|_| zeros()).collect::<Result<_>>()?,
            v: (0..c.n_layer).map(|_| zeros()).collect::<Result<_>>()?,
            len: 0,
            capacity,
        })
    }

    /// Feed `tokens` to one sequence (a prompt, or any continuation); return the logits after
    /// the last one (`[vocab]`).
    pub fn prefill(&self, cache: &mut SeqCache, tokens: &[u32]) -> Result<Tensor> {
        let t = tokens.len();
        let start = cache.len;
        if start + t > self.config.context {
            candle_core::bail!(
                "{} positions exceed the context of {}",
                start + t,
                self.config.context
            );
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let cos = self.cos.narrow(0, start, t)?;
        let sin = self.sin.narrow(0, start, t)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.config.rms_eps as f32)?;
            let (q, k, v) = self.qkv_rotated(layer, &h, &cos, &sin)?;
            // q: [n_head, t, hd]; k, v: [n_kv, t, hd]
            let (k_all, v_all) = cache.append(l, &k, &v)?;
            let y = self.attend(&q, &k_all, &v_all, start)?; // [t, n_head * hd]
            x = self.finish_layer(layer, &x, &y)?;
        }
        cache.len += t;
        let last = x.narrow(0, t - 1, 1)?;
        self.logits(&last)?.squeeze(0)
    }

    /// Advance every sequence of `batch` by its one token in a single forward pass; return the
    /// logits `[batch, vocab]` (row `i` for `batch[i]`).
    pub fn decode(&self, batch: &mut [(&mut SeqCache, u32)]) -> Result<Tensor> {
        let c = &self.config;
        let b = batch.len();
        let positions: Vec<u32> = batch.iter().map(|(c, _)| c.len as u32).collect();
        if let Some(full) = batch.iter().find(|(c, _)| c.len >= c.capacity) {
            candle_core::bail!("KV cache full at {} positions", full.0.len);
        }
        let tokens: Vec<u32> = batch.iter().map(|(_, t)| *t).collect();
        let ids = Tensor::new(tokens.as_slice(), &self.device)?;
        let pos = Tensor::new(positions.as_slice(), &self.device)?;
        // One row of angles per sequence: [b, 1, hd/2], each rotating its own position.
        let cos = self.cos.index_select(&pos, 0)?.unsqueeze(1)?;
        let sin = self.sin.index_select(&pos, 0)?.unsqueeze(1)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.rms_eps as f32)?;
            let mut out = layer.qkv.forward(&h)?.into_iter();
            let (Some(q), Some(k), Some(v)) = (out.next(), out.next(), out.next()) else {
                candle_core::bail!("q/k/v projection returned too few outputs");
            };
            // [b, heads, 1, hd]: sequence i's heads are one contiguous block.
            let q = q.reshape((b, c.n_head, 1, c.head_dim))?;
            let k = k.reshape((b, c.n_kv_head, 1, c.head_dim))?;
            let q = candle_nn::rotary_emb::rope_i(&q.contiguous()?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k.contiguous()?, &cos, &sin)?;
            let v = v.contiguous()?.reshape((b, c.n_kv_head, 1, c.head_dim))?;
            let mut ys = Vec::with_capacity(b);
            for (i, (cache, _)) in batch.iter_mut().enumerate() {
                let (k_all, v_all) = cache.append(l, &k.get(i)?, &v.get(i)?)?;
                ys.push(self.attend(&q.get(i)?, &k_all, &v_all, cache.len)?);
            }
            let y = Tensor::cat(&ys, 0)?;
            x = self.finish_layer(layer, &x, &y)?;
        }
        for (cache, _) in batch.iter_mut() {
            cache.len += 1;
        }
        self.logits(&x)
    }

    /// q, k, v of `h` (`[t, hidden]`), rotated with `cos`/`sin` (`[t, hd/2]`): q as
    /// `[n_head, t, hd]`, k and v as `[n_kv, t, hd]`.
    fn qkv_rotated(
        &self,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let t = h.dim(0)?;
        let mut out = layer.qkv.forward(h)?.into_iter();
        let (Some(q), Some(k), Some(v)) = (out.next(), out.next(), out.next()) else {
            candle_core::bail!("q/k/v projection returned too few outputs");
        };
        let heads = |x: Tensor, n: usize| -> Result<Tensor> {
            x.reshape((t, n, c.head_dim))?.transpose(0, 1)?.contiguous()
        };
        let rope = |x: Tensor| -> Result<Tensor> {
            candle_nn::rotary_emb::rope_i(&x.unsqueeze(0)?, cos, sin)?.squeeze(0)
        };
        let q = rope(heads(q, c.n_head)?)?;
        let k = rope(heads(k, c.n_kv_head)?)?;
        let v = heads(v, c.n_kv_head)?;
        Ok((q, k, v))
    }

    /// Causal attention of `q` (`[n_head, t, hd]`, positions `start..start+t`) over the cached
    /// `k`, `v` (`[n_kv, start+t, hd]`); returns `[t, n_head * hd]`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, start: usize) -> Result<Tensor> {
        let c = &self.config;
        let t = q.dim(1)?;
        let kv_len = k.dim(1)?;
        let rep = c.n_head / c.n_kv_head;
        // Query heads sharing a key/value head form one [rep * t, hd] matrix.
        let qg = q.reshape((c.n_kv_head, rep * t, c.head_dim))?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let att = (qg.matmul(&k.t()?)? * scale)?; // [n_kv, rep * t, kv_len]
        let att =
            if t > 1 {
                // Query row s (position start + s) sees keys 0..=start + s.
                let mask: Vec<u8> = (0..t)
                    .flat_map(|s| (0..kv_len).map(move |j| u8::from(j > start + s)))
                    .collect();
                let mask = Tensor::from_vec(mask, (1, 1, t, kv_len), &self.device)?
                    .broadcast_as((c.n_kv_head, rep, t, kv_len))?;
                let neg = Tensor::new(f32::NEG_INFINITY, &self.device)?.broadcast_as((
                    c.n_kv_head,
                    rep,
                    t,
                    kv_len,
                ))?;
                let att = att.reshape((c.n_kv_head, rep, t, kv_len))?;
                mask.where_cond(&neg, &att)?.reshape((c.n_kv_head, rep * t, kv_len))?
            } else {
                att
            };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(v)?; // [n_kv, rep * t, hd]
        if t == 1 {
            return y.reshape((1, c.n_head * c.head_dim));
        }
        y.reshape((c.n_head, t, c.head_dim))?.transpose(0, 1)?.reshape((t, c.n_head * c.head_dim))
    }

    /// Output projection and residual, then the MLP block and its residual.
    fn finish_layer(&self, layer: &Layer, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let x = (x + layer.wo.forward(y)?)?;
        let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.config.rms_eps as f32)?;
        let mut gu = layer.gate_up.forward(&h)?.into_iter();
        let (Some(g), Some(u)) = (gu.next(), gu.next()) else {
            candle_core::bail!("gate/up projection returned too few outputs");
        };
        let m = (candle_nn::ops::silu(&g)? * u)?;
        x + layer.down.forward(&m)?
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let h = candle_nn::ops::rms_norm(x, &self.norm, self.config.rms_eps as f32)?;
        self.output.forward(&h)
    }

    /// The quantization of the largest weight matrix (for logs).
    pub fn weight_format(&self) -> Option<GgmlDType> {
        match &self.layers.first()?.down {
            QMatMul::QTensor(t) => Some(t.dtype()),
            _ => None,
        }
    }
}
