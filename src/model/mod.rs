//! Model files and the forward pass: GGUF reading, Hugging Face-style safetensors models (MTA), quant block formats, the Llama config and
//! weights, the CPU reference forward pass and the GPU one that chains the kernels.

pub mod config;
pub mod forward_cpu;
pub mod gguf;
pub mod hf;
pub mod quant;
mod record;
mod session;
pub mod star;
mod weights;

pub use config::LlamaConfig;
pub use record::Part;
pub use session::{Session, SessionOptions, MAX_PENALTY_LAST_N};
pub use star::StarSession;
pub use weights::{GpuModel, LayerWeights, Weight};

/// File name of the default model inside [`sinkstar_home`].
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$SINKSTAR_HOME`, else `~/.cache/sinkstar`: where `scripts/fetch-model.sh` puts models.
#[cfg(not(target_arch = "wasm32"))]
pub fn sinkstar_home() -> std::path::PathBuf {
    match std::env::var_os("SINKSTAR_HOME") {
        Some(home) => home.into(),
        None => std::env::home_dir()
            .unwrap_or_else(|| ".".into())
            .join(".cache")
            .join("sinkstar"),
    }
}

/// The default model's path.
#[cfg(not(target_arch = "wasm32"))]
pub fn default_model_path() -> std::path::PathBuf {
    sinkstar_home().join(DEFAULT_MODEL_FILE)
}

use gguf::{GgmlType, GgufError};

/// Errors about a model that was read fine but does not make a usable Llama.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture `{arch}`: sinkstar runs llama-family models")]
    UnsupportedArchitecture { arch: String },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Multi-Token Attention is not defined with {what} (mta.md §7: its convolutions read key columns that eviction or partitioning would change); use the dense policy")]
    MtaPolicy { what: String },
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
    #[error("nothing to decode: sample a token first (feed_and_sample)")]
    NothingToDecode,
    #[error("no tokens to feed")]
    EmptyInput,
    #[error("repetition penalty window {value} exceeds the session's {max} tokens of history")]
    PenaltyWindow { value: u32, max: u32 },
    #[error("token id {token} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange { token: u32, vocab_size: usize },
}
