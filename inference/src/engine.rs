//! The generation scheduler: one thread owns the model and every running request. Each forward
//! pass ([`Llama::step`]) feeds every running request at once: the whole prompt of a request
//! that just arrived, one token of each request already generating. Concurrent users share each
//! pass over the weights instead of queueing behind one another, and a new request's prompt
//! joins the pass of those already running instead of stopping them. Per request:
//! sampling by temperature/top-p/seed, stop tokens and stop strings, text streamed as it becomes
//! final, cancellation when the consumer stops listening.

use super::llama::{Llama, SeqCache};
use super::proof::{ActivationProof, ProofBuilder};
use super::WeightFormat;
use super::{read_gguf, tokenizer::ModelTokenizer, ChatMessage, ChatTemplate, LoadError};
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

/// Requests decoded together by default.
pub const DEFAULT_MAX_BATCH: usize = 8;

/// Why generation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("model: {0}")]
    Model(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("the generation thread has stopped")]
    Stopped,
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
    /// The activation proof of the generated tokens.
    pub proof: ActivationProof,
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Model(e.to_string())
    }
}

impl From<super::tokenizer::TokenizerError> for EngineError {
    fn from(e: super::tokenizer::TokenizerError) -> Self {
        EngineError::Tokenizer(e.to_string())
    }
}

/// A loaded model ready to serve.
pub struct Engine {
    /// The model's tokenizer.
    pub tokenizer: Arc<ModelTokenizer>,
    /// The chat template.
    pub template: ChatTemplate,
    /// Longest prompt plus completion.
    pub context_len: usize,
    /// Tensors re-quantized at load.
    pub requantized: usize,
    /// Most requests decoded in one forward pass.
    pub max_batch: usize,
    jobs: mpsc::Sender<Job>,
}

/// What the scheduler sends back to a waiting [`Engine::generate`].
enum Event {
    Text(String),
    Done(Result<Generation, EngineError>),
}

struct Job {
    prompt: Vec<u32>,
    params: GenParams,
    cancel: Arc<AtomicBool>,
    events: mpsc::Sender<Event>,
    queued: Instant,
}

impl Engine {
    /// Load a llama-architecture GGUF and start its scheduler (batches of up to
    /// [`DEFAULT_MAX_BATCH`]).
    pub fn load(path: &Path, format: WeightFormat, device: Device) -> Result<Self, LoadError> {
        Self::load_with(path, format, device, DEFAULT_MAX_BATCH)
    }

    /// Load with at most `max_batch` requests decoded together.
    pub fn load_with(
        path: &Path,
        format: WeightFormat,
        device: Device,
        max_batch: usize,
    ) -> Result<Self, LoadError> {
        let loaded = read_gguf(path, format)?;
        let tokenizer = Arc::new(ModelTokenizer::from_gguf(&loaded.content)?);
        let shown = path.display().to_string();
        let model = Llama::from_gguf(&loaded.content, &loaded.bytes, &device)
            .map_err(|e| LoadError::Format { path: shown, reason: e.to_string() })?;
        let context_len = model.config.context;
        let (jobs, queue) = mpsc::channel();
        let max_batch = max_batch.max(1);
        let tok = Arc::clone(&tokenizer);
        std::thread::Builder::new()
            .name("generation".into())
            .spawn(move || Scheduler { model, tokenizer: tok, max_batch }.run(queue))
            .map_err(|e| LoadError::Format {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Engine {
            tokenizer,
            template: ChatTemplate::default(),
            context_len,
            requantized: loaded.requantized,
            max_batch,
            jobs,
        })
    }

    /// Token ids of the chat prompt for `messages`.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenizer.encode(&self.template.render(messages))?)
    }

    /// Generate a completion of `prompt` (blocking until it is done). `on_text` receives each
    /// piece of final text; when it returns false, generation stops (finish
    /// [`FinishReason::Cancelled`], the tokens generated so far still counted).
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation, EngineError> {
        if prompt.is_empty() || prompt.len() >= self.context_len {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                context: self.context_len,
            });
        }
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            prompt: prompt.to_vec(),
            params: params.clone(),
            cancel: Arc::clone(&cancel),
            events: tx,
            queued: Instant::now(),
        };
        self.jobs.send(job).map_err(|_| EngineError::Stopped)?;
        let mut listening = true;
        for event in rx {
            match event {
                Event::Text(piece) => {
                    if listening && !on_text(&piece) {
                        listening = false;
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
                Event::Done(result) => return result,
            }
        }
        Err(EngineError::Stopped)
    }
}

/// One running request.
struct Seq {
    job: Job,
    cache: SeqCache,
    sampler: LogitsProcessor,
    max_tokens: usize,
    hold_back: usize,
    ids: Vec<u32>,
    text: String,
    emitted: usize,
    first_token: Option<Duration>,
    /// What the next forward pass feeds: the prompt, then each sampled token.
    feed: Vec<u32>,
    proof: ProofBuilder,
}

struct Scheduler {
    model: Llama,
    tokenizer: Arc<ModelTokenizer>,
    max_batch: usize,
}

impl Scheduler {
    fn run(self, queue: mpsc::Receiver<Job>) {
        let mut active: Vec<Seq> = Vec::new();
        loop {
            if active.is_empty() {
                match queue.recv() {
                    Ok(job) => active.extend(self.admit(job)),
                    Err(_) => return,
                }
            }
            while active.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(job) => active.extend(self.admit(job)),
                    Err(_) => break,
                }
            }
            if active.is_empty() {
                continue;
            }
            let out = {
                let mut batch: Vec<(&mut SeqCache, &[u32])> =
                    active.iter_mut().map(|s| (&mut s.cache, &s.feed[..])).collect();
                self.model.step(&mut batch)
            };
            let out = match out {
                Ok(l) => l,
                Err(e) => {
                    let e = EngineError::from(e);
                    for s in active.drain(..) {
                        let _ = s.job.events.send(Event::Done(Err(e.clone())));
                    }
                    continue;
                }
            };
            let d = self.model.config.hidden;
            let mut i = 0;
            let mut row = 0;
            while i < active.len() {
                let hidden = &out.hidden[row * d..(row + 1) * d];
                let step = out
                    .logits
                    .get(row)
                    .map_err(EngineError::from)
                    .and_then(|l| self.accept(&mut active[i], &l, hidden));
                row += 1;
                match step {
                    Ok(None) => i += 1,
                    Ok(Some(finish)) => {
                        let s = active.remove(i);
                        self.finish(s, finish);
                    }
                    Err(e) => {
                        let s = active.remove(i);
                        let _ = s.job.events.send(Event::Done(Err(e)));
                    }
                }
            }
        }
    }

    /// A new request, its KV cache allocated and its prompt to be fed by the next pass; `None`
    /// (the error sent to the caller) when its cache cannot be allocated.
    fn admit(&self, job: Job) -> Option<Seq> {
        let p = &job.params;
        let context = self.model.config.context;
        let max_tokens = p.max_tokens.min(context.saturating_sub(job.prompt.len()));
        let sampling = if p.temperature <= 0.0 {
            Sampling::ArgMax
        } else if p.top_p < 1.0 {
            Sampling::TopP { p: p.top_p, temperature: p.temperature }
        } else {
            Sampling::All { temperature: p.temperature }
        };
        let hold_back = p.stop.iter().map(|s| s.len()).max().unwrap_or(1).saturating_sub(1);
        let sampler = LogitsProcessor::from_sampling(p.seed, sampling);
        let cache = match self.model.new_cache(job.prompt.len() + max_tokens) {
            Ok(cache) => cache,
            Err(e) => {
                let _ = job.events.send(Event::Done(Err(e.into())));
                return None;
            }
        };
        let feed = job.prompt.clone();
        Some(Seq {
            job,
            cache,
            sampler,
            max_tokens,
            hold_back,
            ids: Vec::new(),
            text: String::new(),
            emitted: 0,
            first_token: None,
            feed,
            proof: ProofBuilder::default(),
        })
    }

    /// Sample the next token from `logits` and stream what text became final; `Some` when the
    /// request is finished.
    /// `hidden` is the final hidden state the logits came from, recorded in the proof with the
    /// token it produced.
    fn accept(
        &self,
        s: &mut Seq,
        logits: &Tensor,
        hidden: &[f32],
    ) -> Result<Option<FinishReason>, EngineError> {
        if s.job.cancel.load(Ordering::Relaxed) {
            return Ok(Some(FinishReason::Cancelled));
        }
        if s.ids.len() >= s.max_tokens {
            return Ok(Some(FinishReason::Length));
        }
        let next = s.sampler.sample(&logits.to_dtype(DType::F32)?)?;
        s.first_token.get_or_insert_with(|| s.job.queued.elapsed());
        if self.tokenizer.stop_ids.contains(&next) {
            return Ok(Some(FinishReason::Stop));
        }
        s.ids.push(next);
        s.proof.push(next, hidden);
        s.text = self.tokenizer.decode(&s.ids)?;
        if let Some(at) = s.job.params.stop.iter().filter_map(|x| s.text.find(x.as_str())).min() {
            let keep = at.max(s.emitted);
            s.text.truncate(keep);
            return Ok(Some(FinishReason::Stop));
        }
        // Emit what can no longer change: not an incomplete UTF-8 sequence (decoded as U+FFFD)
        // and not the tail that could still begin a stop string.
        let text = &s.text;
        let stable = if text.ends_with('\u{FFFD}') { text.len() - 3 } else { text.len() };
        let mut upto = stable.saturating_sub(s.hold_back);
        while upto > s.emitted && !text.is_char_boundary(upto) {
            upto -= 1;
        }
        if upto > s.emitted {
            let piece = text[s.emitted..upto].to_string();
            s.emitted = upto;
            if s.job.events.send(Event::Text(piece)).is_err() {
                return Ok(Some(FinishReason::Cancelled));
            }
        }
        if s.ids.len() >= s.max_tokens {
            return Ok(Some(FinishReason::Length));
        }
        s.feed.clear();
        s.feed.push(next);
        Ok(None)
    }

    fn finish(&self, s: Seq, finish: FinishReason) {
        if finish != FinishReason::Cancelled && s.text.len() > s.emitted {
            let _ = s.job.events.send(Event::Text(s.text[s.emitted..].to_string()));
        }
        let elapsed = s.job.queued.elapsed();
        let _ = s.job.events.send(Event::Done(Ok(Generation {
            prompt_tokens: s.job.prompt.len() as u64,
            completion_tokens: s.ids.len() as u64,
            finish,
            time_to_first_token: s.first_token.unwrap_or(elapsed),
            elapsed,
            text: s.text,
            proof: s.proof.finish(),
        })));
    }
}
