//! Model files and the forward pass: GGUF reading, quant block formats, the Llama config and
//! weights, the CPU reference forward pass and the GPU one that chains the kernels.

pub mod config;
pub mod forward_cpu;
pub mod gguf;
pub mod quant;

pub use config::LlamaConfig;

use gguf::{GgmlType, GgufError};

/// Errors about a model that was read fine but does not make a usable Llama.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture `{arch}`: sinkstar runs llama-family models")]
    UnsupportedArchitecture { arch: String },
    #[error("unsupported model: {what}")]
    Unsupported { what: String },
    #[error("invalid model config ({what}): {reason}")]
    InvalidConfig { what: String, reason: String },
    #[error("tensor `{name}` is missing")]
    MissingTensor { name: String },
    #[error("tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("norm tensor `{name}` is {ggml_type}, expected f32")]
    UnsupportedNormType { name: String, ggml_type: GgmlType },
    #[error("token id {token} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange { token: u32, vocab_size: usize },
}
