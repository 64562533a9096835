//! The adapter file a fine-tuning job delivers: safetensors holding each targeted projection's
//! `A` (`blk.{i}.{target}.lora_a`, `[rank, in]`) and `B` (`blk.{i}.{target}.lora_b`,
//! `[out, rank]`) in f32, with metadata naming the format and its version, rank, alpha,
//! targets, layer count and the blake2-256 hash of the base GGUF it was trained on.
//!
//! Written byte for byte the same for the same adapter (metadata keys sorted, tensors in layer
//! then [`Target::ALL`] order, `A` before `B`), since its hash goes on chain. Read back as
//! untrusted input: size bounded, every tensor named, typed, shaped and placed as the base model
//! and the metadata require, nothing more, every value finite.

use super::lora::{LoraConfig, LoraConfigError, Target};
use candle_core::quantized::gguf_file;
use std::collections::BTreeMap;

/// The `format` metadata value of an adapter file.
pub const ADAPTER_FORMAT: &str = "compute-lora";
/// The `format_version` this code writes and reads.
pub const ADAPTER_FORMAT_VERSION: u32 = 1;
/// Longest safetensors header accepted (a 30-layer adapter's is about 30 kB).
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Bounds on an adapter file read from an untrusted source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterLimits {
    /// Largest file in bytes.
    pub max_bytes: usize,
    /// Largest rank.
    pub max_rank: usize,
}

impl Default for AdapterLimits {
    fn default() -> Self {
        AdapterLimits { max_bytes: 512 << 20, max_rank: LoraConfig::MAX_RANK }
    }
}

/// Why an adapter was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("adapter file of {bytes} bytes, more than the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("not an adapter file: {0}")]
    Format(String),
    #[error("adapter does not fit the base model: {0}")]
    Mismatch(String),
    #[error("adapter configuration: {0}")]
    Config(#[from] LoraConfigError),
}

/// One adapted projection: `W + scale · B·A`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// Layer index.
    pub layer: usize,
    /// Which projection of the layer.
    pub target: Target,
    /// Rows of `W` (output width).
    pub out_dim: usize,
    /// Columns of `W` (input width).
    pub in_dim: usize,
    /// `[rank, in_dim]`, row-major.
    pub a: Vec<f32>,
    /// `[out_dim, rank]`, row-major.
    pub b: Vec<f32>,
}

/// A trained LoRA adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    /// Rank, alpha and targets.
    pub config: LoraConfig,
    /// blake2-256 of the base GGUF file (the base service's `model_hash`).
    pub base_model_hash: [u8; 32],
    /// Layers of the base model.
    pub n_layer: usize,
    /// Every targeted projection of every layer, layer by layer in [`Target::ALL`] order.
    pub pairs: Vec<LoraPair>,
}

/// `(out, in)` of every projection of every layer of a llama GGUF, indexed by
/// [`Target::index`]; refuses a file that lacks one.
pub fn projection_shapes(
    content: &gguf_file::Content,
) -> Result<Vec<[(usize, usize); 7]>, AdapterError> {
    let n_layer = content
        .metadata
        .get("llama.block_count")
        .and_then(|v| v.to_u32().ok())
        .ok_or_else(|| AdapterError::Mismatch("base GGUF lacks llama.block_count".into()))?
        as usize;
    (0..n_layer)
        .map(|l| {
            let mut shapes = [(0, 0); 7];
            for t in Target::ALL {
                let name = t.weight_name(l);
                let info = content
                    .tensor_infos
                    .get(&name)
                    .ok_or_else(|| AdapterError::Mismatch(format!("base GGUF lacks {name}")))?;
                let &[out, inp] = info.shape.dims() else {
                    return Err(AdapterError::Mismatch(format!("{name} is not a matrix")));
                };
                shapes[t.index()] = (out, inp);
            }
            Ok(shapes)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl Adapter {
    /// The metadata written with the tensors.
    fn metadata(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("format", ADAPTER_FORMAT.to_string()),
            ("format_version", ADAPTER_FORMAT_VERSION.to_string()),
            ("architecture", "llama".to_string()),
            ("rank", self.config.rank.to_string()),
            ("alpha", self.config.alpha.to_string()),
            ("targets", self.config.targets_list()),
            ("n_layer", self.n_layer.to_string()),
            ("base_model_hash", hex(&self.base_model_hash)),
        ])
    }

    /// The adapter file's bytes (safetensors; the same bytes for the same adapter).
    pub fn to_safetensors(&self) -> Vec<u8> {
        let md: Vec<String> = self
            .metadata()
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
            .collect();
        let mut header = format!("{{\"__metadata__\":{{{}}}", md.join(","));
        let mut offset = 0usize;
        let rank = self.config.rank;
        for p in &self.pairs {
            for (kind, shape, len) in
                [("a", [rank, p.in_dim], p.a.len()), ("b", [p.out_dim, rank], p.b.len())]
            {
                let name = format!("blk.{}.{}.lora_{kind}", p.layer, p.target.gguf_name());
                header.push_str(&format!(
                    ",{}:{{\"dtype\":\"F32\",\"shape\":[{},{}],\"data_offsets\":[{},{}]}}",
                    json_str(&name),
                    shape[0],
                    shape[1],
                    offset,
                    offset + 4 * len
                ));
                offset += 4 * len;
            }
        }
        header.push('}');
        // The data starts 8-byte aligned, the header padded with spaces (as the format asks).
        while (8 + header.len()) % 8 != 0 {
            header.push(' ');
        }
        let mut out = Vec::with_capacity(8 + header.len() + offset);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for p in &self.pairs {
            for v in p.a.iter().chain(&p.b) {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Read an adapter file, checking it against the base model it is to be applied to (its
    /// layer count and projection shapes; the base file's hash is checked where the adapter is
    /// merged, [`super::merge`]).
    pub fn from_safetensors(
        bytes: &[u8],
        base: &gguf_file::Content,
        limits: &AdapterLimits,
    ) -> Result<Self, AdapterError> {
        let bad = |s: String| AdapterError::Format(s);
        if bytes.len() > limits.max_bytes {
            return Err(AdapterError::TooLarge { bytes: bytes.len(), max: limits.max_bytes });
        }
        let (len, rest) = bytes.split_first_chunk::<8>().ok_or_else(|| bad("truncated".into()))?;
        let n = u64::from_le_bytes(*len);
        if n > MAX_HEADER_BYTES || n as usize > rest.len() {
            return Err(bad(format!("header of {n} bytes in a file of {}", bytes.len())));
        }
        let (header, data) = rest.split_at(n as usize);
        let header = std::str::from_utf8(header).map_err(|e| bad(format!("header: {e}")))?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(header).map_err(|e| bad(format!("header: {e}")))?;
        let md = header
            .get("__metadata__")
            .and_then(|v| v.as_object())
            .ok_or_else(|| bad("no __metadata__".into()))?;
        let field = |k: &str| -> Result<&str, AdapterError> {
            md.get(k).and_then(|v| v.as_str()).ok_or_else(|| bad(format!("no metadata `{k}`")))
        };
        let number = |k: &str| -> Result<usize, AdapterError> {
            field(k)?.parse().map_err(|_| bad(format!("metadata `{k}` is not a count")))
        };
        if field("format")? != ADAPTER_FORMAT {
            return Err(bad(format!("format `{}`, not `{ADAPTER_FORMAT}`", field("format")?)));
        }
        let version = number("format_version")?;
        if version != ADAPTER_FORMAT_VERSION as usize {
            return Err(bad(format!("format version {version}, this code reads 1")));
        }
        let rank = number("rank")?;
        if rank > limits.max_rank {
            return Err(LoraConfigError::Rank { rank, max: limits.max_rank }.into());
        }
        let alpha: f32 =
            field("alpha")?.parse().map_err(|_| bad("metadata `alpha` is not a number".into()))?;
        let targets = LoraConfig::parse_targets(field("targets")?)?;
        let config = LoraConfig::new(rank, alpha, &targets)?;
        if config.targets_list() != field("targets")? {
            return Err(bad("targets not listed once each in canonical order".into()));
        }
        let base_model_hash = unhex32(field("base_model_hash")?)
            .ok_or_else(|| bad("metadata `base_model_hash` is not 32 bytes of hex".into()))?;
        let n_layer = number("n_layer")?;
        let shapes = projection_shapes(base)?;
        if n_layer != shapes.len() {
            return Err(AdapterError::Mismatch(format!(
                "{n_layer} layers, the base model has {}",
                shapes.len()
            )));
        }
        let expected = n_layer * config.targets.len() * 2;
        if header.len() != expected + 1 {
            return Err(bad(format!("{} tensors, expected {expected}", header.len() - 1)));
        }
        let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(expected);
        let mut read = |name: String, rows: usize, cols: usize| -> Result<Vec<f32>, AdapterError> {
            let info = header.get(&name).ok_or_else(|| bad(format!("no tensor {name}")))?;
            if info.get("dtype").and_then(|v| v.as_str()) != Some("F32") {
                return Err(bad(format!("{name} is not F32")));
            }
            let shape: Option<Vec<u64>> = info
                .get("shape")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect());
            if shape != Some(vec![rows as u64, cols as u64]) {
                return Err(AdapterError::Mismatch(format!(
                    "{name} has shape {:?}, the base model needs [{rows}, {cols}]",
                    info.get("shape")
                )));
            }
            let offsets: Option<Vec<u64>> = info
                .get("data_offsets")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect());
            let Some(&[start, end]) = offsets.as_deref() else {
                return Err(bad(format!("{name}: bad data_offsets")));
            };
            let (start, end) = (start as usize, end as usize);
            if start > end || end > data.len() || end - start != rows * cols * 4 {
                return Err(bad(format!("{name}: data_offsets [{start}, {end}] do not fit")));
            }
            ranges.push((start, end));
            let values: Vec<f32> = data[start..end]
                .as_chunks::<4>()
                .0
                .iter()
                .map(|c| f32::from_le_bytes(*c))
                .collect();
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("{name} holds a value that is not finite")));
            }
            Ok(values)
        };
        let mut pairs = Vec::with_capacity(n_layer * config.targets.len());
        for (layer, layer_shapes) in shapes.iter().enumerate() {
            for &target in &config.targets {
                let (out_dim, in_dim) = layer_shapes[target.index()];
                let name = |kind: &str| format!("blk.{layer}.{}.lora_{kind}", target.gguf_name());
                let a = read(name("a"), rank, in_dim)?;
                let b = read(name("b"), out_dim, rank)?;
                pairs.push(LoraPair { layer, target, out_dim, in_dim, a, b });
            }
        }
        // The tensors tile the data exactly: no overlap, no gap, nothing after.
        ranges.sort_unstable();
        let mut at = 0;
        for (start, end) in ranges {
            if start != at {
                return Err(bad("tensor data overlaps or leaves gaps".into()));
            }
            at = end;
        }
        if at != data.len() {
            return Err(bad(format!("{} bytes after the last tensor", data.len() - at)));
        }
        Ok(Adapter { config, base_model_hash, n_layer, pairs })
    }

    /// Whether the adapter fits `base`: its layer count and every pair's shapes and lengths.
    pub fn check_shapes(&self, base: &gguf_file::Content) -> Result<(), AdapterError> {
        self.config.validate()?;
        let shapes = projection_shapes(base)?;
        let mismatch = |s: String| Err(AdapterError::Mismatch(s));
        if self.n_layer != shapes.len() {
            return mismatch(format!("{} layers, the base has {}", self.n_layer, shapes.len()));
        }
        if self.pairs.len() != self.n_layer * self.config.targets.len() {
            return mismatch(format!("{} adapted projections", self.pairs.len()));
        }
        let expected =
            (0..self.n_layer).flat_map(|l| self.config.targets.iter().map(move |t| (l, *t)));
        let r = self.config.rank;
        for (p, (layer, target)) in self.pairs.iter().zip(expected) {
            let (out_dim, in_dim) =
                shapes.get(layer).map(|s| s[target.index()]).unwrap_or_default();
            if (p.layer, p.target, p.out_dim, p.in_dim) != (layer, target, out_dim, in_dim)
                || p.a.len() != r * in_dim
                || p.b.len() != out_dim * r
            {
                return mismatch(format!(
                    "blk.{}.{}: [{}, {}] does not fit blk.{layer}.{target} [{out_dim}, {in_dim}]",
                    p.layer, p.target, p.out_dim, p.in_dim
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{quantized::gguf_file::Value, Shape};
    use std::collections::HashMap;

    /// A base model's index: 2 layers, hidden 4, kv 2, MLP 6 (no data: only shapes matter).
    fn base() -> gguf_file::Content {
        let mut tensor_infos = HashMap::new();
        for l in 0..2 {
            for (t, shape) in [
                (Target::Q, (4, 4)),
                (Target::K, (2, 4)),
                (Target::V, (2, 4)),
                (Target::O, (4, 4)),
                (Target::Gate, (6, 4)),
                (Target::Up, (6, 4)),
                (Target::Down, (4, 6)),
            ] {
                let info = gguf_file::TensorInfo {
                    ggml_dtype: candle_core::quantized::GgmlDType::F32,
                    shape: Shape::from(shape),
                    offset: 0,
                };
                tensor_infos.insert(t.weight_name(l), info);
            }
        }
        let metadata = HashMap::from([("llama.block_count".to_string(), Value::U32(2))]);
        gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata,
            tensor_infos,
            tensor_data_offset: 0,
        }
    }

    fn adapter(targets: &[Target]) -> Adapter {
        let config = LoraConfig::new(2, 4.0, targets).unwrap();
        let shapes = projection_shapes(&base()).unwrap();
        let mut x = 0.0f32;
        let mut next = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    x += 0.25;
                    x
                })
                .collect()
        };
        let pairs = (0..2)
            .flat_map(|l| config.targets.iter().map(move |t| (l, *t)))
            .map(|(layer, target)| {
                let (out_dim, in_dim) = shapes[layer][target.index()];
                LoraPair {
                    layer,
                    target,
                    out_dim,
                    in_dim,
                    a: next(2 * in_dim),
                    b: next(out_dim * 2),
                }
            })
            .collect();
        Adapter { config, base_model_hash: [7; 32], n_layer: 2, pairs }
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let a = adapter(&[Target::Q, Target::V, Target::Down]);
        a.check_shapes(&base()).unwrap();
        let bytes = a.to_safetensors();
        assert_eq!(bytes, a.to_safetensors());
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + header_len) % 8, 0);
        let back = Adapter::from_safetensors(&bytes, &base(), &AdapterLimits::default()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.to_safetensors(), bytes);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let a = adapter(&Target::ALL);
        let good = a.to_safetensors();
        let limits = AdapterLimits::default();
        let read = |b: &[u8]| Adapter::from_safetensors(b, &base(), &limits);
        // Size bound, truncation, a lying header length.
        let small = AdapterLimits { max_bytes: good.len() - 1, ..limits };
        assert!(matches!(
            Adapter::from_safetensors(&good, &base(), &small),
            Err(AdapterError::TooLarge { .. })
        ));
        assert!(read(&good[..good.len() - 4]).is_err());
        assert!(read(&good[..5]).is_err());
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read(&huge).is_err());
        // Trailing bytes.
        assert!(read(&[good.clone(), vec![0; 8]].concat()).is_err());
        // Wrong shapes: an adapter for another model.
        let mut wrong = a.clone();
        wrong.pairs[0].in_dim = 8;
        wrong.pairs[0].a = vec![0.0; 16];
        assert!(wrong.check_shapes(&base()).is_err());
        assert!(matches!(read(&wrong.to_safetensors()), Err(AdapterError::Mismatch(_))));
        // Another rank than the metadata says.
        let mut r = a.clone();
        r.config.rank = 3;
        assert!(read(&r.to_safetensors()).is_err());
        // A layer too many.
        let mut layers = a.clone();
        layers.n_layer = 3;
        assert!(matches!(read(&layers.to_safetensors()), Err(AdapterError::Mismatch(_))));
        // A value that is not finite.
        let mut nan = a.clone();
        nan.pairs[3].b[1] = f32::NAN;
        assert!(read(&nan.to_safetensors()).is_err());
        // Metadata edited in place (same lengths): format, version, hash.
        for (from, to) in [
            ("compute-lora", "compute-lorb"),
            ("\"format_version\":\"1\"", "\"format_version\":\"2\""),
            ("0707070707", "zz07070707"),
        ] {
            let at = good.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
            let mut edited = good.clone();
            edited[at..at + to.len()].copy_from_slice(to.as_bytes());
            assert!(read(&edited).is_err(), "{from} -> {to}");
        }
        // A rank beyond the reader's limit.
        let strict = AdapterLimits { max_rank: 1, ..limits };
        assert!(Adapter::from_safetensors(&good, &base(), &strict).is_err());
    }
}
