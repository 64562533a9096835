//! OpenAI's wire shapes: the request bodies the worker accepts (parsed and checked here, before
//! any work) and the response bodies it sends. Parsing is a pure function of the bytes, fuzzed
//! by `fuzz/` (which compiles these items from this file).

use crate::{
    billing::admission::Rejection,
    model::{ChatMessage, GenParams},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Temperatures below this are served as greedy decoding (0).
pub const MIN_TEMPERATURE: f64 = 1e-3;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: Value,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<RawMessage>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    n: Option<u32>,
}

pub struct Parsed {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub params: GenParams,
    pub stream: bool,
}

pub fn parse_chat(body: &[u8], limit: u64) -> Result<Parsed, Rejection> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request("invalid_json", format!("request body: {e}")))?;
    if req.messages.is_empty() {
        return Err(Rejection::bad_request("invalid_messages", "messages must not be empty"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        messages.push(
            ChatMessage::from_openai(&m.role, &m.content)
                .map_err(|e| Rejection::bad_request("invalid_messages", e.to_string()))?,
        );
    }
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(Rejection::bad_request("invalid_temperature", "temperature must be in 0..=2"));
    }
    // Below this, sampling is argmax anyway, and dividing logits by it overflows.
    let temperature = if temperature < MIN_TEMPERATURE { 0.0 } else { temperature };
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(Rejection::bad_request("invalid_top_p", "top_p must be in (0, 1]"));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(Rejection::bad_request("unsupported_n", "only n = 1 is served"));
    }
    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(Rejection::bad_request(
            "invalid_stop",
            format!("at most 4 stop strings of 1 to {MAX_STOP_BYTES} bytes"),
        ));
    }
    let max_tokens = req.max_completion_tokens.or(req.max_tokens).unwrap_or(limit).min(limit);
    if max_tokens == 0 {
        return Err(Rejection::bad_request("invalid_max_tokens", "max_tokens must be at least 1"));
    }
    let seed = req.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    Ok(Parsed {
        model: req.model,
        messages,
        params: GenParams { max_tokens: max_tokens as usize, temperature, top_p, seed, stop },
        stream: req.stream,
    })
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// How vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON numbers (each f32 written in its shortest exact form).
    Float,
    /// The little-endian f32 bytes, base64.
    Base64,
}

pub struct ParsedEmbedding {
    pub model: String,
    pub inputs: Vec<String>,
    pub encoding: Encoding,
}

pub fn parse_embedding(
    body: &[u8],
    dim: usize,
    max_inputs: usize,
) -> Result<ParsedEmbedding, Rejection> {
    let req: EmbeddingRequest = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request("invalid_json", format!("request body: {e}")))?;
    let inputs = match req.input {
        Value::String(s) => vec![s],
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.into_iter().filter_map(|x| x.as_str().map(String::from)).collect()
        }
        Value::Array(items) if items.iter().all(|x| x.is_number() || x.is_array()) => {
            return Err(Rejection::bad_request(
                "token_input_unsupported",
                "send text: token ids from another tokenizer cannot be embedded by this model",
            ))
        }
        _ => {
            return Err(Rejection::bad_request(
                "invalid_input",
                "input must be a string or an array of strings",
            ))
        }
    };
    if inputs.is_empty() || inputs.len() > max_inputs {
        return Err(Rejection::bad_request(
            "invalid_input",
            format!("input must hold 1 to {max_inputs} strings, not {}", inputs.len()),
        ));
    }
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(Rejection::bad_request(
                "invalid_encoding_format",
                format!("encoding_format `{other}` is neither `float` nor `base64`"),
            ))
        }
    };
    if req.dimensions.is_some_and(|d| d != dim) {
        return Err(Rejection::bad_request(
            "unsupported_dimensions",
            format!("this model's vectors have {dim} dimensions and cannot be shortened"),
        ));
    }
    Ok(ParsedEmbedding { model: req.model, inputs, encoding })
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    pub total_tokens: u64,
}

impl Usage {
    pub fn chat(prompt: u64, completion: u64) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: Some(completion),
            total_tokens: prompt + completion,
        }
    }

    pub fn embedding(tokens: u64) -> Self {
        Usage { prompt_tokens: tokens, completion_tokens: None, total_tokens: tokens }
    }
}

/// An assistant message, or the part of one a stream chunk adds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a completion (`message`) or of a stream chunk (`delta`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Choice {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Delta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    pub finish_reason: Option<String>,
}

/// `chat.completion` and `chat.completion.chunk`, with the protocol's receipt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<compute_client::wire::ReceiptJson>,
}

/// One vector of an embeddings answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub index: usize,
    /// Numbers, or base64 of the little-endian f32 bytes.
    pub embedding: Value,
}

/// The embeddings answer, with the protocol's receipt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
    pub receipt: compute_client::wire::ReceiptJson,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_bodies_are_validated() {
        let one = parse_embedding(br#"{"model":"m","input":"hi"}"#, 4, 8).expect("valid");
        assert_eq!((one.inputs, one.encoding), (vec!["hi".to_string()], Encoding::Float));
        let many = br#"{"model":"m","input":["a","b"],"encoding_format":"base64","dimensions":4}"#;
        let many = parse_embedding(many, 4, 8).expect("valid");
        assert_eq!((many.inputs.len(), many.encoding), (2, Encoding::Base64));
        let cases: [(&[u8], &str); 7] = [
            (b"[1,2", "invalid_json"),
            (br#"{"model":"m","input":[]}"#, "invalid_input"),
            (br#"{"model":"m","input":{"text":"x"}}"#, "invalid_input"),
            (br#"{"model":"m","input":["a","b","c"]}"#, "invalid_input"),
            (br#"{"model":"m","input":[[1,2],[3]]}"#, "token_input_unsupported"),
            (br#"{"model":"m","input":"x","encoding_format":"int8"}"#, "invalid_encoding_format"),
            (br#"{"model":"m","input":"x","dimensions":2}"#, "unsupported_dimensions"),
        ];
        for (body, code) in cases {
            let r = parse_embedding(body, 4, 2).err().expect("refused");
            assert_eq!((r.status, r.code), (400, code));
        }
    }

    #[test]
    fn chat_bodies_are_validated() {
        let ok = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stop":"x"}"#;
        let p = parse_chat(ok, 100).expect("valid");
        assert_eq!(p.params.max_tokens, 5);
        assert_eq!(p.params.stop, vec!["x".to_string()]);
        let long_stop = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"stop":"{}"}}"#,
            "s".repeat(MAX_STOP_BYTES + 1)
        );
        assert_eq!(
            parse_chat(long_stop.as_bytes(), 100).err().map(|r| r.code),
            Some("invalid_stop")
        );
        let tiny =
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1e-300}"#;
        assert_eq!(parse_chat(tiny, 100).expect("valid").params.temperature, 0.0);
        let cases: [(&[u8], &str); 6] = [
            (b"{not json", "invalid_json"),
            (br#"{"model":"m","messages":[]}"#, "invalid_messages"),
            (br#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#, "invalid_messages"),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "invalid_temperature",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "invalid_max_tokens",
            ),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#, "unsupported_n"),
        ];
        for (body, code) in cases {
            let r = parse_chat(body, 100).err().expect("refused");
            assert_eq!(r.code, code);
            assert_eq!(r.status, 400);
        }
        // max_tokens above the worker's limit is clipped, not refused.
        let big =
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":100000}"#;
        assert_eq!(parse_chat(big, 100).expect("valid").params.max_tokens, 100);
    }
}
