//! A session: one conversation's KV cache and activations on the GPU, and the forward pass
//! that chains the kernels over them.
//!
//! Everything is allocated and bound once, in [`Session::new`]: buffers sized for the largest
//! prefill chunk, one bind group per (layer, op), and one uniform-arena slot per kind of op
//! (every layer runs the same shapes). A step then only writes the arena, the new tokens and
//! their slots, records the dispatches into one compute pass and submits once; a decode step
//! reads back a single u32, the sampled token, which also stays on the GPU as the next step's
//! input.

use std::collections::VecDeque;
use std::sync::Arc;

use super::record::{Part, Recorder};
use super::weights::{GpuModel, Weight};
use super::ModelError;
use crate::attention::star::StarOptions;
use crate::attention::{AttentionPolicy, KvSlots, PolicyError};
use crate::gpu::{Dispatch, Gpu, ParamSlot, TrackedBuffer, UniformArena};
use crate::kernels::attention::{
    self, rope_table, tile_window_rows, Attention, Projection, ProjectionBuffers, MAX_PARTS,
};
use crate::kernels::attention_merge::{self, AttentionMerge};
use crate::kernels::embed::{self, Embed};
use crate::kernels::matmul::{self, CacheOutputs, Epilogue, Inputs, Matmul, MatmulKind, Prologue};
use crate::kernels::mta::{Mta, MtaBuffers, MtaMaps, MtaPass, MtaShape};
use crate::kernels::sample::{self, HistoryRing, Sample, SamplingParams};
use crate::Result;

/// Most recent tokens the repetition penalty can look at (`penalty_last_n` at most this).
pub const MAX_PENALTY_LAST_N: u32 = 4096;

#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// How the KV cache is managed; its size follows from it and is fixed for the session.
    pub policy: AttentionPolicy,
    /// Most tokens one prefill submission processes; longer prompts go in several chunks.
    pub max_chunk: usize,
    /// Text positions the session may reach (the RoPE table's rows), when the caller means
    /// to go past the policy's span — a dense cache that skips ahead in the text, as a Star
    /// shard does, holds tokens far past its slot count — or past the model's trained context
    /// (a long document: those positions are out of distribution, the caller's warning to
    /// give). `None`: the span, within the trained context.
    pub positions: Option<usize>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            policy: AttentionPolicy::default(),
            // Large enough for the tiled matmul to reuse weights well, small enough that the
            // activation buffers stay a few MiB.
            max_chunk: 64,
            positions: None,
        }
    }
}

/// Activations and bookkeeping buffers, f32 unless noted.
struct Buffers {
    tokens: TrackedBuffer, // [max_chunk] u32: token ids in; the sampled token lands in [0]
    // [max_chunk, dim] residual stream (the normalising matmuls' input); with the fused output
    // projection at least 1 + n_heads rows: a decoded row and its heads' parts after it.
    x: TrackedBuffer,
    q: TrackedBuffer,            // [max_chunk, n_heads * head_dim]
    att: TrackedBuffer,          // [max_chunk, n_heads * head_dim]
    lse: TrackedBuffer,          // [max_chunk, n_heads]: log-sum-exp of each row and head's scores
    split_att: TrackedBuffer, // [MAX_PARTS, n_heads * head_dim]: a decoded row's partial attentions
    split_lse: TrackedBuffer, // [MAX_PARTS, n_heads]
    act: TrackedBuffer,       // [max_chunk, hidden_dim]
    logits: TrackedBuffer,    // [max_chunk, vocab_size]
    work: TrackedBuffer,      // sampler scratch
    history: TrackedBuffer,   // [MAX_PENALTY_LAST_N] u32 ring
    slots: TrackedBuffer, // [max_chunk] u32: cache slot of each new token (u32::MAX: not stored)
    slot_token: TrackedBuffer, // [n_slots] u32: token held by each slot
    rope: TrackedBuffer,  // [policy span, head_dim / 2, 2] cos, sin
    readback: TrackedBuffer, // [1] u32, MAP_READ
    k_cache: Vec<TrackedBuffer>, // per layer [n_slots, n_kv_heads, head_dim]
    v_cache: Vec<TrackedBuffer>, // per layer [n_slots, n_kv_heads, head_dim]
}

/// One arena slot per kind of op: all layers share their params.
struct Params {
    embed: ParamSlot,
    qkv: ParamSlot,
    attention: ParamSlot,
    o: ParamSlot,
    gate_up: ParamSlot,
    down: ParamSlot,
    head: ParamSlot,
    sample: ParamSlot,
    merge: ParamSlot,
    split_merge: ParamSlot,
}

/// A Star shard's phase-2 buffers (star.md §5): every shard's partial attention of the
/// step's rows, in shard order, and their merge into `att`.
struct Exchange {
    n_parts: usize,
    parts: TrackedBuffer,     // [n_parts, max_chunk, n_heads, head_dim]
    parts_lse: TrackedBuffer, // [n_parts, max_chunk, n_heads]
    // [max_chunk, n_heads]: the merge writes it; nothing reads it, but its memory counts.
    _merged_lse: TrackedBuffer,
    merge: Dispatch,
}

/// The decode (matvec: vec or subgroup, as the device prefers) and prefill (tiled: registers
/// only or workgroup memory, likewise) forms of one matmul.
pub(super) struct MatmulDispatch {
    pub(super) decode: Dispatch,
    pub(super) decode_variant: matmul::Variant,
    pub(super) prefill: Dispatch,
    pub(super) prefill_variant: matmul::Variant,
    /// The shape bound (the tiled form's rows): each step sets it with its own rows.
    pub(super) shape: matmul::Params,
}

/// Where a matmul of the forward pass writes: one buffer, or q and the KV cache
/// ([`Epilogue::Split`]).
#[derive(Clone, Copy)]
enum Target<'a> {
    Out(&'a wgpu::Buffer),
    Cache(CacheOutputs<'a>),
}

/// A split decode walk: the row form writing its parts to `split_att`, and their merge into
/// `att`.
struct SplitDispatch {
    row: Dispatch,
    merge: Dispatch,
}

/// The decode (row) and prefill (tiled) forms of one attention.
struct AttentionDispatch {
    row: Dispatch,
    /// Where the device splits a long decode walk at this session's capacity (decode_parts).
    split: Option<SplitDispatch>,
    tile: Dispatch,
    row_variant: attention::Variant,
    tile_variant: attention::Variant,
}

/// Decode's layer after the q/k/v matmul in 3 dispatches ([`Gpu::fuse_output_projection`]):
/// attention with each head's share of the output projection (its parts, after the decoded
/// row in `x`), the FFN norm of the stream with its parts summed in, gate and up, and the down
/// projection, which adds both the parts and its own sums to the stream. A split walk takes one
/// more: the parts of the walk, then their merge with the projection.
struct ProjectedDecode {
    attention: Dispatch,
    /// The merge of a split walk's parts (`split_att`) with each head's share of the output
    /// projection after it, where the session splits (as [`AttentionDispatch::split`]).
    merge: Option<Dispatch>,
    gate_up: Dispatch,
    down: Dispatch,
}

struct LayerDispatches {
    /// The attention norm, q, k and v, and the cache write in one matmul.
    qkv: MatmulDispatch,
    attention: AttentionDispatch,
    /// Decode with the output projection fused, where the layer allows it (not an MTA layer).
    projected: Option<ProjectedDecode>,
    o: MatmulDispatch,
    /// The FFN norm, gate and up, and SwiGLU in one matmul.
    gate_up: MatmulDispatch,
    down: MatmulDispatch,
    /// Multi-Token Attention in place of `attention`, with its row rings.
    mta: Option<MtaPass>,
}

/// What a step does after the layers.
// `Layers` and `AllLogits` serve blocking readbacks, native-only until the browser build gets
// its async API (issue 5).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
enum Head<'a> {
    /// Nothing: an inner chunk of a long prompt.
    None,
    /// Nothing, and only the first this many layers run (layer-by-layer diffs).
    Layers(usize),
    /// Logits of every token of the chunk, `[n_rows, vocab_size]` in the logits buffer.
    AllLogits,
    /// Logits of the last token, left in the logits buffer.
    Logits,
    /// Logits, then a sampled token read back.
    Sample(&'a SamplingParams),
}

pub struct Session {
    model: Arc<GpuModel>,
    options: SessionOptions,
    slots: KvSlots,
    buffers: Buffers,
    arena: UniformArena,
    params: Params,
    embed: Dispatch,
    layers: Vec<LayerDispatches>,
    /// The final norm and the LM head.
    head: MatmulDispatch,
    sample: Dispatch,
    /// Sampled but not yet fed; it sits in `tokens[0]` on the GPU.
    pending: Option<u32>,
    /// The newest tokens of the context (fed or pending), for the repetition penalty.
    recent: VecDeque<u32>,
    /// The recompute policy's window: the tokens re-encoded for the next token.
    recompute_window: VecDeque<u32>,
    /// Host mirror of the GPU history ring and its contents.
    ring: HistoryRing,
    ring_tokens: Vec<u32>,
    /// The GPU ring differs from `ring_tokens` and must be uploaded before sampling.
    ring_dirty: bool,
    /// Draws so far, mixed into the sampler's seed.
    sample_step: u32,
    /// Command buffers submitted so far (the benchmark's submissions per token).
    submissions: std::sync::atomic::AtomicU64,
    /// Dispatches the last step recorded.
    step_dispatches: usize,
    /// The attention shape of the step under way (its rows; for a decoded row, the parts its
    /// walk over the cache is split into).
    attention_shape: attention::Params,
    /// The sampling of the last decode step, for [`Session::profile_decode`].
    last_sampling: Option<SamplingParams>,
    /// Set by [`Session::enable_exchange`]: this session is a shard of a multi-device
    /// [`StarSession`](super::star::StarSession).
    exchange: Option<Exchange>,
    /// Rows of the exchange step under way.
    exchange_rows: Option<u32>,
    /// Star Attention's phase-1 mask `(block, anchor)` while [`Session::feed_star`] runs.
    star_mask: Option<(u32, u32)>,
    /// The attention maps every Multi-Token Attention layer's stages share.
    mta_maps: Option<MtaMaps>,
}

fn bytes_f32(n: usize) -> u64 {
    n as u64 * 4
}

impl Session {
    pub fn new(model: Arc<GpuModel>, options: &SessionOptions) -> Result<Session> {
        let options = options.clone();
        let gpu = model.gpu().clone();
        let c = &model.config;
        if options.max_chunk == 0 {
            return Err(ModelError::InvalidConfig {
                what: "session".into(),
                reason: "max_chunk must be at least 1".into(),
            }
            .into());
        }
        let trained = c.context_len.max(options.positions.unwrap_or(0));
        options.policy.validate(trained)?;
        if model.has_mta() && !matches!(options.policy, AttentionPolicy::Dense { .. }) {
            return Err(ModelError::MtaPolicy {
                what: format!("the `{}` policy", options.policy.name()),
            }
            .into());
        }
        // The KV cache is the one buffer that grows with the options: check it before
        // computing or allocating anything.
        let n_slots = options.policy.n_slots(options.max_chunk);
        let cache_bytes = (n_slots as u64)
            .saturating_mul(c.kv_dim() as u64)
            .saturating_mul(4);
        gpu.check_buffer_size("k_cache", cache_bytes, wgpu::BufferUsages::STORAGE)?;
        let slots = KvSlots::new(options.policy, options.max_chunk)?
            .with_positions(options.positions.unwrap_or(0));
        let (chunk, cap, span) = (options.max_chunk, n_slots, slots.positions());
        // The RoPE table grows with the positions: checked before it is computed.
        // The tiled attention turns a ring's window keys by their distance to the first row of a
        // tile, which does not grow with the text.
        let rope_rows = match options.policy.ring() {
            Some((_, window)) => span.max(tile_window_rows(window as u32) as usize),
            None => span,
        };
        let rope_bytes = (rope_rows as u64).saturating_mul(c.head_dim as u64 * 4);
        gpu.check_buffer_size("rope", rope_bytes, wgpu::BufferUsages::STORAGE)?;
        let storage = |what: &str, bytes: u64| gpu.storage(what, bytes);
        // Inputs of matmuls: the decode (vec) kernel reads them as a uniform buffer.
        let matmul_input = |what: &str, bytes: u64| {
            use wgpu::BufferUsages as U;
            gpu.buffer(
                what,
                bytes.max(matmul::VEC_X_BYTES),
                U::STORAGE | U::UNIFORM | U::COPY_DST | U::COPY_SRC,
            )
        };
        let per_layer = |what: &str| -> Result<Vec<TrackedBuffer>> {
            (0..c.n_layers)
                .map(|l| {
                    Ok(storage(
                        &format!("{what}.{l}"),
                        bytes_f32(cap * c.kv_dim()),
                    )?)
                })
                .collect()
        };
        let rope = rope_table(f64::from(c.rope_base), c.head_dim, rope_rows);
        let decode_kind = MatmulKind::decode(&gpu);
        // A decoded row and its heads' parts of the output projection, as x of the FFN's
        // matmuls: the vec matvec's uniform x must hold them all.
        let parts_rows = 1 + c.n_heads;
        let project = gpu.fuse_output_projection
            && c.head_dim.is_multiple_of(32)
            && (decode_kind != MatmulKind::Vec
                || bytes_f32(parts_rows * c.dim) <= matmul::VEC_X_BYTES);
        let x_rows = if project {
            chunk.max(parts_rows)
        } else {
            chunk
        };
        let buffers = Buffers {
            tokens: storage("tokens", bytes_f32(chunk))?,
            x: matmul_input("x", bytes_f32(x_rows * c.dim))?,
            q: storage("q", bytes_f32(chunk * c.q_dim()))?,
            att: matmul_input("att", bytes_f32(chunk * c.q_dim()))?,
            lse: storage("lse", bytes_f32(chunk * c.n_heads))?,
            split_att: storage("split att", bytes_f32(MAX_PARTS as usize * c.q_dim()))?,
            split_lse: storage("split lse", bytes_f32(MAX_PARTS as usize * c.n_heads))?,
            act: matmul_input("act", bytes_f32(chunk * c.hidden_dim))?,
            logits: storage("logits", bytes_f32(chunk * c.vocab_size))?,
            work: storage("sample work", sample::work_bytes(c.vocab_size as u32))?,
            history: storage("history", bytes_f32(MAX_PENALTY_LAST_N as usize))?,
            slots: storage("slots", bytes_f32(chunk))?,
            slot_token: gpu.storage_with("slot_token", bytemuck::cast_slice(slots.slot_token()))?,
            rope: gpu.storage_with("rope", bytemuck::cast_slice(&rope))?,
            readback: gpu.buffer(
                "token readback",
                4,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?,
            k_cache: per_layer("k_cache")?,
            v_cache: per_layer("v_cache")?,
        };
        // 10 shared slots, and up to 7 of its own per layer of Multi-Token Attention (logits,
        // softmax, output, and a mix and a keep per convolution).
        let n_mta = model.layers.iter().filter(|l| l.mta.is_some()).count() as u32;
        let mut arena = UniformArena::new(&gpu, "session params", 10 + 7 * n_mta)?;
        let mut slot = || arena.slot();
        let params = Params {
            embed: slot()?,
            qkv: slot()?,
            attention: slot()?,
            o: slot()?,
            gate_up: slot()?,
            down: slot()?,
            head: slot()?,
            sample: slot()?,
            merge: slot()?,
            split_merge: slot()?,
        };
        let b = &buffers;
        let chunk32 = chunk as u32;
        let (head_dim, n_heads, n_kv_heads) =
            (c.head_dim as u32, c.n_heads as u32, c.n_kv_heads as u32);
        let attention_row = Attention::row(&gpu, head_dim)?;
        let attention_tile = Attention::tile(&gpu, head_dim, n_heads, n_kv_heads)?;
        // A session whose capacity never lets the device split a decode walk (decode_parts grows
        // with the slots walked: a CPU adapter's few cores, or a short cache) builds no split
        // dispatches and no merge pipelines.
        let split_walks = attention::decode_parts(cap as u32, n_heads, gpu.decode_workgroups) > 1;
        let attention_merge = split_walks.then(|| AttentionMerge::new(&gpu)).transpose()?;
        // One set of maps (a chunk's rows over every key) for all the MTA layers.
        let mta_parts = if n_mta > 0 {
            let shape = MtaShape {
                n_heads,
                n_kv_heads,
                head_dim,
                key_cap: cap as u32,
                max_rows: chunk32,
            };
            Some((Mta::new(&gpu)?, MtaMaps::new(&gpu, shape)?))
        } else {
            None
        };
        let mta_passes = model
            .layers
            .iter()
            .enumerate()
            .map(|(l, w)| match (&w.mta, &mta_parts) {
                (Some((layer, weights)), Some((kernels, maps))) => {
                    let buffers = MtaBuffers {
                        q: &b.q,
                        k_cache: &b.k_cache[l],
                        v_cache: &b.v_cache[l],
                        rope: &b.rope,
                        out: &b.att,
                    };
                    let pass =
                        MtaPass::new(&gpu, kernels, &mut arena, layer, weights, maps, &buffers)?;
                    Ok(Some(pass))
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        // `n_rows` is the most rows the tiled form will be given; decode uses one. `gamma`:
        // the norm before it, if any.
        let (q_dim, kv_dim) = (c.q_dim() as u32, c.kv_dim() as u32);
        let prefill_kind = MatmulKind::prefill(&gpu);
        // One form of a matmul, bound to its kind of op's arena slot.
        let bind_matmul = |slot: ParamSlot,
                           kernel: Matmul,
                           inputs: Inputs,
                           out: Target,
                           shape: matmul::Params|
         -> Result<Dispatch> {
            let binding = arena.binding(slot);
            Ok(match out {
                Target::Cache(outputs) => {
                    kernel.dispatch_split(&gpu, binding, inputs, outputs, shape)?
                }
                Target::Out(out) => kernel.dispatch(&gpu, binding, inputs, out, shape)?,
            })
        };
        let matmul = |slot: ParamSlot,
                      weight: &Weight,
                      x: &wgpu::Buffer,
                      gamma: Option<&wgpu::Buffer>,
                      out: Target,
                      n_rows: u32,
                      epilogue: Epilogue|
         -> Result<MatmulDispatch> {
            let n_out = weight.n_out / epilogue.weight_rows_per_output();
            let shape = match out {
                Target::Cache(_) => {
                    matmul::Params::split_qkv(n_rows, weight.n_in, q_dim, kv_dim, cap as u32)
                }
                Target::Out(_) => matmul::Params::new(n_rows, weight.n_in, n_out),
            }
            .with_eps(c.rms_eps);
            let prologue = match gamma {
                Some(_) => Prologue::RmsNorm,
                None => Prologue::Raw,
            };
            let make = |kind: MatmulKind| -> Result<(Dispatch, matmul::Variant)> {
                let kernel = Matmul::new(&gpu, weight.format, kind, prologue, epilogue)?;
                let variant = kernel.variant();
                let n_rows = if kind.is_matvec() { 1 } else { n_rows };
                let shape = matmul::Params { n_rows, ..shape };
                let inputs = Inputs {
                    weight: &weight.buffer,
                    x,
                    gamma,
                };
                Ok((bind_matmul(slot, kernel, inputs, out, shape)?, variant))
            };
            let (decode, decode_variant) = make(decode_kind)?;
            let (prefill, prefill_variant) = make(prefill_kind)?;
            Ok(MatmulDispatch {
                decode,
                decode_variant,
                prefill,
                prefill_variant,
                shape,
            })
        };
        let p = &params;
        // The largest shape any step binds: checked once here against the buffers.
        // (Rows past the span only ever meet positions clamped inside it.)
        let attention_bound = attention::Params {
            n_rows: chunk.min(span) as u32,
            n_heads: c.n_heads as u32,
            n_kv_heads: c.n_kv_heads as u32,
            head_dim: c.head_dim as u32,
            n_slots: cap as u32,
            // The largest positions a step can reach: the last rows of the span.
            first_token: span.saturating_sub(chunk) as u32,
            n_sink: slots.kernel_window().0,
            window: slots.kernel_window().1,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            block: 0,
            anchor: 0,
            n_parts: 1,
        };
        // A decoded row in one part: the projecting form's parts follow it in x.
        let decode_bound = attention::Params {
            n_rows: 1,
            ..attention_bound
        };
        // A decoded row split into the most parts.
        let split_bound = attention::Params {
            n_rows: 1,
            n_parts: MAX_PARTS,
            ..attention_bound
        };
        let merge_bound = attention_merge::Params::new(MAX_PARTS, 1, n_heads, head_dim);
        let split_merge_buffers = attention_merge::Buffers {
            parts: &b.split_att,
            parts_lse: &b.split_lse,
            out: &b.att,
            out_lse: &b.lse,
        };
        let layers = model
            .layers
            .iter()
            .zip(mta_passes)
            .enumerate()
            .map(|(l, (w, mta))| {
                let buffers = attention::Buffers {
                    q: &b.q,
                    k_cache: &b.k_cache[l],
                    v_cache: &b.v_cache[l],
                    slot_token: &b.slot_token,
                    rope: &b.rope,
                    out: &b.att,
                    lse: &b.lse,
                };
                let projected = match project && mta.is_none() {
                    false => None,
                    true => {
                        let output = Projection {
                            format: w.wo.format,
                            dim: c.dim as u32,
                        };
                        let projection = ProjectionBuffers {
                            weight: &w.wo.buffer,
                            residual: &b.x,
                        };
                        let attention = Attention::row_projecting(&gpu, head_dim, output)?
                            .dispatch_projecting(
                                &gpu,
                                arena.binding(p.attention),
                                &decode_bound,
                                &buffers,
                                &projection,
                            )?;
                        let merge = split_walks
                            .then(|| {
                                AttentionMerge::projecting(&gpu, head_dim, output)?
                                    .dispatch_projecting(
                                        &gpu,
                                        arena.binding(p.split_merge),
                                        &merge_bound,
                                        &split_merge_buffers,
                                        &projection,
                                    )
                            })
                            .transpose()?;
                        let decode = |slot, weight: &Weight, x, gamma, out, prologue, epilogue| {
                            let kernel =
                                Matmul::new(&gpu, weight.format, decode_kind, prologue, epilogue)?;
                            let n_out = weight.n_out / epilogue.weight_rows_per_output();
                            let shape = matmul::Params::new(1, weight.n_in, n_out)
                                .with_eps(c.rms_eps)
                                .with_parts(c.n_heads as u32);
                            let inputs = Inputs {
                                weight: &weight.buffer,
                                x,
                                gamma,
                            };
                            bind_matmul(slot, kernel, inputs, Target::Out(out), shape)
                        };
                        Some(ProjectedDecode {
                            attention,
                            merge,
                            gate_up: decode(
                                p.gate_up,
                                &w.w_gate_up,
                                &b.x,
                                Some(&w.ffn_norm),
                                &b.act,
                                Prologue::PartsRmsNorm,
                                Epilogue::Swiglu,
                            )?,
                            down: decode(
                                p.down,
                                &w.w_down,
                                &b.act,
                                None,
                                &b.x,
                                Prologue::Raw,
                                Epilogue::AccumulateParts,
                            )?,
                        })
                    }
                };
                Ok(LayerDispatches {
                    mta,
                    projected,
                    qkv: matmul(
                        p.qkv,
                        &w.w_qkv,
                        &b.x,
                        Some(&w.attn_norm),
                        Target::Cache(CacheOutputs {
                            q: &b.q,
                            k_cache: &b.k_cache[l],
                            v_cache: &b.v_cache[l],
                            slots: &b.slots,
                        }),
                        chunk32,
                        Epilogue::Split,
                    )?,
                    attention: {
                        let dispatch = |kernel: &Attention, bound, buffers| {
                            kernel.dispatch(&gpu, arena.binding(p.attention), bound, buffers)
                        };
                        let split_buffers = attention::Buffers {
                            out: &b.split_att,
                            lse: &b.split_lse,
                            ..buffers
                        };
                        let split = attention_merge
                            .as_ref()
                            .map(|merge| -> Result<SplitDispatch> {
                                Ok(SplitDispatch {
                                    row: dispatch(&attention_row, &split_bound, &split_buffers)?,
                                    merge: merge.dispatch(
                                        &gpu,
                                        arena.binding(p.split_merge),
                                        &merge_bound,
                                        &split_merge_buffers,
                                    )?,
                                })
                            })
                            .transpose()?;
                        AttentionDispatch {
                            row: dispatch(&attention_row, &attention_bound, &buffers)?,
                            split,
                            tile: dispatch(&attention_tile, &attention_bound, &buffers)?,
                            row_variant: attention_row.variant(),
                            tile_variant: attention_tile.variant(),
                        }
                    },
                    o: matmul(
                        p.o,
                        &w.wo,
                        &b.att,
                        None,
                        Target::Out(&b.x),
                        chunk32,
                        Epilogue::Accumulate,
                    )?,
                    gate_up: matmul(
                        p.gate_up,
                        &w.w_gate_up,
                        &b.x,
                        Some(&w.ffn_norm),
                        Target::Out(&b.act),
                        chunk32,
                        Epilogue::Swiglu,
                    )?,
                    down: matmul(
                        p.down,
                        &w.w_down,
                        &b.act,
                        None,
                        Target::Out(&b.x),
                        chunk32,
                        Epilogue::Accumulate,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = Embed::new(&gpu, model.token_embd.format)?.dispatch(
            &gpu,
            arena.binding(p.embed),
            &model.token_embd.buffer,
            &b.tokens,
            &b.x,
            embed::Params::new(chunk32, c.dim as u32),
        )?;
        let head = matmul(
            p.head,
            model.head(),
            &b.x,
            Some(&model.output_norm),
            Target::Out(&b.logits),
            chunk32,
            Epilogue::Store,
        )?;
        let sample = Sample::new(&gpu)?.dispatch(
            &gpu,
            arena.binding(p.sample),
            &b.logits,
            &b.history,
            &b.work,
            &b.tokens,
        )?;
        Ok(Session {
            options,
            slots,
            buffers,
            arena,
            params,
            embed,
            layers,
            head,
            sample,
            pending: None,
            recent: VecDeque::new(),
            recompute_window: VecDeque::new(),
            ring: HistoryRing::new(0),
            ring_tokens: Vec::new(),
            ring_dirty: false,
            sample_step: 0,
            submissions: std::sync::atomic::AtomicU64::new(0),
            step_dispatches: 0,
            attention_shape: attention_bound,
            last_sampling: None,
            exchange: None,
            exchange_rows: None,
            mta_maps: mta_parts.map(|(_, maps)| maps),
            star_mask: None,
            model,
        })
    }

    /// Multi-Token Attention's GPU memory: the halo rings kept between steps, and everything
    /// (the shared maps, the rings and the weights; both 0 for a model without MTA).
    pub fn mta_bytes(&self) -> (u64, u64) {
        let maps = self.mta_maps.as_ref().map_or(0, MtaMaps::gpu_bytes);
        let passes = self.layers.iter().filter_map(|l| l.mta.as_ref());
        passes.fold((0, maps), |(ring, all), p| {
            (ring + p.ring_bytes(), all + p.gpu_bytes())
        })
    }

    pub fn model(&self) -> &Arc<GpuModel> {
        &self.model
    }

    /// Tokens in the cache (fed), not counting a sampled token still pending.
    pub fn n_seen(&self) -> usize {
        self.slots.n_seen()
    }

    /// The token sampled last and not fed yet: the next step feeds it first.
    pub fn pending(&self) -> Option<u32> {
        self.pending
    }

    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    pub fn policy(&self) -> AttentionPolicy {
        self.options.policy
    }

    /// Command buffers this session has submitted.
    pub fn n_submissions(&self) -> u64 {
        self.submissions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether decode steps compute the attention output projection inside attention
    /// ([`Gpu::fuse_output_projection`], where the model's shapes allow it).
    pub fn projects_in_attention(&self) -> bool {
        self.layers.iter().any(|l| l.projected.is_some())
    }

    /// Dispatches the last step recorded (embed, layers, head and sampler; 0 before any).
    pub fn step_dispatches(&self) -> usize {
        self.step_dispatches
    }

    /// The slot the next token goes to: the ring's write head.
    pub fn next_slot(&self) -> usize {
        self.slots.next_slot()
    }

    /// Cache slots holding a token (at most [`Session::capacity`], whatever the text length).
    pub fn n_filled(&self) -> usize {
        self.slots.n_filled()
    }

    /// Forgets the conversation; buffers stay allocated.
    pub fn reset(&mut self) {
        self.slots.reset();
        self.pending = None;
        self.recent.clear();
        self.recompute_window.clear();
        self.ring_dirty = true;
        self.ring = HistoryRing::new(0);
        self.sample_step = 0;
        self.write_slot_table(0, self.slots.capacity());
    }

    /// Keeps only the first `n_tokens` tokens of the context. Only while the cache still holds
    /// all of them: always for dense, for a ring only before it evicted any.
    pub fn truncate(&mut self, n_tokens: usize) -> Result<()> {
        if self.model.has_mta() {
            // The row rings hold the rows before the next one; after a cut they may hold rows
            // of the dropped text.
            return Err(ModelError::MtaPolicy {
                what: "truncating the context".into(),
            }
            .into());
        }
        let recompute = matches!(self.options.policy, AttentionPolicy::Recompute { .. });
        if recompute || !self.slots.can_truncate(n_tokens) {
            return Err(PolicyError::CannotTruncate {
                policy: self.options.policy.name(),
                n_tokens,
            }
            .into());
        }
        self.slots.truncate(n_tokens);
        self.pending = None;
        self.write_slot_table(0, self.slots.capacity());
        // The penalty window may have held dropped tokens: it is rebuilt from what is left
        // only as far as the host remembers, which is the newest tokens; drop them all.
        self.recent.clear();
        self.ring_dirty = true;
        Ok(())
    }

    /// Star Attention's phase 1 (star.md §3): feeds `tokens`, each seeing only the anchor
    /// (text tokens `0..star.anchor`, if this cache holds them) and the earlier tokens of its
    /// own block of `star.block` tokens. Dense caches only, holding their tokens in text order
    /// (see [`Session::skip_to`] for a shard that encodes a later part of the text). Builds the
    /// cache only: no logits.
    pub fn feed_star(&mut self, tokens: &[u32], star: &StarOptions) -> Result<()> {
        star.validate()?;
        if self.model.has_mta() {
            return Err(ModelError::MtaPolicy {
                what: "Star Attention's partitions".into(),
            }
            .into());
        }
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput.into());
        }
        let refuse = |reason: &str| -> Result<()> {
            Err(ModelError::InvalidConfig {
                what: "Star Attention".into(),
                reason: reason.into(),
            }
            .into())
        };
        if !matches!(self.options.policy, AttentionPolicy::Dense { .. }) {
            return refuse("phase 1 runs on a dense cache only");
        }
        if self.pending.is_some() {
            return refuse("a sampled token is pending: the context must come first");
        }
        if !self.slots.is_ascending() {
            return refuse("the cache no longer holds its tokens in text order");
        }
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.star_mask = Some((clamp(star.block), clamp(star.anchor)));
        let fed = self.prefill(tokens, Head::None);
        self.star_mask = None;
        fed
    }

    /// Makes text token `token` the next one fed, leaving those in between out of this cache
    /// (a Star shard whose part of the text starts later). Dense caches only, forward only.
    pub fn skip_to(&mut self, token: usize) -> Result<()> {
        if self.model.has_mta() {
            return Err(ModelError::MtaPolicy {
                what: "a cache that skips text (a Star shard)".into(),
            }
            .into());
        }
        if self.pending.is_some() {
            return Err(ModelError::InvalidConfig {
                what: "skip_to".into(),
                reason: "a sampled token is pending: feed it first".into(),
            }
            .into());
        }
        Ok(self.slots.skip_to(token)?)
    }

    /// Drops the text tokens `0..n_tokens` from the cache: a Star shard's anchor, needed while
    /// it encodes its blocks and not part of its partition after (star.md §3).
    pub fn forget_before(&mut self, n_tokens: usize) {
        self.slots.forget_before(n_tokens);
        self.write_slot_table(0, self.slots.capacity());
    }

    /// Layer `layer`'s key and value caches and the slot table, `([n_slots, kv_dim],
    /// [n_slots, kv_dim], [n_slots])` (for tests).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_kv(&self, layer: usize) -> Result<(Vec<f32>, Vec<f32>, Vec<u32>)> {
        let gpu = self.model.gpu();
        let n = self.slots.capacity() * self.model.config.kv_dim();
        let k = gpu.read_f32(&self.buffers.k_cache[layer], n)?;
        let v = gpu.read_f32(&self.buffers.v_cache[layer], n)?;
        let slot_token = gpu.read_u32(&self.buffers.slot_token, self.slots.capacity())?;
        Ok((k, v, slot_token))
    }

    /// Makes this session a shard of a multi-device Star session of `n_parts` shards: the
    /// buffers that receive every shard's partial attention and the merge into `att`.
    pub(crate) fn enable_exchange(&mut self, n_parts: usize) -> Result<()> {
        let model = self.model.clone();
        let (gpu, c) = (model.gpu(), &model.config);
        let chunk = self.options.max_chunk;
        let parts = gpu.storage("exchange parts", bytes_f32(n_parts * chunk * c.q_dim()))?;
        let parts_lse = gpu.storage("exchange lse", bytes_f32(n_parts * chunk * c.n_heads))?;
        let merged_lse = gpu.storage("merged lse", bytes_f32(chunk * c.n_heads))?;
        let bound = attention_merge::Params::new(
            n_parts as u32,
            chunk as u32,
            c.n_heads as u32,
            c.head_dim as u32,
        );
        let merge = AttentionMerge::new(gpu)?.dispatch(
            gpu,
            self.arena.binding(self.params.merge),
            &bound,
            &attention_merge::Buffers {
                parts: &parts,
                parts_lse: &parts_lse,
                out: &self.buffers.att,
                out_lse: &merged_lse,
            },
        )?;
        self.exchange = Some(Exchange {
            n_parts,
            parts,
            parts_lse,
            _merged_lse: merged_lse,
            merge,
        });
        Ok(())
    }

    /// Adds `tokens` to the history the repetition penalty sees (a Star query fed by
    /// exchange steps).
    pub(crate) fn remember_tokens(&mut self, tokens: &[u32]) {
        for &token in tokens {
            self.remember(token);
        }
    }

    /// An exchange step's first submission (star.md §5, phase 2 on a shard): `tokens`, the
    /// text tokens `first_token..`, through the embedding and layer 0 up to its attention over
    /// this shard's cache. Only the query shard stores them (`store`); `sampling` there makes
    /// the step end in a sampled token.
    pub(crate) fn exchange_begin(
        &mut self,
        tokens: &[u32],
        first_token: usize,
        store: bool,
        sampling: Option<&SamplingParams>,
    ) -> Result<()> {
        let model = self.model.clone();
        let c = &model.config;
        let Some(exchange) = &self.exchange else {
            return Err(ModelError::InvalidConfig {
                what: "exchange step".into(),
                reason: "the session is not a Star shard (enable_exchange)".into(),
            }
            .into());
        };
        if tokens.is_empty() || tokens.len() > self.options.max_chunk {
            return Err(ModelError::InvalidConfig {
                what: "exchange step".into(),
                reason: format!(
                    "{} rows: 1 to {} per step",
                    tokens.len(),
                    self.options.max_chunk
                ),
            }
            .into());
        }
        if store && first_token != self.slots.n_seen() {
            return Err(PolicyError::CannotSkip {
                policy: self.options.policy.name(),
                from: self.slots.n_seen(),
                to: first_token,
            }
            .into());
        }
        let merge = attention_merge::Params::new(
            exchange.n_parts as u32,
            tokens.len() as u32,
            c.n_heads as u32,
            c.head_dim as u32,
        );
        self.arena.set(self.params.merge, &merge)?;
        let head = sampling.map_or(Head::None, Head::Sample);
        let visiting = (!store).then_some(first_token);
        let rows = self.begin_step(Some(tokens), tokens.len(), &head, visiting)?;
        let mut encoder = model
            .gpu()
            .device
            .create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            let mut recorder = Recorder::new(&mut pass, None);
            self.record_embed(&mut recorder, rows)?;
            self.record_attention_half(&mut recorder, 0, rows)?;
        }
        self.submit(encoder, &Head::None);
        self.exchange_rows = Some(rows);
        Ok(())
    }

    /// This shard's partial attention of the exchange step's rows at the current layer, and
    /// its LSEs: `([rows, n_heads, head_dim], [rows, n_heads])`.
    pub(crate) async fn exchange_partial(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let rows = self.exchange_rows.ok_or(ModelError::NothingToDecode)?;
        let c = &self.model.config;
        let gpu = self.model.gpu();
        let n_vecs = rows as u64 * c.n_heads as u64;
        let att = gpu
            .read(
                "partial attention",
                &self.buffers.att,
                0,
                n_vecs * c.head_dim as u64 * 4,
            )
            .await?;
        let lse = gpu
            .read("partial lse", &self.buffers.lse, 0, n_vecs * 4)
            .await?;
        let floats = |bytes: Vec<u8>| -> Vec<f32> {
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        Ok((floats(att), floats(lse)))
    }

    /// Merges every shard's partial attention of layer `layer` (`parts`, `parts_lse`: the
    /// shards' [`Session::exchange_partial`] concatenated in shard order) into this shard's
    /// attention output, finishes the layer and runs the next one up to its attention; after
    /// the last layer, the head and the sampler if the step samples here.
    pub(crate) fn exchange_continue(
        &mut self,
        layer: usize,
        parts: &[f32],
        parts_lse: &[f32],
        sampling: Option<&SamplingParams>,
    ) -> Result<()> {
        let rows = self.exchange_rows.ok_or(ModelError::NothingToDecode)?;
        let model = self.model.clone();
        let gpu = model.gpu();
        let exchange = self.exchange.as_ref().expect("exchange_begin checked it");
        let queue = &gpu.queue;
        queue.write_buffer(&exchange.parts, 0, bytemuck::cast_slice(parts));
        queue.write_buffer(&exchange.parts_lse, 0, bytemuck::cast_slice(parts_lse));
        let merge = attention_merge::Params::new(
            exchange.n_parts as u32,
            rows,
            model.config.n_heads as u32,
            model.config.head_dim as u32,
        );
        let last = layer + 1 == self.layers.len();
        let head = sampling.map_or(Head::None, Head::Sample);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            let mut recorder = Recorder::new(&mut pass, None);
            let grid = attention_merge::Variant::Pairs.grid(gpu, &merge)?;
            recorder.record(Part::Attention, &exchange.merge, grid);
            // After the last layer only the head reads the residual stream.
            if !last || sampling.is_some() {
                self.record_ffn_half(&mut recorder, layer, rows)?;
            }
            if last {
                self.record_head(&mut recorder, &head, rows)?;
            } else {
                self.record_attention_half(&mut recorder, layer + 1, rows)?;
            }
        }
        self.submit(encoder, &head);
        if last {
            self.exchange_rows = None;
        }
        Ok(())
    }

    /// The token sampled by the exchange step that just ended (the query shard's).
    pub(crate) async fn exchange_sampled(&mut self) -> Result<u32> {
        self.read_sampled().await
    }

    /// Feeds `tokens` and leaves the logits of the last one on the GPU (see [`Session::logits`]).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput.into());
        }
        self.prefill(tokens, Head::Logits)?;
        Ok(())
    }

    /// Feeds `tokens` and samples the next token (blocking form of
    /// [`Session::feed_and_sample_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn feed_and_sample(&mut self, tokens: &[u32], sampling: &SamplingParams) -> Result<u32> {
        pollster::block_on(self.feed_and_sample_async(tokens, sampling))
    }

    /// Feeds the pending sampled token and samples the next one (blocking form of
    /// [`Session::decode_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode(&mut self, sampling: &SamplingParams) -> Result<u32> {
        pollster::block_on(self.decode_async(sampling))
    }

    /// Feeds `tokens` and samples the next token. The future must be run to its end: dropped
    /// before, the session keeps no pending token (the next step starts afresh from its input).
    pub async fn feed_and_sample_async(
        &mut self,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<u32> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput.into());
        }
        self.prefill(tokens, Head::Sample(sampling))?;
        self.read_sampled().await
    }

    /// Feeds the pending sampled token and samples the next one: one submission (the
    /// recompute policy re-encodes its whole window instead) and one 4-byte readback.
    pub async fn decode_async(&mut self, sampling: &SamplingParams) -> Result<u32> {
        if self.pending.is_none() {
            return Err(ModelError::NothingToDecode.into());
        }
        match self.options.policy {
            AttentionPolicy::Recompute { .. } => self.prefill(&[], Head::Sample(sampling))?,
            _ => {
                self.step(None, 1, Head::Sample(sampling))?;
                self.last_sampling = Some(*sampling);
            }
        };
        self.read_sampled().await
    }

    /// Feeds `tokens` and returns the logits after each of them, `[tokens.len(), vocab_size]`:
    /// what perplexity needs. A pending token is fed first (its logits are not returned).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn feed_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput.into());
        }
        let vocab = self.model.config.vocab_size;
        let mut out = Vec::with_capacity(tokens.len() * vocab);
        if let AttentionPolicy::Recompute { .. } = self.options.policy {
            // Every token has its own fresh pass over its window.
            for &token in tokens {
                self.prefill(&[token], Head::Logits)?;
                out.extend(self.logits()?);
            }
            return Ok(out);
        }
        if self.pending.is_some() {
            self.prefill(&[], Head::None)?;
        }
        for chunk in tokens.chunks(self.options.max_chunk) {
            self.prefill(chunk, Head::AllLogits)?;
            let gpu = self.model.gpu();
            out.extend(gpu.read_f32(&self.buffers.logits, chunk.len() * vocab)?);
        }
        Ok(out)
    }

    /// Logits of the last token processed, `[vocab_size]`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn logits(&self) -> Result<Vec<f32>> {
        let gpu = self.model.gpu();
        Ok(gpu.read_f32(&self.buffers.logits, self.model.config.vocab_size)?)
    }

    /// Runs `tokens` (one chunk at most) through the first `n_layers` layers only and returns
    /// the residual stream after them, `[tokens.len(), dim]`, for layer-by-layer diffs against
    /// `CpuModel::forward_traced`. The tokens are dropped from the cache again afterwards
    /// (as [`Session::truncate`] does).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn residual_after(&mut self, tokens: &[u32], n_layers: usize) -> Result<Vec<f32>> {
        let model = self.model.clone();
        let c = &model.config;
        if tokens.len() > self.options.max_chunk || n_layers > c.n_layers {
            return Err(ModelError::InvalidConfig {
                what: "residual_after".into(),
                reason: format!(
                    "{} tokens through {n_layers} layers: at most {} tokens (one chunk) and {} \
                     layers",
                    tokens.len(),
                    self.options.max_chunk,
                    c.n_layers
                ),
            }
            .into());
        }
        if self.pending.is_some() {
            return Err(ModelError::InvalidConfig {
                what: "residual_after".into(),
                reason: "a sampled token is pending: feed it first".into(),
            }
            .into());
        }
        let n_seen = self.slots.n_seen();
        self.prefill(tokens, Head::Layers(n_layers))?;
        let x = model
            .gpu()
            .read_f32(&self.buffers.x, tokens.len() * c.dim)?;
        self.truncate(n_seen)?;
        Ok(x)
    }

    /// Feeds the pending token, if any, then `tokens`, in chunks of at most `max_chunk`.
    /// A `Sample` head leaves the token for [`Session::read_sampled`].
    fn prefill(&mut self, tokens: &[u32], head: Head) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange {
                token,
                vocab_size: vocab,
            }
            .into());
        }
        // A pending token goes in first: it precedes the new tokens in the text.
        let pending: Vec<u32> = self.pending.iter().copied().collect();
        let mut all: Vec<u32> = pending.iter().chain(tokens).copied().collect();
        if let AttentionPolicy::Recompute { window } = self.options.policy {
            // A fresh pass over the last `window` tokens, at positions 0.. (never errs for
            // room: the window is the cache's size).
            self.recompute_window.extend(&all);
            let excess = self.recompute_window.len().saturating_sub(window);
            self.recompute_window.drain(..excess);
            all = self.recompute_window.iter().copied().collect();
            self.slots.reset();
            self.write_slot_table(0, self.slots.capacity());
        }
        self.slots.check_room(all.len())?;
        if let Head::Sample(sampling) = head {
            // Checked before anything is fed, so a refused step changes nothing.
            self.check_sampling(sampling)?;
        }
        for &token in tokens {
            self.remember(token);
        }
        let chunks: Vec<&[u32]> = all.chunks(self.options.max_chunk).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let head = match (&head, last) {
                (Head::AllLogits, _) => Head::AllLogits,
                (_, false) => Head::None,
                (Head::None, true) => Head::None,
                (Head::Layers(n), true) => Head::Layers(*n),
                (Head::Logits, true) => Head::Logits,
                (Head::Sample(s), true) => Head::Sample(s),
            };
            self.step(Some(chunk), chunk.len(), head)?;
        }
        Ok(())
    }

    /// Writes `slot_token[from..to]` from the host mirror.
    fn write_slot_table(&self, from: usize, to: usize) {
        let table = &self.slots.slot_token()[from..to];
        self.model.gpu().queue.write_buffer(
            &self.buffers.slot_token,
            bytes_f32(from),
            bytemuck::cast_slice(table),
        );
    }

    /// One submission: `n_rows` tokens (from `tokens`, or the pending token already in
    /// `tokens[0]` on the GPU) through every layer, then `head`. A `Sample` head copies the
    /// token to the readback buffer for [`Session::read_sampled`].
    fn step(&mut self, tokens: Option<&[u32]>, n_rows: usize, head: Head) -> Result<()> {
        let rows = self.begin_step(tokens, n_rows, &head, None)?;
        let (encoder, _) = self.record_step(rows, &head, None)?;
        self.submit(encoder, &head);
        Ok(())
    }

    /// A step's whole forward pass for `rows` rows (or only its `only` part) in one encoder,
    /// with the params `begin_step` wrote, and how many dispatches it recorded (remembered for
    /// a whole step).
    fn record_step(
        &mut self,
        rows: u32,
        head: &Head,
        only: Option<Part>,
    ) -> Result<(wgpu::CommandEncoder, usize)> {
        let model = self.model.clone();
        let mut encoder = model
            .gpu()
            .device
            .create_command_encoder(&Default::default());
        let recorded;
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            let mut recorder = Recorder::new(&mut pass, only);
            self.record_embed(&mut recorder, rows)?;
            let n_layers = match head {
                Head::Layers(n) => *n,
                _ => self.layers.len(),
            };
            for layer in 0..n_layers {
                self.record_attention_half(&mut recorder, layer, rows)?;
                self.record_ffn_half(&mut recorder, layer, rows)?;
            }
            self.record_head(&mut recorder, head, rows)?;
            recorded = recorder.recorded;
        }
        if only.is_none() {
            self.step_dispatches = recorded;
        }
        Ok((encoder, recorded))
    }

    /// Seconds each [`Part`] of a decode step takes on the GPU: this session's last decode step
    /// (one row, not the recompute policy's) re-recorded `repeat` times with only that part's dispatches (every layer's),
    /// each submitted alone and waited for (median), after one untimed run; a part the step
    /// does not run (the output projection, when attention computes it) is left out. Parts
    /// re-run out of order overwrite the cache and the activations, so the session is consumed.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_decode(self, repeat: usize) -> Result<Vec<(Part, f64)>> {
        pollster::block_on(self.profile_decode_async(repeat))
    }

    /// [`Session::profile_decode`], awaiting the GPU instead of blocking (the browser's form).
    pub async fn profile_decode_async(mut self, repeat: usize) -> Result<Vec<(Part, f64)>> {
        let sampling = self.last_sampling.ok_or(ModelError::NothingToDecode)?;
        let head = Head::Sample(&sampling);
        let gpu = self.model.gpu().clone();
        let mut times = Vec::new();
        for part in Part::ALL {
            let mut secs = Vec::new();
            for run in 0..=repeat.max(1) {
                let (encoder, recorded) = self.record_step(1, &head, Some(part))?;
                if recorded == 0 {
                    break;
                }
                let start = web_time::Instant::now();
                gpu.queue.submit([encoder.finish()]);
                gpu.finish().await?;
                if run > 0 {
                    secs.push(start.elapsed().as_secs_f64());
                }
            }
            if secs.is_empty() {
                continue;
            }
            secs.sort_by(f64::total_cmp);
            times.push((part, secs[secs.len() / 2]));
        }
        Ok(times)
    }

    /// Everything a step writes before recording: the rows' cache slots (unless `visiting`:
    /// rows that are text tokens `visiting..` and attend to this cache without being stored,
    /// as on a Star context shard in phase 2), the tokens, the slot table and the arena.
    /// Returns the row count.
    fn begin_step(
        &mut self,
        tokens: Option<&[u32]>,
        n_rows: usize,
        head: &Head,
        visiting: Option<usize>,
    ) -> Result<u32> {
        let model = self.model.clone();
        let gpu: &Gpu = model.gpu();
        let c = &model.config;
        if let Head::Sample(sampling) = head {
            self.check_sampling(sampling)?;
        }
        let queue = &gpu.queue;
        let first_token = match visiting {
            Some(first_token) => {
                let end = first_token + n_rows;
                if end > self.slots.positions() {
                    return Err(PolicyError::PositionsExhausted {
                        first: first_token,
                        end,
                        positions: self.slots.positions(),
                    }
                    .into());
                }
                // Not stored: the q/k/v matmul skips cache rows past the capacity.
                let not_stored = vec![u32::MAX; n_rows];
                queue.write_buffer(&self.buffers.slots, 0, bytemuck::cast_slice(&not_stored));
                first_token as u32
            }
            None => {
                let placement = self.slots.place(n_rows)?;
                queue.write_buffer(
                    &self.buffers.slots,
                    0,
                    bytemuck::cast_slice(&placement.slots),
                );
                let lo = *placement.slots.iter().min().expect("at least one row") as usize;
                let hi = *placement.slots.iter().max().expect("at least one row") as usize;
                self.write_slot_table(lo, hi + 1);
                self.pending = None;
                placement.first_token
            }
        };
        if let Some(tokens) = tokens {
            queue.write_buffer(&self.buffers.tokens, 0, bytemuck::cast_slice(tokens));
        }

        let rows = n_rows as u32;
        let (n_sink, window) = self.slots.kernel_window();
        let n_slots = self.slots.scan_len() as u32;
        // Only a decoded row is split (a prefill chunk's rows already fill the device), and only
        // where the session built the split dispatches.
        let can_split = self.layers.iter().all(|l| l.attention.split.is_some());
        let n_parts = match rows {
            1 if can_split => {
                attention::decode_parts(n_slots, c.n_heads as u32, gpu.decode_workgroups)
            }
            _ => 1,
        };
        self.attention_shape = attention::Params {
            n_rows: rows,
            n_heads: c.n_heads as u32,
            n_kv_heads: c.n_kv_heads as u32,
            head_dim: c.head_dim as u32,
            n_slots,
            first_token,
            n_sink,
            window,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            block: self.star_mask.map_or(0, |(block, _)| block),
            anchor: self.star_mask.map_or(0, |(_, anchor)| anchor),
            n_parts,
        };
        // The FFN's matmuls read the heads' parts of the stream where a projected step has them.
        let parts = if self.projecting_step() {
            c.n_heads as u32
        } else {
            0
        };
        let p = &self.params;
        let arena = &mut self.arena;
        arena.set(p.embed, &embed::Params::new(rows, c.dim as u32))?;
        // Every layer's matmuls share their slots: the shapes bound in layer 0, with this step's
        // rows.
        let l0 = &self.layers[0];
        for (slot, m, n_parts) in [
            (p.qkv, &l0.qkv, 0),
            (p.o, &l0.o, 0),
            (p.gate_up, &l0.gate_up, parts),
            (p.down, &l0.down, parts),
        ] {
            arena.set(
                slot,
                &matmul::Params {
                    n_rows: rows,
                    ..m.shape
                }
                .with_parts(n_parts),
            )?;
        }
        // The LM head reads the last row only, or every row for `AllLogits`.
        let head_rows = if matches!(head, Head::AllLogits) {
            rows
        } else {
            1
        };
        let head_shape = matmul::Params {
            n_rows: head_rows,
            ..self.head.shape
        };
        arena.set(p.head, &head_shape.from_row(rows - head_rows))?;
        arena.set(p.attention, &self.attention_shape)?;
        let merge = attention_merge::Params::new(n_parts, 1, c.n_heads as u32, c.head_dim as u32);
        arena.set(p.split_merge, &merge)?;
        for layer in &mut self.layers {
            if let Some(mta) = &mut layer.mta {
                mta.set_rows(gpu, arena, first_token, rows, 0)?;
            }
        }
        if let Head::Sample(sampling) = head {
            if self.ring.capacity() != sampling.penalty_last_n {
                self.ring = sampling.ring();
                self.ring_dirty = true;
            }
            if self.ring_dirty {
                self.rebuild_ring(gpu);
            }
            let params = sampling.params(c.vocab_size as u32, &self.ring, self.sample_step, 0)?;
            self.arena.set(self.params.sample, &params)?;
        }
        self.arena.upload(gpu);
        Ok(rows)
    }

    /// Whether the step under way (as `begin_step` shaped it) runs the layers'
    /// [`ProjectedDecode`]: one decoded row, not an exchange step.
    fn projecting_step(&self) -> bool {
        self.attention_shape.n_rows == 1 && self.exchange.is_none()
    }

    /// Layer `layer`'s [`ProjectedDecode`], if it has one and the step under way runs it.
    fn projected(&self, layer: usize) -> Option<&ProjectedDecode> {
        let projected = self.layers[layer].projected.as_ref();
        projected.filter(|_| self.projecting_step())
    }

    fn record_embed(&self, recorder: &mut Recorder, rows: u32) -> Result<()> {
        let gpu = self.model.gpu();
        let dim = self.model.config.dim as u32;
        recorder.record(Part::Embed, &self.embed, Embed::grid(gpu, rows, dim)?);
        Ok(())
    }

    /// Layer `layer` up to its attention output in `att` (and the LSEs in `lse`); the new
    /// keys and values go into the cache at the rows' slots (none for rows that only visit
    /// this cache, as in Star's phase 2: their slots are past the cache).
    fn record_attention_half(
        &self,
        recorder: &mut Recorder,
        layer: usize,
        rows: u32,
    ) -> Result<()> {
        let gpu = self.model.gpu();
        let c = &self.model.config;
        let l = &self.layers[layer];
        recorder.matmul(gpu, Part::Qkv, &l.qkv, rows)?;
        let shape = &self.attention_shape;
        let a = &l.attention;
        if let Some(projected) = self.projected(layer) {
            // begin_step splits a walk only where the session built the split dispatches.
            match (&a.split, &projected.merge) {
                (Some(split), Some(merge)) if shape.n_parts > 1 => {
                    let grid = a.row_variant.grid(gpu, shape)?;
                    recorder.record(Part::Attention, &split.row, grid);
                    recorder.record(Part::Attention, merge, merge.workgroups);
                }
                _ => {
                    let d = &projected.attention;
                    recorder.record(Part::Attention, d, d.workgroups);
                }
            }
            return Ok(());
        }
        if let Some(mta) = &l.mta {
            for dispatch in mta.dispatches() {
                recorder.record(Part::Attention, dispatch, dispatch.workgroups);
            }
            return Ok(());
        }
        // The tiled form for prefill, as for matmuls: its threads are a tile's rows.
        debug_assert_eq!(shape.n_rows, rows, "begin_step set this step's shape");
        match (rows, &a.split) {
            (1, Some(split)) if shape.n_parts > 1 => {
                let grid = a.row_variant.grid(gpu, shape)?;
                recorder.record(Part::Attention, &split.row, grid);
                let merge = attention_merge::Params::new(
                    shape.n_parts,
                    1,
                    c.n_heads as u32,
                    c.head_dim as u32,
                );
                let grid = attention_merge::Variant::Pairs.grid(gpu, &merge)?;
                recorder.record(Part::Attention, &split.merge, grid);
            }
            (1, _) => recorder.record(Part::Attention, &a.row, a.row_variant.grid(gpu, shape)?),
            _ => recorder.record(Part::Attention, &a.tile, a.tile_variant.grid(gpu, shape)?),
        }
        Ok(())
    }

    /// The rest of layer `layer`, from `att`: output projection, FFN, both residual adds.
    fn record_ffn_half(&self, recorder: &mut Recorder, layer: usize, rows: u32) -> Result<()> {
        let gpu = self.model.gpu();
        let l = &self.layers[layer];
        if let Some(projected) = self.projected(layer) {
            // The output projection ran in attention; these sum its parts into the stream.
            for (part, d) in [
                (Part::GateUp, &projected.gate_up),
                (Part::Down, &projected.down),
            ] {
                recorder.record(part, d, d.workgroups);
            }
            return Ok(());
        }
        recorder.matmul(gpu, Part::Output, &l.o, rows)?;
        recorder.matmul(gpu, Part::GateUp, &l.gate_up, rows)?;
        recorder.matmul(gpu, Part::Down, &l.down, rows)?;
        Ok(())
    }

    /// The final norm and LM head (last row, or every row for `AllLogits`), and the sampler.
    fn record_head(&self, recorder: &mut Recorder, head: &Head, rows: u32) -> Result<()> {
        let gpu = self.model.gpu();
        if matches!(head, Head::Logits | Head::Sample(_) | Head::AllLogits) {
            let head_rows = if matches!(head, Head::AllLogits) {
                rows
            } else {
                1
            };
            // x holds every row of the step: the decode form is bound to its first row only.
            recorder.matmul_as(gpu, Part::Head, &self.head, rows == 1, head_rows)?;
        }
        if matches!(head, Head::Sample(_)) {
            recorder.record(Part::Sample, &self.sample, self.sample.workgroups);
        }
        Ok(())
    }

    /// Submits `encoder`, after the sampled token's copy to the readback buffer for a `Sample`
    /// head.
    fn submit(&self, mut encoder: wgpu::CommandEncoder, head: &Head) {
        if matches!(head, Head::Sample(_)) {
            encoder.copy_buffer_to_buffer(&self.buffers.tokens, 0, &self.buffers.readback, 0, 4);
        }
        self.model.gpu().queue.submit([encoder.finish()]);
        self.submissions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for the token a `Sample` step left in the readback buffer and makes it pending.
    async fn read_sampled(&mut self) -> Result<u32> {
        let model = self.model.clone();
        let bytes = model
            .gpu()
            .read_mapped("sampled token", &self.buffers.readback, 4)
            .await?;
        let token = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes read back"));
        // The kernel appended the token to the GPU ring too; `remember` marks the host copy
        // for a rebuild, which keeps one code path for prompts, truncation and new settings.
        self.remember(token);
        self.sample_step = self.sample_step.wrapping_add(1);
        self.pending = Some(token);
        Ok(token)
    }

    fn check_sampling(&self, sampling: &SamplingParams) -> Result<()> {
        sampling.validate()?;
        if sampling.penalty_last_n > MAX_PENALTY_LAST_N {
            return Err(ModelError::PenaltyWindow {
                value: sampling.penalty_last_n,
                max: MAX_PENALTY_LAST_N,
            }
            .into());
        }
        Ok(())
    }

    /// Appends `token` to the host's record of recent tokens and to the host ring.
    fn remember(&mut self, token: u32) {
        if self.recent.len() == MAX_PENALTY_LAST_N as usize {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
        self.ring_dirty = true;
    }

    /// Refills the history ring from `recent` and uploads it.
    fn rebuild_ring(&mut self, gpu: &Gpu) {
        self.ring = HistoryRing::new(self.ring.capacity());
        self.ring_tokens = vec![0; self.ring.capacity() as usize];
        let skip = self
            .recent
            .len()
            .saturating_sub(self.ring.capacity() as usize);
        for &token in self.recent.iter().skip(skip) {
            self.ring.push(&mut self.ring_tokens, token);
        }
        if !self.ring_tokens.is_empty() {
            gpu.queue.write_buffer(
                &self.buffers.history,
                0,
                bytemuck::cast_slice(&self.ring_tokens),
            );
        }
        self.ring_dirty = false;
    }
}
