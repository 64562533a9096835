//! Merging an adapter into its base model: a new GGUF the serving engine loads like any other,
//! where each targeted projection is `dequant(W) + (alpha / rank) · B·A` re-quantized to q8_0,
//! and every other tensor and all metadata are the base file's, unchanged.
//!
//! q8_0 because a small learnt delta would mostly vanish in the 4-bit steps of a q4_1 base
//! (SmolLM2's file), while 8-bit blocks keep it; the serving path runs q8_0 matrices with our
//! kernels where the CPU has AVX-512 VNNI and with candle's vectorised ones otherwise
//! ([`crate::qmatmul::QMatrix::new`]).
//!
//! Deterministic: the same base and adapter give the same bytes (a deployed model's
//! `model_hash` is the blake2-256 of this file). The delta is summed in a fixed order in plain
//! f32 arithmetic, metadata is written sorted by key and tensors in the base file's order.

use super::{
    adapter::{Adapter, AdapterError, LoraPair},
    model_hash,
};
use candle_core::{
    quantized::{gguf_file, GgmlDType, QTensor},
    Device, Tensor,
};
use std::{collections::HashMap, io::Cursor, path::Path};

/// The format of merged projections.
pub const MERGED_DTYPE: GgmlDType = GgmlDType::Q8_0;

/// Why a merge failed.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("base model: {0}")]
    Base(String),
    #[error("the adapter was trained on another base model (hash {adapter}, this file {base})")]
    OtherBase { adapter: String, base: String },
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// The merged GGUF of `base` (the base model file's bytes) and `adapter`.
pub fn merge(base: &[u8], adapter: &Adapter) -> Result<Vec<u8>, MergeError> {
    let hash = model_hash(base);
    if hash != adapter.base_model_hash {
        let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        return Err(MergeError::OtherBase {
            adapter: hex(&adapter.base_model_hash),
            base: hex(&hash),
        });
    }
    let berr = |e: candle_core::Error| MergeError::Base(e.to_string());
    let mut reader = Cursor::new(base);
    let content = gguf_file::Content::read(&mut reader).map_err(berr)?;
    adapter.check_shapes(&content)?;
    let by_name: HashMap<String, &LoraPair> =
        adapter.pairs.iter().map(|p| (p.target.weight_name(p.layer), p)).collect();
    let scale = adapter.config.scale();
    let rank = adapter.config.rank;

    // Tensors in the base file's order.
    let mut names: Vec<(&String, u64)> =
        content.tensor_infos.iter().map(|(n, t)| (n, t.offset)).collect();
    names.sort_by_key(|(n, offset)| (*offset, (*n).clone()));
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(names.len());
    for (name, _) in names {
        let q = content.tensor(&mut reader, name, &Device::Cpu).map_err(berr)?;
        let q = match by_name.get(name) {
            Some(pair) => merged(&q, pair, rank, scale).map_err(berr)?,
            None => q,
        };
        tensors.push((name.as_str(), q));
    }
    let mut metadata: Vec<(&str, &gguf_file::Value)> =
        content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    metadata.sort_by_key(|(k, _)| *k);
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = Cursor::new(Vec::with_capacity(base.len() * 3 / 2));
    gguf_file::write(&mut out, &metadata, &refs).map_err(berr)?;
    tracing::info!(
        adapted = adapter.pairs.len(),
        rank,
        targets = %adapter.config.targets_list(),
        "adapter merged into the base model"
    );
    Ok(out.into_inner())
}

/// [`merge`] of the base model file at `base` into a new file at `out` (written to a temporary
/// name beside it, then renamed); returns the merged model's hash (blake2-256 of the file).
pub fn merge_file(base: &Path, adapter: &Adapter, out: &Path) -> Result<[u8; 32], MergeError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| MergeError::Io { path, source }
    };
    let bytes = std::fs::read(base).map_err(io(base))?;
    let merged = merge(&bytes, adapter)?;
    drop(bytes);
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, &merged).map_err(io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(model_hash(&merged))
}

/// `dequant(q) + scale · B·A`, quantized to [`MERGED_DTYPE`].
fn merged(q: &QTensor, pair: &LoraPair, rank: usize, scale: f32) -> candle_core::Result<QTensor> {
    let (out_dim, in_dim) = (pair.out_dim, pair.in_dim);
    if q.shape().dims() != [out_dim, in_dim] {
        candle_core::bail!("{}: shape {:?}", pair.target.weight_name(pair.layer), q.shape());
    }
    let mut w: Vec<f32> = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    add_delta(&mut w, pair, rank, scale);
    QTensor::quantize(&Tensor::from_vec(w, (out_dim, in_dim), &Device::Cpu)?, MERGED_DTYPE)
}

/// `w += scale · B·A` (`w` `[out, in]` row-major), each row's `Σₖ B[r,k] · A[k,·]` summed in
/// order of `k` before scaling: plain f32 arithmetic in a fixed order, the same bits on every
/// machine.
fn add_delta(w: &mut [f32], pair: &LoraPair, rank: usize, scale: f32) {
    let in_dim = pair.in_dim;
    let mut row = vec![0f32; in_dim];
    for (r, w_row) in w.chunks_exact_mut(in_dim).enumerate() {
        row.fill(0.0);
        for k in 0..rank {
            let b = pair.b[r * rank + k];
            for (d, a) in row.iter_mut().zip(&pair.a[k * in_dim..(k + 1) * in_dim]) {
                *d += b * a;
            }
        }
        for (w, d) in w_row.iter_mut().zip(&row) {
            *w += scale * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finetune::Target;

    #[test]
    fn delta_is_scaled_b_times_a() {
        let pair = LoraPair {
            layer: 0,
            target: Target::Q,
            out_dim: 2,
            in_dim: 3,
            a: vec![1.0, 2.0, 3.0, 0.5, 0.0, -1.0], // [2, 3]
            b: vec![1.0, 2.0, -1.0, 0.0],           // [2, 2]
        };
        let mut w = vec![0.0; 6];
        add_delta(&mut w, &pair, 2, 0.5);
        // B·A = [[2, 2, 1], [-1, -2, -3]].
        assert_eq!(w, vec![1.0, 1.0, 0.5, -0.5, -1.0, -1.5]);
    }
}
