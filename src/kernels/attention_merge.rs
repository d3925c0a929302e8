//! attention_merge: the attention of query vectors over the union of disjoint key sets, from
//! each set's partial output and log-sum-exp (star.md §4): Star Attention's phase 2 over
//! partitions held by several devices, and the combine step of any split-K attention.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::attention::{check_size, AttentionError, EMPTY_LSE};
use super::shader_source;
use crate::gpu::{grid, Binding, Dispatch, Gpu, GpuError, Kernel, PipelineSpec};

/// Twin of the WGSL `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Params {
    /// Partial attentions merged.
    pub n_parts: u32,
    /// Query vectors per part: rows × heads.
    pub n_vecs: u32,
    /// Pairs of components per vector: `head_dim / 2`.
    pub half: u32,
    pub _pad0: u32,
}

impl Params {
    /// Merging `n_parts` attentions of `n_rows` rows of `n_heads` heads of `head_dim` (even).
    pub fn new(n_parts: u32, n_rows: u32, n_heads: u32, head_dim: u32) -> Params {
        Params {
            n_parts,
            n_vecs: n_rows * n_heads,
            half: head_dim / 2,
            _pad0: 0,
        }
    }
}

/// Elementwise over output pairs: any size works; 64 keeps lavapipe's per-invocation overhead low.
const WG_SIZE: u32 = 64;

pub fn spec() -> Result<PipelineSpec, GpuError> {
    Ok(PipelineSpec {
        label: format!("attention_merge_wg{WG_SIZE}"),
        source: shader_source("attention_merge.wgsl", &[])?,
        entry: "main",
        overrides: vec![("WG_SIZE".into(), f64::from(WG_SIZE))],
        features: wgpu::Features::empty(),
        bindings: vec![
            Binding::Uniform,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
            Binding::ReadWrite,
        ],
        loop_bounding: true,
    })
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    vec![spec()]
}

/// The buffers one merge binds (f32).
pub struct Buffers<'a> {
    /// `[n_parts, n_vecs, 2 * half]`: each part's attention output.
    pub parts: &'a wgpu::Buffer,
    /// `[n_parts, n_vecs]`: each part's LSE, [`EMPTY_LSE`] for a part that saw no key.
    pub parts_lse: &'a wgpu::Buffer,
    /// `[n_vecs, 2 * half]`.
    pub out: &'a wgpu::Buffer,
    /// `[n_vecs]`: the LSE over every part's keys.
    pub out_lse: &'a wgpu::Buffer,
}

pub struct AttentionMerge {
    kernel: Arc<Kernel>,
}

impl AttentionMerge {
    pub fn new(gpu: &Gpu) -> Result<AttentionMerge, GpuError> {
        Ok(AttentionMerge {
            kernel: gpu.kernel(&spec()?)?,
        })
    }

    /// Binds `buffers`, each checked to hold the shape in `params`; the arena slot behind
    /// `params_binding` may later hold fewer vectors (record with [`AttentionMerge::grid`]).
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        params_binding: wgpu::BindingResource,
        params: &Params,
        buffers: &Buffers,
    ) -> Result<Dispatch, AttentionError> {
        let vecs = u64::from(params.n_vecs);
        let elems = vecs * 2 * u64::from(params.half);
        let parts = u64::from(params.n_parts);
        for (what, buffer, n_elems) in [
            ("parts", buffers.parts, parts * elems),
            ("parts_lse", buffers.parts_lse, parts * vecs),
            ("out", buffers.out, elems),
            ("out_lse", buffers.out_lse, vecs),
        ] {
            check_size("attention_merge", what, buffer, n_elems)?;
        }
        Ok(Dispatch {
            kernel: self.kernel.clone(),
            bind_group: self.kernel.bind(
                gpu,
                &[
                    params_binding,
                    buffers.parts.as_entire_binding(),
                    buffers.parts_lse.as_entire_binding(),
                    buffers.out.as_entire_binding(),
                    buffers.out_lse.as_entire_binding(),
                ],
            )?,
            workgroups: AttentionMerge::grid(gpu, params)?,
        })
    }

    /// One thread per output pair.
    pub fn grid(gpu: &Gpu, params: &Params) -> Result<[u32; 3], GpuError> {
        let pairs = u64::from(params.n_vecs) * u64::from(params.half);
        grid(
            gpu,
            "attention_merge pairs",
            pairs.div_ceil(u64::from(WG_SIZE)),
        )
    }
}

/// CPU reference, star.md §4's pairwise form folded over the parts in order:
/// `LSE_new = max + ln(1 + exp(min − max))`, `A_new = exp(LSE_1 − LSE_new) A_1 + exp(LSE_2 −
/// LSE_new) A_2`, with an empty partner (LSE = [`EMPTY_LSE`] or −∞) a no-op. Computed in f64.
///
/// `parts`: `[n_parts, n_vecs, dim]`, `parts_lse`: `[n_parts, n_vecs]`; returns the merged
/// `([n_vecs, dim], [n_vecs])`, [`EMPTY_LSE`] and zeros where every part was empty.
pub fn attention_merge_cpu(
    n_parts: usize,
    dim: usize,
    parts: &[f32],
    parts_lse: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let n_vecs = parts_lse.len() / n_parts.max(1);
    let mut out = vec![0.0f32; n_vecs * dim];
    let mut out_lse = vec![EMPTY_LSE; n_vecs];
    let empty = |lse: f64| lse <= f64::from(EMPTY_LSE) / 2.0;
    for vec in 0..n_vecs {
        let mut acc_lse = f64::NEG_INFINITY;
        let mut acc = vec![0.0f64; dim];
        for p in 0..n_parts {
            let lse = f64::from(parts_lse[p * n_vecs + vec]);
            if empty(lse) {
                continue;
            }
            let a = &parts[(p * n_vecs + vec) * dim..][..dim];
            if acc_lse == f64::NEG_INFINITY {
                acc_lse = lse;
                acc.iter_mut().zip(a).for_each(|(x, &y)| *x = f64::from(y));
                continue;
            }
            let (hi, lo) = (acc_lse.max(lse), acc_lse.min(lse));
            let merged = hi + (lo - hi).exp().ln_1p();
            let (w_acc, w_new) = ((acc_lse - merged).exp(), (lse - merged).exp());
            for (x, &y) in acc.iter_mut().zip(a) {
                *x = w_acc * *x + w_new * f64::from(y);
            }
            acc_lse = merged;
        }
        if acc_lse > f64::NEG_INFINITY {
            out_lse[vec] = acc_lse as f32;
            for (o, x) in out[vec * dim..][..dim].iter_mut().zip(&acc) {
                *o = *x as f32;
            }
        }
    }
    (out, out_lse)
}
