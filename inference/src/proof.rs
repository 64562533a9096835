//! Activation proofs: a compact commitment to the hidden states a model computed while it
//! generated a response, which anyone holding the same weights can check with one batched
//! prefill (far cheaper than generating).
//!
//! While generating, the worker keeps, for every generated token, [`ENTRIES`] entries of the
//! final hidden state that produced it, rounded to half precision. Which entries is fixed by the
//! token's place in the response ([`positions`]): spread over the whole hidden state, different
//! for each token, so a chunk of tokens samples most of it. A validator feeds the prompt and the
//! generated tokens through the committed weights in one pass, recomputes those hidden states
//! and measures how far the committed values are from its own, in units of each state's RMS.
//! Different kernels, thread counts and batch compositions move them by about 2 % of the RMS;
//! other weights (another model, a coarser quantization, a perturbed copy), another context (a
//! changed system prompt, a truncated history) or a proof lifted from another response move
//! them by 10 % to 100 %. The check runs per chunk of [`CHUNK`] tokens, so a response cannot
//! hide a substituted stretch in an honest average. Thresholds are calibrated by
//! `tests/proof.rs`; `docs/verification.md` gives the figures.
//!
//! Byte format (version 1, little-endian), [`ActivationProof::to_bytes`]: `version: u8`,
//! `n: u32`, `n x token: u32`, `n x ENTRIES x value: u16` (IEEE half-precision bits, token after
//! token); `5 + n * (4 + 2 * ENTRIES)` bytes. The receipt's `proof_hash` is blake2-256 of these
//! bytes.

/// Version of the proof format and its parameters.
pub const PROOF_VERSION: u8 = 1;

/// Hidden-state entries committed per generated token.
pub const ENTRIES: usize = 8;

/// Tokens per validation chunk: each chunk must pass on its own.
pub const CHUNK: usize = 32;

/// Bytes of a proof of `n` tokens.
pub const fn proof_len(n: usize) -> usize {
    5 + n * (4 + 2 * ENTRIES)
}

/// The positions in a hidden state of width `hidden` committed for the `token`-th generated
/// token: `ENTRIES` consecutive steps of a stride coprime to `hidden` (about 0.618 of it), so
/// the entries of one token are distinct and successive tokens cover the state evenly.
pub fn positions(token: usize, hidden: usize) -> impl Iterator<Item = usize> {
    let stride = stride(hidden);
    (0..ENTRIES).map(move |i| {
        let k = (token as u128 * ENTRIES as u128 + i as u128) * stride as u128;
        (k % hidden.max(1) as u128) as usize
    })
}

fn stride(hidden: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut s = (hidden * 618 / 1000).max(1);
    while hidden > 1 && gcd(s, hidden) != 1 {
        s += 1;
    }
    s
}

/// A commitment to the hidden states behind each generated token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActivationProof {
    /// The generated token ids, in order (a stop token that ended generation excluded).
    pub tokens: Vec<u32>,
    /// `tokens.len() x ENTRIES` half-precision bits: token `j`'s values at [`positions`]`(j)`.
    pub values: Vec<u16>,
}

/// Why proof bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofFormatError {
    #[error("proof version {0} is not supported (this build reads version {PROOF_VERSION})")]
    Version(u8),
    #[error("proof of {got} bytes, expected {expected}")]
    Length { got: usize, expected: usize },
    #[error("proof shorter than its header")]
    Truncated,
}

impl ActivationProof {
    /// Generated tokens covered.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token was generated.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The version-1 bytes (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.tokens.len();
        let mut out = Vec::with_capacity(proof_len(n));
        out.push(PROOF_VERSION);
        out.extend_from_slice(&(n as u32).to_le_bytes());
        for t in &self.tokens {
            out.extend_from_slice(&t.to_le_bytes());
        }
        for v in &self.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Read proof bytes; refuses any other version and any length but the exact one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProofFormatError> {
        let (&version, rest) = bytes.split_first().ok_or(ProofFormatError::Truncated)?;
        if version != PROOF_VERSION {
            return Err(ProofFormatError::Version(version));
        }
        let n = rest.get(..4).ok_or(ProofFormatError::Truncated)?;
        let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
        // Compare in u128 so a huge claimed `n` cannot overflow the expected length.
        let expected = 5u128 + n as u128 * (4 + 2 * ENTRIES as u128);
        if bytes.len() as u128 != expected {
            return Err(ProofFormatError::Length {
                got: bytes.len(),
                expected: usize::try_from(expected).unwrap_or(usize::MAX),
            });
        }
        let (tokens, values) = rest[4..].split_at(4 * n);
        Ok(ActivationProof {
            tokens: tokens.as_chunks::<4>().0.iter().map(|c| u32::from_le_bytes(*c)).collect(),
            values: values.as_chunks::<2>().0.iter().map(|c| u16::from_le_bytes(*c)).collect(),
        })
    }
}

/// Whether `text` (the response as sent) is what the proof's tokens decode to, or that cut
/// where one of the request's `stop` strings begins (the stop string is not sent) with that
/// stop string completed by the last token (generation stops there: a token more is a token
/// not sent but billed). The provider can neither show one text and prove the activations of
/// another, nor bill tokens it did not send.
pub fn covers_text(
    tokenizer: &crate::ModelTokenizer,
    proof: &ActivationProof,
    text: &str,
    stop: &[String],
) -> bool {
    let Ok(decoded) = tokenizer.decode(&proof.tokens) else { return false };
    if decoded == text {
        return true;
    }
    let stop: Vec<&str> = stop.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
    let cut_here =
        decoded.strip_prefix(text).is_some_and(|rest| stop.iter().any(|s| rest.starts_with(s)));
    let n = proof.tokens.len();
    let before = if n > 1 { tokenizer.decode(&proof.tokens[..n - 1]) } else { Ok(String::new()) };
    cut_here && before.is_ok_and(|b| !stop.iter().any(|s| b.contains(s)))
}

#[cfg(feature = "engine")]
pub use engine_part::*;

#[cfg(feature = "engine")]
mod engine_part {
    use super::{positions, ActivationProof, CHUNK, ENTRIES};
    use crate::llama::Llama;
    use half::f16;

    /// Largest error one entry contributes, in RMS units (a wild value counts, but does not
    /// swamp a chunk's mean on its own).
    const ENTRY_ERROR_CAP: f64 = 4.0;

    /// Collects a proof while a response is generated: one call per generated token with the
    /// hidden state that produced it.
    #[derive(Debug, Default)]
    pub struct ProofBuilder {
        proof: ActivationProof,
    }

    impl ProofBuilder {
        /// Record token `token`, produced from the final hidden state `hidden`.
        pub fn push(&mut self, token: u32, hidden: &[f32]) {
            let j = self.proof.tokens.len();
            self.proof.tokens.push(token);
            for p in positions(j, hidden.len()) {
                let v = hidden.get(p).copied().unwrap_or(f32::NAN);
                self.proof.values.push(f16::from_f32(v).to_bits());
            }
        }

        /// Tokens recorded.
        pub fn len(&self) -> usize {
            self.proof.tokens.len()
        }

        /// Whether nothing was recorded.
        pub fn is_empty(&self) -> bool {
            self.proof.tokens.is_empty()
        }

        /// The proof of the tokens recorded.
        pub fn finish(self) -> ActivationProof {
            self.proof
        }
    }

    /// The chunks of `n` tokens, as `(first, end)`: [`CHUNK`] tokens each, a shorter rest of
    /// fewer than `CHUNK / 2` tokens joined to the chunk before it (a handful of tokens would
    /// make a noisy mean on its own).
    fn chunks(n: usize) -> impl Iterator<Item = (usize, usize)> {
        let mut bounds: Vec<(usize, usize)> =
            (0..n).step_by(CHUNK).map(|first| (first, (first + CHUNK).min(n))).collect();
        if bounds.len() > 1 && bounds.last().is_some_and(|(a, b)| b - a < CHUNK / 2) {
            if let Some((_, end)) = bounds.pop() {
                if let Some(last) = bounds.last_mut() {
                    last.1 = end;
                }
            }
        }
        bounds.into_iter()
    }

    #[cfg(test)]
    pub(super) fn chunks_of(n: usize) -> Vec<(usize, usize)> {
        chunks(n).collect()
    }

    /// What validation measured on one chunk.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct ChunkScore {
        /// Index of the chunk (tokens `chunk * CHUNK ..`).
        pub chunk: usize,
        /// Mean of `|committed - recomputed|`, in units of the recomputed state's RMS, over the
        /// chunk's committed entries.
        pub error: f64,
    }

    /// Thresholds of [`validate`]: a chunk passes when its error is at most `max_error`.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Thresholds {
        pub max_error: f64,
    }

    /// The calibrated thresholds (`tests/proof.rs`, `docs/verification.md`).
    pub const THRESHOLDS: Thresholds = Thresholds { max_error: 0.06 };

    /// The outcome of checking a proof.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Verdict {
        /// Every chunk agreed; the score of the one that agreed least.
        Pass(Option<ChunkScore>),
        /// The proof does not match what these weights compute for this context.
        Fail(FailReason),
    }

    impl Verdict {
        /// Whether the proof passed.
        pub fn passed(&self) -> bool {
            matches!(self, Verdict::Pass(_))
        }
    }

    /// Why a proof failed.
    #[derive(Debug, Clone, PartialEq, thiserror::Error)]
    pub enum FailReason {
        #[error("the proof covers {tokens} tokens but commits {entries} values")]
        Malformed { tokens: usize, entries: usize },
        #[error("token {0} is outside the model's vocabulary")]
        TokenOutOfRange(u32),
        #[error("prompt and response ({0} tokens) exceed the model's context")]
        TooLong(usize),
        #[error("empty prompt")]
        EmptyPrompt,
        #[error("chunk {} disagrees: error {:.4} of the state's RMS", .0.chunk, .0.error)]
        Mismatch(ChunkScore),
        #[error("the model failed: {0}")]
        Model(String),
    }

    /// Check `proof` for a response to `prompt` (the prompt's token ids as the template renders
    /// them) against `model`: one prefill over the prompt and every generated token but the
    /// last, then each chunk of [`CHUNK`] tokens scored against `thresholds`.
    pub fn validate(
        model: &Llama,
        prompt: &[u32],
        proof: &ActivationProof,
        thresholds: Thresholds,
    ) -> Verdict {
        match scores(model, prompt, proof) {
            Err(reason) => Verdict::Fail(reason),
            Ok(scores) => {
                match scores.iter().find(|s| s.error.is_nan() || s.error > thresholds.max_error) {
                    Some(s) => Verdict::Fail(FailReason::Mismatch(*s)),
                    None => {
                        Verdict::Pass(scores.into_iter().max_by(|a, b| a.error.total_cmp(&b.error)))
                    }
                }
            }
        }
    }

    /// The score of every chunk of `proof` (no thresholds applied): what calibration measures.
    pub fn scores(
        model: &Llama,
        prompt: &[u32],
        proof: &ActivationProof,
    ) -> Result<Vec<ChunkScore>, FailReason> {
        let c = &model.config;
        let (n, d) = (proof.tokens.len(), c.hidden);
        if proof.values.len() != n * ENTRIES {
            return Err(FailReason::Malformed { tokens: n, entries: proof.values.len() });
        }
        if let Some(&t) = proof.tokens.iter().find(|t| **t as usize >= c.vocab) {
            return Err(FailReason::TokenOutOfRange(t));
        }
        if prompt.is_empty() {
            return Err(FailReason::EmptyPrompt);
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let total = prompt.len() + n - 1;
        if total > c.context {
            return Err(FailReason::TooLong(total));
        }
        let mut fed = prompt.to_vec();
        fed.extend_from_slice(&proof.tokens[..n - 1]);
        let hidden = model.hidden_states(&fed).map_err(|e| FailReason::Model(e.to_string()))?;
        // Row j (producing token j) is the hidden state at position prompt.len() - 1 + j.
        let rows = &hidden[(prompt.len() - 1) * d..];
        let mut out = Vec::with_capacity(n.div_ceil(CHUNK));
        for (chunk, (first, end)) in chunks(n).enumerate() {
            let (mut error, mut entries) = (0f64, 0usize);
            for j in first..end {
                let row = &rows[j * d..(j + 1) * d];
                let rms = (row.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / d as f64)
                    .sqrt()
                    .max(f64::from(f32::EPSILON));
                for (p, bits) in positions(j, d).zip(&proof.values[j * ENTRIES..]) {
                    let committed = f64::from(f16::from_bits(*bits).to_f32());
                    let e = (committed - f64::from(row[p])).abs() / rms;
                    error += if e.is_finite() { e.min(ENTRY_ERROR_CAP) } else { ENTRY_ERROR_CAP };
                    entries += 1;
                }
            }
            out.push(ChunkScore { chunk, error: error / entries as f64 });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_refuse_other_lengths_and_versions() {
        let proof = ActivationProof {
            tokens: vec![1, 70_000],
            values: (100..100 + 2 * ENTRIES as u16).collect(),
        };
        let bytes = proof.to_bytes();
        assert_eq!(bytes.len(), proof_len(2));
        assert_eq!(ActivationProof::from_bytes(&bytes), Ok(proof));
        assert!(matches!(
            ActivationProof::from_bytes(&bytes[..bytes.len() - 1]),
            Err(ProofFormatError::Length { .. })
        ));
        let mut other = bytes.clone();
        other[0] = 2;
        assert_eq!(ActivationProof::from_bytes(&other), Err(ProofFormatError::Version(2)));
        // A header claiming four billion tokens is refused on its length, not allocated.
        let huge = [PROOF_VERSION, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(ActivationProof::from_bytes(&huge), Err(ProofFormatError::Length { .. })));
        assert_eq!(ActivationProof::from_bytes(&[]), Err(ProofFormatError::Truncated));
        assert_eq!(ActivationProof::from_bytes(&[1, 0, 0]), Err(ProofFormatError::Truncated));
        let empty = ActivationProof::default().to_bytes();
        assert_eq!(ActivationProof::from_bytes(&empty).unwrap().len(), 0);
    }

    #[cfg(feature = "engine")]
    #[test]
    fn a_short_rest_joins_the_chunk_before() {
        let all = |n| engine_part::chunks_of(n);
        assert_eq!(all(0), vec![]);
        assert_eq!(all(5), vec![(0, 5)]);
        assert_eq!(all(32), vec![(0, 32)]);
        assert_eq!(all(40), vec![(0, 40)]);
        assert_eq!(all(48), vec![(0, 32), (32, 48)]);
        assert_eq!(all(70), vec![(0, 32), (32, 70)]);
    }

    #[test]
    fn positions_are_distinct_per_token_and_cover_the_state() {
        for hidden in [576, 2048, 4096, 5120, 7, 1] {
            let mut seen = vec![0u32; hidden];
            for j in 0..hidden.div_ceil(ENTRIES) {
                let mut mine: Vec<usize> = positions(j, hidden).collect();
                assert!(mine.iter().all(|p| *p < hidden));
                mine.sort();
                mine.dedup();
                assert_eq!(mine.len(), ENTRIES.min(hidden), "hidden {hidden}, token {j}");
                for p in mine {
                    seen[p] += 1;
                }
            }
            // `hidden / ENTRIES` tokens visit every position once.
            assert!(seen.iter().all(|s| *s >= 1), "hidden {hidden}");
        }
    }
}
