//! One module per WGSL kernel family: its `Params` (the Pod twin of the WGSL struct), its
//! variants, its dispatch and its plain-Rust `_cpu` reference. [`all_variants`] lists every
//! pipeline variant, for the naga test and for warming the cache.

use crate::gpu::preprocess::preprocess;
use crate::gpu::{GpuError, PipelineSpec};

pub mod attention;
pub mod attention_merge;
pub mod embed;
pub mod matmul;
pub mod mta;
pub mod sample;
pub mod stream;

macro_rules! shader_table {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../shaders/", $path)))),*]
    };
}

/// Every WGSL file, embedded so that includes resolve the same way natively and in the browser.
/// A new file (including one under `common/`) must be listed here.
pub const SHADERS: &[(&str, &str)] = shader_table![
    "attention.wgsl",
    "attention_merge.wgsl",
    "common/project_head.wgsl",
    "common/quant.wgsl",
    "common/rope.wgsl",
    "embed.wgsl",
    "matmul.wgsl",
    "mta.wgsl",
    "sample.wgsl",
    "stream.wgsl",
];

/// Preprocesses `file` from [`SHADERS`] with `defines`.
pub fn shader_source(file: &str, defines: &[&str]) -> Result<String, GpuError> {
    preprocess(file, SHADERS, defines)
}

/// Every pipeline variant of every family.
pub fn all_variants() -> Vec<Result<PipelineSpec, GpuError>> {
    [
        attention::variants(),
        attention_merge::variants(),
        embed::variants(),
        matmul::variants(),
        mta::variants(),
        sample::variants(),
        stream::variants(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
