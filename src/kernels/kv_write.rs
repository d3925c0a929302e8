//! kv_write: copies the new rows of raw keys and values into the KV cache at the slots the host
//! policy chose (`crate::attention` decides the slots; this module only copies). Keys are stored
//! un-rotated: attention rotates them at their cache position (sink-window.md §4, option A).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::attention::{check_size, AttentionError};
use super::shader_source;
use crate::gpu::{grid, Binding, Dispatch, Gpu, GpuError, Kernel, PipelineSpec};

/// Twin of the WGSL `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Params {
    pub n_rows: u32,
    /// Values per cache row: `n_kv_heads * head_dim`.
    pub row_elems: u32,
    /// Slots in the cache; a row whose slot is not below it is skipped.
    pub capacity: u32,
    pub _pad0: u32,
}

/// 64 threads: a copy has no reduction, and 64 divides the default model's 192-wide rows.
const WG_SIZE: u32 = 64;

pub fn spec() -> Result<PipelineSpec, GpuError> {
    Ok(PipelineSpec {
        label: format!("kv_write_wg{WG_SIZE}"),
        source: shader_source("kv_write.wgsl", &[])?,
        entry: "main",
        overrides: vec![("WG_SIZE".into(), f64::from(WG_SIZE))],
        bindings: vec![
            Binding::Uniform,
            Binding::Read,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
            Binding::ReadWrite,
        ],
    })
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    vec![spec()]
}

/// The buffers one kv_write dispatch binds (f32 unless noted).
pub struct Buffers<'a> {
    /// `[n_rows]` u32: the cache slot of each new row.
    pub slots: &'a wgpu::Buffer,
    /// `[n_rows, n_kv_heads * head_dim]`, raw (un-rotated) keys.
    pub k_new: &'a wgpu::Buffer,
    /// `[n_rows, n_kv_heads * head_dim]`.
    pub v_new: &'a wgpu::Buffer,
    /// `[capacity, n_kv_heads, head_dim]`.
    pub k_cache: &'a wgpu::Buffer,
    /// `[capacity, n_kv_heads, head_dim]`.
    pub v_cache: &'a wgpu::Buffer,
}

pub struct KvWrite {
    kernel: Arc<Kernel>,
}

impl KvWrite {
    pub fn new(gpu: &Gpu) -> Result<KvWrite, GpuError> {
        Ok(KvWrite {
            kernel: gpu.kernel(&spec()?)?,
        })
    }

    /// Binds `buffers`, each checked to hold the shape in `params`; the grid covers
    /// `n_rows * row_elems` values. A later step with fewer rows records with [`KvWrite::grid`].
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        params_binding: wgpu::BindingResource,
        params: &Params,
        buffers: &Buffers,
    ) -> Result<Dispatch, AttentionError> {
        let rows = u64::from(params.n_rows) * u64::from(params.row_elems);
        let cache = u64::from(params.capacity) * u64::from(params.row_elems);
        for (what, buffer, n_elems) in [
            ("slots", buffers.slots, u64::from(params.n_rows)),
            ("k_new", buffers.k_new, rows),
            ("v_new", buffers.v_new, rows),
            ("k_cache", buffers.k_cache, cache),
            ("v_cache", buffers.v_cache, cache),
        ] {
            check_size("kv_write", what, buffer, n_elems)?;
        }
        Ok(Dispatch {
            kernel: self.kernel.clone(),
            bind_group: self.kernel.bind(
                gpu,
                &[
                    params_binding,
                    buffers.slots.as_entire_binding(),
                    buffers.k_new.as_entire_binding(),
                    buffers.v_new.as_entire_binding(),
                    buffers.k_cache.as_entire_binding(),
                    buffers.v_cache.as_entire_binding(),
                ],
            )?,
            workgroups: KvWrite::grid(gpu, params.n_rows, params.row_elems)?,
        })
    }

    /// One thread per value of the new rows.
    pub fn grid(gpu: &Gpu, n_rows: u32, row_elems: u32) -> Result<[u32; 3], GpuError> {
        let n_elems = u64::from(n_rows) * u64::from(row_elems);
        grid(gpu, "kv_write values", n_elems.div_ceil(WG_SIZE.into()))
    }
}

/// CPU reference. `k_new`, `v_new`: `[n_rows, row_elems]` with `n_rows = slots.len()`;
/// `k_cache`, `v_cache`: `[capacity, row_elems]`. Like the kernel, skips a slot past the cache.
pub fn kv_write_cpu(
    slots: &[u32],
    k_new: &[f32],
    v_new: &[f32],
    row_elems: usize,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
) {
    if row_elems == 0 {
        return;
    }
    let capacity = k_cache.len() / row_elems;
    for (r, &slot) in slots.iter().enumerate() {
        let slot = slot as usize;
        if slot >= capacity {
            continue;
        }
        let (src, dst) = (r * row_elems, slot * row_elems);
        k_cache[dst..dst + row_elems].copy_from_slice(&k_new[src..src + row_elems]);
        v_cache[dst..dst + row_elems].copy_from_slice(&v_new[src..src + row_elems]);
    }
}
