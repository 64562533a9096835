//! `--recount-model`: count the tokens of a request and its answer with the model's own tokenizer
//! and chat template, and hold the provider's receipt to them. `--recount-embedding-model` does
//! the same for embeddings, whose input count must match exactly.
//!
//! The prompt count must match exactly (same tokenizer, same template). The completion can only
//! be bounded: re-tokenizing generated text need not give back the very tokens the model chose,
//! so the receipt may claim at most a tenth (plus two) more than the recount, and never more than
//! the `max_tokens` asked for.

use compute_inference::{read_gguf_metadata, ChatMessage, ChatTemplate, ModelTokenizer};
use compute_primitives::Receipt;
use serde_json::Value;
use std::path::Path;

/// The model's tokenizer and chat template.
pub struct Recounter {
    tokenizer: ModelTokenizer,
    template: ChatTemplate,
}

impl Recounter {
    /// The tokens of a fine-tuning dataset as a provider truncating at `max_seq_len` counts
    /// them (what a job is priced on).
    pub fn dataset_tokens(&self, jsonl: &[u8], max_seq_len: usize) -> anyhow::Result<u64> {
        use compute_inference::finetune::{count_tokens, DatasetLimits};
        let limits = DatasetLimits { max_seq_len, ..DatasetLimits::default() };
        Ok(count_tokens(jsonl, &self.tokenizer, &self.template, &limits)?)
    }

    /// Read the tokenizer from a GGUF file (the one the provider serves).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let content = read_gguf_metadata(path)?;
        Ok(Recounter {
            tokenizer: ModelTokenizer::from_gguf(&content)?,
            template: ChatTemplate::default(),
        })
    }

    /// Check the receipt's token counts against `messages` (the OpenAI `messages` array sent),
    /// the `text` received and the `max_tokens` asked for.
    pub fn check(
        &self,
        messages: &Value,
        max_tokens: Option<u64>,
        text: &str,
        r: &Receipt,
    ) -> Result<(), String> {
        let msgs = ChatMessage::all_from_openai(messages)
            .map_err(|e| format!("the request's messages cannot be recounted: {e}"))?;
        let count = |s: &str| self.tokenizer.encode(s).map(|ids| ids.len() as u64);
        let prompt = count(&self.template.render(&msgs)).map_err(|e| e.to_string())?;
        if r.input_tokens != prompt {
            return Err(format!(
                "it counts {} prompt tokens where the model's tokenizer counts {prompt}",
                r.input_tokens
            ));
        }
        let completion = count(text).map_err(|e| e.to_string())?;
        let bound = completion + completion / 10 + 2;
        if r.output_tokens > bound || max_tokens.is_some_and(|m| r.output_tokens > m) {
            return Err(format!(
                "it counts {} completion tokens for a text of {completion} tokens{}",
                r.output_tokens,
                max_tokens.map(|m| format!(" (max_tokens {m})")).unwrap_or_default()
            ));
        }
        Ok(())
    }
}

/// An embedding model's tokenizer (from its sentence-transformers directory).
pub struct EmbeddingRecounter {
    tokenizer: tokenizers::Tokenizer,
}

impl EmbeddingRecounter {
    /// Read `tokenizer.json` from the directory of the model the provider serves.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Ok(EmbeddingRecounter { tokenizer: compute_inference::load_embedding_tokenizer(dir)? })
    }

    /// Check the receipt's input count against `input` (the OpenAI `input` sent: a string or a
    /// list of strings); an embedding has no output tokens.
    pub fn check(&self, input: &Value, r: &Receipt) -> Result<(), String> {
        let texts: Vec<&str> = match input {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items
                .iter()
                .map(|x| x.as_str().ok_or("the request's input is not text"))
                .collect::<Result<_, _>>()?,
            _ => return Err("the request has no input to recount".into()),
        };
        let mut count = 0u64;
        for t in texts {
            let enc = self.tokenizer.encode(t, true).map_err(|e| e.to_string())?;
            count += enc.get_ids().len() as u64;
        }
        if r.input_tokens != count || r.output_tokens != 0 {
            return Err(format!(
                "it counts {} input and {} output tokens where the model's tokenizer counts {count} and 0",
                r.input_tokens, r.output_tokens
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compute_primitives::AccountId;
    use polkadot_sdk::sp_core::H256;
    use serde_json::json;

    fn receipt(input_tokens: u64, output_tokens: u64) -> Receipt {
        Receipt {
            user: AccountId::new([1; 32]),
            provider: AccountId::new([2; 32]),
            service_id: 0,
            nonce: 1,
            request_hash: H256::zero(),
            response_hash: H256::zero(),
            proof_hash: Default::default(),
            model_hash: Default::default(),
            input_tokens,
            output_tokens,
            fee: 0,
            total: 0,
        }
    }

    #[test]
    fn embedding_receipts_are_held_to_the_recount() {
        let dir = compute_inference::default_embedding_model_path()
            .expect("the embedding model is missing: run `make model`");
        let rc = EmbeddingRecounter::load(&dir).unwrap();
        // [CLS] hello , world ! [SEP] and [CLS] hi [SEP].
        let input = json!(["Hello, World!", "hi"]);
        assert_eq!(rc.check(&input, &receipt(9, 0)), Ok(()));
        assert_eq!(rc.check(&json!("Hello, World!"), &receipt(6, 0)), Ok(()));
        assert!(rc.check(&input, &receipt(10, 0)).is_err(), "one token too many");
        assert!(rc.check(&input, &receipt(9, 1)).is_err(), "an output token billed");
        assert!(rc.check(&json!([[1, 2]]), &receipt(2, 0)).is_err(), "not text");
    }

    #[test]
    fn receipts_are_held_to_the_recount() {
        let path = compute_inference::default_model_path()
            .expect("the model is missing: run `make model`");
        let rc = Recounter::load(&path).unwrap();
        let messages = json!([{ "role": "user", "content": "What is 12 + 30?" }]);
        let prompt =
            rc.tokenizer
                .encode(&rc.template.render(&[ChatMessage {
                    role: "user".into(),
                    content: "What is 12 + 30?".into(),
                }]))
                .unwrap()
                .len() as u64;
        let text = "12 + 30 is 42.";
        let out = rc.tokenizer.encode(text).unwrap().len() as u64;
        assert_eq!(rc.check(&messages, Some(64), text, &receipt(prompt, out)), Ok(()));
        // One prompt token too many, a padded completion, more than max_tokens: all refused.
        assert!(rc.check(&messages, Some(64), text, &receipt(prompt + 1, out)).is_err());
        assert!(rc.check(&messages, Some(64), text, &receipt(prompt, out * 2 + 3)).is_err());
        assert!(rc.check(&messages, Some(out - 1), text, &receipt(prompt, out)).is_err());
        assert!(rc.check(&json!("nope"), None, text, &receipt(prompt, out)).is_err());
    }
}
