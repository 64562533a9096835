//! LoRA fine-tuning of the served llama models: what a provider runs for a fine-tuning job, and
//! what a user needs to deploy the result.
//!
//! - [`dataset`]: OpenAI's chat fine-tuning JSONL → token sequences with a loss mask on the
//!   assistant's tokens, and the dataset's token count a job is priced on (builds without the
//!   `engine` feature, for clients).
//! - [`lora`]: which projections an adapter targets, its rank and alpha.
//! - `model` (`engine`): the served forward pass on candle tensors with autograd, base weights
//!   dequantized and frozen, LoRA pairs trainable ([`LoraModel`]).
//! - `ops` (`engine`): the differentiable norms, softmax, rotary embedding and loss it is
//!   built from.
//! - `train` (`engine`): the training loop ([`train()`]): seeded, AdamW, progress and
//!   cancellation every step.
//! - [`adapter`]: the adapter file (safetensors with metadata), read back as untrusted input.
//! - [`merge`]: the adapter merged into the base GGUF (targeted projections re-quantized to
//!   q8_0), the file a user deploys as a chat model.
//!
//! Typical job: [`Dataset::from_jsonl`] → [`LoraModel::load`] → [`train()`] →
//! [`Adapter::to_safetensors`]; deployment: [`Adapter::from_safetensors`] → [`merge_file`] →
//! [`crate::Engine::load`].

pub mod adapter;
pub mod dataset;
pub mod lora;
pub mod merge;
#[cfg(feature = "engine")]
mod model;
#[cfg(feature = "engine")]
mod ops;
#[cfg(feature = "engine")]
mod rng;
#[cfg(feature = "engine")]
mod train;

pub use adapter::{
    Adapter, AdapterError, AdapterLimits, LoraPair, ADAPTER_FORMAT, ADAPTER_FORMAT_VERSION,
};
pub use dataset::{count_tokens, Dataset, DatasetError, DatasetLimits, Example};
pub use lora::{LoraConfig, LoraConfigError, Target};
pub use merge::{merge, merge_file, MergeError, MERGED_DTYPE};
#[cfg(feature = "engine")]
pub use model::LoraModel;
#[cfg(feature = "engine")]
pub use train::{train, Progress, TrainError, TrainOutput, TrainParams, TrainStats};

/// blake2-256 of a model file's bytes: the `model_hash` a service commits to
/// ([`crate::weights::file_hash`] of the same file), which an adapter names its base by.
pub fn model_hash(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(blake2b_simd::Params::new().hash_length(32).hash(bytes).as_bytes());
    out
}
