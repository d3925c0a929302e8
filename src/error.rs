//! `sinkstar::Error`: one enum joining each module's own error type.

use crate::attention::star::StarError;
use crate::attention::PolicyError;
use crate::generate::GenerateError;
use crate::gpu::GpuError;
use crate::kernels::attention::AttentionError;
use crate::kernels::matmul::MatmulError;
use crate::kernels::mta::MtaError;
use crate::kernels::sample::SampleError;
use crate::model::gguf::GgufError;
use crate::model::ModelError;
use crate::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Attention(#[from] AttentionError),
    #[error(transparent)]
    Matmul(#[from] MatmulError),
    #[error(transparent)]
    Mta(#[from] MtaError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Star(#[from] StarError),
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

impl Error {
    /// A short, stable name of the kind of failure, for programs rather than people (the npm
    /// package's `SinkstarError.code`); the `Display` text says what exactly went wrong.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Gguf(_) | Error::Model(ModelError::Gguf(_)) => "bad-model-file",
            Error::Model(_) => "model",
            Error::Tokenizer(_) => "tokenizer",
            Error::Gpu(GpuError::NoAdapter { .. }) => "no-adapter",
            Error::Gpu(GpuError::BufferTooLarge { .. } | GpuError::Limit { .. }) => "gpu-limit",
            Error::Gpu(_) => "gpu",
            Error::Attention(_) | Error::Matmul(_) | Error::Mta(_) => "kernel",
            Error::Policy(PolicyError::ContextFull { .. }) => "context-full",
            Error::Policy(_) | Error::Star(_) => "policy",
            Error::Sample(_) => "sampling",
            Error::Generate(_) => "input",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
