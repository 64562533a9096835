//! The differentiable pieces of the training forward pass, composed from candle operations that
//! have a backward pass.
//!
//! candle-nn's fast kernels for RMSNorm, softmax and rotary embeddings are custom operations
//! without one (`apply_op*_no_bwd`): gradients would silently stop at them. These compute the
//! same functions from basic operations. [`frozen_matmul`] is the other way round: a custom
//! operation whose backward pass gives the gradient of the input only, since candle's matmul
//! also computes the (discarded) gradient of a frozen weight, as costly as the product itself.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

/// RMSNorm of each row of `x`: `x / sqrt(mean(x²) + eps) · w` (the serving pass's
/// `rms_norm_rows`).
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.sqr()?.mean_keepdim(D::Minus1)?;
    let scale = (mean + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&scale)?.broadcast_mul(w)
}

/// Softmax over the last dimension. The row maximum is subtracted for range only; it is
/// detached, since the result does not depend on it.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Interleaved rotary embedding (`rope_i`, the convention of GGUF llama files and of the
/// serving pass) of `x` (`[heads, t, hd]`) with `cos`, `sin` (`[t, hd / 2]`): each pair
/// `(x[2i], x[2i+1])` is rotated by the angle of frequency `i`.
pub(crate) fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (h, t, hd) = x.dims3()?;
    let pairs = x.reshape((h, t, hd / 2, 2))?;
    let a = pairs.narrow(3, 0, 1)?;
    let b = pairs.narrow(3, 1, 1)?;
    let cos = cos.reshape((1, t, hd / 2, 1))?;
    let sin = sin.reshape((1, t, hd / 2, 1))?;
    let ra = (a.broadcast_mul(&cos)? - b.broadcast_mul(&sin)?)?;
    let rb = (a.broadcast_mul(&sin)? + b.broadcast_mul(&cos)?)?;
    Tensor::cat(&[ra, rb], 3)?.reshape((h, t, hd))
}

/// The sum over rows of the negative log-likelihood of `targets` (`[n]`, u32) under `logits`
/// (`[n, vocab]`).
pub(crate) fn nll_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let log_z = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
    let picked = logits.gather(&targets.unsqueeze(1)?, 1)?;
    (log_z - picked)?.sum_all()
}

/// `x · wᵀ` for a frozen weight `w` (`[out, in]`) and `x` (`[t, in]`): on the CPU a custom
/// operation whose backward pass is `grad · w` only; elsewhere candle's matmul (correct, with
/// the wasted weight gradient).
pub(crate) fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 {
        return x.matmul(&w.t()?);
    }
    x.contiguous()?.apply_op1(FrozenLinear { w: w.clone() })
}

/// The custom operation of [`frozen_matmul`].
struct FrozenLinear {
    /// `[out, in]`, on the CPU.
    w: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("frozen-linear: f32 input expected");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-linear: contiguous input expected");
        };
        let x = Tensor::from_slice(&data[start..end], layout.shape(), &candle_core::Device::Cpu)?;
        let y = x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Neither factor is tracked (gradients are detached, the weight is frozen), so the
        // product records no graph.
        Ok(Some(grad.contiguous()?.matmul(&self.w)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d <= tol, "off by {d}");
    }

    fn ramp(shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn compositions_match_candles_kernels() {
        let x = ramp(&[3, 5, 8], 2.0);
        let w = ramp(&[8], 1.0);
        close(
            &rms_norm(&x, &w, 1e-5).unwrap(),
            &candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap(),
            1e-5,
        );
        close(&softmax_last_dim(&x).unwrap(), &candle_nn::ops::softmax_last_dim(&x).unwrap(), 1e-6);
        let angles = ramp(&[5, 4], 3.0);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let want = candle_nn::rotary_emb::rope_i(&x.unsqueeze(0).unwrap(), &cos, &sin).unwrap();
        close(&rope_interleaved(&x, &cos, &sin).unwrap(), &want.squeeze(0).unwrap(), 1e-6);
        let logits = ramp(&[4, 6], 3.0);
        let targets = Tensor::new(&[1u32, 0, 5, 2], &Device::Cpu).unwrap();
        let want = (candle_nn::loss::cross_entropy(&logits, &targets).unwrap() * 4.0).unwrap();
        close(&nll_sum(&logits, &targets).unwrap(), &want, 1e-5);
    }

    /// Gradients through every composed piece and the frozen product agree with candle's own
    /// backward pass of the plain formulas, and with finite differences.
    #[test]
    fn gradients_flow_and_match() {
        let w = ramp(&[8, 8], 0.5);
        let norm = ramp(&[8], 1.0);
        let x0 = ramp(&[5, 8], 1.5);
        let angles = ramp(&[5, 2], 2.0);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let targets = Tensor::new(&[1u32, 0, 5, 2, 7], &Device::Cpu).unwrap();
        let loss = |x: &Tensor, frozen: bool| -> Tensor {
            let h = rms_norm(x, &norm, 1e-5).unwrap();
            let y = if frozen {
                frozen_matmul(&h, &w).unwrap()
            } else {
                h.matmul(&w.t().unwrap()).unwrap()
            };
            // Two heads of 4: [2, 5, 4], rotated, back to [5, 8].
            let heads =
                y.reshape((5, 2, 4)).unwrap().transpose(0, 1).unwrap().contiguous().unwrap();
            let r = rope_interleaved(&heads, &cos, &sin).unwrap();
            let r = r.transpose(0, 1).unwrap().reshape((5, 8)).unwrap();
            let p = softmax_last_dim(&r).unwrap();
            nll_sum(&(p * 4.0).unwrap(), &targets).unwrap()
        };
        let x = Var::from_tensor(&x0).unwrap();
        let g_frozen =
            loss(x.as_tensor(), true).backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let g_plain =
            loss(x.as_tensor(), false).backward().unwrap().get(x.as_tensor()).unwrap().clone();
        close(&g_frozen, &g_plain, 1e-6);
        // Finite differences on a few coordinates.
        let base: Vec<f32> = x0.flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f32> = g_frozen.flatten_all().unwrap().to_vec1().unwrap();
        for i in [0usize, 7, 13, 22, 39] {
            let eps = 1e-2f32;
            let at = |d: f32| -> f32 {
                let mut v = base.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, (5, 8), &Device::Cpu).unwrap();
                loss(&t, false).to_scalar().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - g[i]).abs() <= 2e-2 * (1.0 + numeric.abs()),
                "coordinate {i}: {numeric} vs {}",
                g[i]
            );
        }
    }
}
