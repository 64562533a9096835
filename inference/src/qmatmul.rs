//! CPU matrix products for quantized weights, faster than candle 0.11's on this hardware:
//!
//! - **q4_1** (most of SmolLM2's matrices): candle has only a scalar loop, which made the default
//!   file several times slower than its bytes allow (re-quantizing to q8_0, which candle does
//!   vectorise, moves 70 % more bytes per token).
//! - **q8_0** (SmolLM2's embedding table, which is also its output head: a third of the bytes
//!   read per token): candle's AVX2 loop runs on one thread.
//!
//! Both compute what candle computes: activations quantized to 8 bits per block of 32 (q8_1 for
//! q4_1 weights: scale and scaled sum rounded through f16; q8_0 for q8_0 weights), integer dot
//! products per block, then `d_w·d_x·Σ q_w q_x` (`+ m_w·s_x` for q4_1) summed over blocks.
//!
//! At load the file's blocks are re-laid for the kernel this CPU runs (the same bytes):
//!
//! - **AVX-512 VNNI**, matrices of whole 16-row tiles (every matrix of a llama model): per tile
//!   and block, each group of four value bytes of the 16 rows side by side, then their scales.
//!   One vector lane is one row: `vpdpbusd` multiplies the 16 rows' unsigned bytes by four
//!   activation bytes broadcast to every lane and adds them per lane, so there are no horizontal
//!   sums. q4_1's high nibbles are used in place (`q & 0xf0`, sixteen times their value, scaled
//!   back through the activation scale); q8_0's signed values are offset by 128 and the offset's
//!   product starts each sum negated. Each thread's tiles are one stream, prefetched 5 KiB ahead.
//! - **AVX2** (q4_1 only; q8_0 stays with candle's AVX2 loop): per row its nibbles, then its
//!   scales and minimums; two blocks per step with `vpmaddubsw`, activations re-arranged to
//!   match (low and high halves apart).
//! - **Portable** loops over the row layouts: the definition the tests hold the others to.
//!
//! Rows are split across the threads of [`super::team`]; a weight row is read once per call
//! whatever the batch size, and up to four activation rows share each pass over it.
//!
//! [`QMatrix::new`] returns `None` where no kernel applies (another format, a CPU without AVX2,
//! FMA and F16C — or, for q8_0, without AVX-512 VNNI or with rows in no whole tiles — or off
//! x86-64); callers then use candle.

// SIMD intrinsics need `unsafe`: the workspace denies it everywhere else. Every block below
// states why its pointer reads stay in bounds, and a kernel only runs after the CPU features it
// was compiled for were detected.
#![allow(unsafe_code)]

use candle_core::{
    quantized::{GgmlDType, QTensor},
    DType, Device, Result, Tensor,
};
use half::f16;

/// Elements per block.
const QK: usize = 32;
/// Bytes per q4_1 block in the file: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles
/// (element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble).
const BLOCK_BYTES: usize = 20;
/// Nibble bytes per block.
const NIB: usize = QK / 2;
/// Activation rows are padded to a multiple of this many blocks (the widest step over scales),
/// so the kernels read them without masks.
const PAD_BLOCKS: usize = 16;
/// Activation rows that share one pass over a weight tile or row (AVX-512: eight spilled
/// registers and ran slower).
const SHARED: usize = 4;
/// Activation rows a task's weight rows all pass over before the next ones (AVX2): a chunk of
/// the widest rows (1 536 values, 4.6 KiB quantized and padded) stays in L2 with the weights.
const CHUNK: usize = 16;

/// Which instructions run the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// AVX-512 with VNNI (and BW, VL) over 16-row tiles; off with `COMPUTE_NO_AVX512` set (to
    /// compare, or to test the AVX2 path on such a CPU).
    Avx512Vnni,
    /// AVX2 with FMA and F16C: two blocks per step.
    Avx2,
    /// Portable loops (tests, and the reference the vector paths are held to).
    #[cfg_attr(not(test), allow(dead_code))]
    Scalar,
}

fn detect() -> Option<Kernel> {
    static KERNEL: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(probe)
}

fn probe() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return None;
        }
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && std::env::var_os("COMPUTE_NO_AVX512").is_none()
        {
            return Some(Kernel::Avx512Vnni);
        }
        Some(Kernel::Avx2)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Whether this CPU runs a vector kernel (AVX2, FMA and F16C at least).
pub fn supported() -> bool {
    detect().is_some()
}

/// The name of the vector kernel this CPU runs, for logs.
pub fn kernel_name() -> Option<&'static str> {
    detect().map(|k| match k {
        Kernel::Avx512Vnni => "avx512-vnni",
        Kernel::Avx2 => "avx2",
        Kernel::Scalar => "scalar",
    })
}

/// A `[rows, cols]` quantized matrix in host memory, its blocks split into arrays (the same
/// bytes as the file).
pub struct QMatrix {
    weights: Weights,
    rows: usize,
    cols: usize,
    blocks: usize,
    kernel: Kernel,
}

/// Each row's bytes are contiguous (one sequential stream for the memory system per thread),
/// the row's blocks split into arrays within it.
enum Weights {
    /// Per row: `blocks × 16` nibble bytes (element `j` of a block in the low nibble of byte
    /// `j`, element `j + 16` in its high nibble), then `blocks` f16 scales `d`, then `blocks`
    /// f16 minimums `m`.
    Q41(Vec<u8>),
    /// Per row: `blocks × 32` values, then `blocks` f16 scales `d`.
    Q80(Vec<u8>),
    /// Tiles of [`TILE`] rows (the AVX-512 layout, where one vector lane is one row): per tile
    /// and block, 4 × 64 bytes — for each group `k` of four nibble bytes, those of the 16 rows
    /// side by side — then the 16 rows' f16 `d`, then their f16 `m` (320 bytes).
    T41(Vec<u8>),
    /// Tiles of [`TILE`] rows: per tile and block, 8 × 64 bytes (each group of four values,
    /// for the 16 rows side by side), then the 16 rows' f16 `d` (544 bytes).
    T80(Vec<u8>),
}

/// Rows per tile of the AVX-512 layouts.
const TILE: usize = 16;
/// Bytes per tile and block of [`Weights::T41`].
const T41_BYTES: usize = TILE * BLOCK_BYTES;
/// Bytes per tile and block of [`Weights::T80`].
const T80_BYTES: usize = TILE * (2 + QK);

/// Re-arrange file blocks (`block_bytes` each: f16 `d`, for q4_1 f16 `m`, then `groups` groups
/// of four value bytes) of `rows` rows into tiles of [`TILE`] rows.
fn to_tiles(bytes: &[u8], rows: usize, blocks: usize, block_bytes: usize) -> Vec<u8> {
    let scales = block_bytes - 4 * ((block_bytes - 2) / 4);
    let groups = (block_bytes - scales) / 4;
    let tile_block = TILE * block_bytes;
    let mut out = vec![0u8; bytes.len()];
    for t in 0..rows / TILE {
        for b in 0..blocks {
            let dst = &mut out[(t * blocks + b) * tile_block..][..tile_block];
            for r in 0..TILE {
                let src = &bytes[((t * TILE + r) * blocks + b) * block_bytes..][..block_bytes];
                for k in 0..groups {
                    let at = k * 4 * TILE + r * 4;
                    dst[at..at + 4].copy_from_slice(&src[scales + 4 * k..scales + 4 * k + 4]);
                }
                for (i, scale) in src[..scales].as_chunks::<2>().0.iter().enumerate() {
                    let at = groups * 4 * TILE + i * 2 * TILE + r * 2;
                    dst[at..at + 2].copy_from_slice(scale);
                }
            }
        }
    }
    out
}

/// One product's activations for the tiled kernels, in their natural order: per row and block
/// the 32 quantized values, the scale, and the block's correction (q4_1: `s_x`, q8_0: minus 128
/// times the sum of its values, what offsetting the weights by 128 adds).
struct ActsT {
    n: usize,
    blocks: usize,
    x: Vec<i8>,
    /// `d_x`, divided by 16 for q4_1 (whose kernel sums the high nibbles sixteen times over).
    d: Vec<f32>,
    s: Vec<f32>,
    offset: Vec<i32>,
}

impl ActsT {
    /// `q41`: for q4_1 weights (scale divided by 16); `vector`: the CPU runs a vector kernel.
    fn quantize(xs: &[f32], cols: usize, q41: bool, vector: bool) -> Self {
        let (n, blocks) = (xs.len() / cols, cols / QK);
        let mut a = ActsT {
            n,
            blocks,
            x: Vec::with_capacity(n * cols),
            d: Vec::with_capacity(n * blocks),
            s: Vec::with_capacity(n * blocks),
            offset: Vec::with_capacity(n * blocks),
        };
        for block in xs.as_chunks::<QK>().0 {
            let (d, s, qs) = quantize_block_fast(block, vector);
            a.x.extend_from_slice(&qs);
            a.d.push(if q41 { d / 16.0 } else { d });
            a.s.push(s);
            a.offset.push(-128 * qs.iter().map(|&q| i32::from(q)).sum::<i32>());
        }
        a
    }
}

/// One product's activations quantized for q4_1 weights (q8_1, as candle does) and laid out for
/// the kernels: per row `pb` blocks, zero past the row's own.
struct Acts41 {
    n: usize,
    pb: usize,
    /// Per block its first 16 quantized values (they meet the low nibbles).
    lo: Vec<i8>,
    /// Per block its last 16 quantized values (they meet the high nibbles).
    hi: Vec<i8>,
    /// Per block `d_x` four times: one per 32-bit lane of the block's integer products.
    d4: Vec<f32>,
    /// Per block `s_x = d_x·Σ q_x`, rounded as candle rounds it.
    s: Vec<f32>,
}

/// Activation rows padded to whole blocks: `(rows, blocks, padded blocks)`.
fn padded(xs: &[f32], cols: usize) -> (usize, usize, usize) {
    let blocks = cols / QK;
    (xs.len() / cols, blocks, blocks.next_multiple_of(PAD_BLOCKS))
}

impl Acts41 {
    /// `vector`: the CPU runs the AVX2 kernel (so the quantization may use it too).
    fn quantize(xs: &[f32], cols: usize, vector: bool) -> Self {
        let (n, _, pb) = padded(xs, cols);
        let mut a = Acts41 {
            n,
            pb,
            lo: vec![0; n * pb * NIB],
            hi: vec![0; n * pb * NIB],
            d4: vec![0.0; n * pb * 4],
            s: vec![0.0; n * pb],
        };
        for (r, row) in xs.chunks_exact(cols).enumerate() {
            for (b, block) in row.as_chunks::<QK>().0.iter().enumerate() {
                let (d, s, qs) = quantize_block_fast(block, vector);
                let at = r * pb + b;
                a.lo[at * NIB..(at + 1) * NIB].copy_from_slice(&qs[..NIB]);
                a.hi[at * NIB..(at + 1) * NIB].copy_from_slice(&qs[NIB..]);
                a.d4[at * 4..(at + 1) * 4].fill(d);
                a.s[at] = s;
            }
        }
        a
    }
}

/// candle's (and ggml's) q8_1 quantization of one block: scale, scaled sum, values (q8_0 is the
/// same without the sum).
#[inline(always)]
fn quantize_block(block: &[f32; QK]) -> (f32, f32, [i8; QK]) {
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
    (d, round_f16(round_f16(sum as f32) * d), qs)
}

/// [`quantize_block`] compiled for the vector units the kernels need, where `round` is a few
/// instructions instead of a call into libm per value (same results: LLVM expands it exactly).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn quantize_block_fast(block: &[f32; QK], vector: bool) -> (f32, f32, [i8; QK]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn vectorised(block: &[f32; QK]) -> (f32, f32, [i8; QK]) {
            quantize_block(block)
        }
        if vector {
            // SAFETY: the caller's kernel was chosen where the features were detected.
            return unsafe { vectorised(block) };
        }
    }
    quantize_block(block)
}

/// `x` rounded to the nearest f16 (as candle stores q8_1 scales), back in f32.
fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

impl QMatrix {
    /// The kernels' copy of `t` when it is a 2-D q4_1 or q8_0 tensor and this CPU runs a
    /// kernel for it.
    pub fn new(t: &QTensor) -> Result<Option<Self>> {
        match detect() {
            // candle's own AVX2 q8_0 product is as good as an AVX2 one of ours would be.
            Some(Kernel::Avx2) if t.dtype() == GgmlDType::Q8_0 => Ok(None),
            Some(kernel) => Self::with_kernel(t, kernel),
            None => Ok(None),
        }
    }

    fn with_kernel(t: &QTensor, kernel: Kernel) -> Result<Option<Self>> {
        let dims = t.shape().dims();
        let block_bytes = match t.dtype() {
            GgmlDType::Q4_1 => BLOCK_BYTES,
            GgmlDType::Q8_0 if kernel != Kernel::Avx2 => 2 + QK,
            _ => return Ok(None),
        };
        if dims.len() != 2 || !dims[1].is_multiple_of(QK) {
            return Ok(None);
        }
        let (rows, cols) = (dims[0], dims[1]);
        let blocks = cols / QK;
        let bytes = t.data()?;
        if bytes.len() != rows * blocks * block_bytes {
            candle_core::bail!(
                "{:?} tensor of {} bytes for shape {dims:?}",
                t.dtype(),
                bytes.len()
            );
        }
        let tiled = kernel == Kernel::Avx512Vnni && rows.is_multiple_of(TILE);
        if kernel == Kernel::Avx512Vnni && !tiled && t.dtype() == GgmlDType::Q8_0 {
            // Rows in no whole tiles (no model's matrix has them): candle's product.
            return Ok(None);
        }
        let mut out = Vec::with_capacity(bytes.len());
        let weights = if tiled && t.dtype() == GgmlDType::Q4_1 {
            Weights::T41(to_tiles(&bytes, rows, blocks, BLOCK_BYTES))
        } else if tiled {
            Weights::T80(to_tiles(&bytes, rows, blocks, 2 + QK))
        } else if t.dtype() == GgmlDType::Q4_1 {
            for row in bytes.chunks_exact(blocks * BLOCK_BYTES) {
                let row = row.as_chunks::<BLOCK_BYTES>().0;
                row.iter().for_each(|b| out.extend_from_slice(&b[4..]));
                row.iter().for_each(|b| out.extend_from_slice(&b[..2]));
                row.iter().for_each(|b| out.extend_from_slice(&b[2..4]));
            }
            Weights::Q41(out)
        } else {
            for row in bytes.chunks_exact(blocks * (2 + QK)) {
                let row = row.as_chunks::<{ 2 + QK }>().0;
                row.iter().for_each(|b| out.extend_from_slice(&b[2..]));
                row.iter().for_each(|b| out.extend_from_slice(&b[..2]));
            }
            Weights::Q80(out)
        };
        Ok(Some(Self { weights, rows, cols, blocks, kernel }))
    }

    /// Output rows (the matrix's first dimension).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The weights' format.
    pub fn dtype(&self) -> GgmlDType {
        match self.weights {
            Weights::Q41(_) | Weights::T41(_) => GgmlDType::Q4_1,
            Weights::Q80(_) | Weights::T80(_) => GgmlDType::Q8_0,
        }
    }

    /// `x · selfᵀ` for `x` of shape `[.., cols]`: shape `[.., rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let Some((_, lead)) = dims.split_last() else {
            candle_core::bail!("quantized matmul of a scalar");
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
            candle_core::bail!(
                "quantized matmul: {} values are not rows of {}",
                xs.len(),
                self.cols
            );
        }
        let n = xs.len() / self.cols;
        if n == 0 {
            return Ok(Vec::new());
        }
        let vector = self.kernel != Kernel::Scalar;
        // Row-major by weight row first (`[rows, n]`), so each task owns a contiguous slice.
        let mut by_row = vec![0f32; self.rows * n];
        let team = super::team::global();
        let per_task = self.rows_per_task(team.size());
        match &self.weights {
            Weights::Q41(_) => {
                let a = Acts41::quantize(xs, self.cols, vector);
                team.for_each_chunk_mut(&mut by_row, per_task * n, &|task, out| {
                    self.tile41(&a, task * per_task, out)
                });
            }
            Weights::Q80(_) => {
                let a = ActsT::quantize(xs, self.cols, false, vector);
                team.for_each_chunk_mut(&mut by_row, per_task * n, &|task, out| {
                    self.tile80(&a, task * per_task, out)
                });
            }
            Weights::T41(_) | Weights::T80(_) => {
                let a = ActsT::quantize(xs, self.cols, self.dtype() == GgmlDType::Q4_1, vector);
                team.for_each_chunk_mut(&mut by_row, per_task * n, &|task, out| {
                    self.tiles(&a, task * per_task / TILE, out)
                });
            }
        }
        if n == 1 {
            return Ok(by_row);
        }
        // Back to `[n, rows]`, in square blocks so that both sides stay in cache (a plain loop
        // writes every value to another cache line once `rows` is large).
        const B: usize = 32;
        let rows = self.rows;
        let mut out = vec![0f32; rows * n];
        for r0 in (0..rows).step_by(B) {
            for b0 in (0..n).step_by(B) {
                for r in r0..(r0 + B).min(rows) {
                    let vals = &by_row[r * n..(r + 1) * n];
                    for b in b0..(b0 + B).min(n) {
                        out[b * rows + r] = vals[b];
                    }
                }
            }
        }
        Ok(out)
    }

    /// Weight rows per parallel task: about four tasks per thread (so a thread slowed by
    /// something else is caught up by the others), within bounds that keep a task's rows in
    /// the core's caches and its claiming cost small.
    fn rows_per_task(&self, threads: usize) -> usize {
        self.rows.div_ceil(threads * 4).next_multiple_of(TILE).clamp(TILE, 1024)
    }

    /// Tiles `first..` of a tiled product into `out` (`[rows, n]`, as many whole tiles as it
    /// holds).
    fn tiles(&self, a: &ActsT, first: usize, out: &mut [f32]) {
        let n = a.n;
        let tiles = out.len() / n / TILE;
        debug_assert!((first + tiles) * TILE <= self.rows);
        #[cfg(target_arch = "x86_64")]
        {
            let mut j0 = 0;
            while j0 < n {
                let k = (n - j0).min(SHARED);
                // SAFETY: tiled weights are only built where `detect()` found AVX-512 VNNI;
                // tiles `first..first + tiles` exist and `j0 + k ≤ n`.
                unsafe {
                    match (&self.weights, k) {
                        (Weights::T41(w), 1) => avx512::tiles41::<1>(w, a, first, tiles, j0, out),
                        (Weights::T41(w), 2) => avx512::tiles41::<2>(w, a, first, tiles, j0, out),
                        (Weights::T41(w), 3) => avx512::tiles41::<3>(w, a, first, tiles, j0, out),
                        (Weights::T41(w), _) => {
                            avx512::tiles41::<SHARED>(w, a, first, tiles, j0, out)
                        }
                        (Weights::T80(w), 1) => avx512::tiles80::<1>(w, a, first, tiles, j0, out),
                        (Weights::T80(w), 2) => avx512::tiles80::<2>(w, a, first, tiles, j0, out),
                        (Weights::T80(w), 3) => avx512::tiles80::<3>(w, a, first, tiles, j0, out),
                        (Weights::T80(w), _) => {
                            avx512::tiles80::<SHARED>(w, a, first, tiles, j0, out)
                        }
                        _ => unreachable!("tiles on tiled weights only"),
                    }
                }
                j0 += k;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("tiled weights exist on x86-64 only: {first} {}", out.len());
    }

    /// Rows `first..` of a q4_1 product into `out` (`[rows, n]`, as many rows as it holds).
    fn tile41(&self, a: &Acts41, first: usize, out: &mut [f32]) {
        let Weights::Q41(bytes) = &self.weights else {
            unreachable!("tile41 on q4_1 weights only")
        };
        let w = W41 { bytes, blocks: self.blocks };
        let n = a.n;
        let rows = out.len() / n;
        debug_assert!(first + rows <= self.rows);
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: this kernel is only chosen where `detect()` found its features (tiled
            // layouts take the AVX-512 CPUs' matrices); `first + rows ≤ self.rows`.
            Kernel::Avx2 | Kernel::Avx512Vnni => unsafe { avx2::tile41(&w, a, first, rows, out) },
            _ => scalar_tile41(&w, a, first, rows, out),
        }
    }

    /// Rows `first..` of a q8_0 product in the row layout (the portable definition; tiled
    /// layouts serve the CPUs with a vector kernel) into `out` (`[rows, n]`).
    fn tile80(&self, a: &ActsT, first: usize, out: &mut [f32]) {
        let Weights::Q80(bytes) = &self.weights else {
            unreachable!("tile80 on q8_0 weights only")
        };
        let w = W80 { bytes, blocks: self.blocks };
        let rows = out.len() / a.n;
        debug_assert!(first + rows <= self.rows);
        scalar_tile80(&w, a, first, rows, out)
    }
}

/// A q4_1 matrix's rows, as the kernels read them.
struct W41<'a> {
    bytes: &'a [u8],
    blocks: usize,
}

impl W41<'_> {
    const ROW_BYTES_PER_BLOCK: usize = BLOCK_BYTES;

    /// Row `r`'s nibbles, scales and minimums (as little-endian f16 bytes).
    fn row(&self, r: usize) -> (&[u8], &[u8], &[u8]) {
        let b = self.blocks;
        let row = &self.bytes[r * b * BLOCK_BYTES..(r + 1) * b * BLOCK_BYTES];
        let (nib, rest) = row.split_at(b * NIB);
        let (d, m) = rest.split_at(2 * b);
        (nib, d, m)
    }
}

/// A q8_0 matrix's rows, as the kernels read them.
struct W80<'a> {
    bytes: &'a [u8],
    blocks: usize,
}

impl W80<'_> {
    /// Row `r`'s values and scales (as little-endian f16 bytes).
    fn row(&self, r: usize) -> (&[u8], &[u8]) {
        let b = self.blocks;
        self.bytes[r * b * (2 + QK)..(r + 1) * b * (2 + QK)].split_at(b * QK)
    }
}

/// Scale `i` of an array of little-endian f16.
fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
}

/// The portable q4_1 product over the split layout.
fn scalar_tile41(w: &W41, a: &Acts41, first: usize, rows: usize, out: &mut [f32]) {
    let n = a.n;
    for r in 0..rows {
        let row = first + r;
        for j in 0..n {
            let (nib, d, m) = w.row(row);
            let mut sum = 0f32;
            for b in 0..w.blocks {
                let y = j * a.pb + b;
                let mut sumi = 0i32;
                for (i, q) in nib[b * NIB..(b + 1) * NIB].iter().enumerate() {
                    sumi += (q & 0x0f) as i32 * a.lo[y * NIB + i] as i32
                        + (q >> 4) as i32 * a.hi[y * NIB + i] as i32;
                }
                sum += sumi as f32 * f16_at(d, b) * a.d4[y * 4] + f16_at(m, b) * a.s[y];
            }
            out[r * n + j] = sum;
        }
    }
}

/// The portable q8_0 product over the row layout.
fn scalar_tile80(w: &W80, a: &ActsT, first: usize, rows: usize, out: &mut [f32]) {
    let n = a.n;
    for r in 0..rows {
        let (qs, d) = w.row(first + r);
        for j in 0..n {
            let mut sum = 0f32;
            for b in 0..w.blocks {
                let y = j * a.blocks + b;
                let sumi: i32 = qs[b * QK..(b + 1) * QK]
                    .iter()
                    .zip(&a.x[y * QK..(y + 1) * QK])
                    .map(|(&q, &x)| i32::from(q as i8) * i32::from(x))
                    .sum();
                sum += sumi as f32 * f16_at(d, b) * a.d[y];
            }
            out[r * n + j] = sum;
        }
    }
}

/// Rows ahead of the one being multiplied that are asked into the cache. The hardware's
/// own prefetcher alone left a decode step waiting on memory: measured on SmolLM2 (2 cores,
/// medians of six runs), 105 tokens/s without, 111 with 4 rows, 156–158 with 8 or 16, 136
/// with 32.
#[cfg(target_arch = "x86_64")]
const PREFETCH_ROWS: usize = 8;

/// Ask for the row [`PREFETCH_ROWS`] further on (rows of `row_bytes` from `row`) to be
/// brought into the cache.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(row: *const u8, row_bytes: usize) {
    let ahead = row.wrapping_add(PREFETCH_ROWS * row_bytes);
    let mut off = 0;
    while off < row_bytes {
        // SAFETY: prefetching never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                ahead.wrapping_add(off) as *const i8,
            )
        };
        off += 64;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ActsT, QK, T41_BYTES, T80_BYTES, TILE};
    use std::arch::x86_64::*;

    /// Bytes ahead of the block being multiplied that are asked into the cache (sixteen tiled
    /// q4_1 blocks). Measured on SmolLM2 (2 cores, medians of five interleaved runs): 174
    /// tokens/s at 1.25 KiB, 194 at 2.5, 233 at 5, 215 at 10, 223 at 20.
    const TILE_PREFETCH: usize = 16 * T41_BYTES;

    /// Ask for the `len` bytes [`TILE_PREFETCH`] past `p` to be brought into the cache.
    #[inline(always)]
    fn prefetch_block(p: *const u8, len: usize) {
        let ahead = p.wrapping_add(TILE_PREFETCH);
        let mut off = 0;
        while off < len {
            // SAFETY: prefetching never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off) as *const i8) };
            off += 64;
        }
    }

    /// The four bytes at `p` in every 32-bit lane.
    ///
    /// # Safety
    /// `p..p + 4` is readable.
    #[inline(always)]
    unsafe fn broadcast4(p: *const i8) -> __m512i {
        _mm512_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
    }

    /// Write the 16 rows of a tile (`acc`, one lane per row) for activation row `j` into `out`
    /// (`[rows, n]`) starting at tile row `row`.
    #[inline(always)]
    fn store_tile(acc: __m512, out: &mut [f32], row: usize, n: usize, j: usize) {
        let mut v = [0f32; TILE];
        // SAFETY: `v` holds 16 floats.
        unsafe { _mm512_storeu_ps(v.as_mut_ptr(), acc) };
        for (i, v) in v.iter().enumerate() {
            out[(row + i) * n + j] = *v;
        }
    }

    /// Tiles `first..first + tiles` of the tiled q4_1 matrix `w` (`a.blocks` blocks per row)
    /// times activation rows `j0..j0 + NA` into `out` (`[tiles · 16, a.n]`): per block, the 16
    /// rows' low nibbles (`q & 0x0f`) and high nibbles kept in place (`q & 0xf0`, sixteen times
    /// their value) meet the activations' four-byte groups broadcast to every lane; the low
    /// sums are scaled by 16 to match, and `d_x` arrives divided by 16.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW, VL and VNNI; the tiles exist in `w`; `j0 + NA ≤ a.n`;
    /// `out.len() ≥ tiles · 16 · a.n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn tiles41<const NA: usize>(
        w: &[u8],
        a: &ActsT,
        first: usize,
        tiles: usize,
        j0: usize,
        out: &mut [f32],
    ) {
        let blocks = a.blocks;
        let (low, high) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0xf0u8 as i8));
        for t in 0..tiles {
            // SAFETY (reads below): tile `first + t` exists, so its `blocks` blocks of
            // T41_BYTES lie within `w`; activation row `j0 + j` holds `blocks` blocks of 32
            // values, a scale and a sum each.
            let base = unsafe { w.as_ptr().add((first + t) * blocks * T41_BYTES) };
            let mut acc = [_mm512_setzero_ps(); NA];
            for b in 0..blocks {
                let p = unsafe { base.add(b * T41_BYTES) };
                prefetch_block(p, T41_BYTES);
                let (q, dw, mw) = unsafe {
                    (
                        [0, 1, 2, 3].map(|k| _mm512_loadu_si512(p.add(k * 64) as *const __m512i)),
                        _mm512_cvtph_ps(_mm256_loadu_si256(p.add(256) as *const __m256i)),
                        _mm512_cvtph_ps(_mm256_loadu_si256(p.add(288) as *const __m256i)),
                    )
                };
                let lo = q.map(|q| _mm512_and_si512(q, low));
                let hi = q.map(|q| _mm512_and_si512(q, high));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let at = (j0 + j) * blocks + b;
                    let xp = unsafe { a.x.as_ptr().add(at * QK) };
                    let (mut sl, mut sh) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    for k in 0..4 {
                        unsafe {
                            sl = _mm512_dpbusd_epi32(sl, lo[k], broadcast4(xp.add(4 * k)));
                            sh = _mm512_dpbusd_epi32(sh, hi[k], broadcast4(xp.add(16 + 4 * k)));
                        }
                    }
                    let s = _mm512_add_epi32(_mm512_slli_epi32(sl, 4), sh);
                    let (dx, sx) = (a.d[at], a.s[at]);
                    *acc = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(s),
                        _mm512_mul_ps(dw, _mm512_set1_ps(dx)),
                        *acc,
                    );
                    *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), *acc);
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                store_tile(*acc, out, t * TILE, a.n, j0 + j);
            }
        }
    }

    /// Tiles `first..first + tiles` of the tiled q8_0 matrix `w` times activation rows
    /// `j0..j0 + NA` into `out` (`[tiles · 16, a.n]`): the weights offset by 128 (`^ 0x80`, the
    /// unsigned bytes `vpdpbusd` wants) meet the activations' four-byte groups broadcast to
    /// every lane; each sum starts at minus what the offset adds.
    ///
    /// # Safety
    /// As for [`tiles41`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn tiles80<const NA: usize>(
        w: &[u8],
        a: &ActsT,
        first: usize,
        tiles: usize,
        j0: usize,
        out: &mut [f32],
    ) {
        let blocks = a.blocks;
        let flip = _mm512_set1_epi8(-128);
        for t in 0..tiles {
            // SAFETY (reads below): as in `tiles41`, with T80_BYTES per tile and block.
            let base = unsafe { w.as_ptr().add((first + t) * blocks * T80_BYTES) };
            let mut acc = [_mm512_setzero_ps(); NA];
            for b in 0..blocks {
                let p = unsafe { base.add(b * T80_BYTES) };
                prefetch_block(p, T80_BYTES);
                let (q, dw) = unsafe {
                    (
                        [0, 1, 2, 3, 4, 5, 6, 7].map(|k| {
                            _mm512_xor_si512(
                                _mm512_loadu_si512(p.add(k * 64) as *const __m512i),
                                flip,
                            )
                        }),
                        _mm512_cvtph_ps(_mm256_loadu_si256(p.add(512) as *const __m256i)),
                    )
                };
                for (j, acc) in acc.iter_mut().enumerate() {
                    let at = (j0 + j) * blocks + b;
                    let xp = unsafe { a.x.as_ptr().add(at * QK) };
                    let mut sa = _mm512_set1_epi32(a.offset[at]);
                    let mut sb = _mm512_setzero_si512();
                    for k in (0..8).step_by(2) {
                        unsafe {
                            sa = _mm512_dpbusd_epi32(sa, q[k], broadcast4(xp.add(4 * k)));
                            sb = _mm512_dpbusd_epi32(sb, q[k + 1], broadcast4(xp.add(4 * k + 4)));
                        }
                    }
                    let s = _mm512_add_epi32(sa, sb);
                    *acc = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(s),
                        _mm512_mul_ps(dw, _mm512_set1_ps(a.d[at])),
                        *acc,
                    );
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                store_tile(*acc, out, t * TILE, a.n, j0 + j);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{prefetch, Acts41, CHUNK, NIB, SHARED, W41};
    use std::arch::x86_64::*;

    /// Rows `first..first + rows` of the q4_1 matrix `w` times every activation row into `out`
    /// (`[rows, a.n]`).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; rows `first..first + rows` exist in `w`;
    /// `out.len() ≥ rows · a.n`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile41(w: &W41, a: &Acts41, first: usize, rows: usize, out: &mut [f32]) {
        // Activation rows in chunks small enough to stay in the core's caches while every
        // weight row of the task passes over them, up to four at a time sharing each unpacked
        // weight block (one row when decoding: the same loop as a chunk of one).
        let mut j0 = 0;
        while j0 < a.n {
            let chunk = (a.n - j0).min(CHUNK);
            for r in 0..rows {
                let mut j = j0;
                while j < j0 + chunk {
                    let k = (j0 + chunk - j).min(SHARED);
                    // SAFETY: as this function's; rows `j..j + k` exist in `a`.
                    unsafe {
                        match k {
                            1 => row41::<1>(w, a, first + r, j, &mut out[r * a.n..]),
                            2 => row41::<2>(w, a, first + r, j, &mut out[r * a.n..]),
                            3 => row41::<3>(w, a, first + r, j, &mut out[r * a.n..]),
                            _ => row41::<SHARED>(w, a, first + r, j, &mut out[r * a.n..]),
                        }
                    }
                    j += k;
                }
            }
            j0 += chunk;
        }
    }

    /// Weight row `row` times activation rows `j..j + K`, into `out[j..j + K]`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `row` exists in `w`; rows `j..j + K` exist in `a`;
    /// `out.len() ≥ j + K`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row41<const K: usize>(w: &W41, a: &Acts41, row: usize, j: usize, out: &mut [f32]) {
        let blocks = w.blocks;
        let pairs = blocks / 2;
        let steps = pairs + blocks % 2;
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        // Lane i of a two-block step belongs to block i / 4.
        let spread = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
        // SAFETY (loads below): the row exists, so its blocks lie within `w`'s arrays; a full
        // step reads two whole blocks, the last odd step one (16 nibble bytes, one f16).
        // Activation rows hold `a.pb ≥ blocks.next_multiple_of(16)` blocks.
        let row_bytes = blocks * W41::ROW_BYTES_PER_BLOCK;
        let qp = unsafe { w.bytes.as_ptr().add(row * row_bytes) };
        if j == 0 {
            prefetch(qp, row_bytes);
        }
        let dp = unsafe { qp.add(blocks * NIB) } as *const u16;
        let mp = unsafe { qp.add(blocks * (NIB + 2)) } as *const u16;
        let mut acc = [_mm256_setzero_ps(); K];
        for p in 0..steps {
            let (q, dw) = unsafe {
                if p < pairs {
                    (
                        _mm256_loadu_si256(qp.add(p * 2 * NIB) as *const __m256i),
                        _mm_cvtsi32_si128((dp.add(p * 2) as *const i32).read_unaligned()),
                    )
                } else {
                    (
                        _mm256_set_m128i(
                            _mm_setzero_si128(),
                            _mm_loadu_si128(qp.add(p * 2 * NIB) as *const __m128i),
                        ),
                        _mm_cvtsi32_si128(i32::from(dp.add(p * 2).read_unaligned())),
                    )
                }
            };
            let lo = _mm256_and_si256(q, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            let dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(dw)), spread);
            for (i, acc) in acc.iter_mut().enumerate() {
                let at = (j + i) * a.pb + p * 2;
                let (yl, yh, dx) = unsafe {
                    (
                        _mm256_loadu_si256(a.lo.as_ptr().add(at * NIB) as *const __m256i),
                        _mm256_loadu_si256(a.hi.as_ptr().add(at * NIB) as *const __m256i),
                        _mm256_loadu_ps(a.d4.as_ptr().add(at * 4)),
                    )
                };
                // u4 × i8 pairs summed to i16 (at most 2 · 15 · 128: no saturation), then i32.
                let s = _mm256_add_epi32(
                    _mm256_madd_epi16(_mm256_maddubs_epi16(lo, yl), ones),
                    _mm256_madd_epi16(_mm256_maddubs_epi16(hi, yh), ones),
                );
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, dx), *acc);
            }
        }
        for (i, mut acc) in acc.into_iter().enumerate() {
            // Σ m_w·s_x, eight blocks per step, then the rest one by one.
            let sp = unsafe { a.s.as_ptr().add((j + i) * a.pb) };
            let mut c = 0;
            while c + 8 <= blocks {
                let mw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(mp.add(c) as *const __m128i) });
                acc = _mm256_fmadd_ps(mw, unsafe { _mm256_loadu_ps(sp.add(c)) }, acc);
                c += 8;
            }
            let mut tail = 0f32;
            while c < blocks {
                // SAFETY: c < blocks.
                let (mw, sx) = unsafe { (mp.add(c).read_unaligned(), *sp.add(c)) };
                tail += half::f16::from_bits(mw).to_f32() * sx;
                c += 1;
            }
            let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            out[j + i] = _mm_cvtss_f32(s) + tail;
        }
    }
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

    /// The block-by-block definition over the file's own bytes (no re-arranged layout).
    fn reference_dot(w: &[u8], x: &[f32]) -> f32 {
        let mut sum = 0f32;
        for (block, x) in w.as_chunks::<BLOCK_BYTES>().0.iter().zip(x.as_chunks::<QK>().0) {
            let (dx, sx, qs) = quantize_block(x);
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
            let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let q = block[4 + j];
                sumi += (q & 0x0f) as i32 * qs[j] as i32 + (q >> 4) as i32 * qs[j + QK / 2] as i32;
            }
            sum += sumi as f32 * d * dx + m * sx;
        }
        sum
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    fn kernels() -> Vec<Kernel> {
        let mut ks = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if supported() {
                ks.push(Kernel::Avx2);
            }
            if detect() == Some(Kernel::Avx512Vnni) {
                ks.push(Kernel::Avx512Vnni);
            }
        }
        ks
    }

    /// Every kernel this CPU runs equals candle's product, for both formats, widths that leave
    /// every possible tail (0–3 blocks past a four-block step, odd and even block counts) and
    /// batches that use every number of activation rows sharing a weight row.
    #[test]
    fn matches_candles_products() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            // Row counts that are not whole tiles of 16 (row layouts) and that are (tiled
            // layouts, where the CPU has AVX-512 VNNI).
            let shapes = [(70, 96), (33, 160), (40, 576), (17, 1536), (9, 32), (48, 96), (32, 576)];
            for (rows, cols) in shapes.into_iter().chain([(16, 1536), (64, 160), (16, 32)]) {
                let w = Tensor::from_vec(
                    pseudo_random(rows * cols, cols as u64),
                    (rows, cols),
                    &Device::Cpu,
                )
                .unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let candle = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
                for n in [1usize, 2, 3, 5, 6, 21, 38] {
                    let x = Tensor::from_vec(
                        pseudo_random(n * cols, 7 + n as u64),
                        (n, cols),
                        &Device::Cpu,
                    )
                    .unwrap();
                    let candle_out = candle.forward(&x).unwrap();
                    // The portable kernel is the definition every vector kernel is held to. It is
                    // held to candle's product itself, except for q8_0 matrices of whole 16-row
                    // tiles, which candle multiplies with its own repacked kernels (activations
                    // quantized another way: as close to the exact product, not to ours).
                    let scalar = QMatrix::with_kernel(&q, Kernel::Scalar).unwrap().unwrap();
                    let want = scalar.forward(&x).unwrap();
                    if dtype == GgmlDType::Q4_1 || !rows.is_multiple_of(TILE) {
                        let diff = max_diff(&want, &candle_out);
                        assert!(
                            diff < 1e-4,
                            "{dtype:?} {rows}×{cols}, batch {n}: {diff} off candle"
                        );
                    }
                    for kernel in kernels() {
                        let Some(ours) = QMatrix::with_kernel(&q, kernel).unwrap() else {
                            // q8_0 is left to candle on AVX2-only CPUs, and on AVX-512 ones for
                            // row counts in no whole tiles.
                            assert!(dtype == GgmlDType::Q8_0 && kernel != Kernel::Scalar);
                            assert!(kernel == Kernel::Avx2 || !rows.is_multiple_of(TILE));
                            continue;
                        };
                        assert_eq!(ours.dtype(), dtype);
                        let got = ours.forward(&x).unwrap();
                        assert_eq!(got.dims(), want.dims());
                        let diff = max_diff(&got, &want);
                        assert!(
                            diff < 1e-4,
                            "{dtype:?} {kernel:?} {rows}×{cols}, batch {n}: differs by {diff}"
                        );
                    }
                    if dtype == GgmlDType::Q4_1 {
                        // And the block-by-block definition agrees on a row.
                        let bytes = q.data().unwrap();
                        let row0 = &bytes[..cols / QK * BLOCK_BYTES];
                        let x0: Vec<f32> = x.get(0).unwrap().to_vec1().unwrap();
                        let s = reference_dot(row0, &x0);
                        let k: f32 =
                            candle_out.get(0).unwrap().get(0).unwrap().to_scalar().unwrap();
                        assert!((s - k).abs() < 1e-4, "definition {s} vs candle {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_what_it_cannot_multiply() {
        let w = Tensor::from_vec(pseudo_random(4 * 64, 3), (4, 64), &Device::Cpu).unwrap();
        let k = QTensor::quantize(&w, GgmlDType::Q4K)
            .unwrap_or_else(|_| QTensor::quantize(&w, GgmlDType::Q5_0).unwrap());
        assert!(QMatrix::with_kernel(&k, Kernel::Scalar).unwrap().is_none());
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let m = QMatrix::with_kernel(&q, Kernel::Scalar).unwrap().unwrap();
        let err = m.forward_rows(&[0.0; 63]).unwrap_err().to_string();
        assert!(err.contains("not rows of 64"), "{err}");
    }
}
