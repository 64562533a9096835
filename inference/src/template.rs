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

/// What opens a turn: the start-of-turn control token; the role and a newline follow.
pub const TURN_START: &str = "<|im_start|>";
/// What closes a turn's content: the end-of-turn control token (a stop token of generation);
/// a newline follows.
pub const TURN_END: &str = "<|im_end|>";

impl ChatTemplate {
    /// The prompt for `messages`, ending with the opened assistant turn.
    pub fn render(&self, messages: &[ChatMessage]) -> String {
        let mut out = String::new();
        for (role, content) in self.turns(messages) {
            push_turn(&mut out, role, content);
        }
        out.push_str(&Self::turn_header("assistant"));
        out
    }

    /// The turns [`Self::render`] writes for `messages`, as `(role, content)`: the default
    /// system prompt first when the conversation has no system message of its own, then every
    /// message. Fine-tuning renders training conversations from this, so that they read exactly
    /// as the served prompt of the same conversation.
    pub fn turns<'a>(&'a self, messages: &'a [ChatMessage]) -> Vec<(&'a str, &'a str)> {
        let has_system = messages.first().is_some_and(|m| m.role == "system");
        let default = match (has_system, &self.default_system) {
            (false, Some(system)) => Some(("system", system.as_str())),
            _ => None,
        };
        default
            .into_iter()
            .chain(messages.iter().map(|m| (m.role.as_str(), m.content.as_str())))
            .collect()
    }

    /// What opens a turn of `role`, before its content: `<|im_start|>{role}\n`.
    pub fn turn_header(role: &str) -> String {
        format!("{TURN_START}{role}\n")
    }

    /// One whole turn: `<|im_start|>{role}\n{content}<|im_end|>\n`.
    pub fn turn_text(role: &str, content: &str) -> String {
        let mut out = String::new();
        push_turn(&mut out, role, content);
        out
    }
}

fn push_turn(out: &mut String, role: &str, content: &str) {
    out.push_str(TURN_START);
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str(TURN_END);
    out.push('\n');
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

    #[test]
    fn turns_are_what_render_writes() {
        let t = ChatTemplate::default();
        for msgs in [
            vec![msg("user", "Hi"), msg("assistant", "Hello")],
            vec![msg("system", "Be brief."), msg("user", "Hi")],
            vec![],
        ] {
            let joined: String =
                t.turns(&msgs).iter().map(|(r, c)| ChatTemplate::turn_text(r, c)).collect();
            assert_eq!(joined + &ChatTemplate::turn_header("assistant"), t.render(&msgs));
        }
        assert_eq!(t.turns(&[msg("user", "Hi")])[0].0, "system");
        let bare = ChatTemplate { default_system: None };
        assert_eq!(bare.turns(&[msg("user", "Hi")]), vec![("user", "Hi")]);
    }
}
