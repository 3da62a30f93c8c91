//! Hugging Face checkpoint folders read the way transformers reads them: config.json, weights
//! (single or sharded safetensors), tokenizer.json, the chat template and the Qwen-VL processor.

pub mod chat;
pub mod processor;
pub mod resize;
pub mod weights;

use std::path::{Path, PathBuf};

/// What went wrong reading a checkpoint folder, and where.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    // `err`, not `source`: the message already says it (no repeated cause in error chains)
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not valid JSON: {err}")]
    Json { path: PathBuf, err: serde_json::Error },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("image: {0}")]
    Image(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, HfError>;

pub(crate) fn invalid(path: &Path, msg: impl Into<String>) -> HfError {
    HfError::Invalid { path: path.to_path_buf(), msg: msg.into() }
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|err| HfError::Io { path: path.to_path_buf(), err })
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_slice(&read(path)?).map_err(|err| HfError::Json { path: path.to_path_buf(), err })
}

/// `config.json`'s model class: `architectures[0]` at the top level, else in `text_config`
/// (transformers ≥ 4.57 writes it there for composite configs).
pub fn architecture(config: &serde_json::Value) -> Option<&str> {
    fn first(v: &serde_json::Value) -> Option<&str> {
        v.get("architectures")?.as_array()?.first()?.as_str()
    }
    first(config).or_else(|| config.get("text_config").and_then(first))
}
