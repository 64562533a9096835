//! A CPU matrix product for q4_1 weights. candle 0.11 multiplies q4_1 with a scalar loop (no
//! SIMD kernel), which made the default SmolLM2 file several times slower than its bytes allow;
//! re-quantizing to q8_0 (which candle does vectorise) moves 70 % more bytes per token. This
//! kernel keeps the file's 20-byte blocks and computes what candle's q4_1 path computes:
//! activations quantized to 8 bits per block of 32 (q8_1: scale and scaled sum rounded through
//! f16), integer dot products with AVX2 multiply-adds, then `d_w·d_x·Σ q_w q_x + m_w·s_x` per
//! block. Weight rows are split across rayon's threads; every row is read once per call
//! whatever the batch size.
//!
//! [`Q41Matrix::new`] returns `None` where the CPU lacks AVX2, FMA or F16C (or off x86-64);
//! callers then fall back to candle.

// SIMD intrinsics need `unsafe`: the workspace denies it everywhere else. Every block below
// states why its pointer reads stay in bounds, and the kernel only runs after the CPU features
// it was compiled for were detected.
#![allow(unsafe_code)]

use candle_core::{quantized::QTensor, DType, Device, Result, Tensor};
use half::f16;
use rayon::{
    iter::{IndexedParallelIterator, ParallelIterator},
    slice::ParallelSliceMut,
};

/// Elements per block.
const QK: usize = 32;
/// Bytes per q4_1 block: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles (element `j` in the
/// low nibble of byte `j`, element `j + 16` in its high nibble).
const BLOCK_BYTES: usize = 20;
/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 32;

/// One activation block quantized to 8 bits.
#[derive(Clone, Copy)]
struct Q8 {
    d: f32,
    /// `d · Σ qs`, as candle rounds it (through f16).
    s: f32,
    qs: [i8; QK],
}

/// A `[rows, cols]` q4_1 matrix in host memory.
pub struct Q41Matrix {
    bytes: Vec<u8>,
    rows: usize,
    cols: usize,
}

/// Whether this CPU runs the kernel.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Q41Matrix {
    /// The kernel's copy of `t` when it is a 2-D q4_1 tensor and this CPU runs the kernel.
    pub fn new(t: &QTensor) -> Result<Option<Self>> {
        let dims = t.shape().dims();
        if t.dtype() != candle_core::quantized::GgmlDType::Q4_1
            || dims.len() != 2
            || !dims[1].is_multiple_of(QK)
            || !supported()
        {
            return Ok(None);
        }
        let bytes = t.data()?.into_owned();
        if bytes.len() != dims[0] * dims[1] / QK * BLOCK_BYTES {
            candle_core::bail!("q4_1 tensor of {} bytes for shape {dims:?}", bytes.len());
        }
        Ok(Some(Self { bytes, rows: dims[0], cols: dims[1] }))
    }

    /// Output rows (the matrix's first dimension).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x · selfᵀ` for `x` of shape `[.., cols]`: shape `[.., rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let Some((_, lead)) = dims.split_last() else {
            candle_core::bail!("q4_1 matmul of a scalar");
        };
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let out = self.forward_rows(&xs)?;
        let mut shape = lead.to_vec();
        shape.push(self.rows);
        Tensor::from_vec(out, shape, &Device::Cpu)
    }

    /// `xs` (rows of `cols` values, row-major) times `selfᵀ`: rows of `self.rows()` values.
    pub fn forward_rows(&self, xs: &[f32]) -> Result<Vec<f32>> {
        if !xs.len().is_multiple_of(self.cols) {
            candle_core::bail!("q4_1 matmul: {} values are not rows of {}", xs.len(), self.cols);
        }
        let n = xs.len() / self.cols;
        let blocks = self.cols / QK;
        let mut q8 = Vec::with_capacity(n * blocks);
        for row in xs.chunks_exact(self.cols) {
            quantize_row(row, &mut q8);
        }
        let rows = self.rows;
        // Row-major by weight row first (`[rows, n]`), so each task owns a contiguous slice.
        let mut by_row = vec![0f32; rows * n];
        let row_bytes = blocks * BLOCK_BYTES;
        by_row.par_chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(|(task, out)| {
            let first = task * ROWS_PER_TASK;
            for (i, dst) in out.chunks_exact_mut(n).enumerate() {
                let r = first + i;
                let w = &self.bytes[r * row_bytes..(r + 1) * row_bytes];
                for (out, act) in dst.iter_mut().zip(q8.chunks_exact(blocks)) {
                    *out = dot(w, act);
                }
            }
        });
        if n == 1 {
            return Ok(by_row);
        }
        let mut out = vec![0f32; rows * n];
        for (r, vals) in by_row.chunks_exact(n).enumerate() {
            for (b, v) in vals.iter().enumerate() {
                out[b * rows + r] = *v;
            }
        }
        Ok(out)
    }
}

/// candle's (and ggml's) q8_1 quantization of one row, appended to `out`.
fn quantize_row(xs: &[f32], out: &mut Vec<Q8>) {
    for block in xs.as_chunks::<QK>().0 {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, x) in qs.iter_mut().zip(block) {
            *q = (x * id).round() as i8;
            sum += *q as i32;
        }
        let d = round_f16(d);
        out.push(Q8 { d, s: round_f16(round_f16(sum as f32) * d), qs });
    }
}

/// `x` rounded to the nearest f16 (as candle stores q8_1 scales), back in f32.
fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Dot product of one weight row (its q4_1 blocks as bytes) with one quantized activation row.
fn dot(w: &[u8], y: &[Q8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `Q41Matrix::new` only builds matrices where `supported()` found the features.
        unsafe { dot_avx2(w, y) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        dot_scalar(w, y)
    }
}

/// The same dot product without SIMD (the reference the tests hold the kernel to).
#[cfg(test)]
fn dot_scalar_bytes(w: &[u8], x: &[f32]) -> f32 {
    let mut q8 = Vec::new();
    quantize_row(x, &mut q8);
    dot_scalar(w, &q8)
}

#[cfg(any(test, not(target_arch = "x86_64")))]
fn dot_scalar(w: &[u8], y: &[Q8]) -> f32 {
    let mut sum = 0f32;
    for (block, y) in w.as_chunks::<BLOCK_BYTES>().0.iter().zip(y) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let q = block[4 + j];
            sumi += (q & 0x0f) as i32 * y.qs[j] as i32 + (q >> 4) as i32 * y.qs[j + QK / 2] as i32;
        }
        sum += sumi as f32 * d * y.d + m * y.s;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(w: &[u8], y: &[Q8]) -> f32 {
    use std::arch::x86_64::*;

    /// `d_w·d_x·Σ q_w q_x` of one block as 8 partial sums added to `acc`, and `m_w·s_x`.
    #[inline(always)]
    unsafe fn block(p: *const u8, y: &Q8, acc: __m256) -> (__m256, f32) {
        let low = _mm_set1_epi8(0x0f);
        // SAFETY (whole function): the caller passes a pointer to a 20-byte q4_1 block (two
        // f16, then 16 bytes of nibbles); all loads are unaligned.
        let (scales, q) = unsafe {
            ((p as *const i32).read_unaligned(), _mm_loadu_si128(p.add(4) as *const __m128i))
        };
        // d and m: the two f16 of the first 4 bytes, converted together.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(scales));
        let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)));
        let lo = _mm_and_si128(q, low);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
        let xq = _mm256_set_m128i(hi, lo);
        // SAFETY: `y.qs` is 32 bytes.
        let yq = unsafe { _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i) };
        // u4 × i8 pairs summed to i16 (at most 2 · 15 · 128, no saturation), then to i32.
        let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(xq, yq), _mm256_set1_epi16(1));
        (_mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(prod), acc), m * y.s)
    }

    let n = y.len().min(w.len() / BLOCK_BYTES);
    let p = w.as_ptr();
    // Two independent chains of accumulation, so consecutive blocks overlap in the pipeline.
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut mins0, mut mins1) = (0f32, 0f32);
    let mut i = 0;
    while i + 1 < n {
        // SAFETY: blocks i and i + 1 lie within `w` (i + 1 < n ≤ w.len() / BLOCK_BYTES).
        let (a, ma) = unsafe { block(p.add(i * BLOCK_BYTES), &y[i], acc0) };
        let (b, mb) = unsafe { block(p.add((i + 1) * BLOCK_BYTES), &y[i + 1], acc1) };
        (acc0, acc1) = (a, b);
        mins0 += ma;
        mins1 += mb;
        i += 2;
    }
    if i < n {
        // SAFETY: block i lies within `w` (i < n).
        let (a, ma) = unsafe { block(p.add(i * BLOCK_BYTES), &y[i], acc0) };
        acc0 = a;
        mins0 += ma;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s) + mins0 + mins1
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul};
    use candle_core::Module;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    #[test]
    fn f16_rounding_matches_ieee() {
        for x in [0.0f32, 1.0, -2.5, 65504.0, 1e-7, 3.0e-5, 0.1, 1234.567, -0.000061] {
            let want = half_reference(x);
            assert_eq!(round_f16(x), want, "{x}");
        }
    }

    /// f16 rounding through the CPU's own conversion instruction where there is one.
    fn half_reference(x: f32) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("f16c") {
            use std::arch::x86_64::*;
            // SAFETY: f16c was detected.
            return unsafe {
                let h = _mm_cvtps_ph(_mm_set_ss(x), _MM_FROUND_TO_NEAREST_INT);
                _mm_cvtss_f32(_mm_cvtph_ps(h))
            };
        }
        round_f16(x)
    }

    #[test]
    fn matches_candles_q4_1_product() {
        let (rows, cols) = (70, 96);
        let w =
            Tensor::from_vec(pseudo_random(rows * cols, 1), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        for n in [1usize, 3] {
            let x =
                Tensor::from_vec(pseudo_random(n * cols, 7 + n as u64), (n, cols), &Device::Cpu)
                    .unwrap();
            let want = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap())
                .unwrap()
                .forward(&x)
                .unwrap();
            let Some(ours) = Q41Matrix::new(&q).unwrap() else {
                return; // this CPU has no AVX2: candle's own path is used instead
            };
            let got = ours.forward(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff: f32 = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-4, "batch {n}: differs from candle by {diff}");
            // And the scalar reference agrees on a row.
            let bytes = q.data().unwrap();
            let row0 = &bytes[..cols / QK * BLOCK_BYTES];
            let x0: Vec<f32> = x.get(0).unwrap().to_vec1().unwrap();
            let s = dot_scalar_bytes(row0, &x0);
            let k: f32 = want.get(0).unwrap().get(0).unwrap().to_scalar().unwrap();
            assert!((s - k).abs() < 1e-4, "scalar {s} vs candle {k}");
        }
    }
}
