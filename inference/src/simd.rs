//! Functions compiled twice more for the vector units this CPU may have (AVX2 with FMA, and
//! AVX-512) and picked at run time. The crate is built for the baseline x86-64 (SSE2), where the
//! decode step's small loops — attention's dot products and weighted sums, norms — run four
//! lanes wide at best; the same plain Rust compiled with AVX2 or AVX-512 enabled runs eight or
//! sixteen. The bodies are ordinary safe code: only the call into a variant, after the CPU was
//! checked for its features, is `unsafe`.

// Calling a `#[target_feature]` function from code compiled without those features needs
// `unsafe`; the workspace denies it everywhere else.
#![allow(unsafe_code)]

use std::sync::OnceLock;

/// The widest vector units this CPU has that the variants use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Baseline,
    Avx2,
    Avx512,
}

/// This CPU's [`Level`] (detected once).
pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// Define `pub(crate) fn $name` whose body is compiled three times (baseline, AVX2 + FMA,
/// AVX-512) and dispatched on [`level`]. Arguments must be plain identifiers.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub(crate) fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        // The dispatch below is the only `unsafe` (see the module documentation).
        #[allow(unsafe_code)]
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level()` found the features each variant is compiled for.
                    $crate::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Level::Baseline => {}
                }
            }
            generic($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// `Σ a_i·b_i` over the common length, with vector registers where the CPU has them. (The
/// compiler does not vectorise a float sum by itself, since that reorders it; an array of
/// partial sums in plain Rust was left scalar too.)
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: `level()` found the features; both slices hold `n` values.
        Level::Avx512 => return unsafe { dot_avx512(a, b) },
        Level::Avx2 => return unsafe { dot_avx2(a, b) },
        Level::Baseline => {}
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// # Safety
/// The CPU has AVX-512 F; `a.len() == b.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    // SAFETY (all reads): `i + 32 ≤ n`, `i + 16 ≤ n`, or the mask covers only `i..n`.
    while i + 32 <= n {
        unsafe {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            s1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
                s1,
            );
        }
        i += 32;
    }
    while i < n {
        let mask: __mmask16 = if n - i >= 16 { 0xffff } else { (1u16 << (n - i)) - 1 };
        unsafe {
            s0 = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(mask, pa.add(i)),
                _mm512_maskz_loadu_ps(mask, pb.add(i)),
                s0,
            );
        }
        i += 16;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
}

/// # Safety
/// The CPU has AVX2 and FMA; `a.len() == b.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY (all reads): `i + 16 ≤ n` or `i + 8 ≤ n`; the rest is read one by one.
    while i + 16 <= n {
        unsafe {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 =
                _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
        }
        i += 16;
    }
    if i + 8 <= n {
        unsafe { s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0) };
        i += 8;
    }
    let s = _mm256_add_ps(s0, s1);
    let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    let tail: f32 = a[i..].iter().zip(&b[i..]).map(|(x, y)| x * y).sum();
    _mm_cvtss_f32(s) + tail
}

/// Ask for `data` to be brought into the core's L2 cache ahead of its use (a hint: nothing
/// happens off x86-64).
pub(crate) fn prefetch_l2(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        // SAFETY: prefetching reads nothing architecturally and never faults; the address is
        // inside `data` anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                line.as_ptr() as *const i8
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[cfg(test)]
mod tests {
    multiversion! {
        /// A sum the compiler may vectorise.
        pub(crate) fn sum_of_products(a: &[f32], b: &[f32]) -> f32 {
            a.iter().zip(b).map(|(x, y)| x * y).sum()
        }
    }

    #[test]
    fn dot_products_of_every_length() {
        for n in [0usize, 1, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 576] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            let got = super::dot(&a, &b);
            assert!((f64::from(got) - want).abs() < 1e-4, "length {n}: {got} vs {want}");
        }
    }

    #[test]
    fn every_level_computes_the_same() {
        let a: Vec<f32> = (0..100).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..100).map(|i| 1.0 - i as f32 * 0.01).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(sum_of_products(&a, &b), want);
    }
}
