//! kv_write: being written.

use crate::gpu::{GpuError, PipelineSpec};

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    Vec::new()
}
