//! The inference engine: GGUF loading (with optional re-quantization to a format with fast CPU
//! kernels), our llama forward pass and CPU kernels (the only unsafe code of the project), the
//! generation scheduler (sampling, stop strings, streaming, cancellation), a BERT sentence
//! embedder and the batcher that merges concurrent embedding requests.
//!
//! The text part — GGUF metadata, the model tokenizers, the chat template, the default model
//! paths — builds without the `engine` feature, for clients that count tokens as the worker
//! does (`compute --recount-model`).

#[cfg(feature = "engine")]
pub mod embed_batcher;
#[cfg(feature = "engine")]
pub mod embedder;
#[cfg(feature = "engine")]
pub mod engine;
pub mod finetune;
#[cfg(feature = "engine")]
pub mod llama;
pub mod proof;
#[cfg(feature = "engine")]
pub mod qmatmul;
#[cfg(feature = "engine")]
mod simd;
#[cfg(feature = "engine")]
pub mod team;
pub mod template;
pub mod tokenizer;
pub mod weights;

#[cfg(feature = "engine")]
pub use embed_batcher::EmbedBatcher;
#[cfg(feature = "engine")]
pub use embedder::{EmbedError, Embedder};
#[cfg(feature = "engine")]
pub use engine::{Engine, EngineError, FinishReason, GenParams, Generation, DEFAULT_MAX_BATCH};
pub use template::{ChatMessage, ChatTemplate};
pub use tokenizer::{load_embedding_tokenizer, ModelTokenizer};

use candle_core::quantized::gguf_file;
#[cfg(feature = "engine")]
use candle_core::{
    quantized::{GgmlDType, QTensor},
    Device,
};
#[cfg(feature = "engine")]
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Where `make model` puts the default model, relative to the repository root.
pub const DEFAULT_MODEL_RELATIVE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model if it has been downloaded: `$COMPUTE_MODEL`, else the repository's
/// `models/` directory.
pub fn default_model_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("COMPUTE_MODEL") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Some(root.join(DEFAULT_MODEL_RELATIVE)).filter(|p| p.exists())
}

/// How weights are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// Re-quantize tensors whose format has no vectorised CPU kernel (q5_0, q5_1; q4_1 too
    /// where the CPU cannot run [`qmatmul`]'s kernels) to q8_0, which candle vectorises.
    /// Nearly lossless (8-bit blocks of 32 over 4/5-bit data), about twice the memory of
    /// those tensors, several times faster on CPU.
    #[default]
    FastCpu,
    /// Keep the file's own formats.
    AsStored,
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open model {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path} is not a usable GGUF file: {reason}")]
    Format { path: String, reason: String },
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
}

/// Where `make model` puts the default embedding model, relative to the repository root.
pub const DEFAULT_EMBEDDING_MODEL_RELATIVE: &str = "models/all-MiniLM-L6-v2";

/// The default embedding model if it has been downloaded: `$COMPUTE_EMBEDDING_MODEL`, else the
/// repository's `models/` directory.
pub fn default_embedding_model_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("COMPUTE_EMBEDDING_MODEL") {
        return Some(PathBuf::from(p)).filter(|p| p.join("model.safetensors").exists());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Some(root.join(DEFAULT_EMBEDDING_MODEL_RELATIVE))
        .filter(|p| p.join("model.safetensors").exists())
}

/// The metadata and tensor index of a GGUF file (what its tokenizer is built from).
pub fn read_gguf_metadata(path: &Path) -> Result<gguf_file::Content, LoadError> {
    let shown = path.display().to_string();
    let mut file = std::fs::File::open(path)
        .map_err(|source| LoadError::Open { path: shown.clone(), source })?;
    gguf_file::Content::read(&mut file)
        .map_err(|e| LoadError::Format { path: shown, reason: e.to_string() })
}

/// A GGUF file read into memory, ready to build models from.
#[cfg(feature = "engine")]
pub struct LoadedGguf {
    /// Metadata and tensor index.
    pub content: gguf_file::Content,
    /// The file bytes (or the re-quantized file's bytes).
    pub bytes: Vec<u8>,
    /// Tensors converted by [`WeightFormat::FastCpu`].
    pub requantized: usize,
}

#[cfg(feature = "engine")]
fn needs_requant(dtype: GgmlDType) -> bool {
    match dtype {
        GgmlDType::Q4_1 => !qmatmul::supported(),
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => true,
        _ => false,
    }
}

/// Read a GGUF file, re-quantizing per `format`.
#[cfg(feature = "engine")]
pub fn read_gguf(path: &Path, format: WeightFormat) -> Result<LoadedGguf, LoadError> {
    let shown = path.display().to_string();
    let bad = |reason: String| LoadError::Format { path: shown.clone(), reason };
    let bytes =
        std::fs::read(path).map_err(|source| LoadError::Open { path: shown.clone(), source })?;
    let mut cursor = Cursor::new(&bytes);
    let content = gguf_file::Content::read(&mut cursor).map_err(|e| bad(e.to_string()))?;
    if format == WeightFormat::AsStored
        || !content.tensor_infos.values().any(|t| needs_requant(t.ggml_dtype))
    {
        return Ok(LoadedGguf { content, bytes, requantized: 0 });
    }
    let cpu = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let mut requantized = 0;
    for name in names {
        let q = content.tensor(&mut cursor, name, &cpu).map_err(|e| bad(e.to_string()))?;
        let q = if needs_requant(q.dtype()) {
            requantized += 1;
            let f = q.dequantize(&cpu).map_err(|e| bad(e.to_string()))?;
            QTensor::quantize(&f, GgmlDType::Q8_0).map_err(|e| bad(e.to_string()))?
        } else {
            q
        };
        tensors.push((name.clone(), q));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> =
        content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::with_capacity(bytes.len() * 2));
    gguf_file::write(&mut out, &metadata, &refs).map_err(|e| bad(e.to_string()))?;
    let bytes = out.into_inner();
    let content =
        gguf_file::Content::read(&mut Cursor::new(&bytes)).map_err(|e| bad(e.to_string()))?;
    Ok(LoadedGguf { content, bytes, requantized })
}
