//! Activation proofs: a compact commitment to the hidden states a model computed while it
//! generated a response, which anyone holding the same weights can check with one batched
//! prefill (far cheaper than generating).
//!
//! While generating, the worker keeps, for every generated token, the [`TOP_K`] largest
//! entries (by magnitude) of the final hidden state that produced it, with their positions and
//! their values rounded to half precision. A validator feeds the prompt and the generated tokens
//! through the committed weights in one pass, recomputes those hidden states and compares: the
//! committed positions must be (nearly all) among its own largest entries, and the values must
//! agree within the noise that different kernels, thread counts and batch compositions leave.
//! Other weights (another model, a coarser quantization, a perturbed copy), another context (a
//! changed system prompt, a truncated history) or a proof lifted from another response move the
//! hidden states far beyond that noise. The check runs per chunk of [`CHUNK`] tokens, so a
//! response cannot hide a substituted stretch in an honest average. Thresholds are calibrated by
//! `tests/proof.rs`; `docs/verification.md` gives the figures.
//!
//! Byte format (version 1, little-endian), [`ActivationProof::to_bytes`]:
//! `version: u8`, `n: u32`, `n x token: u32`, `n x TOP_K x index: u16`,
//! `n x TOP_K x value: u16` (IEEE half-precision bits); `5 + n * (4 + 4 * TOP_K)` bytes. The
//! receipt's `proof_hash` is blake2-256 of these bytes.

/// Version of the proof format and its parameters.
pub const PROOF_VERSION: u8 = 1;

/// Largest-magnitude hidden-state entries committed per generated token.
pub const TOP_K: usize = 8;

/// Tokens per validation chunk: each chunk must pass on its own.
pub const CHUNK: usize = 32;

/// Bytes of a proof of `n` tokens.
pub const fn proof_len(n: usize) -> usize {
    5 + n * (4 + 4 * TOP_K)
}

/// A commitment to the hidden states behind each generated token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActivationProof {
    /// The generated token ids, in order (a stop token that ended generation excluded).
    pub tokens: Vec<u32>,
    /// `tokens.len() x TOP_K` positions in the hidden state, ascending within each token.
    pub indices: Vec<u16>,
    /// The values at `indices`, as half-precision bits.
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
        for i in &self.indices {
            out.extend_from_slice(&i.to_le_bytes());
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
        let expected = 5u128 + n as u128 * (4 + 4 * TOP_K as u128);
        if bytes.len() as u128 != expected {
            return Err(ProofFormatError::Length {
                got: bytes.len(),
                expected: usize::try_from(expected).unwrap_or(usize::MAX),
            });
        }
        let body = &rest[4..];
        let (tokens, body) = body.split_at(4 * n);
        let (indices, values) = body.split_at(2 * n * TOP_K);
        let u16s = |b: &[u8]| b.as_chunks::<2>().0.iter().map(|c| u16::from_le_bytes(*c)).collect();
        Ok(ActivationProof {
            tokens: tokens.as_chunks::<4>().0.iter().map(|c| u32::from_le_bytes(*c)).collect(),
            indices: u16s(indices),
            values: u16s(values),
        })
    }
}

/// Whether `text` (the response as sent) is what the proof's tokens decode to, or that cut
/// where one of the request's `stop` strings begins (the stop string is not sent): the provider
/// can neither show one text and prove the activations of another, nor bill tokens it did not
/// send.
pub fn covers_text(
    tokenizer: &crate::ModelTokenizer,
    proof: &ActivationProof,
    text: &str,
    stop: &[String],
) -> bool {
    tokenizer.decode(&proof.tokens).is_ok_and(|decoded| {
        decoded == text
            || decoded.strip_prefix(text).is_some_and(|rest| {
                stop.iter().any(|s| !s.is_empty() && rest.starts_with(s.as_str()))
            })
    })
}

#[cfg(feature = "engine")]
pub use engine_part::*;

#[cfg(feature = "engine")]
mod engine_part {
    use super::{ActivationProof, CHUNK, TOP_K};
    use crate::llama::Llama;
    use half::f16;

    /// Collects a proof while a response is generated: one call per generated token with the
    /// hidden state that produced it.
    #[derive(Debug, Default)]
    pub struct ProofBuilder {
        proof: ActivationProof,
        order: Vec<u32>,
    }

    impl ProofBuilder {
        /// Record token `token`, produced from the final hidden state `hidden`.
        pub fn push(&mut self, token: u32, hidden: &[f32]) {
            self.proof.tokens.push(token);
            for (i, v) in top_k(hidden, &mut self.order) {
                self.proof.indices.push(i);
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

    /// The [`TOP_K`] entries of `row` largest in magnitude (ties to the lower index), ascending
    /// by index; `order` is scratch space.
    fn top_k(row: &[f32], order: &mut Vec<u32>) -> [(u16, f32); TOP_K] {
        order.clear();
        order.extend(0..row.len().min(u16::MAX as usize + 1) as u32);
        // For magnitudes the bit patterns order like the numbers, NaN above everything (so a
        // broken row is never silently small).
        let key = |i: &u32| (std::cmp::Reverse(row[*i as usize].abs().to_bits()), *i);
        let k = TOP_K.min(order.len());
        if k < order.len() {
            order.select_nth_unstable_by_key(k, key);
        }
        let top = &mut order[..k];
        top.sort_unstable();
        let mut out = [(0u16, 0f32); TOP_K];
        for (o, &i) in out.iter_mut().zip(top.iter()) {
            *o = (i as u16, row[i as usize]);
        }
        out
    }

    /// What validation measured on the chunk that agreed least.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct ChunkScore {
        /// Index of the chunk (tokens `chunk * CHUNK ..`).
        pub chunk: usize,
        /// Share of committed positions found among the recomputed largest entries.
        pub overlap: f64,
        /// Mean of `|committed - recomputed| / |recomputed|` over the committed positions.
        pub mean_error: f64,
    }

    /// Thresholds of [`validate`]: a chunk passes when its overlap is at least `min_overlap` and
    /// its mean relative error at most `max_mean_error`.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Thresholds {
        pub min_overlap: f64,
        pub max_mean_error: f64,
    }

    /// The calibrated thresholds (`tests/proof.rs`, `docs/verification.md`).
    pub const THRESHOLDS: Thresholds = Thresholds { min_overlap: 0.9, max_mean_error: 0.05 };

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
        #[error("the proof covers {tokens} tokens but commits {entries} entries")]
        Malformed { tokens: usize, entries: usize },
        #[error("the proof commits position {index} of a hidden state of {hidden}")]
        IndexOutOfRange { index: u16, hidden: usize },
        #[error("token {0} is outside the model's vocabulary")]
        TokenOutOfRange(u32),
        #[error("prompt and response ({0} tokens) exceed the model's context")]
        TooLong(usize),
        #[error("empty prompt")]
        EmptyPrompt,
        #[error("chunk {} disagrees: overlap {:.3}, mean error {:.4}", .0.chunk, .0.overlap, .0.mean_error)]
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
                for s in &scores {
                    if s.overlap < thresholds.min_overlap
                        || s.mean_error > thresholds.max_mean_error
                    {
                        return Verdict::Fail(FailReason::Mismatch(*s));
                    }
                }
                Verdict::Pass(scores.into_iter().min_by(|a, b| {
                    (a.overlap, -a.mean_error)
                        .partial_cmp(&(b.overlap, -b.mean_error))
                        .unwrap_or(std::cmp::Ordering::Equal)
                }))
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
        if proof.indices.len() != n * TOP_K || proof.values.len() != n * TOP_K {
            return Err(FailReason::Malformed { tokens: n, entries: proof.indices.len() });
        }
        if let Some(&index) = proof.indices.iter().find(|i| **i as usize >= d) {
            return Err(FailReason::IndexOutOfRange { index, hidden: d });
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
        let mut order = Vec::new();
        let mut out = Vec::with_capacity(n.div_ceil(CHUNK));
        for (chunk, first) in (0..n).step_by(CHUNK).enumerate() {
            let (mut found, mut error, mut entries) = (0usize, 0f64, 0usize);
            for j in first..(first + CHUNK).min(n) {
                let row = &rows[j * d..(j + 1) * d];
                let own = top_k(row, &mut order);
                for e in j * TOP_K..(j + 1) * TOP_K {
                    let (i, v) = (proof.indices[e], f16::from_bits(proof.values[e]).to_f32());
                    found += usize::from(own.iter().any(|(o, _)| *o == i));
                    let r = row[i as usize];
                    let rel = ((v - r).abs() / r.abs().max(f32::EPSILON)) as f64;
                    error += if rel.is_finite() { rel.min(1.0) } else { 1.0 };
                    entries += 1;
                }
            }
            out.push(ChunkScore {
                chunk,
                overlap: found as f64 / entries as f64,
                mean_error: error / entries as f64,
            });
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
            indices: (0..2 * TOP_K as u16).collect(),
            values: (100..100 + 2 * TOP_K as u16).collect(),
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
        assert_eq!(
            ActivationProof::from_bytes(&ActivationProof::default().to_bytes()).unwrap().len(),
            0
        );
    }
}
