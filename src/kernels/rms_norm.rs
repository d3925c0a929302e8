//! rms_norm: `out[r] = weight * x[first_row + r] / sqrt(mean(x[first_row + r]^2) + eps)`, one
//! workgroup per row.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::shader_source;
use crate::gpu::{grid, Binding, Dispatch, Gpu, GpuError, Kernel, PipelineSpec};

/// Twin of the WGSL `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n_rows: u32,
    pub dim: u32,
    pub eps: f32,
    /// First row of `x` to read (the output always starts at row 0).
    pub first_row: u32,
}

/// 64 threads per row: rows are 576 wide in the default model, and lavapipe pays for every
/// barrier step of a wider tree.
const WG_SIZE: u32 = 64;

pub fn spec() -> Result<PipelineSpec, GpuError> {
    Ok(PipelineSpec {
        label: format!("rms_norm_wg{WG_SIZE}"),
        source: shader_source("rms_norm.wgsl", &[])?,
        entry: "main",
        overrides: vec![("WG_SIZE".into(), f64::from(WG_SIZE))],
        bindings: vec![
            Binding::Uniform,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
        ],
    })
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    vec![spec()]
}

pub struct RmsNorm {
    kernel: Arc<Kernel>,
}

impl RmsNorm {
    pub fn new(gpu: &Gpu) -> Result<RmsNorm, GpuError> {
        Ok(RmsNorm {
            kernel: gpu.kernel(&spec()?)?,
        })
    }

    /// Binds `x [first_row + n_rows, dim]`, `weight [dim]` and `out [n_rows, dim]`; the grid
    /// covers `n_rows`.
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        params: wgpu::BindingResource,
        x: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        out: &wgpu::Buffer,
        n_rows: u32,
    ) -> Result<Dispatch, GpuError> {
        Ok(Dispatch {
            kernel: self.kernel.clone(),
            bind_group: self.kernel.bind(
                gpu,
                &[
                    params,
                    x.as_entire_binding(),
                    weight.as_entire_binding(),
                    out.as_entire_binding(),
                ],
            )?,
            workgroups: Self::grid(gpu, n_rows)?,
        })
    }

    pub fn grid(gpu: &Gpu, n_rows: u32) -> Result<[u32; 3], GpuError> {
        grid(gpu, "rms_norm rows", n_rows.into())
    }
}

/// CPU reference. `x` and `out` are `[n_rows, dim]` with `dim = weight.len()`.
pub fn rms_norm_cpu(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, out_row) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (mean_sq + eps).sqrt();
        for ((o, v), w) in out_row.iter_mut().zip(row).zip(weight) {
            *o = w * (v * scale);
        }
    }
}
