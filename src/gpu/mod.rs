//! GPU plumbing: adapter and device, limits, buffers, the uniform arena, pipelines built from
//! preprocessed WGSL, error scopes and readback. Knows nothing of LLMs: kernels and the model
//! build on it.

mod context;
mod params;
mod pipeline;
pub mod preprocess;

pub use context::{
    list_adapters, AdapterSummary, Gpu, GpuOptions, TrackedBuffer, CPU_DECODE_ATTENTION_THREADS,
    GPU_DECODE_ATTENTION_THREADS,
};
pub use params::{ParamSlot, UniformArena};
pub use pipeline::{grid, Binding, Dispatch, Kernel, PipelineSpec};

/// Errors from the GPU layer. Each names what was being created or run.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found (backends {backends}){hint}")]
    NoAdapter { backends: String, hint: String },
    #[error("adapter {index} requested but only {available} adapters were found")]
    AdapterIndex { index: usize, available: usize },
    #[error("could not open a device on `{adapter}`: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error("unknown backend `{name}` (expected vulkan, metal, dx12, gl, webgpu or all)")]
    UnknownBackend { name: String },
    #[error("{what} needs {bytes} bytes but the device allows at most {limit} ({limit_name})")]
    BufferTooLarge {
        what: String,
        bytes: u64,
        limit: u64,
        limit_name: &'static str,
    },
    #[error("{what}: device limit {limit_name} is {limit}, {needed} needed")]
    Limit {
        what: String,
        limit_name: &'static str,
        limit: u64,
        needed: u64,
    },
    #[error("kernel `{kernel}` needs the device feature {feature}, which `{adapter}` does not offer or was not opened with")]
    MissingFeature {
        kernel: String,
        feature: String,
        adapter: String,
    },
    #[error("shader `{variant}` is invalid: {message}")]
    Shader { variant: String, message: String },
    #[error("shader preprocessing of `{file}`: {message}")]
    Preprocess { file: String, message: String },
    #[error("creating {what} failed: {message}")]
    Create { what: String, message: String },
    #[error("{what}: {n_bindings} resources given, the kernel `{kernel}` has {expected} bindings")]
    BindingCount {
        what: String,
        kernel: String,
        n_bindings: usize,
        expected: usize,
    },
    #[error("uniform params of {bytes} bytes do not fit a {stride}-byte arena slot")]
    ParamsTooLarge { bytes: usize, stride: usize },
    #[error("reading back {what} failed: {message}")]
    Readback { what: String, message: String },
    #[error("the GPU reported an error: {message}")]
    Device { message: String },
}
