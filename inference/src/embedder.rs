//! Sentence embeddings: a BERT encoder in the sentence-transformers layout (a directory with
//! `model.safetensors`, `config.json`, `tokenizer.json`, and optionally `modules.json`,
//! `1_Pooling/config.json`, `sentence_bert_config.json`), pooled over the tokens of each input
//! and, when the model's modules say so, scaled to unit length. The default is
//! all-MiniLM-L6-v2 (384 dimensions, mean pooling, normalised, inputs up to 256 tokens).
//!
//! Inputs are tokenized before admission (the fee is priced per input token) and encoded after
//! it. An input longer than the model takes is refused rather than cut: the user would pay for
//! tokens that shaped nothing.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use std::{path::Path, time::Instant};
use tokenizers::Tokenizer;

/// Sequences encoded in one forward pass (padded to the longest of them).
const CHUNK: usize = 16;

/// Why embedding failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("input {index} has {tokens} tokens; this model takes at most {max}")]
    TooLong { index: usize, tokens: usize, max: usize },
    #[error("input {index} is empty")]
    Empty { index: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Model(String),
    #[error("the request's time ran out after {done} of {total} inputs")]
    TimedOut { done: usize, total: usize },
}

impl From<candle_core::Error> for EmbedError {
    fn from(e: candle_core::Error) -> Self {
        EmbedError::Model(e.to_string())
    }
}

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean of the token states (padding excluded).
    Mean,
    /// The state of the first (`[CLS]`) token.
    Cls,
}

/// A loaded embedding model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// Longest input, in tokens (special tokens included).
    pub max_tokens: usize,
    /// Length of each vector.
    pub dim: usize,
    /// How token states are pooled.
    pub pooling: Pooling,
    /// Whether vectors are scaled to unit length.
    pub normalize: bool,
}

fn read_json(dir: &Path, name: &str) -> Result<Option<serde_json::Value>, EmbedError> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let bad = |reason: String| EmbedError::Load { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&text).map(Some).map_err(|e| bad(e.to_string()))
}

/// The tokenizer of a sentence-transformers directory, as the worker bills with it: the model's
/// special tokens added, no padding and no truncation (the file pads and truncates to a fixed
/// length; the worker batches inputs itself and refuses over-long ones).
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer, EmbedError> {
    crate::tokenizer::load_embedding_tokenizer(dir)
        .map_err(|e| EmbedError::Load { path: dir.display().to_string(), reason: e.to_string() })
}

impl Embedder {
    /// Load a sentence-transformers directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EmbedError> {
        let shown = dir.display().to_string();
        let bad = |reason: String| EmbedError::Load { path: shown.clone(), reason };
        let config: BertConfig = serde_json::from_value(
            read_json(dir, "config.json")?.ok_or_else(|| bad("config.json is missing".into()))?,
        )
        .map_err(|e| bad(format!("config.json: {e}")))?;
        let weights = std::fs::read(dir.join("model.safetensors"))
            .map_err(|e| bad(format!("model.safetensors: {e}")))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, device)
            .map_err(|e| bad(format!("model.safetensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| bad(e.to_string()))?;

        let tokenizer = load_tokenizer(dir)?;

        let max_tokens = read_json(dir, "sentence_bert_config.json")?
            .and_then(|c| c["max_seq_length"].as_u64())
            .map_or(config.max_position_embeddings, |m| m as usize)
            .min(config.max_position_embeddings);
        let pooling = match read_json(dir, "1_Pooling/config.json")? {
            None => Pooling::Mean,
            Some(p) if p["pooling_mode_mean_tokens"] == true => Pooling::Mean,
            Some(p) if p["pooling_mode_cls_token"] == true => Pooling::Cls,
            Some(_) => return Err(bad("only mean or CLS pooling is supported".into())),
        };
        let normalize = read_json(dir, "modules.json")?.is_some_and(|m| {
            m.as_array().is_some_and(|list| {
                list.iter()
                    .any(|x| x["type"].as_str().is_some_and(|t| t.ends_with("models.Normalize")))
            })
        });
        Ok(Embedder {
            model,
            tokenizer,
            device: device.clone(),
            max_tokens,
            dim: config.hidden_size,
            pooling,
            normalize,
        })
    }

    /// Token ids of each input (with the model's special tokens): what is billed and encoded.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>, EmbedError> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                if text.is_empty() {
                    return Err(EmbedError::Empty { index });
                }
                let enc = self
                    .tokenizer
                    .encode(text.as_str(), true)
                    .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
                let ids = enc.get_ids().to_vec();
                if ids.len() > self.max_tokens {
                    return Err(EmbedError::TooLong {
                        index,
                        tokens: ids.len(),
                        max: self.max_tokens,
                    });
                }
                Ok(ids)
            })
            .collect()
    }

    /// One vector per tokenized input, in order. Inputs of similar length are encoded together
    /// (sorted by length, padded to the longest of each chunk, padding masked out).
    pub fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_until(inputs, None)
    }

    /// [`Embedder::embed`], giving up with [`EmbedError::TimedOut`] if `deadline` passes before
    /// the last chunk starts (partial vectors are no answer, so nothing is returned).
    pub fn embed_until(
        &self,
        inputs: &[Vec<u32>],
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].len());
        let mut out = vec![Vec::new(); inputs.len()];
        for (n, chunk) in order.chunks(CHUNK).enumerate() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(EmbedError::TimedOut { done: n * CHUNK, total: inputs.len() });
            }
            let longest = chunk.iter().map(|&i| inputs[i].len()).max().unwrap_or(0).max(1);
            let mut ids = Vec::with_capacity(chunk.len() * longest);
            let mut mask = Vec::with_capacity(chunk.len() * longest);
            for &i in chunk {
                let seq = &inputs[i];
                ids.extend(seq.iter().copied());
                ids.extend(std::iter::repeat_n(0u32, longest - seq.len()));
                mask.extend(std::iter::repeat_n(1u32, seq.len()));
                mask.extend(std::iter::repeat_n(0u32, longest - seq.len()));
            }
            let shape = (chunk.len(), longest);
            let ids = Tensor::from_vec(ids, shape, &self.device)?;
            let mask = Tensor::from_vec(mask, shape, &self.device)?;
            let types = ids.zeros_like()?;
            let states = self.model.forward(&ids, &types, Some(&mask))?;
            let pooled = match self.pooling {
                Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1)?,
                Pooling::Mean => {
                    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                    let sum = states.broadcast_mul(&m)?.sum(1)?;
                    let count = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                    sum.broadcast_div(&count)?
                }
            };
            let pooled = if self.normalize {
                let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
                pooled.broadcast_div(&norm)?
            } else {
                pooled
            };
            let rows: Vec<Vec<f32>> = pooled.to_dtype(DType::F32)?.to_vec2()?;
            for (&i, row) in chunk.iter().zip(rows) {
                out[i] = row;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::default_embedding_model_path;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn model() -> Option<Embedder> {
        let Some(dir) = default_embedding_model_path() else {
            eprintln!("skipped: run `make model` for models/all-MiniLM-L6-v2");
            return None;
        };
        Some(Embedder::load(&dir, &Device::Cpu).expect("loads"))
    }

    #[test]
    fn the_default_model_reads_its_settings() {
        let Some(e) = model() else { return };
        assert_eq!((e.dim, e.max_tokens, e.pooling, e.normalize), (384, 256, Pooling::Mean, true));
    }

    /// Ids of the model's own WordPiece vocabulary (lower-cased, `[CLS]` … `[SEP]`), as the
    /// reference `tokenizers` package gives them for this tokenizer.json.
    #[test]
    fn tokenizes_with_the_models_vocabulary() {
        let Some(e) = model() else { return };
        let ids = e.tokenize(&["Hello, World!".into()]).expect("tokenizes");
        assert_eq!(ids, vec![vec![101, 7592, 1010, 2088, 999, 102]]);
        let long = "word ".repeat(300);
        match e.tokenize(&["ok".into(), long]) {
            Err(EmbedError::TooLong { index: 1, tokens: 302, max: 256 }) => {}
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert!(matches!(e.tokenize(&[String::new()]), Err(EmbedError::Empty { index: 0 })));
    }

    /// The first values of a vector from the independent numpy implementation
    /// (`clients/python/minilm_reference.py`, float64 throughout).
    #[test]
    fn matches_the_numpy_reference() {
        let Some(e) = model() else { return };
        let text = "The quick brown fox jumps over the lazy dog.";
        let ids = e.tokenize(&[text.into()]).expect("tokenizes");
        assert_eq!(
            ids[0],
            [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102]
        );
        let v = &e.embed(&ids).expect("embeds")[0];
        let reference =
            [0.043934, 0.058934, 0.048178, 0.077548, 0.026744, -0.03763, -0.002605, -0.059943];
        for (i, (got, want)) in v.iter().zip(reference).enumerate() {
            assert!((got - want).abs() < 2e-5, "value {i}: {got} vs {want}");
        }
    }

    #[test]
    fn a_passed_deadline_stops_before_the_next_chunk() {
        let Some(e) = model() else { return };
        let texts = vec!["Some words to embed.".to_string(); CHUNK + 1];
        let ids = e.tokenize(&texts).expect("tokenizes");
        let past = Instant::now();
        match e.embed_until(&ids, Some(past)) {
            Err(EmbedError::TimedOut { done: 0, total }) => assert_eq!(total, CHUNK + 1),
            other => panic!("expected a timeout, got {:?}", other.map(|v| v.len())),
        }
        let later = Instant::now() + std::time::Duration::from_secs(600);
        let all = e.embed_until(&ids, Some(later)).expect("in time");
        assert_eq!(all, e.embed(&ids).expect("embeds"));
    }

    #[test]
    fn vectors_are_unit_length_similar_for_similar_texts_and_batch_independent() {
        let Some(e) = model() else { return };
        let texts: Vec<String> = [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The new movie is awesome and everybody should watch it.",
            "Stocks fell sharply on Monday after the central bank raised interest rates again.",
        ]
        .map(String::from)
        .to_vec();
        let ids = e.tokenize(&texts).expect("tokenizes");
        let batch = e.embed(&ids).expect("embeds");
        assert_eq!(batch.len(), 4);
        for v in &batch {
            assert_eq!(v.len(), 384);
            let norm = cosine(v, v).sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        }
        let near = cosine(&batch[0], &batch[1]);
        assert!(near > 0.6, "paraphrases: {near}");
        for far in [cosine(&batch[0], &batch[2]), cosine(&batch[0], &batch[3])] {
            assert!(far < near - 0.4, "unrelated {far} vs paraphrase {near}");
        }
        // Padding inside a batch changes nothing: each input alone gives the same vector.
        for (i, one) in ids.iter().enumerate() {
            let alone = e.embed(std::slice::from_ref(one)).expect("embeds");
            let diff =
                alone[0].iter().zip(&batch[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-5, "input {i}: batched and alone differ by {diff}");
        }
    }
}
