//! Fine-tuning datasets: OpenAI's chat fine-tuning JSONL, rendered with the model's chat
//! template and tokenized into training sequences with a loss mask.
//!
//! Builds without the `engine` feature: a client counts a dataset's tokens with it to price a
//! job, exactly as the provider that trains on it counts them.
//!
//! # Which tokens count
//!
//! An example (one JSONL line) is rendered as the ChatML conversation serving would render for
//! the same messages ([`ChatTemplate::turns`]): the default system turn first when the
//! conversation has none of its own, then every message as
//! `<|im_start|>{role}\n{content}<|im_end|>\n`. Its tokens are that text tokenized with the
//! model's tokenizer, cut to the first `max_seq_len` tokens. **The dataset's token count is the
//! sum of those (truncated) lengths over all examples** — every token the training forward pass
//! reads, role headers, end-of-turn tokens and the newline after each turn included. A job's
//! trained tokens are that count times the epochs.
//!
//! # Which tokens are learnt
//!
//! The loss is on assistant tokens only: the mask is true on the tokens of the content of each
//! trained assistant message and on the `<|im_end|>` that closes it (so the model learns to end
//! its turn); false on system and user turns, on role headers and on the newline between turns.
//! An assistant message with `"weight": 0` (OpenAI's field) stays in the context but is not
//! learnt.

use crate::{
    template::{TURN_END, TURN_START},
    tokenizer::{ModelTokenizer, TokenizerError},
    ChatMessage, ChatTemplate,
};
use serde::Deserialize;

/// Bounds on a dataset, which comes from an untrusted user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetLimits {
    /// Most examples (non-blank lines).
    pub max_examples: usize,
    /// Longest line in bytes.
    pub max_line_bytes: usize,
    /// Most messages in one example.
    pub max_messages: usize,
    /// Tokens kept of each example (longer ones are cut to this many).
    pub max_seq_len: usize,
}

impl Default for DatasetLimits {
    fn default() -> Self {
        DatasetLimits {
            max_examples: 50_000,
            max_line_bytes: 1 << 20,
            max_messages: 256,
            max_seq_len: 2048,
        }
    }
}

/// Why a dataset was refused.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A line (1-based, as an editor shows it) is not a usable example.
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("line {line} is {bytes} bytes long, more than the limit of {max}")]
    LineTooLong { line: usize, bytes: usize, max: usize },
    #[error("the dataset has more than {max} examples")]
    TooManyExamples { max: usize },
    #[error("the dataset has no example")]
    Empty,
    #[error("max_seq_len must be at least 2 tokens")]
    SeqLen,
    #[error("line {line}: tokenizer: {source}")]
    Tokenizer { line: usize, source: TokenizerError },
}

/// One line of OpenAI's chat fine-tuning format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    messages: Vec<RawMessage>,
}

/// One message of a line. `name` is accepted and ignored (ChatML has no place for it); tool
/// calls and other fields are refused rather than silently dropped.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    role: String,
    content: serde_json::Value,
    #[serde(default)]
    weight: Option<u8>,
    #[serde(default, rename = "name")]
    _name: Option<String>,
}

/// One example as parsed: its messages and which of them are learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The line it came from (1-based).
    pub line: usize,
    /// Its messages (`developer` already read as `system`).
    pub messages: Vec<ChatMessage>,
    /// Per message: an assistant message with weight 1 (the default).
    pub trained: Vec<bool>,
}

/// One training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The line it came from (1-based).
    pub line: usize,
    /// Token ids of the rendered conversation, at most `max_seq_len`.
    pub tokens: Vec<u32>,
    /// Per token: whether the loss is taken on predicting it (assistant content and its
    /// closing `<|im_end|>`). Never true on the first token, which nothing predicts.
    pub mask: Vec<bool>,
    /// Whether the conversation was cut to `max_seq_len` tokens.
    pub truncated: bool,
}

impl Example {
    /// Tokens the loss is taken on.
    pub fn loss_tokens(&self) -> usize {
        self.mask.iter().filter(|m| **m).count()
    }
}

/// A tokenized dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// The examples, in file order.
    pub examples: Vec<Example>,
}

impl Dataset {
    /// Parse and tokenize a JSONL dataset (see the module documentation).
    pub fn from_jsonl(
        jsonl: &[u8],
        tokenizer: &ModelTokenizer,
        template: &ChatTemplate,
        limits: &DatasetLimits,
    ) -> Result<Self, DatasetError> {
        let conversations = parse_jsonl(jsonl, limits)?;
        let examples = conversations
            .iter()
            .map(|c| tokenize(c, tokenizer, template, limits.max_seq_len))
            .collect::<Result<_, _>>()?;
        Ok(Dataset { examples })
    }

    /// The dataset's token count: every token of every example, as truncated (what a job is
    /// priced on, per epoch).
    pub fn token_count(&self) -> u64 {
        self.examples.iter().map(|e| e.tokens.len() as u64).sum()
    }

    /// Tokens the loss is taken on, over all examples.
    pub fn loss_token_count(&self) -> u64 {
        self.examples.iter().map(|e| e.loss_tokens() as u64).sum()
    }
}

/// The token count of a JSONL dataset: the sum over its examples of their tokens as truncated
/// to `limits.max_seq_len` (see the module documentation). A job trains on this many tokens per
/// epoch and is priced on `count × epochs`.
pub fn count_tokens(
    jsonl: &[u8],
    tokenizer: &ModelTokenizer,
    template: &ChatTemplate,
    limits: &DatasetLimits,
) -> Result<u64, DatasetError> {
    Dataset::from_jsonl(jsonl, tokenizer, template, limits).map(|d| d.token_count())
}

/// Parse OpenAI's chat fine-tuning JSONL: one `{"messages": [{"role", "content"}, ...]}` per
/// line; blank lines are skipped. Each example needs at least one assistant message to learn;
/// roles are `system`, `developer` (read as `system`), `user`, `assistant`; content is a string
/// or a list of text parts; content holding the template's control tokens is refused (it would
/// change the conversation's turns).
pub fn parse_jsonl(
    jsonl: &[u8],
    limits: &DatasetLimits,
) -> Result<Vec<Conversation>, DatasetError> {
    if limits.max_seq_len < 2 {
        return Err(DatasetError::SeqLen);
    }
    let mut out = Vec::new();
    for (i, raw) in jsonl.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        if raw.len() > limits.max_line_bytes {
            return Err(DatasetError::LineTooLong {
                line,
                bytes: raw.len(),
                max: limits.max_line_bytes,
            });
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if out.len() == limits.max_examples {
            return Err(DatasetError::TooManyExamples { max: limits.max_examples });
        }
        out.push(parse_line(line, raw, limits)?);
    }
    if out.is_empty() {
        return Err(DatasetError::Empty);
    }
    Ok(out)
}

fn parse_line(
    line: usize,
    raw: &[u8],
    limits: &DatasetLimits,
) -> Result<Conversation, DatasetError> {
    let bad = |reason: String| DatasetError::Line { line, reason };
    let text = std::str::from_utf8(raw).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    let parsed: Line = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if parsed.messages.is_empty() {
        return Err(bad("no messages".into()));
    }
    if parsed.messages.len() > limits.max_messages {
        return Err(bad(format!(
            "{} messages, more than the limit of {}",
            parsed.messages.len(),
            limits.max_messages
        )));
    }
    let mut messages = Vec::with_capacity(parsed.messages.len());
    let mut trained = Vec::with_capacity(parsed.messages.len());
    for (k, m) in parsed.messages.iter().enumerate() {
        let at = |reason: String| bad(format!("message {}: {reason}", k + 1));
        let msg = ChatMessage::from_openai(&m.role, &m.content).map_err(|e| at(e.to_string()))?;
        if msg.content.contains(TURN_START) || msg.content.contains(TURN_END) {
            return Err(at(format!("content holds a control token ({TURN_START} or {TURN_END})")));
        }
        let weight = match (m.weight, msg.role.as_str()) {
            (None, _) => 1,
            (Some(w @ (0 | 1)), "assistant") => w,
            (Some(_), "assistant") => return Err(at("weight must be 0 or 1".into())),
            (Some(_), _) => return Err(at("only assistant messages take a weight".into())),
        };
        trained.push(msg.role == "assistant" && weight == 1);
        messages.push(msg);
    }
    if !trained.contains(&true) {
        return Err(bad("no assistant message to learn".into()));
    }
    Ok(Conversation { line, messages, trained })
}

/// Tokenize one conversation: its tokens as the template renders it, the loss mask on its
/// trained assistant messages, cut to `max_seq_len` tokens.
///
/// The template's control tokens split the text before the tokenizer's other rules apply, so
/// the text tokenizes turn by turn, each turn as `<|im_start|>…<|im_end|>` then the newline:
/// the concatenation is the tokenization of the whole conversation. Inside an assistant turn
/// the learnt tokens start where the turn's tokens stop agreeing with those of its header
/// `<|im_start|>assistant\n` alone (normally right after it; earlier if the content's first
/// characters merge with the header's newline, so that a token mixing the two is learnt).
pub fn tokenize(
    conversation: &Conversation,
    tokenizer: &ModelTokenizer,
    template: &ChatTemplate,
    max_seq_len: usize,
) -> Result<Example, DatasetError> {
    let line = conversation.line;
    let encode = |text: &str| {
        tokenizer.encode(text).map_err(|source| DatasetError::Tokenizer { line, source })
    };
    let header = encode(&ChatTemplate::turn_header("assistant"))?;
    let newline = encode("\n")?;
    let mut tokens: Vec<u32> = Vec::new();
    let mut mask: Vec<bool> = Vec::new();
    // The default system turn, if the template adds one, comes before the messages.
    let turns = template.turns(&conversation.messages);
    let offset = turns.len() - conversation.messages.len();
    for (k, (role, content)) in turns.iter().enumerate() {
        if tokens.len() >= max_seq_len {
            break; // Nothing more would be kept.
        }
        let learnt = k >= offset && conversation.trained.get(k - offset) == Some(&true);
        let mut body = ChatTemplate::turn_header(role);
        body.push_str(content);
        body.push_str(TURN_END);
        let ids = encode(&body)?;
        let start = if learnt {
            header.iter().zip(&ids).take_while(|(a, b)| a == b).count()
        } else {
            ids.len()
        };
        mask.extend((0..ids.len()).map(|i| i >= start));
        tokens.extend(ids);
        mask.extend(newline.iter().map(|_| false));
        tokens.extend(&newline);
    }
    let truncated = tokens.len() > max_seq_len;
    tokens.truncate(max_seq_len);
    mask.truncate(max_seq_len);
    if let Some(first) = mask.first_mut() {
        *first = false;
    }
    if !mask.contains(&true) {
        return Err(DatasetError::Line {
            line,
            reason: format!("no assistant token within the first {max_seq_len} tokens"),
        });
    }
    Ok(Example { line, tokens, mask, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::{Content, Value};

    /// A tokenizer over single letters, the byte-level space and newline, and the control
    /// tokens (no merges: one token per character).
    fn letters() -> ModelTokenizer {
        let mut vocab: Vec<String> =
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].iter().map(|s| s.to_string()).collect();
        vocab.extend(('a'..='z').map(|c| c.to_string()));
        vocab.extend(["Ġ", "Ċ", "."].iter().map(|s| s.to_string()));
        let n = vocab.len();
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("tokenizer.ggml.model".to_string(), Value::String("gpt2".into()));
        metadata.insert(
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(vocab.into_iter().map(Value::String).collect()),
        );
        metadata.insert("tokenizer.ggml.merges".to_string(), Value::Array(vec![]));
        metadata.insert(
            "tokenizer.ggml.token_type".to_string(),
            Value::Array((0..n).map(|i| Value::I32(if i < 3 { 3 } else { 1 })).collect()),
        );
        let content = Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata,
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        };
        ModelTokenizer::from_gguf(&content).unwrap()
    }

    fn bare() -> ChatTemplate {
        ChatTemplate { default_system: None }
    }

    fn limits(max_seq_len: usize) -> DatasetLimits {
        DatasetLimits { max_seq_len, ..DatasetLimits::default() }
    }

    /// The text of the tokens the mask selects.
    fn learnt(tok: &ModelTokenizer, e: &Example) -> String {
        let ids: Vec<u32> =
            e.tokens.iter().zip(&e.mask).filter(|(_, m)| **m).map(|(t, _)| *t).collect();
        // Decoding skips control tokens: count <|im_end|> apart.
        let ends = ids.iter().filter(|t| **t == 2).count();
        format!("{}+{ends}", tok.decode(&ids).unwrap())
    }

    #[test]
    fn masks_assistant_content_and_its_end_of_turn_only() {
        let tok = letters();
        let jsonl =
            br#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#;
        let d = Dataset::from_jsonl(jsonl, &tok, &bare(), &limits(64)).unwrap();
        let e = &d.examples[0];
        // <|im_start|> u s e r \n h i <|im_end|> \n
        // <|im_start|> a s s i s t a n t \n y o <|im_end|> \n
        assert_eq!(e.tokens.len(), 1 + 4 + 1 + 2 + 1 + 1 + 1 + 9 + 1 + 2 + 1 + 1);
        let want: Vec<bool> = (0..e.tokens.len()).map(|i| (21..24).contains(&i)).collect();
        assert_eq!(e.mask, want);
        assert_eq!(learnt(&tok, e), "yo+1");
        assert_eq!(e.loss_tokens(), 3);
        assert!(!e.truncated);
        // The tokens are the whole rendered conversation's.
        let whole = tok.encode(&ChatTemplate::turn_text("user", "hi")).unwrap();
        assert_eq!(e.tokens[..whole.len()], whole[..]);
    }

    #[test]
    fn multi_turn_with_default_system_prompt_and_weights() {
        let tok = letters();
        let template = ChatTemplate { default_system: Some("be nice".into()) };
        let jsonl = concat!(
            r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b b"},"#,
            r#"{"role":"user","content":"c"},{"role":"assistant","content":"dd","weight":0},"#,
            r#"{"role":"user","content":"e"},{"role":"assistant","content":[{"type":"text","text":"f"},{"type":"text","text":"g"}]}]}"#,
            "\n\n",
            r#"{"messages":[{"role":"developer","content":"x"},{"role":"user","content":"y"},{"role":"assistant","content":"z"}]}"#,
            "\n"
        );
        let d = Dataset::from_jsonl(jsonl.as_bytes(), &tok, &template, &limits(512)).unwrap();
        assert_eq!(d.examples.len(), 2);
        let (first, second) = (&d.examples[0], &d.examples[1]);
        assert_eq!((first.line, second.line), (1, 3));
        assert_eq!(learnt(&tok, first), "b bfg+2", "the weight-0 answer is context only");
        assert_eq!(learnt(&tok, second), "z+1");
        // Rendered as serving renders the conversation: default system turn first unless the
        // conversation has its own (developer is system).
        let msgs = |c: &[(&str, &str)]| -> Vec<ChatMessage> {
            c.iter()
                .map(|(r, t)| ChatMessage { role: r.to_string(), content: t.to_string() })
                .collect()
        };
        let prompt = template.render(&msgs(&[("user", "a")]));
        let ids = tok.encode(&prompt).unwrap();
        assert_eq!(
            first.tokens[..ids.len()],
            ids[..],
            "the first answer follows the served prompt"
        );
        let prompt = template.render(&msgs(&[("system", "x"), ("user", "y")]));
        let ids = tok.encode(&prompt).unwrap();
        assert_eq!(second.tokens[..ids.len()], ids[..]);
        assert_eq!(second.mask.iter().position(|m| *m), Some(ids.len()));
        let total = (first.tokens.len() + second.tokens.len()) as u64;
        assert_eq!(d.token_count(), total);
        assert_eq!(count_tokens(jsonl.as_bytes(), &tok, &template, &limits(512)).unwrap(), total);
    }

    #[test]
    fn truncation_is_counted_as_truncated() {
        let tok = letters();
        let jsonl = br#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"abcdefghij"}]}"#;
        let full = Dataset::from_jsonl(jsonl, &tok, &bare(), &limits(512)).unwrap();
        assert_eq!(full.examples[0].tokens.len(), 33);
        let cut = Dataset::from_jsonl(jsonl, &tok, &bare(), &limits(26)).unwrap();
        let e = &cut.examples[0];
        assert!(e.truncated);
        assert_eq!((e.tokens.len(), e.mask.len()), (26, 26));
        assert_eq!(e.tokens[..], full.examples[0].tokens[..26]);
        assert_eq!(cut.token_count(), 26);
        assert_eq!(learnt(&tok, e), "abcde+0");
        // Cut before any assistant token: refused, naming the line.
        let err = Dataset::from_jsonl(jsonl, &tok, &bare(), &limits(20)).unwrap_err();
        assert!(matches!(err, DatasetError::Line { line: 1, .. }), "{err}");
    }

    #[test]
    fn bad_lines_are_refused_by_line_number() {
        let tok = letters();
        let good =
            r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#;
        let cases: [(&str, &str); 9] = [
            ("not json", "expected"),
            (r#"{"messages":[]}"#, "no messages"),
            (r#"{"messages":[{"role":"user","content":"a"}]}"#, "no assistant message"),
            (
                r#"{"messages":[{"role":"tool","content":"a"},{"role":"assistant","content":"b"}]}"#,
                "unknown role",
            ),
            (
                r#"{"messages":[{"role":"user","content":5},{"role":"assistant","content":"b"}]}"#,
                "content",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b","weight":2}]}"#,
                "weight",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a","weight":1},{"role":"assistant","content":"b"}]}"#,
                "weight",
            ),
            (
                r#"{"messages":[{"role":"user","content":"<|im_end|>"},{"role":"assistant","content":"b"}]}"#,
                "control token",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b","tool_calls":[]}]}"#,
                "unknown field",
            ),
        ];
        for (bad, why) in cases {
            let jsonl = format!("{good}\n\n{bad}\n{good}\n");
            let err =
                Dataset::from_jsonl(jsonl.as_bytes(), &tok, &bare(), &limits(64)).unwrap_err();
            let shown = err.to_string();
            assert!(matches!(err, DatasetError::Line { line: 3, .. }), "{bad}: {shown}");
            assert!(shown.contains(why), "{bad}: {shown}");
        }
        let invalid_utf8 = [good.as_bytes(), b"\n\xff\xfe\n"].concat();
        let err = Dataset::from_jsonl(&invalid_utf8, &tok, &bare(), &limits(64)).unwrap_err();
        assert!(matches!(err, DatasetError::Line { line: 2, .. }), "{err}");
    }

    #[test]
    fn limits_are_enforced() {
        let tok = letters();
        let good =
            r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#;
        let three = format!("{good}\n{good}\n{good}");
        let few = DatasetLimits { max_examples: 2, ..limits(64) };
        assert!(matches!(
            Dataset::from_jsonl(three.as_bytes(), &tok, &bare(), &few),
            Err(DatasetError::TooManyExamples { max: 2 })
        ));
        let short = DatasetLimits { max_line_bytes: 20, ..limits(64) };
        assert!(matches!(
            Dataset::from_jsonl(three.as_bytes(), &tok, &bare(), &short),
            Err(DatasetError::LineTooLong { line: 1, .. })
        ));
        let chatty = DatasetLimits { max_messages: 1, ..limits(64) };
        assert!(matches!(
            Dataset::from_jsonl(three.as_bytes(), &tok, &bare(), &chatty),
            Err(DatasetError::Line { line: 1, .. })
        ));
        assert!(matches!(
            Dataset::from_jsonl(b"\n \n", &tok, &bare(), &limits(64)),
            Err(DatasetError::Empty)
        ));
        assert!(matches!(
            Dataset::from_jsonl(good.as_bytes(), &tok, &bare(), &limits(1)),
            Err(DatasetError::SeqLen)
        ));
    }

    /// On the real SmolLM2 tokenizer (when downloaded): an example's tokens are those of the
    /// whole rendered conversation, and the first answer starts right after the served prompt.
    #[test]
    fn real_tokenizer_renders_as_serving_does() {
        let Some(path) = crate::default_model_path() else {
            eprintln!("skipped: model not downloaded (make model)");
            return;
        };
        let content = crate::read_gguf_metadata(&path).unwrap();
        let tok = ModelTokenizer::from_gguf(&content).unwrap();
        let template = ChatTemplate::default();
        let jsonl = br#"{"messages":[{"role":"user","content":"What is a zorblax?"},{"role":"assistant","content":" A zorblax is a blue fruit.\n\n  Really."},{"role":"user","content":"Sure? 123"},{"role":"assistant","content":"\nYes, 42 times."}]}"#;
        let d = Dataset::from_jsonl(jsonl, &tok, &template, &limits(512)).unwrap();
        let e = &d.examples[0];
        let c = &parse_jsonl(jsonl, &limits(512)).unwrap()[0];
        let whole: String = template
            .turns(&c.messages)
            .iter()
            .map(|(r, t)| ChatTemplate::turn_text(r, t))
            .collect();
        assert_eq!(e.tokens, tok.encode(&whole).unwrap());
        let prompt = tok.encode(&template.render(&c.messages[..1])).unwrap();
        assert_eq!(e.tokens[..prompt.len()], prompt[..]);
        assert_eq!(e.mask.iter().position(|m| *m), Some(prompt.len()));
        assert_eq!(learnt(&tok, e), " A zorblax is a blue fruit.\n\n  Really.\nYes, 42 times.+2");
    }
}
