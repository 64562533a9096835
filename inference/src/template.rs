//! The ChatML chat template (SmolLM2, Qwen and others), with SmolLM2's default system prompt.

use serde::{Deserialize, Serialize};

/// One message of a chat request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Why a message of OpenAI's chat API cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// A role other than `system`, `user`, `assistant`, `developer`.
    Role(String),
    /// Content that is neither a string nor a list of text parts.
    Content,
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::Role(r) => write!(f, "unknown role `{r}`"),
            MessageError::Content => f.write_str("message content must be a string or text parts"),
        }
    }
}

impl std::error::Error for MessageError {}

impl ChatMessage {
    /// A message of OpenAI's chat API as the worker renders it: `developer` is served as
    /// `system`; content is a string, or text parts joined (other parts ignored). The worker,
    /// the CLI's token recount and its audit all read requests through this.
    pub fn from_openai(role: &str, content: &serde_json::Value) -> Result<Self, MessageError> {
        if !matches!(role, "system" | "user" | "assistant" | "developer") {
            return Err(MessageError::Role(role.to_string()));
        }
        let content = match content {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            _ => return Err(MessageError::Content),
        };
        let role = if role == "developer" { "system" } else { role };
        Ok(ChatMessage { role: role.to_string(), content })
    }

    /// Every message of an OpenAI `messages` array.
    pub fn all_from_openai(messages: &serde_json::Value) -> Result<Vec<Self>, MessageError> {
        let list = messages.as_array().ok_or(MessageError::Content)?;
        list.iter()
            .map(|m| {
                let role = m.get("role").and_then(serde_json::Value::as_str).unwrap_or_default();
                Self::from_openai(role, m.get("content").unwrap_or(&serde_json::Value::Null))
            })
            .collect()
    }
}

/// A ChatML template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// System prompt used when the conversation has none.
    pub default_system: Option<String>,
}

impl Default for ChatTemplate {
    fn default() -> Self {
        ChatTemplate {
            default_system: Some(
                "You are a helpful AI assistant named SmolLM, trained by Hugging Face".into(),
            ),
        }
    }
}

impl ChatTemplate {
    /// The prompt for `messages`, ending with the opened assistant turn.
    pub fn render(&self, messages: &[ChatMessage]) -> String {
        let mut out = String::new();
        let has_system = messages.first().is_some_and(|m| m.role == "system");
        if let (false, Some(system)) = (has_system, &self.default_system) {
            push_turn(&mut out, "system", system);
        }
        for m in messages {
            push_turn(&mut out, &m.role, &m.content);
        }
        out.push_str("<|im_start|>assistant\n");
        out
    }
}

fn push_turn(out: &mut String, role: &str, content: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str("<|im_end|>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn chatml_with_and_without_a_system_turn() {
        let t = ChatTemplate::default();
        assert_eq!(
            t.render(&[msg("user", "Hi")]),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&[msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello")]),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
