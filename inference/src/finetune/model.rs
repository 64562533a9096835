//! The training model: the served llama's forward pass on candle tensors with autograd, base
//! weights dequantized to f32 and frozen (plain tensors), a LoRA pair (`Var`s) on each targeted
//! projection.
//!
//! It computes the serving pass's function ([`crate::llama`]): the same GGUF tensors as stored
//! (q/k rows in the order GGUF llama files keep them, rotated with the interleaved rotary
//! embedding the serving pass applies), RMSNorm, grouped-query causal attention, SiLU-gated MLP,
//! output norm and tied or separate head, with the same rotary tables. So `B·A` is learnt in the
//! layout of the stored matrix and lands on the right rows when merged into it
//! ([`super::merge`]).

use super::{
    adapter::{Adapter, AdapterError, LoraPair},
    dataset::Example,
    lora::{LoraConfig, Target},
    ops,
    rng::SplitMix64,
};
use crate::{llama::Config, read_gguf, LoadError, WeightFormat};
use candle_core::{quantized::gguf_file, DType, Device, Result, Tensor, Var};
use std::{io::Cursor, path::Path};

/// The seed stream of the `A` initialisation.
const INIT_STREAM: u64 = 1;

/// One layer's frozen weights.
struct Layer {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    /// The projections, indexed by [`Target::index`], `[out, in]` as stored.
    proj: Vec<Tensor>,
}

/// A llama model with trainable LoRA adapters.
pub struct LoraModel {
    config: Config,
    lora: LoraConfig,
    base_model_hash: [u8; 32],
    embed: Tensor,
    output: Tensor,
    norm: Tensor,
    layers: Vec<Layer>,
    /// `[context, head_dim / 2]`, as the serving pass builds them.
    cos: Tensor,
    sin: Tensor,
    /// Per layer and [`Target::index`]: `(A [rank, in], B [out, rank])` where targeted.
    pairs: Vec<Vec<Option<(Var, Var)>>>,
    device: Device,
}

impl LoraModel {
    /// Load the base GGUF at `path` (as stored) with fresh adapters: `B` zero, so the model
    /// starts as the base; `A` drawn from `seed`.
    pub fn load(
        path: &Path,
        lora: &LoraConfig,
        seed: u64,
        device: &Device,
    ) -> std::result::Result<Self, LoadError> {
        let loaded = read_gguf(path, WeightFormat::AsStored)?;
        Self::from_gguf(&loaded.content, &loaded.bytes, lora, seed, device).map_err(|e| {
            LoadError::Format { path: path.display().to_string(), reason: e.to_string() }
        })
    }

    /// [`Self::load`] from a GGUF's content and its file bytes (whose hash names the base).
    pub fn from_gguf(
        content: &gguf_file::Content,
        bytes: &[u8],
        lora: &LoraConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        lora.validate().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let config = Config::from_gguf(content)?;
        let mut reader = Cursor::new(bytes);
        let mut tensor = |name: &str| -> Result<Tensor> {
            content
                .tensor(&mut reader, name, &Device::Cpu)?
                .dequantize(device)?
                .to_dtype(DType::F32)
        };
        let embed = tensor("token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            tensor("output.weight")?
        } else {
            embed.clone()
        };
        let norm = tensor("output_norm.weight")?;
        let mut layers = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            let proj = Target::ALL
                .iter()
                .map(|t| tensor(&t.weight_name(l)))
                .collect::<Result<Vec<_>>>()?;
            layers.push(Layer {
                attn_norm: tensor(&format!("blk.{l}.attn_norm.weight"))?,
                ffn_norm: tensor(&format!("blk.{l}.ffn_norm.weight"))?,
                proj,
            });
        }
        // The serving pass's rotary tables.
        let (cos, sin) = crate::llama::rope_tables(&config, device)?;

        // A uniform in ±1/√in (the usual LoRA initialisation), from the seed, layer by layer in
        // target order; B zero.
        let mut rng = SplitMix64::new(seed, INIT_STREAM);
        let mut pairs = Vec::with_capacity(config.n_layer);
        for layer in &layers {
            let mut row = vec![None; Target::ALL.len()];
            for &t in &lora.targets {
                let (out_dim, in_dim) = layer.proj[t.index()].dims2()?;
                let bound = 1.0 / (in_dim as f32).sqrt();
                let a: Vec<f32> =
                    (0..lora.rank * in_dim).map(|_| rng.next_signed_unit() * bound).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (lora.rank, in_dim), device)?)?;
                let b = Var::zeros((out_dim, lora.rank), DType::F32, device)?;
                row[t.index()] = Some((a, b));
            }
            pairs.push(row);
        }
        Ok(LoraModel {
            config,
            lora: lora.clone(),
            base_model_hash: super::model_hash(bytes),
            embed,
            output,
            norm,
            layers,
            cos,
            sin,
            pairs,
            device: device.clone(),
        })
    }

    /// The base model of `content`/`bytes` with `adapter`'s trained pairs (refused if the
    /// adapter was trained on another base file or does not fit it).
    pub fn with_adapter(
        content: &gguf_file::Content,
        bytes: &[u8],
        adapter: &Adapter,
        device: &Device,
    ) -> std::result::Result<Self, AdapterError> {
        adapter.check_shapes(content)?;
        let model = Self::from_gguf(content, bytes, &adapter.config, 0, device)
            .map_err(|e| AdapterError::Mismatch(e.to_string()))?;
        if model.base_model_hash != adapter.base_model_hash {
            return Err(AdapterError::Mismatch("trained on another base file".into()));
        }
        for p in &adapter.pairs {
            let set = |v: &Var, data: &[f32], shape: (usize, usize)| -> Result<()> {
                v.set(&Tensor::from_slice(data, shape, device)?)
            };
            if let Some(Some((a, b))) =
                model.pairs.get(p.layer).and_then(|r| r.get(p.target.index()))
            {
                set(a, &p.a, (adapter.config.rank, p.in_dim))
                    .and_then(|_| set(b, &p.b, (p.out_dim, adapter.config.rank)))
                    .map_err(|e| AdapterError::Mismatch(e.to_string()))?;
            }
        }
        Ok(model)
    }

    /// The base model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The adapters' configuration.
    pub fn lora_config(&self) -> &LoraConfig {
        &self.lora
    }

    /// blake2-256 of the base GGUF file.
    pub fn base_model_hash(&self) -> [u8; 32] {
        self.base_model_hash
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every trainable tensor (each pair's `A` then `B`, layer by layer in target order).
    pub fn vars(&self) -> Vec<Var> {
        self.pairs.iter().flatten().flatten().flat_map(|(a, b)| [a.clone(), b.clone()]).collect()
    }

    /// The adapter as it stands (its values copied to host memory).
    pub fn to_adapter(&self) -> Result<Adapter> {
        let mut out = Vec::new();
        for (layer, row) in self.pairs.iter().enumerate() {
            for &target in &self.lora.targets {
                let Some((a, b)) = &row[target.index()] else { continue };
                let (out_dim, in_dim) = self.layers[layer].proj[target.index()].dims2()?;
                let host =
                    |v: &Var| v.as_tensor().flatten_all()?.to_device(&Device::Cpu)?.to_vec1();
                out.push(LoraPair { layer, target, out_dim, in_dim, a: host(a)?, b: host(b)? });
            }
        }
        Ok(Adapter {
            config: self.lora.clone(),
            base_model_hash: self.base_model_hash,
            n_layer: self.config.n_layer,
            pairs: out,
        })
    }

    /// `x · Wᵀ`, plus `scale · (x · Aᵀ) · Bᵀ` where targeted, for projection `t` of layer `l`.
    fn project(&self, l: usize, t: Target, x: &Tensor) -> Result<Tensor> {
        let base = ops::frozen_matmul(x, &self.layers[l].proj[t.index()])?;
        match &self.pairs[l][t.index()] {
            Some((a, b)) => {
                let delta = x.matmul(&a.as_tensor().t()?)?.matmul(&b.as_tensor().t()?)?;
                base + (delta * self.lora.scale() as f64)?
            }
            None => Ok(base),
        }
    }

    /// The final hidden states (after the output norm) of every position of `tokens` fed from
    /// an empty context, `[t, hidden]`.
    fn hidden(&self, tokens: &[u32]) -> Result<Tensor> {
        let c = &self.config;
        let t = tokens.len();
        if t == 0 || t > c.context {
            candle_core::bail!("{t} positions outside 1..={} of the context", c.context);
        }
        if let Some(bad) = tokens.iter().find(|x| **x as usize >= c.vocab) {
            candle_core::bail!("token {bad} outside the vocabulary of {}", c.vocab);
        }
        let (hd, rep) = (c.head_dim, c.n_head / c.n_kv_head);
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        // Position s sees positions 0..=s.
        let mask: Vec<f32> = (0..t)
            .flat_map(|s| (0..t).map(move |j| if j > s { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &self.device)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut x = self.embed.index_select(&Tensor::new(tokens, &self.device)?, 0)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &layer.attn_norm, c.rms_eps)?;
            let heads = |y: Tensor, n: usize| -> Result<Tensor> {
                y.reshape((t, n, hd))?.transpose(0, 1)?.contiguous()
            };
            let q = heads(self.project(l, Target::Q, &h)?, c.n_head)?;
            let k = heads(self.project(l, Target::K, &h)?, c.n_kv_head)?;
            let v = heads(self.project(l, Target::V, &h)?, c.n_kv_head)?;
            let q = ops::rope_interleaved(&q, &cos, &sin)?;
            let k = ops::rope_interleaved(&k, &cos, &sin)?;
            // Query heads sharing a key/value head form one [rep * t, hd] matrix.
            let qg = q.reshape((c.n_kv_head, rep * t, hd))?;
            let att = (qg.matmul(&k.t()?)? * scale)?.reshape((c.n_kv_head, rep, t, t))?;
            let att = ops::softmax_last_dim(&att.broadcast_add(&mask)?)?;
            let y = att.reshape((c.n_kv_head, rep * t, t))?.matmul(&v)?;
            let y = y.reshape((c.n_head, t, hd))?.transpose(0, 1)?.reshape((t, c.n_head * hd))?;
            x = (x + self.project(l, Target::O, &y)?)?;
            let h = ops::rms_norm(&x, &layer.ffn_norm, c.rms_eps)?;
            let g = self.project(l, Target::Gate, &h)?;
            let u = self.project(l, Target::Up, &h)?;
            x = (&x + self.project(l, Target::Down, &(g.silu()? * u)?)?)?;
        }
        ops::rms_norm(&x, &self.norm, c.rms_eps)
    }

    /// The logits after every position of `tokens` fed from an empty context, `[t, vocab]`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        ops::frozen_matmul(&self.hidden(tokens)?, &self.output)
    }

    /// The summed negative log-likelihood of `example`'s masked tokens, each predicted from the
    /// positions before it (a scalar with a graph back to the adapters), and how many there are.
    pub fn nll(&self, example: &Example) -> Result<(Tensor, usize)> {
        let n = example.tokens.len();
        if example.mask.len() != n {
            candle_core::bail!("mask of {} for {n} tokens", example.mask.len());
        }
        // Row i predicts token i + 1; only rows whose next token is learnt go through the head.
        let (rows, targets): (Vec<u32>, Vec<u32>) = (1..n)
            .filter(|&i| example.mask[i])
            .map(|i| ((i - 1) as u32, example.tokens[i]))
            .unzip();
        if rows.is_empty() {
            candle_core::bail!("example of line {} has no learnt token", example.line);
        }
        let hidden = self.hidden(&example.tokens)?;
        let picked = hidden.index_select(&Tensor::new(rows.as_slice(), &self.device)?, 0)?;
        let logits = ops::frozen_matmul(&picked, &self.output)?;
        let targets = Tensor::new(targets.as_slice(), &self.device)?;
        Ok((ops::nll_sum(&logits, &targets)?, rows.len()))
    }
}
