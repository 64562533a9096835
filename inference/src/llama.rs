//! A llama-architecture transformer over GGUF weights, shaped for serving many users at once:
//!
//! - **Batched passes**: one forward pass feeds every active sequence — one token of each
//!   sequence generating, the whole prompt of each that just arrived — so the weight matrices are
//!   multiplied against all their rows at once and each weight is read once per pass.
//! - **Plain vectors on the CPU**: there a pass is a few loops per layer (norms, rotary angles,
//!   the KV cache, attention split per row and head over the thread team) around our matrix
//!   kernels (`qmatmul`), not some twenty tensor operations per layer and sequence. Other devices
//!   run candle tensor operations.
//! - **Fused projections**: q/k/v and gate/up are concatenated at load (their quantized rows are
//!   simply appended, bit for bit), so a layer runs four weight matmuls instead of seven.
//! - **Per-sequence KV caches** allocated once at the exact size the request can reach (prompt
//!   plus `max_tokens`), written in place.
//! - Grouped-query attention without repeating the key/value heads.
//!
//! The arithmetic is the reference llama forward pass (RMSNorm, interleaved RoPE for GGUF llama
//! files, SiLU-gated MLP, tied or separate output head); `tests/tiny_gguf.rs` holds it to candle's
//! reference implementation on a generated model and on the real SmolLM2.

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

impl Config {
    /// The hyper-parameters of a llama-architecture GGUF, from its metadata and the shape of its
    /// embedding table (the vocabulary); refuses head layouts the forward pass does not run.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let arch = md(content, "general.architecture")?.to_string()?.clone();
        if arch != "llama" {
            candle_core::bail!("architecture `{arch}` is not llama");
        }
        let u = |k: &str| md(content, k).and_then(|v| v.to_u32()).map(|v| v as usize);
        let n_head = u("llama.attention.head_count")?;
        let hidden = u("llama.embedding_length")?;
        if n_head == 0 || hidden % n_head != 0 {
            candle_core::bail!("{hidden} hidden dimensions do not split into {n_head} heads");
        }
        let head_dim = hidden / n_head;
        let vocab = content
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|t| t.shape.dims().first().copied())
            .ok_or_else(|| candle_core::Error::Msg("GGUF lacks token_embd.weight".into()))?;
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
        if config.rope_dim != head_dim || config.n_kv_head == 0 || n_head % config.n_kv_head != 0 {
            candle_core::bail!("unsupported head layout {config:?}");
        }
        Ok(config)
    }
}

/// Which matrix kernels a CPU model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Ours where the CPU and the weight format allow (`qmatmul`), else candle's.
    #[default]
    Fastest,
    /// candle's quantized matmul everywhere: an independent implementation of the same
    /// arithmetic, which validators and tests compare ours against.
    Candle,
}

/// A weight matrix: our kernels on CPUs that run them (q4_1, q8_0), else candle's quantized
/// matmul.
enum Mat {
    Ours(super::qmatmul::QMatrix),
    /// candle's matrix and its input width.
    Candle(QMatMul, usize),
}

impl Mat {
    /// `t` (in host memory) as a matrix on `device`.
    fn new(t: QTensor, device: &Device, kernels: Kernels) -> Result<Self> {
        if device.is_cpu() && kernels == Kernels::Fastest {
            if let Some(m) = super::qmatmul::QMatrix::new(&t)? {
                return Ok(Mat::Ours(m));
            }
        }
        let cols = t.shape().dims().get(1).copied().unwrap_or(0);
        Ok(Mat::Candle(QMatMul::from_qtensor(to_device(t, device)?)?, cols))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mat::Ours(m) => m.forward(x),
            Mat::Candle(m, _) => m.forward(x),
        }
    }

    /// Rows of inputs in host memory times the matrix: rows of outputs (CPU only).
    fn forward_host(&self, xs: &[f32]) -> Result<Vec<f32>> {
        match self {
            Mat::Ours(m) => m.forward_rows(xs),
            Mat::Candle(m, cols) => {
                let x = Tensor::from_slice(xs, (xs.len() / cols.max(&1), *cols), &Device::Cpu)?;
                m.forward(&x)?.flatten_all()?.to_vec1()
            }
        }
    }
}

/// Output rows of several projections stored as one matrix.
struct Fused {
    parts: Vec<Mat>,
    /// Output width of each logical projection.
    widths: Vec<usize>,
}

impl Fused {
    /// Concatenate `ts` (each `[out_i, in]`, read into host memory) into one `[Σ out_i, in]`
    /// matrix on `device` when they share a format; otherwise move them there apart.
    fn new(ts: Vec<QTensor>, device: &Device, kernels: Kernels) -> Result<Self> {
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
            return Ok(Fused { parts: vec![Mat::new(fused, device, kernels)?], widths });
        }
        let parts = ts.into_iter().map(|t| Mat::new(t, device, kernels)).collect::<Result<_>>()?;
        Ok(Fused { parts, widths })
    }

    /// Rows of inputs in host memory: rows of all the projections side by side (`[n, Σ w]`).
    fn forward_host(&self, xs: &[f32], n: usize) -> Result<Vec<f32>> {
        if self.parts.len() == 1 {
            return self.parts[0].forward_host(xs);
        }
        let outs = self.parts.iter().map(|p| p.forward_host(xs)).collect::<Result<Vec<_>>>()?;
        let total: usize = self.widths.iter().sum();
        let mut rows = Vec::with_capacity(n * total);
        for i in 0..n {
            for (o, &w) in outs.iter().zip(&self.widths) {
                rows.extend_from_slice(&o[i * w..(i + 1) * w]);
            }
        }
        Ok(rows)
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
    wo: Mat,
    ffn_norm: Tensor,
    gate_up: Fused,
    down: Mat,
}

/// The model's weights (shared by every sequence).
pub struct Llama {
    pub config: Config,
    /// The embedding table on the device; on the CPU only the host copy is kept.
    embed: Option<Tensor>,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Mat,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    /// On the CPU: host copies for the decode path that runs without tensor operations.
    host: Option<HostParts>,
}

/// What [`Llama::decode_host`] reads besides the weight matrices: the embedding table, the norm
/// weights and the rotary tables, as plain vectors.
struct HostParts {
    /// `[vocab, hidden]`.
    embed: Vec<f32>,
    attn_norm: Vec<Vec<f32>>,
    ffn_norm: Vec<Vec<f32>>,
    norm: Vec<f32>,
    /// `[context, head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// What one forward pass gives each sequence fed, for its last row.
pub struct StepOut {
    /// `[batch, vocab]` (row `i` for `batch[i]`).
    pub logits: Tensor,
    /// `[batch * hidden]`: the final hidden state (after the output norm) of each sequence's
    /// last row, the activations an activation proof commits to.
    pub hidden: Vec<f32>,
}

/// One sequence's key/value cache: per layer `[n_kv_head, capacity, head_dim]`, filled up to
/// `len` positions; in host memory on the CPU (read and written by the plain-vector path), as
/// tensors on other devices.
pub struct SeqCache {
    store: KvStore,
    len: usize,
    capacity: usize,
}

enum KvStore {
    Host { k: Vec<Vec<f32>>, v: Vec<Vec<f32>>, n_kv: usize, head_dim: usize },
    Device { k: Vec<Tensor>, v: Vec<Tensor> },
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

    /// Write `k`, `v` (`[n_kv, t, hd]`) of layer `l` at the current end of a device cache;
    /// return the whole cached keys and values including them.
    fn append(&mut self, l: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(1)?;
        if self.len + t > self.capacity {
            candle_core::bail!("KV cache full: {} + {t} > {}", self.len, self.capacity);
        }
        let len = self.len;
        match &mut self.store {
            KvStore::Device { k: ks, v: vs } => {
                ks[l].slice_set(k, 1, len)?;
                vs[l].slice_set(v, 1, len)?;
                Ok((ks[l].narrow(1, 0, len + t)?, vs[l].narrow(1, 0, len + t)?))
            }
            KvStore::Host { .. } => {
                candle_core::bail!("a host cache is fed by the plain-vector path only")
            }
        }
    }
}

/// `t` (in host memory) moved to `device`, its blocks unchanged.
fn to_device(t: QTensor, device: &Device) -> Result<QTensor> {
    if device.is_cpu() {
        return Ok(t);
    }
    let storage = QStorage::from_data(t.data()?, device, t.dtype())?;
    QTensor::new(storage, t.shape())
}

fn md<'a>(c: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    c.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata lacks {key}")))
}

/// The rotary tables (cos, sin) of every position of the context, `[context, rope_dim / 2]`:
/// what serving and fine-tuning both rotate with.
pub(crate) fn rope_tables(config: &Config, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = config.rope_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / config.rope_base.powf(2.0 * i as f32 / config.rope_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, half), device)?;
    let pos = Tensor::arange(0u32, config.context as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.context, 1))?;
    let angles = pos.broadcast_mul(&inv)?;
    Ok((angles.cos()?, angles.sin()?))
}

impl Llama {
    /// Build from a GGUF's content and bytes (as read by [`super::read_gguf`]).
    pub fn from_gguf(content: &gguf_file::Content, bytes: &[u8], device: &Device) -> Result<Self> {
        Self::from_gguf_with(content, bytes, device, Kernels::Fastest)
    }

    /// [`Self::from_gguf`] running `kernels` on the CPU.
    pub fn from_gguf_with(
        content: &gguf_file::Content,
        bytes: &[u8],
        device: &Device,
        kernels: Kernels,
    ) -> Result<Self> {
        let config = Config::from_gguf(content)?;
        let mut reader = Cursor::new(bytes);
        // Read into host memory: fusing concatenates blocks there before the upload.
        let mut tensor = |name: &str| content.tensor(&mut reader, name, &Device::Cpu);
        let embed_q = tensor("token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        let output = Mat::new(tensor("output.weight").unwrap_or(embed_q), device, kernels)?;
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let mut w = |n: &str| tensor(&format!("blk.{i}.{n}.weight"));
            layers.push(Layer {
                attn_norm: w("attn_norm")?.dequantize(device)?,
                qkv: Fused::new(vec![w("attn_q")?, w("attn_k")?, w("attn_v")?], device, kernels)?,
                wo: Mat::new(w("attn_output")?, device, kernels)?,
                ffn_norm: w("ffn_norm")?.dequantize(device)?,
                gate_up: Fused::new(vec![w("ffn_gate")?, w("ffn_up")?], device, kernels)?,
                down: Mat::new(w("ffn_down")?, device, kernels)?,
            });
        }
        // RoPE tables for every position of the context.
        let (cos, sin) = rope_tables(&config, device)?;
        let host = if device.is_cpu() {
            let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
            Some(HostParts {
                embed: flat(&embed)?,
                attn_norm: layers.iter().map(|l| flat(&l.attn_norm)).collect::<Result<_>>()?,
                ffn_norm: layers.iter().map(|l| flat(&l.ffn_norm)).collect::<Result<_>>()?,
                norm: flat(&norm)?,
                cos: flat(&cos)?,
                sin: flat(&sin)?,
            })
        } else {
            None
        };
        let embed = if host.is_some() { None } else { Some(embed) };
        Ok(Llama { config, embed, layers, norm, output, cos, sin, device: device.clone(), host })
    }

    /// An empty cache for a sequence of at most `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<SeqCache> {
        let c = &self.config;
        let capacity = capacity.min(c.context);
        let store = if self.host.is_some() {
            let zeros = || vec![0f32; c.n_kv_head * capacity * c.head_dim];
            KvStore::Host {
                k: (0..c.n_layer).map(|_| zeros()).collect(),
                v: (0..c.n_layer).map(|_| zeros()).collect(),
                n_kv: c.n_kv_head,
                head_dim: c.head_dim,
            }
        } else {
            let zeros =
                || Tensor::zeros((c.n_kv_head, capacity, c.head_dim), DType::F32, &self.device);
            KvStore::Device {
                k: (0..c.n_layer).map(|_| zeros()).collect::<Result<_>>()?,
                v: (0..c.n_layer).map(|_| zeros()).collect::<Result<_>>()?,
            }
        };
        Ok(SeqCache { store, len: 0, capacity })
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
        if let Some(host) = &self.host {
            return self.forward_host(host, &mut [(cache, tokens)])?.logits.squeeze(0);
        }
        let (logits, _) = self.prefill_device(cache, tokens)?;
        logits.squeeze(0)
    }

    /// [`Self::prefill`] on candle tensors: the logits (`[1, vocab]`) and the final hidden state
    /// (`[1, hidden]`) after the last token.
    fn prefill_device(&self, cache: &mut SeqCache, tokens: &[u32]) -> Result<(Tensor, Tensor)> {
        let x = self.layers_device(cache, tokens)?;
        let last = x.narrow(0, tokens.len() - 1, 1)?;
        self.head(&last)
    }

    /// Every layer over `tokens` appended to `cache` on candle tensors; the residual stream of
    /// every row (`[t, hidden]`).
    fn layers_device(&self, cache: &mut SeqCache, tokens: &[u32]) -> Result<Tensor> {
        let t = tokens.len();
        let start = cache.len;
        let cos = self.cos.narrow(0, start, t)?;
        let sin = self.sin.narrow(0, start, t)?;
        let mut x = self.embed_rows(tokens)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.config.rms_eps as f32)?;
            let (q, k, v) = self.qkv_rotated(layer, &h, &cos, &sin)?;
            // q: [n_head, t, hd]; k, v: [n_kv, t, hd]
            let (k_all, v_all) = cache.append(l, &k, &v)?;
            let y = self.attend(&q, &k_all, &v_all, start)?; // [t, n_head * hd]
            x = self.finish_layer(layer, &x, &y)?;
        }
        cache.len += t;
        Ok(x)
    }

    /// Feed every sequence of `batch` its tokens (a prompt, or the one token sampled last) and
    /// return the logits after each one's last token, `[batch, vocab]` (row `i` for `batch[i]`).
    /// On the CPU this is one forward pass whatever the mix; on other devices the prompts are
    /// fed one by one and the single tokens together.
    pub fn step(&self, batch: &mut [(&mut SeqCache, &[u32])]) -> Result<StepOut> {
        if let Some(host) = &self.host {
            return self.forward_host(host, batch);
        }
        let mut rows: Vec<Option<(Tensor, Tensor)>> = vec![None; batch.len()];
        let mut singles: Vec<(usize, &mut SeqCache, u32)> = Vec::new();
        for (i, (cache, tokens)) in batch.iter_mut().enumerate() {
            match tokens {
                [] => candle_core::bail!("no token to feed sequence {i}"),
                [t] => singles.push((i, &mut **cache, *t)),
                _ => rows[i] = Some(self.prefill_device(cache, tokens)?),
            }
        }
        if !singles.is_empty() {
            let at: Vec<usize> = singles.iter().map(|(i, _, _)| *i).collect();
            let mut decode: Vec<(&mut SeqCache, u32)> =
                singles.into_iter().map(|(_, c, t)| (c, t)).collect();
            let (logits, hidden) = self.decode_device(&mut decode)?;
            for (k, i) in at.into_iter().enumerate() {
                rows[i] = Some((logits.narrow(0, k, 1)?, hidden.narrow(0, k, 1)?));
            }
        }
        let (logits, hidden): (Vec<Tensor>, Vec<Tensor>) = rows
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| candle_core::Error::Msg("a sequence was fed no token".into()))?
            .into_iter()
            .unzip();
        let hidden = Tensor::cat(&hidden, 0)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(StepOut { logits: Tensor::cat(&logits, 0)?, hidden })
    }

    /// The final hidden state (after the output norm) of every position of `tokens` fed from
    /// an empty context, `[t * hidden]` row after row: one batched pass without the output
    /// head. What a validator recomputes to check an activation proof.
    pub fn hidden_states(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() || tokens.len() > self.config.context {
            candle_core::bail!(
                "{} positions outside 1..={} of the context",
                tokens.len(),
                self.config.context
            );
        }
        let mut cache = self.new_cache(tokens.len())?;
        if let Some(host) = &self.host {
            let x = self.layers_host(host, &mut [(&mut cache, tokens)])?;
            let mut normed = vec![0f32; x.len()];
            rms_norm_rows(&x, &host.norm, self.config.rms_eps as f32, &mut normed);
            return Ok(normed);
        }
        let x = self.layers_device(&mut cache, tokens)?;
        candle_nn::ops::rms_norm(&x, &self.norm, self.config.rms_eps as f32)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()
    }

    /// Advance every sequence of `batch` by its one token in a single forward pass; return the
    /// logits `[batch, vocab]` (row `i` for `batch[i]`).
    pub fn decode(&self, batch: &mut [(&mut SeqCache, u32)]) -> Result<Tensor> {
        if let Some(full) = batch.iter().find(|(c, _)| c.len >= c.capacity) {
            candle_core::bail!("KV cache full at {} positions", full.0.len);
        }
        if let Some(host) = &self.host {
            let tokens: Vec<[u32; 1]> = batch.iter().map(|(_, t)| [*t]).collect();
            let mut seqs: Vec<(&mut SeqCache, &[u32])> =
                batch.iter_mut().zip(&tokens).map(|((c, _), t)| (&mut **c, &t[..])).collect();
            return Ok(self.forward_host(host, &mut seqs)?.logits);
        }
        Ok(self.decode_device(batch)?.0)
    }

    /// [`Self::decode`] on candle tensors: the logits (`[batch, vocab]`) and the final hidden
    /// states (`[batch, hidden]`).
    fn decode_device(&self, batch: &mut [(&mut SeqCache, u32)]) -> Result<(Tensor, Tensor)> {
        let c = &self.config;
        let b = batch.len();
        let positions: Vec<u32> = batch.iter().map(|(c, _)| c.len as u32).collect();
        let tokens: Vec<u32> = batch.iter().map(|(_, t)| *t).collect();
        let pos = Tensor::new(positions.as_slice(), &self.device)?;
        // One row of angles per sequence: [b, 1, hd/2], each rotating its own position.
        let cos = self.cos.index_select(&pos, 0)?.unsqueeze(1)?;
        let sin = self.sin.index_select(&pos, 0)?.unsqueeze(1)?;
        let mut x = self.embed_rows(&tokens)?;
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
        self.head(&x)
    }

    /// The embeddings of `tokens` from the host table, row after row.
    fn embed_host(&self, h: &HostParts, tokens: &[u32]) -> Result<Vec<f32>> {
        let (vocab, d) = (self.config.vocab, self.config.hidden);
        let mut rows = Vec::with_capacity(tokens.len() * d);
        for t in tokens {
            let t = *t as usize;
            if t >= vocab {
                candle_core::bail!("token {t} outside the vocabulary of {vocab}");
            }
            rows.extend_from_slice(&h.embed[t * d..(t + 1) * d]);
        }
        Ok(rows)
    }

    /// The embeddings of `tokens` (`[t, hidden]`).
    fn embed_rows(&self, tokens: &[u32]) -> Result<Tensor> {
        let c = &self.config;
        if let Some(bad) = tokens.iter().find(|t| **t as usize >= c.vocab) {
            candle_core::bail!("token {bad} outside the vocabulary of {}", c.vocab);
        }
        match (&self.host, &self.embed) {
            (Some(h), _) => Tensor::from_vec(
                self.embed_host(h, tokens)?,
                (tokens.len(), c.hidden),
                &Device::Cpu,
            ),
            (None, Some(e)) => e.index_select(&Tensor::new(tokens, &self.device)?, 0),
            (None, None) => candle_core::bail!("no embedding table"),
        }
    }

    /// [`Self::decode`] and [`Self::prefill`] on the CPU, on plain vectors: the same arithmetic
    /// without a tensor operation per step (a decode step of a small model is otherwise
    /// dominated by the cost of dispatching and allocating for some twenty small operations per
    /// layer and sequence). Each sequence of `batch` is fed its tokens (one when decoding, a
    /// whole prompt when prefilling; the rows of all sequences go through every weight product
    /// together); returns the logits after each sequence's last token, `[batch, vocab]`. The
    /// weight products are the same matrices as the tensor path's.
    fn forward_host(
        &self,
        h: &HostParts,
        batch: &mut [(&mut SeqCache, &[u32])],
    ) -> Result<StepOut> {
        let (c, d) = (&self.config, self.config.hidden);
        let x = self.layers_host(h, batch)?;
        // Only each sequence's last row goes through the output head.
        let mut last = Vec::with_capacity(batch.len() * d);
        let mut at = 0;
        for (_, tokens) in batch.iter() {
            at += tokens.len();
            last.extend_from_slice(&x[(at - 1) * d..at * d]);
        }
        let b = batch.len();
        let mut hidden = vec![0f32; b * d];
        rms_norm_rows(&last, &h.norm, c.rms_eps as f32, &mut hidden);
        let logits = self.output.forward_host(&hidden)?;
        Ok(StepOut { logits: Tensor::from_vec(logits, (b, c.vocab), &Device::Cpu)?, hidden })
    }

    /// Every layer of [`Self::forward_host`]: feeds each sequence of `batch` its tokens and
    /// returns the residual stream of every row fed, `[rows, hidden]`, sequence after sequence.
    fn layers_host(
        &self,
        h: &HostParts,
        batch: &mut [(&mut SeqCache, &[u32])],
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (d, hd) = (c.hidden, c.head_dim);
        let (q_w, kv_w) = (c.n_head * hd, c.n_kv_head * hd);
        let width = q_w + 2 * kv_w;
        let eps = c.rms_eps as f32;
        // Row r of every activation matrix: token `rows[r].1` of sequence `rows[r].0`, at
        // position `rows[r].2`.
        let mut rows = Vec::new();
        for (i, (cache, tokens)) in batch.iter().enumerate() {
            if tokens.is_empty() {
                candle_core::bail!("no token to feed sequence {i}");
            }
            if cache.len + tokens.len() > cache.capacity {
                candle_core::bail!(
                    "KV cache full: {} + {} > {}",
                    cache.len,
                    tokens.len(),
                    cache.capacity
                );
            }
            rows.extend(tokens.iter().enumerate().map(|(t, tok)| (i, *tok, cache.len + t)));
        }
        let n = rows.len();
        let tokens: Vec<u32> = rows.iter().map(|r| r.1).collect();
        let mut x = self.embed_host(h, &tokens)?;
        let mut normed = vec![0f32; n * d];
        for (l, layer) in self.layers.iter().enumerate() {
            // This layer's cached keys and values were evicted by the weights streamed since the
            // last step: ask for them now, to arrive while the q/k/v product runs.
            for (cache, _) in batch.iter() {
                if let KvStore::Host { k, v, n_kv, head_dim } = &cache.store {
                    for h in 0..*n_kv {
                        let at = h * cache.capacity * head_dim;
                        super::simd::prefetch_l2(&k[l][at..at + cache.len * head_dim]);
                        super::simd::prefetch_l2(&v[l][at..at + cache.len * head_dim]);
                    }
                }
            }
            rms_norm_rows(&x, &h.attn_norm[l], eps, &mut normed);
            let mut qkv = layer.qkv.forward_host(&normed, n)?;
            // Rotate, and write every new key and value before any query reads them.
            for (row, &(i, _, pos)) in qkv.chunks_exact_mut(width).zip(&rows) {
                let (q, rest) = row.split_at_mut(q_w);
                let (k, v) = rest.split_at_mut(kv_w);
                rope_rows(q, hd, pos, h);
                rope_rows(k, hd, pos, h);
                let cache = &mut *batch[i].0;
                let cap = cache.capacity;
                let KvStore::Host { k: ks, v: vs, .. } = &mut cache.store else {
                    candle_core::bail!("a device cache given to the CPU decode path");
                };
                for kv in 0..c.n_kv_head {
                    let at = (kv * cap + pos) * hd;
                    ks[l][at..at + hd].copy_from_slice(&k[kv * hd..(kv + 1) * hd]);
                    vs[l][at..at + hd].copy_from_slice(&v[kv * hd..(kv + 1) * hd]);
                }
            }
            // Attention: one task per row and query head, spread over the team; the token at
            // position `pos` sees positions `0..=pos` (causal).
            let caches = batch
                .iter()
                .map(|(cache, _)| match &cache.store {
                    KvStore::Host { k, v, .. } => Ok((&k[l][..], &v[l][..], cache.capacity)),
                    KvStore::Device { .. } => {
                        candle_core::bail!("a device cache given to the CPU decode path")
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let mut y = vec![0f32; n * q_w];
            super::team::global().for_each_chunk_mut(&mut y, hd, &|task, out| {
                let (r, head) = (task / c.n_head, task % c.n_head);
                let (i, _, pos) = rows[r];
                let (k, v, cap) = caches[i];
                let q = &qkv[r * width + head * hd..r * width + (head + 1) * hd];
                attend_head(c, head, q, k, v, cap, pos + 1, out);
            });
            let o = layer.wo.forward_host(&y)?;
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            rms_norm_rows(&x, &h.ffn_norm[l], eps, &mut normed);
            let gu = layer.gate_up.forward_host(&normed, n)?;
            let ff = gu.len() / n / 2;
            let mut m = vec![0f32; n * ff];
            swiglu_rows(&gu, ff, &mut m);
            let down = layer.down.forward_host(&m)?;
            x.iter_mut().zip(&down).for_each(|(x, o)| *x += o);
        }
        for (cache, tokens) in batch.iter_mut() {
            cache.len += tokens.len();
        }
        Ok(x)
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

    /// The output norm and head: the final hidden states and the logits of `x`'s rows.
    fn head(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = candle_nn::ops::rms_norm(x, &self.norm, self.config.rms_eps as f32)?;
        let logits = self.output.forward(&h)?;
        Ok((logits, h))
    }

    /// The quantization of the largest weight matrix (for logs).
    pub fn weight_format(&self) -> Option<GgmlDType> {
        match &self.layers.first()?.down {
            Mat::Ours(m) => Some(m.dtype()),
            Mat::Candle(QMatMul::QTensor(t), _) => Some(t.dtype()),
            Mat::Candle(..) => None,
        }
    }
}

/// `e^x` within a few units in the last place (Cephes' single-precision polynomial), written so
/// the compiler vectorises it (libm's `expf` is a call per value); saturates below −87 and above
/// 88.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // x = n·ln 2 + r, |r| ≤ ln 2 / 2, with ln 2 split in two for an exact reduction.
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from its exponent bits (n is within −125..=127 after the clamp).
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

super::simd::multiversion! {
/// candle's RMSNorm of each row of `x` into `out`: `x / sqrt(mean(x²) + eps) · w`.
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = super::simd::dot(x, x) / d as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
            *o = v * scale * w;
        }
    }
}
}

/// Interleaved rotary embedding (`rope_i`, as GGUF llama files expect) of every head in `x`
/// (heads of `hd` values) at position `pos`.
fn rope_rows(x: &mut [f32], hd: usize, pos: usize, h: &HostParts) {
    let half = hd / 2;
    let (cos, sin) = (&h.cos[pos * half..(pos + 1) * half], &h.sin[pos * half..(pos + 1) * half]);
    for head in x.chunks_exact_mut(hd) {
        for (pair, (c, s)) in head.as_chunks_mut::<2>().0.iter_mut().zip(cos.iter().zip(sin)) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

super::simd::multiversion! {
/// Attention of one position's query head `head` (`q`, `head_dim` values) over the first `len`
/// cached positions (`[n_kv, cap, hd]` keys and values), written to `y` (`head_dim` values).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_head(
    c: &Config,
    head: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cap: usize,
    len: usize,
    y: &mut [f32],
) {
    let hd = c.head_dim;
    let rep = c.n_head / c.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    let base = (head / rep) * cap * hd;
    let keys = &k[base..base + len * hd];
    let values = &v[base..base + len * hd];
    let mut scores: Vec<f32> = keys.chunks_exact(hd).map(|key| super::simd::dot(q, key) * scale).collect();
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = exp(*s - max);
        total += *s;
    }
    y.iter_mut().for_each(|y| *y = 0.0);
    for (s, value) in scores.iter().zip(values.chunks_exact(hd)) {
        let p = s / total;
        y.iter_mut().zip(value).for_each(|(y, v)| *y += p * v);
    }
}
}

super::simd::multiversion! {
    /// SiLU-gated product of each row of `gu` (`[gate | up]`, two halves of `ff` values) into
    /// `out` (rows of `ff` values).
    pub(crate) fn swiglu_rows(gu: &[f32], ff: usize, out: &mut [f32]) {
        for (row, out) in gu.chunks_exact(2 * ff).zip(out.chunks_exact_mut(ff)) {
            let (g, u) = row.split_at(ff);
            for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut x = -90.0f32;
        while x < 90.0 {
            let (got, want) = (exp(x), x.clamp(-87.0, 88.0).exp());
            assert!((got - want).abs() <= want * 3e-7, "exp({x}) = {got}, libm {want}");
            x += 0.037;
        }
        assert_eq!(exp(0.0), 1.0);
    }
}
