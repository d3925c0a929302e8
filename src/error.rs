//! `sinkstar::Error`: one enum joining each module's own error type.

use crate::attention::PolicyError;
use crate::generate::GenerateError;
use crate::gpu::GpuError;
use crate::kernels::attention::AttentionError;
use crate::kernels::matmul::MatmulError;
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
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
