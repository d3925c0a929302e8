//! sinkstar: an LLM runtime whose every kernel is a WGSL compute shader run through wgpu.
//!
//! What it does: loads a Llama-family model from one GGUF file, runs the whole forward pass
//! and the sampler on the GPU (quantized weights decoded inside the shaders, an f32 path
//! everywhere so that adapters without shader-f16 work), and streams text.
//!
//! How it is split: `gpu` is device plumbing and knows nothing of LLMs; `kernels` holds one
//! module per WGSL family with its dispatch and its plain-Rust `_cpu` reference; `attention`
//! decides which cache slot and which position each token gets; `model` reads GGUF files and
//! connects the kernels into a forward pass; `tokenizer` and `generate` turn text into tokens
//! and back.
//!
//! What it leaves out (for now): training, batching several users, and architectures other
//! than Llama.

pub mod attention;
#[cfg(target_arch = "wasm32")]
pub mod bindings;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod tokenizer;

pub use error::{Error, Result};
