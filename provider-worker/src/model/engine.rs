//! The generation loop: prompt in one forward pass, then one token at a time with the model's KV
//! cache, sampling by temperature/top-p/seed, stop tokens and stop strings, text streamed as it
//! becomes final. Each request gets its own copy of the model (weights shared, cache private),
//! so requests can run side by side.

use super::WeightFormat;
use super::{read_gguf, tokenizer::ModelTokenizer, ChatMessage, ChatTemplate, LoadError};
use candle_core::{DType, Device, Tensor};
use candle_transformers::{
    generation::{LogitsProcessor, Sampling},
    models::quantized_llama::{ModelWeights, MAX_SEQ_LEN},
};
use std::{
    io::Cursor,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
    #[error("prompt of {prompt} tokens does not fit the context of {context}")]
    PromptTooLong { prompt: usize, context: usize },
}

/// Sampling and length settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling mass; 1 disables it.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// Strings that end generation (not included in the output).
    pub stop: Vec<String>,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams { max_tokens: 256, temperature: 0.0, top_p: 1.0, seed: 0, stop: Vec::new() }
    }
}

/// Why generation ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    /// The consumer stopped listening.
    Cancelled,
}

impl FinishReason {
    /// The OpenAI name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::Cancelled => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The text returned to the user.
    pub text: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Tokens the model generated (an end-of-turn token is not counted).
    pub completion_tokens: u64,
    /// Why it ended.
    pub finish: FinishReason,
    /// Time until the first token was sampled.
    pub time_to_first_token: Duration,
    /// Total time.
    pub elapsed: Duration,
}

/// A loaded model ready to serve.
pub struct Engine {
    base: ModelWeights,
    /// The model's tokenizer.
    pub tokenizer: Arc<ModelTokenizer>,
    /// The chat template.
    pub template: ChatTemplate,
    device: Device,
    /// Longest prompt plus completion.
    pub context_len: usize,
    /// Tensors re-quantized at load.
    pub requantized: usize,
}

impl Engine {
    /// Load a llama-architecture GGUF.
    pub fn load(path: &Path, format: WeightFormat, device: Device) -> Result<Self, LoadError> {
        let loaded = read_gguf(path, format)?;
        let tokenizer = ModelTokenizer::from_gguf(&loaded.content)?;
        let context = loaded
            .content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map(|c| c as usize)
            .unwrap_or(MAX_SEQ_LEN);
        let shown = path.display().to_string();
        let base =
            ModelWeights::from_gguf(loaded.content, &mut Cursor::new(&loaded.bytes), &device)
                .map_err(|e| LoadError::Format { path: shown, reason: e.to_string() })?;
        Ok(Engine {
            base,
            tokenizer: Arc::new(tokenizer),
            template: ChatTemplate::default(),
            device,
            context_len: context.min(MAX_SEQ_LEN),
            requantized: loaded.requantized,
        })
    }

    /// Token ids of the chat prompt for `messages`.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenizer.encode(&self.template.render(messages))?)
    }

    /// Generate a completion of `prompt`. `on_text` receives each piece of final text; when it
    /// returns false, generation stops (finish [`FinishReason::Cancelled`]).
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation, EngineError> {
        let started = Instant::now();
        if prompt.is_empty() || prompt.len() >= self.context_len {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                context: self.context_len,
            });
        }
        let max_tokens = params.max_tokens.min(self.context_len - prompt.len());
        let sampling = if params.temperature <= 0.0 {
            Sampling::ArgMax
        } else if params.top_p < 1.0 {
            Sampling::TopP { p: params.top_p, temperature: params.temperature }
        } else {
            Sampling::All { temperature: params.temperature }
        };
        let mut sampler = LogitsProcessor::from_sampling(params.seed, sampling);
        let mut model = self.base.clone();
        let hold_back = params.stop.iter().map(|s| s.len()).max().unwrap_or(1).saturating_sub(1);

        let input = Tensor::new(prompt, &self.device)?.unsqueeze(0)?;
        let mut logits = model.forward(&input, 0)?;
        let mut pos = prompt.len();
        let mut ids: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut emitted = 0usize;
        let mut first_token = None;
        let finish = loop {
            if ids.len() >= max_tokens {
                break FinishReason::Length;
            }
            let next = sampler.sample(&logits.squeeze(0)?.to_dtype(DType::F32)?)?;
            first_token.get_or_insert_with(|| started.elapsed());
            if self.tokenizer.stop_ids.contains(&next) {
                break FinishReason::Stop;
            }
            ids.push(next);
            text = self.tokenizer.decode(&ids)?;
            if let Some(at) = params.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(at.max(emitted));
                break FinishReason::Stop;
            }
            // Emit what can no longer change: not an incomplete UTF-8 sequence (decoded as
            // U+FFFD) and not the tail that could still begin a stop string.
            let stable = if text.ends_with('\u{FFFD}') { text.len() - 3 } else { text.len() };
            let mut upto = stable.saturating_sub(hold_back);
            while upto > emitted && !text.is_char_boundary(upto) {
                upto -= 1;
            }
            if upto > emitted {
                if !on_text(&text[emitted..upto]) {
                    emitted = upto;
                    break FinishReason::Cancelled;
                }
                emitted = upto;
            }
            logits = model.forward(&Tensor::new(&[next], &self.device)?.unsqueeze(0)?, pos)?;
            pos += 1;
        };
        if finish != FinishReason::Cancelled && text.len() > emitted {
            on_text(&text[emitted..]);
        }
        Ok(Generation {
            text,
            prompt_tokens: prompt.len() as u64,
            completion_tokens: ids.len() as u64,
            finish,
            time_to_first_token: first_token.unwrap_or_else(|| started.elapsed()),
            elapsed: started.elapsed(),
        })
    }
}
