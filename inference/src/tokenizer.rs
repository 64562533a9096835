//! The tokenizer, rebuilt from a GGUF file's `tokenizer.ggml.*` metadata (byte-level BPE).
//!
//! The pre-tokenizer is SmolLM2's: every digit on its own, then the GPT-2 byte-level split with
//! no prefix space. A generic GPT-2 reading of the file (what candle's helpers do) merges digit
//! runs and adds a leading space, so prompts would be counted, and billed, differently from the
//! model's own tokenizer. `tests::golden_ids_on_the_real_model` pins ids produced by llama.cpp.

use candle_core::quantized::gguf_file::{Content, Value};
use std::{collections::HashMap, path::Path};
use tokenizers::{
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::bpe::BPE,
    pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence},
    AddedToken, Tokenizer,
};

/// GGUF token type of control tokens (`<|im_start|>` and the like).
const TOKEN_TYPE_CONTROL: i32 = 3;

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata lacks `{0}`")]
    Missing(&'static str),
    #[error("GGUF metadata `{0}` has the wrong type")]
    WrongType(&'static str),
    #[error("unsupported tokenizer model `{0}` (only byte-level BPE `gpt2` is supported)")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

/// A model's tokenizer plus the ids the server needs.
pub struct ModelTokenizer {
    inner: Tokenizer,
    /// End-of-sequence token ids (EOS and the chat template's end-of-turn).
    pub stop_ids: Vec<u32>,
}

fn strings(md: &HashMap<String, Value>, key: &'static str) -> Result<Vec<String>, TokenizerError> {
    let v = md.get(key).ok_or(TokenizerError::Missing(key))?;
    let arr = v.to_vec().map_err(|_| TokenizerError::WrongType(key))?;
    arr.iter().map(|x| x.to_string().cloned().map_err(|_| TokenizerError::WrongType(key))).collect()
}

impl ModelTokenizer {
    /// Build from GGUF metadata.
    pub fn from_gguf(content: &Content) -> Result<Self, TokenizerError> {
        let md = &content.metadata;
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .ok_or(TokenizerError::Missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(model.clone()));
        }
        let tokens = strings(md, "tokenizer.ggml.tokens")?;
        let merges = strings(md, "tokenizer.ggml.merges")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|_| TokenizerError::WrongType("tokenizer.ggml.token_type"))?
                .iter()
                .map(|x| x.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };

        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;

        let id_of = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
        let mut stop_ids: Vec<u32> = id_of("tokenizer.ggml.eos_token_id").into_iter().collect();
        if let Some(end) = tokens.iter().position(|t| t == "<|im_end|>") {
            stop_ids.push(end as u32);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(ModelTokenizer { inner, stop_ids })
    }

    /// Token ids of `text`; control tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// Text of `ids`, control tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }
}

/// The tokenizer of a sentence-transformers directory (`tokenizer.json`), as the embedder uses
/// it: special tokens added, no padding and no truncation (the file pads and truncates to a
/// fixed length; the worker batches inputs itself and refuses over-long ones).
pub fn load_embedding_tokenizer(dir: &Path) -> Result<Tokenizer, crate::LoadError> {
    let bad = |e: String| crate::LoadError::Format {
        path: dir.join("tokenizer.json").display().to_string(),
        reason: e,
    };
    let mut tokenizer =
        Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| bad(e.to_string()))?;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).map_err(|e| bad(e.to_string()))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids produced by llama.cpp (node-llama-cpp 3.22.1, `model.tokenize(text, true)`) for
    /// SmolLM2-135M-Instruct.Q4_1.gguf. Runs when the model is present (`make model`).
    #[test]
    fn golden_ids_on_the_real_model() {
        let Some(path) = crate::default_model_path() else {
            eprintln!("skipped: model not downloaded (make model)");
            return;
        };
        let mut f = std::fs::File::open(&path).expect("model file");
        let content = Content::read(&mut f).expect("gguf");
        let tok = ModelTokenizer::from_gguf(&content).expect("tokenizer");
        let golden: [(&str, &[u32]); 4] = [
            ("Hello, world! 12345 tokens", &[19556, 28, 905, 17, 216, 33, 34, 35, 36, 37, 17837]),
            (
                "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
                &[1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198],
            ),
            (" leading space", &[2899, 1898]),
            (
                "Ünïcödé 🚀 done.",
                &[142, 246, 94, 25972, 83, 7466, 84, 2756, 15107, 244, 218, 2294, 30],
            ),
        ];
        for (text, ids) in golden {
            assert_eq!(tok.encode(text).unwrap(), ids, "{text:?}");
            assert_eq!(
                tok.decode(ids).unwrap(),
                text.replace("<|im_start|>", "").replace("<|im_end|>", "")
            );
        }
        assert!(tok.stop_ids.contains(&2), "<|im_end|> stops generation: {:?}", tok.stop_ids);
    }
}
