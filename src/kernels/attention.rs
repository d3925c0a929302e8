//! attention: softmax attention of raw queries over a slot-addressed KV cache of raw keys, with
//! RoPE applied inside the kernel at cache positions (sink-window.md §3, option A of §4), and
//! the log-sum-exp of each (row, head)'s scores beside its output.
//!
//! Dense causal attention is the special case `n_sink >= every token index, window = 1` (then
//! `q_pos = t` and `k_pos = u`); a sink-window policy uses the same kernel with real `n_sink` and
//! `window`. Star Attention's phase 1 (star.md §3) is dense attention plus a block mask
//! (`block`, `anchor`); its phase 2 over several partitions is this kernel on each partition's
//! cache, the outputs combined by `attention_merge` through their LSEs. Which slot holds which
//! token (`slot_token`) is decided by the host policy in `crate::attention`; this module only
//! computes. Two forms of one kernel ([`Variant`]): the row form for decode, the tiled form for
//! prefill (the shader's header says how each spreads the work); one CPU reference serves both.
//! Also here: the RoPE table and the CPU rotation ([`rope_table`], [`rope_cpu`]) that the CPU
//! forward pass shares.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::matmul::{weight_buffer_bytes, WeightFormat};
use super::shader_source;
use crate::gpu::{
    grid, Binding, Dispatch, Gpu, GpuError, Kernel, PipelineSpec, CPU_DECODE_ATTENTION_THREADS,
    GPU_DECODE_ATTENTION_THREADS,
};
use crate::model::quant::dequantize;

/// `slot_token` value of a slot that holds no token.
pub const EMPTY_SLOT: u32 = u32::MAX;

/// The LSE of a (row, head) that saw no key: a finite stand-in for −∞ (WGSL has no infinity
/// literal) that `attention_merge` treats as an empty partition.
pub const EMPTY_LSE: f32 = -3.0e38;

/// Errors of the attention kernels (attention and attention_merge): shapes the kernels cannot
/// run and buffers too small for the shape.
#[derive(Debug, thiserror::Error)]
pub enum AttentionError {
    #[error("attention: head_dim {head_dim} must be even and between 2 and {max}")]
    HeadDim { head_dim: u32, max: u32 },
    #[error("attention: {n_heads} query heads cannot be shared evenly by {n_kv_heads} kv heads")]
    HeadGroups { n_heads: u32, n_kv_heads: u32 },
    #[error(
        "attention: window {window} must be at least 1 and n_sink {n_sink} + window below 2^32"
    )]
    SinkWindow { n_sink: u32, window: u32 },
    #[error("attention: tokens {first_token}..+{n_rows} overflow u32")]
    TokenRange { first_token: u32, n_rows: u32 },
    #[error("attention: {group} query heads per kv head, the tiled form serves at most {max}")]
    GroupSize { group: u32, max: u32 },
    #[error("attention: kernel `{variant}` cannot serve {n_heads} query heads over {n_kv_heads} kv heads of {head_dim}")]
    VariantShape {
        variant: String,
        n_heads: u32,
        n_kv_heads: u32,
        head_dim: u32,
    },
    #[error("attention: an anchor of {anchor} tokens is longer than the {block}-token block")]
    Anchor { anchor: u32, block: u32 },
    #[error("attention: kernel `{variant}` cannot split a row's keys into {n_parts} parts")]
    Parts { variant: String, n_parts: u32 },
    #[error("attention: the fused output projection reads whole 32-value chunks of a head: head_dim {head_dim} is not a multiple of 32")]
    ProjectionHeadDim { head_dim: u32 },
    #[error("attention_merge: kernel `{variant}` cannot merge heads of {head_dim}")]
    MergeHeadDim { variant: String, head_dim: u32 },

    #[error("{kernel}: `{what}` holds {bytes} bytes, {needed} needed")]
    BufferSize {
        kernel: &'static str,
        what: &'static str,
        bytes: u64,
        needed: u64,
    },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Twin of the WGSL `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Params {
    /// Query rows; row `r` is text token `first_token + r`.
    pub n_rows: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// Slots scanned, `0..n_slots` (at most the cache capacity).
    pub n_slots: u32,
    pub first_token: u32,
    /// Tokens `0..n_sink` are sinks: always visible, RoPE position = token index.
    pub n_sink: u32,
    /// Non-sink tokens visible to `t`: `t + 1 - window ..= t`.
    pub window: u32,
    /// Softmax scale, `1 / sqrt(head_dim)` for Llama.
    pub scale: f32,
    /// Star Attention's phase-1 mask when above 0: token `t` sees `u` only if `u < anchor` or
    /// `u / block == t / block`. Needs `slot_token` ascending over `0..n_slots` (empty last).
    pub block: u32,
    /// The anchor: tokens `0..anchor` (at most `block`), visible from every block.
    pub anchor: u32,
    /// Row form: each row's walk over the cache is cut into this many even shares, one
    /// workgroup each (split-K, flash-decoding); their partial outputs and LSEs land at
    /// `[part, row, head]` for `attention_merge`. At least 1; the tiled form takes 1.
    pub n_parts: u32,
}

impl Params {
    /// Checks what the kernel relies on: an even head_dim within `max_head_dim`, whole GQA
    /// groups, a non-empty window and no u32 overflow in positions.
    pub fn validate(&self, max_head_dim: u32) -> Result<(), AttentionError> {
        let hd = self.head_dim;
        if hd == 0 || !hd.is_multiple_of(2) || hd > max_head_dim {
            return Err(AttentionError::HeadDim {
                head_dim: hd,
                max: max_head_dim,
            });
        }
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return Err(AttentionError::HeadGroups {
                n_heads: self.n_heads,
                n_kv_heads: self.n_kv_heads,
            });
        }
        if self.window == 0 || self.n_sink.checked_add(self.window).is_none() {
            return Err(AttentionError::SinkWindow {
                n_sink: self.n_sink,
                window: self.window,
            });
        }
        if self.first_token.checked_add(self.n_rows).is_none() {
            return Err(AttentionError::TokenRange {
                first_token: self.first_token,
                n_rows: self.n_rows,
            });
        }
        if self.block > 0 && self.anchor > self.block {
            return Err(AttentionError::Anchor {
                anchor: self.anchor,
                block: self.block,
            });
        }
        Ok(())
    }

    /// Rows the RoPE table needs: the largest `q_pos` + 1 (no visible key has a larger `k_pos`).
    pub fn n_pos(&self) -> u32 {
        if self.n_rows == 0 {
            return 0;
        }
        let last_token = self.first_token.saturating_add(self.n_rows - 1);
        let max_pos = self.n_sink.saturating_add(self.window.saturating_sub(1));
        last_token.min(max_pos).saturating_add(1)
    }

    /// Rows the RoPE table needs for the tiled form: [`Params::n_pos`], and the window frame's
    /// `t - lo(first row of a tile)`, at most `window + TILE_ROWS - 2` (and `t - n_sink`).
    pub fn n_pos_tile(&self) -> u32 {
        if self.n_rows == 0 {
            return 0;
        }
        let last_token = self.first_token.saturating_add(self.n_rows - 1);
        let window_frame = if last_token >= self.n_sink {
            (last_token - self.n_sink)
                .saturating_add(1)
                .min(tile_window_rows(self.window))
        } else {
            0
        };
        self.n_pos().max(window_frame)
    }
}

/// Rows of the RoPE table the tiled form's window frame can reach for a window of `window`
/// tokens, however far the text has gone: `t - lo(first row of a tile)` is at most
/// `window + TILE_ROWS - 2`.
pub fn tile_window_rows(window: u32) -> u32 {
    window.saturating_add(TILE_ROWS - 1)
}

/// Query rows of one workgroup of the tiled form.
pub const TILE_ROWS: u32 = 32;

/// Rows each thread of the tiled form owns (of one head): its threads are
/// `TILE_ROWS / TILE_ROWS_PER_THREAD * group`.
pub const TILE_ROWS_PER_THREAD: u32 = 4;

/// Widest head the tiled form serves (a multiple of 4): its private arrays have a constant size.
pub const TILE_MAX_HEAD_DIM: u32 = 128;
/// The widest head the row form serves (`MAX_UNITS` pairs in attention.wgsl).
pub const ROW_MAX_HEAD_DIM: u32 = 128;
/// Workgroup memory the row form's merge may take for its threads' accumulators: half of
/// SwiftShader's 32 KiB.
pub const ROW_MERGE_BYTES: u32 = 16 * 1024;
/// The row form's thread counts on CPU adapters and on GPUs ([`Gpu::decode_attention_threads`]):
/// the variants validated and tested.
pub const ROW_THREADS: [u32; 2] = [CPU_DECODE_ATTENTION_THREADS, GPU_DECODE_ATTENTION_THREADS];

/// Most query heads per kv head the tiled form serves (`TILE_ROWS * 16` = 256 threads, the
/// smallest `max_compute_invocations_per_workgroup` WebGPU allows).
pub const TILE_MAX_GROUP: u32 = 16;

/// Fewest slots a part of a split row walks ([`decode_parts`]): below that a part's fixed
/// costs (rotating the query, merging its threads, the extra merge dispatch) outweigh the
/// parallelism it adds.
pub const MIN_PART_SLOTS: u32 = 256;
/// Most parts a row is split into (the session's partial-attention buffers hold this many).
pub const MAX_PARTS: u32 = 32;

/// How many parts the row form splits each of `n_vecs` (rows × heads) walks over `n_slots`
/// into so that about `target_workgroups` workgroups run: 1 (no split, no merge) unless the
/// device has room for more workgroups than `n_vecs` and the cache is long enough for parts of
/// [`MIN_PART_SLOTS`]; at most [`MAX_PARTS`].
pub fn decode_parts(n_slots: u32, n_vecs: u32, target_workgroups: u32) -> u32 {
    let wanted = target_workgroups.div_ceil(n_vecs.max(1));
    wanted.min(n_slots / MIN_PART_SLOTS).clamp(1, MAX_PARTS)
}

/// The fused output projection (common/project_head.wgsl: the row form's OUTPUT, and
/// `attention_merge`'s projecting form for a split walk): each head's output times its
/// `head_dim` columns of `W_o [dim, n_heads * head_dim]`, stored in `format`, written as that
/// head's part of the residual stream after the step's rows, where the FFN's matmuls sum the
/// parts in (`matmul::Prologue::PartsRmsNorm`, `matmul::Epilogue::AccumulateParts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    pub format: WeightFormat,
    /// W_o's rows: the model's width.
    pub dim: u32,
}

/// One pipeline variant of the two forms (see the shader's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Decode: one workgroup per (row, head), `wg_size` threads sharing its slots; loops over
    /// exactly `head_dim` (even; read as quads where it is a multiple of 4, else as pairs), a
    /// constant per pipeline; with `output`, each head's share of the output projection after.
    Row {
        head_dim: u32,
        wg_size: u32,
        output: Option<Projection>,
    },
    /// Prefill: one workgroup per ([`TILE_ROWS`] rows, kv head), one thread per query of the
    /// `group` query heads that share the kv head; loops over exactly `head_dim` (a multiple of
    /// 4, read as vec4s), a constant per pipeline.
    Tile { head_dim: u32, group: u32 },
}

impl Variant {
    /// The row and tiled variants for the head widths (and GQA groupings) of the tests and
    /// common models, and a row variant for a head of an odd number of pairs; others are built
    /// when asked for (the shader source is the same for all; the overrides differ).
    pub fn all() -> Vec<Variant> {
        let head_dims = [16, 64, 80, 128];
        let rows = [6].into_iter().chain(head_dims).flat_map(|head_dim| {
            ROW_THREADS.map(|threads| {
                Variant::row_for(head_dim, threads).expect("an even head_dim within the limit")
            })
        });
        let tiles = head_dims.into_iter().flat_map(|head_dim| {
            [1, 2, 3, 4, 8, TILE_MAX_GROUP]
                .into_iter()
                .map(move |group| Variant::Tile { head_dim, group })
        });
        // The projection in every format, at the default model's width.
        let projected = WeightFormat::ALL.into_iter().flat_map(|format| {
            ROW_THREADS.map(|threads| {
                Variant::row_projecting(64, threads, Projection { format, dim: 576 })
                    .expect("a head of two chunks")
            })
        });
        rows.chain(tiles).chain(projected).collect()
    }

    /// The row variant for `head_dim` (even, at most [`ROW_MAX_HEAD_DIM`]) with `threads`
    /// ([`Gpu::decode_attention_threads`]), or fewer where the merge's accumulators
    /// (`wg_size * head_dim` f32) would pass [`ROW_MERGE_BYTES`]: 64 threads up to 64-wide heads,
    /// 32 above.
    pub fn row_for(head_dim: u32, threads: u32) -> Result<Variant, AttentionError> {
        Variant::row(head_dim, threads, None)
    }

    /// [`Variant::row_for`] with the fused output projection (`head_dim` a multiple of 32).
    pub fn row_projecting(
        head_dim: u32,
        threads: u32,
        output: Projection,
    ) -> Result<Variant, AttentionError> {
        if !head_dim.is_multiple_of(32) {
            return Err(AttentionError::ProjectionHeadDim { head_dim });
        }
        Variant::row(head_dim, threads, Some(output))
    }

    fn row(
        head_dim: u32,
        threads: u32,
        output: Option<Projection>,
    ) -> Result<Variant, AttentionError> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > ROW_MAX_HEAD_DIM {
            return Err(AttentionError::HeadDim {
                head_dim,
                max: ROW_MAX_HEAD_DIM,
            });
        }
        let wg_size = threads.min(ROW_MERGE_BYTES / (head_dim * 4)).max(1);
        Ok(Variant::Row {
            head_dim,
            wg_size,
            output,
        })
    }

    /// The tiled variant for `n_heads` query heads over `n_kv_heads` kv heads of `head_dim`.
    pub fn tile_for(
        head_dim: u32,
        n_heads: u32,
        n_kv_heads: u32,
    ) -> Result<Variant, AttentionError> {
        if head_dim == 0 || !head_dim.is_multiple_of(4) || head_dim > TILE_MAX_HEAD_DIM {
            return Err(AttentionError::HeadDim {
                head_dim,
                max: TILE_MAX_HEAD_DIM,
            });
        }
        if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(AttentionError::HeadGroups {
                n_heads,
                n_kv_heads,
            });
        }
        let group = n_heads / n_kv_heads;
        if group > TILE_MAX_GROUP {
            return Err(AttentionError::GroupSize {
                group,
                max: TILE_MAX_GROUP,
            });
        }
        Ok(Variant::Tile { head_dim, group })
    }

    /// The fused output projection, if any.
    pub fn projection(&self) -> Option<Projection> {
        match *self {
            Variant::Row { output, .. } => output,
            Variant::Tile { .. } => None,
        }
    }

    pub fn max_head_dim(&self) -> u32 {
        match *self {
            Variant::Row { .. } => ROW_MAX_HEAD_DIM,
            Variant::Tile { .. } => TILE_MAX_HEAD_DIM,
        }
    }

    pub fn wg_size(&self) -> u32 {
        match *self {
            Variant::Row { wg_size, .. } => wg_size,
            Variant::Tile { group, .. } => TILE_ROWS / TILE_ROWS_PER_THREAD * group,
        }
    }

    pub fn label(&self) -> String {
        match *self {
            Variant::Row {
                head_dim,
                wg_size,
                output,
            } => match output {
                None => format!("attention_hd{head_dim}_wg{wg_size}"),
                Some(Projection { format, dim }) => {
                    format!("attention_hd{head_dim}_wg{wg_size}_out{dim}_{format}")
                }
            },
            Variant::Tile { head_dim, group } => format!("attention_tile_hd{head_dim}_g{group}"),
        }
    }

    /// Workgroup memory the shader declares: the row form's `merged` (a head of f32 per thread)
    /// and two per-thread f32 arrays; the tiled form has none.
    pub fn workgroup_bytes(&self) -> u64 {
        match *self {
            Variant::Row {
                head_dim,
                wg_size,
                output,
            } => {
                let wg = u64::from(wg_size);
                // The projection's copy of the head.
                let head = if output.is_some() { 1 } else { 0 };
                (wg + head) * u64::from(head_dim) * 4 + 2 * wg * 4
            }
            Variant::Tile { .. } => 0,
        }
    }

    /// Rows of the RoPE table a dispatch of `params` reads.
    pub fn n_pos(&self, params: &Params) -> u32 {
        match self {
            Variant::Row { .. } => params.n_pos(),
            Variant::Tile { .. } => params.n_pos_tile(),
        }
    }

    /// Row form: one workgroup per (part, row, head); tiled form: one per ([`TILE_ROWS`] rows,
    /// kv head).
    pub fn grid(&self, gpu: &Gpu, params: &Params) -> Result<[u32; 3], GpuError> {
        let (what, n_workgroups) = match self {
            Variant::Row { .. } => (
                "attention parts x rows x heads",
                u64::from(params.n_parts) * u64::from(params.n_rows) * u64::from(params.n_heads),
            ),
            Variant::Tile { .. } => (
                "attention row tiles x kv heads",
                u64::from(params.n_rows.div_ceil(TILE_ROWS)) * u64::from(params.n_kv_heads),
            ),
        };
        grid(gpu, what, n_workgroups)
    }

    pub fn spec(&self) -> Result<PipelineSpec, GpuError> {
        let (source, overrides) = match *self {
            Variant::Row {
                head_dim,
                wg_size,
                output,
            } => {
                // Quads where the head allows: half the loads of pairs (a projected head, a
                // multiple of 32, always does).
                let (mut defines, units) = if head_dim.is_multiple_of(4) {
                    (vec!["QUAD"], head_dim / 4)
                } else {
                    (vec![], head_dim / 2)
                };
                let mut overrides = vec![
                    ("WG_SIZE".into(), f64::from(wg_size)),
                    ("UNITS".into(), f64::from(units)),
                    ("ACC_ELEMS".into(), f64::from(wg_size * units)),
                ];
                if let Some(Projection { format, dim }) = output {
                    defines.push("OUTPUT");
                    defines.extend(format.defines());
                    overrides.push(("OUT_DIM".into(), f64::from(dim)));
                }
                (shader_source("attention.wgsl", &defines)?, overrides)
            }
            Variant::Tile { head_dim, group } => (
                shader_source("attention.wgsl", &["TILE", "QUAD"])?,
                vec![
                    ("GROUP".into(), f64::from(group)),
                    ("QUADS".into(), f64::from(head_dim / 4)),
                    ("ROWS_PER_THREAD".into(), f64::from(TILE_ROWS_PER_THREAD)),
                    ("TILE_ROWS".into(), f64::from(TILE_ROWS)),
                    ("WG_SIZE".into(), f64::from(self.wg_size())),
                ],
            ),
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
                Binding::Read,
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
            // The tiled form's loops run to constants and its tile's keys (measured:
            // PipelineSpec).
            loop_bounding: matches!(self, Variant::Row { .. }),
        })
    }
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    Variant::all().iter().map(Variant::spec).collect()
}

/// The buffers one attention dispatch binds (f32 unless noted).
pub struct Buffers<'a> {
    /// `[n_rows, n_heads, head_dim]`, raw (un-rotated) queries.
    pub q: &'a wgpu::Buffer,
    /// `[capacity, n_kv_heads, head_dim]`, raw keys as the q/k/v matmul writes them
    /// (`matmul::Epilogue::Split`).
    pub k_cache: &'a wgpu::Buffer,
    /// `[capacity, n_kv_heads, head_dim]`.
    pub v_cache: &'a wgpu::Buffer,
    /// `[capacity]` u32: the token each slot holds, [`EMPTY_SLOT`] if none.
    pub slot_token: &'a wgpu::Buffer,
    /// `[n_pos, head_dim / 2, 2]` from [`rope_table`].
    pub rope: &'a wgpu::Buffer,
    /// `[n_parts, n_rows, n_heads, head_dim]`.
    pub out: &'a wgpu::Buffer,
    /// `[n_parts, n_rows, n_heads]`: the log-sum-exp of each (part,) row and head's scores,
    /// [`EMPTY_LSE`] if it saw no key.
    pub lse: &'a wgpu::Buffer,
}

/// What the fused output projection binds besides [`Buffers`].
pub struct ProjectionBuffers<'a> {
    /// `W_o [dim, n_heads * head_dim]` as `matmul::upload_weight` stores it.
    pub weight: &'a wgpu::Buffer,
    /// The residual stream's buffer, `[(1 + n_heads) * n_rows, dim]`: head `h`'s part of row
    /// `r` goes to row `(1 + h) * n_rows + r`; rows `0..n_rows` are left alone.
    pub residual: &'a wgpu::Buffer,
}

pub struct Attention {
    kernel: Arc<Kernel>,
    variant: Variant,
}

impl Attention {
    /// The row form (decode) for `head_dim` with `gpu`'s threads
    /// ([`Gpu::decode_attention_threads`]).
    pub fn row(gpu: &Gpu, head_dim: u32) -> Result<Attention, AttentionError> {
        let variant = Variant::row_for(head_dim, gpu.decode_attention_threads)?;
        Attention::with_variant(gpu, variant)
    }

    /// The row form with the fused output projection ([`Projection`]).
    pub fn row_projecting(
        gpu: &Gpu,
        head_dim: u32,
        output: Projection,
    ) -> Result<Attention, AttentionError> {
        let variant = Variant::row_projecting(head_dim, gpu.decode_attention_threads, output)?;
        Attention::with_variant(gpu, variant)
    }

    /// The tiled form (prefill) for heads of `head_dim`, `n_heads` over `n_kv_heads`.
    pub fn tile(
        gpu: &Gpu,
        head_dim: u32,
        n_heads: u32,
        n_kv_heads: u32,
    ) -> Result<Attention, AttentionError> {
        Attention::with_variant(gpu, Variant::tile_for(head_dim, n_heads, n_kv_heads)?)
    }

    /// The pipeline of `variant`, after checking its workgroup against the device limits.
    pub fn with_variant(gpu: &Gpu, variant: Variant) -> Result<Attention, AttentionError> {
        let what = || format!("kernel `{}`", variant.label());
        let limits = &gpu.limits;
        let invocations = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x);
        if variant.wg_size() > invocations {
            return Err(GpuError::Limit {
                what: what(),
                limit_name: "max_compute_invocations_per_workgroup",
                limit: invocations.into(),
                needed: variant.wg_size().into(),
            }
            .into());
        }
        let storage = u64::from(limits.max_compute_workgroup_storage_size);
        if variant.workgroup_bytes() > storage {
            return Err(GpuError::Limit {
                what: what(),
                limit_name: "max_compute_workgroup_storage_size",
                limit: storage,
                needed: variant.workgroup_bytes(),
            }
            .into());
        }
        Ok(Attention {
            kernel: gpu.kernel(&variant.spec()?)?,
            variant,
        })
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Binds `buffers` for the shape in `params` (validated here, with every buffer checked to
    /// hold that shape); the grid covers `params.n_rows` rows. The arena slot behind
    /// `params_binding` may later hold other rows and tokens, e.g. each decode step: keep them
    /// within the buffers bound here ([`Variant::n_pos`] rows of `rope`, `n_slots` slots) and
    /// record with [`Variant::grid`] of the new params (rows, parts: `out` and `lse` must hold
    /// `n_parts` times the rows).
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        params_binding: wgpu::BindingResource,
        params: &Params,
        buffers: &Buffers,
    ) -> Result<Dispatch, AttentionError> {
        self.bind(gpu, params_binding, params, buffers, None)
    }

    /// [`Attention::dispatch`] of a variant with the fused output projection, one part
    /// (`params.n_parts == 1`), writing the heads' parts to `projection.residual`.
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
        params.validate(self.variant.max_head_dim())?;
        // A pipeline serves one head width (and the tiled form one GQA grouping).
        let (head_dim, group) = match self.variant {
            Variant::Row { head_dim, .. } => (head_dim, params.n_heads / params.n_kv_heads),
            Variant::Tile { head_dim, group } => (head_dim, group),
        };
        if params.n_heads / params.n_kv_heads != group || params.head_dim != head_dim {
            return Err(AttentionError::VariantShape {
                variant: self.variant.label(),
                n_heads: params.n_heads,
                n_kv_heads: params.n_kv_heads,
                head_dim: params.head_dim,
            });
        }
        // A projected head's parts are its whole output: one part of the walk.
        let split_ok = match self.variant {
            Variant::Row { output: None, .. } => params.n_parts >= 1,
            Variant::Row {
                output: Some(_), ..
            }
            | Variant::Tile { .. } => params.n_parts == 1,
        };
        if !split_ok {
            return Err(AttentionError::Parts {
                variant: self.variant.label(),
                n_parts: params.n_parts,
            });
        }
        let hd = u64::from(params.head_dim);
        let rows = u64::from(params.n_rows) * u64::from(params.n_heads) * hd;
        let parts = u64::from(params.n_parts);
        let cache = u64::from(params.n_slots) * u64::from(params.n_kv_heads) * hd;
        let n_pos = self.variant.n_pos(params);
        for (what, buffer, n_elems) in [
            ("q", buffers.q, rows),
            ("k_cache", buffers.k_cache, cache),
            ("v_cache", buffers.v_cache, cache),
            ("slot_token", buffers.slot_token, u64::from(params.n_slots)),
            ("rope", buffers.rope, u64::from(n_pos) * hd),
            ("out", buffers.out, parts * rows),
            (
                "lse",
                buffers.lse,
                parts * u64::from(params.n_rows) * u64::from(params.n_heads),
            ),
        ] {
            check_size("attention", what, buffer, n_elems)?;
        }
        let mut bindings = vec![
            params_binding,
            buffers.q.as_entire_binding(),
            buffers.k_cache.as_entire_binding(),
            buffers.v_cache.as_entire_binding(),
            buffers.slot_token.as_entire_binding(),
            buffers.rope.as_entire_binding(),
            buffers.out.as_entire_binding(),
            buffers.lse.as_entire_binding(),
        ];
        let shape = (params.n_rows, params.n_heads, params.head_dim);
        let output = self.variant.projection();
        bind_projection("attention", output, projection, shape, &mut bindings)?;
        Ok(Dispatch {
            kernel: self.kernel.clone(),
            bind_group: self.kernel.bind(gpu, &bindings)?,
            workgroups: self.variant.grid(gpu, params)?,
        })
    }
}

/// Appends `projection`'s bindings (W_o, the residual buffer) to `bindings`, checked against
/// the variant's `output` and `shape` where both are there. A projection given to a variant
/// without one (or none to one with) leaves the bind group a binding over or short:
/// `Kernel::bind` names the kernel and both counts.
pub(super) fn bind_projection<'a>(
    kernel: &'static str,
    output: Option<Projection>,
    projection: Option<&'a ProjectionBuffers>,
    shape: (u32, u32, u32),
    bindings: &mut Vec<wgpu::BindingResource<'a>>,
) -> Result<(), AttentionError> {
    if let (Some(output), Some(projection)) = (output, projection) {
        check_projection(kernel, output, shape, projection)?;
    }
    if let Some(projection) = projection {
        bindings.push(projection.weight.as_entire_binding());
        bindings.push(projection.residual.as_entire_binding());
    }
    Ok(())
}

/// Fails unless `projection` holds W_o of `output`'s shape for the `(n_rows, n_heads, head_dim)`
/// of `shape` and room for the heads' parts of the rows after them.
fn check_projection(
    kernel: &'static str,
    output: Projection,
    (n_rows, n_heads, head_dim): (u32, u32, u32),
    projection: &ProjectionBuffers,
) -> Result<(), AttentionError> {
    let q_dim = n_heads as usize * head_dim as usize;
    let needed = weight_buffer_bytes(output.format, q_dim, output.dim as usize).unwrap_or(u64::MAX);
    if projection.weight.size() != needed {
        return Err(AttentionError::BufferSize {
            kernel,
            what: "weight",
            bytes: projection.weight.size(),
            needed,
        });
    }
    let residual = (1 + u64::from(n_heads)) * u64::from(n_rows) * u64::from(output.dim);
    check_size(kernel, "residual", projection.residual, residual)
}

/// Fails unless `buffer` holds `n_elems` 4-byte values.
pub(super) fn check_size(
    kernel: &'static str,
    what: &'static str,
    buffer: &wgpu::Buffer,
    n_elems: u64,
) -> Result<(), AttentionError> {
    let needed = n_elems * 4;
    if buffer.size() < needed {
        return Err(AttentionError::BufferSize {
            kernel,
            what,
            bytes: buffer.size(),
            needed,
        });
    }
    Ok(())
}

/// The RoPE table `[n_pos, head_dim / 2]` of `(cos θ, sin θ)`, flattened to `n_pos * head_dim`
/// values, with `θ = pos · base^(−2i / head_dim)` for pair `i`. Angles are computed in f64 and
/// only cos and sin rounded to f32: an f32 angle would already be off by ~0.004 rad at pos 10^5.
pub fn rope_table(base: f64, head_dim: usize, n_pos: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut table = Vec::with_capacity(n_pos * half * 2);
    for pos in 0..n_pos {
        for i in 0..half {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / head_dim as f64);
            table.push(theta.cos() as f32);
            table.push(theta.sin() as f32);
        }
    }
    table
}

/// Rotates one head vector `x_head [head_dim]` to position `pos`: each adjacent pair
/// `(x[2i], x[2i+1])` turns by θ_i(pos) (model.md §5: interleaved pairs on GGUF rows).
/// `table` comes from [`rope_table`] with the same `head_dim` and more than `pos` rows.
pub fn rope_cpu(x_head: &mut [f32], pos: usize, table: &[f32]) {
    let head_dim = x_head.len();
    let row = &table[pos * head_dim..(pos + 1) * head_dim];
    for (pair, cos_sin) in x_head.chunks_exact_mut(2).zip(row.chunks_exact(2)) {
        let (x0, x1) = (pair[0], pair[1]);
        let (cos, sin) = (cos_sin[0], cos_sin[1]);
        pair[0] = x0 * cos - x1 * sin;
        pair[1] = x0 * sin + x1 * cos;
    }
}

/// CPU reference, written from sink-window.md §3 and star.md §3 rather than from the kernel:
/// per row it checks every slot against the visibility rules and rebuilds the list of visible
/// keys with their cache positions (in signed arithmetic, exactly as the spec writes the
/// formulas), rotates the query and each key with [`rope_cpu`], and takes a max-subtracted
/// softmax; the LSE is `max + ln(sum)`. A row that sees no key gets zeros and [`EMPTY_LSE`].
/// `n_parts` is not looked at: this is the attention the merged parts must equal.
///
/// `q`, `out`: `[n_rows, n_heads, head_dim]`; `k_cache`, `v_cache`: `[capacity, n_kv_heads,
/// head_dim]`; `slot_token`: `[capacity]`; `rope`: from [`rope_table`]. Returns the LSEs,
/// `[n_rows, n_heads]`.
pub fn attention_cpu(
    params: &Params,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    slot_token: &[u32],
    rope: &[f32],
    out: &mut [f32],
) -> Vec<f32> {
    let hd = params.head_dim as usize;
    let n_heads = params.n_heads as usize;
    let n_kv_heads = params.n_kv_heads as usize;
    let group = n_heads / n_kv_heads;
    let (sinks, window) = (i64::from(params.n_sink), i64::from(params.window));
    let mut lse = vec![EMPTY_LSE; params.n_rows as usize * n_heads];
    for r in 0..params.n_rows as usize {
        let t = i64::from(params.first_token) + r as i64;
        let lo = sinks.max(t - window + 1);
        let q_pos = t.min(sinks + window - 1);
        // (slot, k_pos) of every key token t may attend to.
        let mut visible = Vec::new();
        for (slot, &u) in slot_token[..params.n_slots as usize].iter().enumerate() {
            if u == EMPTY_SLOT {
                continue;
            }
            let u = i64::from(u);
            // Spec: u >= t - W + 1, i.e. u among the last W tokens up to t.
            let in_window = u <= t && (u < sinks || u > t - window);
            // star.md §3: allowed(t, u) = block(u) == block(t) or u < a.
            let (block, anchor) = (i64::from(params.block), i64::from(params.anchor));
            let in_star_mask = block == 0 || u < anchor || u / block == t / block;
            if in_window && in_star_mask {
                let k_pos = if u < sinks { u } else { sinks + (u - lo) };
                visible.push((slot, k_pos as usize));
            }
        }
        for h in 0..n_heads {
            let kv_head = h / group;
            let at = (r * n_heads + h) * hd;
            let mut q_rot = q[at..at + hd].to_vec();
            rope_cpu(&mut q_rot, q_pos as usize, rope);
            let mut scores = Vec::with_capacity(visible.len());
            for &(slot, k_pos) in &visible {
                let kv_at = (slot * n_kv_heads + kv_head) * hd;
                let mut k = k_cache[kv_at..kv_at + hd].to_vec();
                rope_cpu(&mut k, k_pos, rope);
                let qk: f32 = q_rot.iter().zip(&k).map(|(a, b)| a * b).sum();
                scores.push(qk * params.scale);
            }
            // Subtracting the max leaves the softmax unchanged and keeps every exp <= 1.
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = weights.iter().sum();
            if !visible.is_empty() {
                lse[r * n_heads + h] = max + sum.ln();
            }
            let out_head = &mut out[at..at + hd];
            out_head.fill(0.0);
            for (&(slot, _), w) in visible.iter().zip(&weights) {
                let kv_at = (slot * n_kv_heads + kv_head) * hd;
                for (o, v) in out_head.iter_mut().zip(&v_cache[kv_at..kv_at + hd]) {
                    *o += w / sum * v;
                }
            }
        }
    }
    lse
}

/// CPU reference of the fused output projection: each row `r` and head `h` of `att`
/// (`[n_rows, n_heads, head_dim]`, as [`attention_cpu`] writes it) times that head's columns of
/// `W_o` (`weight`: `[output.dim, n_heads * head_dim]` in `output.format`), decoded with
/// `model::quant`. Returns the parts as the residual buffer holds them after the step's rows,
/// `[n_heads, n_rows, dim]`.
pub fn project_heads_cpu(
    output: Projection,
    weight: &[u8],
    params: &Params,
    att: &[f32],
) -> Result<Vec<f32>, AttentionError> {
    let (hd, n_heads, n_rows) = (
        params.head_dim as usize,
        params.n_heads as usize,
        params.n_rows as usize,
    );
    let (dim, q_dim) = (output.dim as usize, n_heads * hd);
    let mut w = vec![0.0f32; dim * q_dim];
    dequantize(output.format.ggml_type(), weight, &mut w).map_err(|_| {
        AttentionError::BufferSize {
            kernel: "project_heads_cpu",
            what: "weight",
            bytes: weight.len() as u64,
            needed: output.format.row_bytes(q_dim).unwrap_or(0) as u64 * dim as u64,
        }
    })?;
    let mut parts = vec![0.0f32; n_heads * n_rows * dim];
    for h in 0..n_heads {
        for r in 0..n_rows {
            let head = &att[(r * n_heads + h) * hd..][..hd];
            let part = &mut parts[(h * n_rows + r) * dim..][..dim];
            for (o, value) in part.iter_mut().enumerate() {
                let columns = &w[o * q_dim + h * hd..][..hd];
                *value = columns.iter().zip(head).map(|(w, a)| w * a).sum();
            }
        }
    }
    Ok(parts)
}
