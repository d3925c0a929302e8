//! swiglu: `out = silu(gate) * up`, reading gate and up side by side from one `[n_rows,
//! 2 * hidden_dim]` buffer (the output of one matmul over the stacked gate and up weights).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::shader_source;
use crate::gpu::{grid, Binding, Dispatch, Gpu, GpuError, Kernel, PipelineSpec};

/// Twin of the WGSL `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n_rows: u32,
    pub hidden_dim: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// Elementwise: any size works; 64 keeps lavapipe's per-invocation overhead low.
const WG_SIZE: u32 = 64;

pub fn spec() -> Result<PipelineSpec, GpuError> {
    Ok(PipelineSpec {
        label: format!("swiglu_wg{WG_SIZE}"),
        source: shader_source("swiglu.wgsl", &[])?,
        entry: "main",
        overrides: vec![("WG_SIZE".into(), f64::from(WG_SIZE))],
        bindings: vec![Binding::Uniform, Binding::Read, Binding::ReadWrite],
    })
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    vec![spec()]
}

pub struct Swiglu {
    kernel: Arc<Kernel>,
}

impl Swiglu {
    pub fn new(gpu: &Gpu) -> Result<Swiglu, GpuError> {
        Ok(Swiglu {
            kernel: gpu.kernel(&spec()?)?,
        })
    }

    /// Binds `gate_up [n_rows, 2 * hidden_dim]` and `out [n_rows, hidden_dim]`.
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        params: wgpu::BindingResource,
        gate_up: &wgpu::Buffer,
        out: &wgpu::Buffer,
        n_rows: u32,
        hidden_dim: u32,
    ) -> Result<Dispatch, GpuError> {
        Ok(Dispatch {
            kernel: self.kernel.clone(),
            bind_group: self.kernel.bind(
                gpu,
                &[params, gate_up.as_entire_binding(), out.as_entire_binding()],
            )?,
            workgroups: Self::grid(gpu, n_rows, hidden_dim)?,
        })
    }

    pub fn grid(gpu: &Gpu, n_rows: u32, hidden_dim: u32) -> Result<[u32; 3], GpuError> {
        let n_elems = u64::from(n_rows) * u64::from(hidden_dim);
        grid(gpu, "swiglu elements", n_elems.div_ceil(WG_SIZE.into()))
    }
}

/// CPU reference. `gate_up` is `[n_rows, 2 * hidden_dim]`, `out` is `[n_rows, hidden_dim]`.
pub fn swiglu_cpu(gate_up: &[f32], hidden_dim: usize, out: &mut [f32]) {
    for (row, out_row) in gate_up
        .chunks_exact(2 * hidden_dim)
        .zip(out.chunks_exact_mut(hidden_dim))
    {
        let (gate, up) = row.split_at(hidden_dim);
        for ((o, g), u) in out_row.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}
