//! attention_merge: the attention of query vectors over the union of disjoint key sets, from
//! each set's partial output and log-sum-exp (star.md §4): Star Attention's phase 2 over
//! partitions held by several devices, and the combine step of any split-K attention; for a
//! decoded row's split walk, also the heads' shares of the output projection
//! ([`Variant::Projecting`]), as the unsplit row form of `attention` computes them.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::attention::{
    bind_projection, check_size, AttentionError, Projection, ProjectionBuffers, EMPTY_LSE,
};
use super::matmul::WeightFormat;
use super::shader_source;
use crate::gpu::{grid, Binding, Dispatch, Gpu, GpuError, Kernel, PipelineSpec};

/// Twin of the WGSL `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Params {
    /// Partial attentions merged.
    pub n_parts: u32,
    /// Query vectors per part: `n_rows` × `n_heads`.
    pub n_rows: u32,
    pub n_heads: u32,
    /// Components per vector (even).
    pub head_dim: u32,
}

impl Params {
    /// Merging `n_parts` attentions of `n_rows` rows of `n_heads` heads of `head_dim` (even).
    pub fn new(n_parts: u32, n_rows: u32, n_heads: u32, head_dim: u32) -> Params {
        Params {
            n_parts,
            n_rows,
            n_heads,
            head_dim,
        }
    }

    /// Query vectors per part.
    pub fn n_vecs(&self) -> u64 {
        u64::from(self.n_rows) * u64::from(self.n_heads)
    }
}

/// Threads of a workgroup in either form: the pairs form is elementwise (any size works; 64
/// keeps lavapipe's per-invocation overhead low); the projecting form's threads share a head's
/// outputs of the projection, as the row form of `attention` on a GPU. 64 threads and a head of
/// f32 in workgroup memory are within WebGPU's guaranteed limits.
const WG_SIZE: u32 = 64;

/// One pipeline variant of the two forms (see the shader's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// One thread per output pair, any even head_dim.
    Pairs,
    /// One workgroup per vector of `head_dim` (a multiple of 32, read as quads), which then
    /// multiplies the merged head by its columns of W_o ([`Projection`]).
    Projecting { head_dim: u32, output: Projection },
}

impl Variant {
    /// The merge with the output projection after it, for heads of `head_dim`.
    pub fn projecting(head_dim: u32, output: Projection) -> Result<Variant, AttentionError> {
        if head_dim == 0 || !head_dim.is_multiple_of(32) {
            return Err(AttentionError::ProjectionHeadDim { head_dim });
        }
        Ok(Variant::Projecting { head_dim, output })
    }

    /// The pairs form and the projecting form in every format at the default model's shape
    /// (others are built when asked for: the source is the same, the overrides differ).
    pub fn all() -> Vec<Variant> {
        let projecting = WeightFormat::ALL.into_iter().map(|format| {
            Variant::projecting(64, Projection { format, dim: 576 }).expect("a head of two chunks")
        });
        [Variant::Pairs].into_iter().chain(projecting).collect()
    }

    pub fn label(&self) -> String {
        match *self {
            Variant::Pairs => format!("attention_merge_wg{WG_SIZE}"),
            Variant::Projecting {
                head_dim,
                output: Projection { format, dim },
            } => format!("attention_merge_hd{head_dim}_out{dim}_{format}"),
        }
    }

    pub fn projection(&self) -> Option<Projection> {
        match *self {
            Variant::Pairs => None,
            Variant::Projecting { output, .. } => Some(output),
        }
    }

    pub fn spec(&self) -> Result<PipelineSpec, GpuError> {
        let mut overrides = vec![("WG_SIZE".into(), f64::from(WG_SIZE))];
        let source = match *self {
            Variant::Pairs => shader_source("attention_merge.wgsl", &[])?,
            Variant::Projecting { head_dim, output } => {
                overrides.push(("UNITS".into(), f64::from(head_dim / 4)));
                overrides.push(("OUT_DIM".into(), f64::from(output.dim)));
                let defines: Vec<&str> = ["OUTPUT"]
                    .into_iter()
                    .chain(output.format.defines().iter().copied())
                    .collect();
                shader_source("attention_merge.wgsl", &defines)?
            }
        };
        Ok(PipelineSpec {
            label: self.label(),
            source,
            entry: "main",
            overrides,
            features: wgpu::Features::empty(),
            bindings: [
                Binding::Uniform,
                Binding::Read,
                Binding::Read,
                Binding::ReadWrite,
                Binding::ReadWrite,
            ]
            .into_iter()
            // The projection's weight and the residual buffer.
            .chain(self.projection().map(|_| Binding::Read))
            .chain(self.projection().map(|_| Binding::ReadWrite))
            .collect(),
            loop_bounding: true,
        })
    }

    /// The pairs form: one thread per output pair; the projecting form: one workgroup per
    /// vector.
    pub fn grid(&self, gpu: &Gpu, params: &Params) -> Result<[u32; 3], GpuError> {
        match self {
            Variant::Pairs => {
                let pairs = params.n_vecs() * u64::from(params.head_dim / 2);
                grid(
                    gpu,
                    "attention_merge pairs",
                    pairs.div_ceil(u64::from(WG_SIZE)),
                )
            }
            Variant::Projecting { .. } => grid(gpu, "attention_merge vectors", params.n_vecs()),
        }
    }
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    Variant::all().iter().map(Variant::spec).collect()
}

/// The buffers one merge binds (f32).
pub struct Buffers<'a> {
    /// `[n_parts, n_vecs, head_dim]`: each part's attention output.
    pub parts: &'a wgpu::Buffer,
    /// `[n_parts, n_vecs]`: each part's LSE, [`EMPTY_LSE`] for a part that saw no key.
    pub parts_lse: &'a wgpu::Buffer,
    /// `[n_vecs, head_dim]`.
    pub out: &'a wgpu::Buffer,
    /// `[n_vecs]`: the LSE over every part's keys.
    pub out_lse: &'a wgpu::Buffer,
}

pub struct AttentionMerge {
    kernel: Arc<Kernel>,
    variant: Variant,
}

impl AttentionMerge {
    /// The pairs form.
    pub fn new(gpu: &Gpu) -> Result<AttentionMerge, GpuError> {
        Ok(AttentionMerge {
            kernel: gpu.kernel(&Variant::Pairs.spec()?)?,
            variant: Variant::Pairs,
        })
    }

    /// The projecting form for heads of `head_dim` ([`Variant::projecting`]).
    pub fn projecting(
        gpu: &Gpu,
        head_dim: u32,
        output: Projection,
    ) -> Result<AttentionMerge, AttentionError> {
        let variant = Variant::projecting(head_dim, output)?;
        Ok(AttentionMerge {
            kernel: gpu.kernel(&variant.spec()?)?,
            variant,
        })
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Binds `buffers`, each checked to hold the shape in `params`; the arena slot behind
    /// `params_binding` may later hold fewer vectors or parts (record with [`Variant::grid`]).
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        params_binding: wgpu::BindingResource,
        params: &Params,
        buffers: &Buffers,
    ) -> Result<Dispatch, AttentionError> {
        self.bind(gpu, params_binding, params, buffers, None)
    }

    /// [`AttentionMerge::dispatch`] of the projecting form, writing the heads' parts of the
    /// output projection to `projection.residual`.
    pub fn dispatch_projecting(
        &self,
        gpu: &Gpu,
        params_binding: wgpu::BindingResource,
        params: &Params,
        buffers: &Buffers,
        projection: &ProjectionBuffers,
    ) -> Result<Dispatch, AttentionError> {
        self.bind(gpu, params_binding, params, buffers, Some(projection))
    }

    fn bind(
        &self,
        gpu: &Gpu,
        params_binding: wgpu::BindingResource,
        params: &Params,
        buffers: &Buffers,
        projection: Option<&ProjectionBuffers>,
    ) -> Result<Dispatch, AttentionError> {
        // The pairs form takes any even head; the projecting form the one it was built for.
        let head_dim_ok = match self.variant {
            Variant::Pairs => params.head_dim > 0 && params.head_dim.is_multiple_of(2),
            Variant::Projecting { head_dim, .. } => params.head_dim == head_dim,
        };
        if !head_dim_ok {
            return Err(AttentionError::MergeHeadDim {
                variant: self.variant.label(),
                head_dim: params.head_dim,
            });
        }
        let vecs = params.n_vecs();
        let elems = vecs * u64::from(params.head_dim);
        let parts = u64::from(params.n_parts);
        for (what, buffer, n_elems) in [
            ("parts", buffers.parts, parts * elems),
            ("parts_lse", buffers.parts_lse, parts * vecs),
            ("out", buffers.out, elems),
            ("out_lse", buffers.out_lse, vecs),
        ] {
            check_size("attention_merge", what, buffer, n_elems)?;
        }
        let mut bindings = vec![
            params_binding,
            buffers.parts.as_entire_binding(),
            buffers.parts_lse.as_entire_binding(),
            buffers.out.as_entire_binding(),
            buffers.out_lse.as_entire_binding(),
        ];
        let shape = (params.n_rows, params.n_heads, params.head_dim);
        let output = self.variant.projection();
        bind_projection("attention_merge", output, projection, shape, &mut bindings)?;
        Ok(Dispatch {
            kernel: self.kernel.clone(),
            bind_group: self.kernel.bind(gpu, &bindings)?,
            workgroups: self.variant.grid(gpu, params)?,
        })
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
