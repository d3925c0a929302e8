//! mta: Multi-Token Attention (mta.md) over a dense KV cache: key-query convolution over the
//! attention logits (pre-softmax, with the zero / minus-infinity double mask) and over the
//! probabilities (post-softmax, not renormalised), head mixing within groups of heads (pre and
//! post), and the per-head RMS group norm with its sigmoid gate and depth factor.
//!
//! The shader's stages (logits, mix, keep, softmax, output: its header says what each computes)
//! pass attention maps through buffers. The maps hold the rows of one chunk only (a prefill tile
//! of up to `max_rows` queries, or a decode step's one row) over every key, and one set of them,
//! [`MtaMaps`], serves every layer; [`MtaPass`] is one layer's stages with what it owns alone:
//! its weights and, per convolution, the halo ring of the `c_q - 1` rows before the next chunk
//! (mta.md §7's row ring), from which decode and chunked prefill read their halo: no earlier row
//! is ever recomputed, and memory grows with neither the prompt nor the layers. MTA needs
//! every key at its own position, so it runs on a dense cache only (slot `j` holds token `j`);
//! sink-window eviction and Star partitions are rejected by the model's configuration.
//!
//! The CPU reference ([`mta_cpu`] and its parts) is written from the spec on whole `T x T`
//! maps, independently of the ring and of the shader.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::attention::rope_cpu;
use super::shader_source;
use crate::gpu::{
    grid, Binding, Dispatch, Gpu, GpuError, Kernel, ParamSlot, PipelineSpec, TrackedBuffer,
    UniformArena,
};

/// Most heads in one mixing group (the shader's private array).
pub const MAX_MIX: u32 = 32;

/// Widest head the output stage serves (its private vectors).
pub const MAX_HEAD_DIM: u32 = 128;

/// The group norm's epsilon (mta.md §5).
pub const NORM_EPS: f32 = 1e-5;

/// Threads per workgroup of every stage: flat grids of independent threads.
const WG_SIZE: u32 = 64;

/// Errors of MTA settings, weights and dispatches: each names the setting or buffer at fault.
#[derive(Debug, thiserror::Error)]
pub enum MtaError {
    #[error(
        "mta: {what} kernel of {q}x{k} taps: c_q must be at least 1 and c_k odd (centred key taps)"
    )]
    Kernel { what: &'static str, q: u32, k: u32 },
    #[error("mta: a head-mixing group of {group} heads does not divide the {n_heads} query heads")]
    Group { group: u32, n_heads: u32 },
    #[error("mta: head-mixing groups of {group} heads, at most {max} are served")]
    GroupTooLarge { group: u32, max: u32 },
    #[error("mta: head_dim {head_dim} must be even and at most {max}")]
    HeadDim { head_dim: u32, max: u32 },
    #[error("mta: {n_heads} query heads cannot be shared evenly by {n_kv_heads} kv heads")]
    HeadGroups { n_heads: u32, n_kv_heads: u32 },
    #[error("mta: `{what}` holds {got} values, {expected} expected")]
    WeightShape {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("mta: rows {first_token}..+{n_rows} (document from {seq_start}) do not fit a pass of {max_rows} rows per chunk and {key_cap} keys")]
    Rows {
        first_token: u32,
        n_rows: u32,
        seq_start: u32,
        max_rows: u32,
        key_cap: u32,
    },
    #[error("mta: `{what}` holds {bytes} bytes, {needed} needed")]
    BufferSize {
        what: &'static str,
        bytes: u64,
        needed: u64,
    },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// A key-query convolution kernel: `q` query taps (the row and the `q - 1` before it), `k`
/// key taps centred on the key (`k` odd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv {
    pub q: u32,
    pub k: u32,
}

/// The gate after the group norm (mta.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    None,
    /// `y ← y · σ(<w, y> + β)`, `w ∈ R^d`, `β ∈ R`, shared by the layer's heads.
    Scalar,
    /// `y ← y ⊙ σ(W y + b)`, `W ∈ R^{d×d}` (`[out][in]`), `b ∈ R^d`: the per-channel form.
    Vector,
}

/// What one layer's MTA attention does (mta.md §4): every part is optional, and with all of
/// them off the layer is standard attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MtaLayer {
    /// Key-query convolution of the logits (pre-softmax).
    pub pre_conv: Option<Conv>,
    /// Head mixing of the logits.
    pub pre_mix: bool,
    /// Key-query convolution of the probabilities (post-softmax).
    pub post_conv: Option<Conv>,
    /// Head mixing of the probabilities.
    pub post_mix: bool,
    /// `c_h`: heads per mixing group (consecutive heads), for both mixes.
    pub mix_size: u32,
    /// The per-head RMS group norm with its weight `γ`.
    pub norm: bool,
    pub gate: Gate,
    /// Multiplies the output (1 when off): [`depth_factor`] of the layer for depth scaling.
    pub depth_factor: f32,
}

/// The depth scaling of mta.md §5 for 0-based layer `layer`: `1 − λ_init(l)`,
/// `λ_init(l) = 0.8 − 0.6·exp(−0.3·l)`.
pub fn depth_factor(layer: u32) -> f32 {
    (1.0 - (0.8 - 0.6 * (-0.3 * f64::from(layer)).exp())) as f32
}

impl MtaLayer {
    /// Standard attention: no convolution, no mixing, no norm.
    pub const IDENTITY: MtaLayer = MtaLayer {
        pre_conv: None,
        pre_mix: false,
        post_conv: None,
        post_mix: false,
        mix_size: 1,
        norm: false,
        gate: Gate::None,
        depth_factor: 1.0,
    };

    /// Checks the kernel sizes and the mixing groups against `n_heads` query heads.
    pub fn validate(&self, n_heads: u32) -> Result<(), MtaError> {
        for (what, conv) in [
            ("pre-softmax", self.pre_conv),
            ("post-softmax", self.post_conv),
        ] {
            if let Some(Conv { q, k }) = conv {
                if q == 0 || k.is_multiple_of(2) {
                    return Err(MtaError::Kernel { what, q, k });
                }
            }
        }
        if self.pre_mix || self.post_mix {
            let group = self.mix_size;
            if group == 0 || !n_heads.is_multiple_of(group) {
                return Err(MtaError::Group { group, n_heads });
            }
            if group > MAX_MIX {
                return Err(MtaError::GroupTooLarge {
                    group,
                    max: MAX_MIX,
                });
            }
        }
        Ok(())
    }
}

/// One layer's MTA weights, in the orientation the kernels read (the model loader converts).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MtaWeights {
    /// `θ [n_heads][c_q][c_k]` of the pre-softmax convolution (row `a = c_q - 1` is the current
    /// query, column `(c_k - 1) / 2` the current key), empty when off.
    pub pre_conv: Vec<f32>,
    /// `w [n_heads / c_h][c_h in][c_h out]`: head `o` of a group gets `Σ_p w[p, o] · head p`.
    pub pre_mix: Vec<f32>,
    pub post_conv: Vec<f32>,
    pub post_mix: Vec<f32>,
    /// `γ [head_dim]`, shared by the layer's heads.
    pub norm: Vec<f32>,
    /// Scalar gate: `w [head_dim]` then `β`; vector gate: `W [head_dim][head_dim]` then `b
    /// [head_dim]`.
    pub gate: Vec<f32>,
}

/// Where each part of [`MtaWeights`] starts in the packed buffer (in f32 values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Offsets {
    pre_conv: u32,
    pre_mix: u32,
    post_conv: u32,
    post_mix: u32,
    norm: u32,
    gate: u32,
}

impl MtaWeights {
    /// Identity kernels and mixes, `γ = 1` and a zero gate for `layer` (mta.md §6's init):
    /// with norm and gate off this is exactly standard attention.
    pub fn identity(layer: &MtaLayer, n_heads: u32, head_dim: u32) -> MtaWeights {
        let conv = |conv: Option<Conv>| match conv {
            None => Vec::new(),
            Some(Conv { q, k }) => {
                let mut theta = vec![0.0; (n_heads * q * k) as usize];
                for head in 0..n_heads {
                    theta[((head * q + q - 1) * k + (k - 1) / 2) as usize] = 1.0;
                }
                theta
            }
        };
        let mix = |on: bool| {
            if !on {
                return Vec::new();
            }
            let c = layer.mix_size;
            let mut w = vec![0.0; (n_heads * c) as usize];
            for group in 0..n_heads / c {
                for p in 0..c {
                    w[((group * c + p) * c + p) as usize] = 1.0;
                }
            }
            w
        };
        let hd = head_dim as usize;
        MtaWeights {
            pre_conv: conv(layer.pre_conv),
            pre_mix: mix(layer.pre_mix),
            post_conv: conv(layer.post_conv),
            post_mix: mix(layer.post_mix),
            norm: if layer.norm {
                vec![1.0; hd]
            } else {
                Vec::new()
            },
            gate: vec![0.0; gate_len(layer.gate, hd)],
        }
    }

    /// Fails unless every part has the length `layer` needs for `n_heads` heads of `head_dim`.
    pub fn validate(&self, layer: &MtaLayer, n_heads: u32, head_dim: u32) -> Result<(), MtaError> {
        let conv_len = |conv: Option<Conv>| conv.map_or(0, |c| (n_heads * c.q * c.k) as usize);
        let mix_len = |on: bool| {
            if on {
                (n_heads * layer.mix_size) as usize
            } else {
                0
            }
        };
        let hd = head_dim as usize;
        for (what, got, expected) in [
            ("pre_conv", self.pre_conv.len(), conv_len(layer.pre_conv)),
            ("pre_mix", self.pre_mix.len(), mix_len(layer.pre_mix)),
            ("post_conv", self.post_conv.len(), conv_len(layer.post_conv)),
            ("post_mix", self.post_mix.len(), mix_len(layer.post_mix)),
            ("norm", self.norm.len(), if layer.norm { hd } else { 0 }),
            ("gate", self.gate.len(), gate_len(layer.gate, hd)),
        ] {
            if got != expected {
                return Err(MtaError::WeightShape {
                    what,
                    got,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// All parts in one buffer's worth of values, and where each starts.
    fn pack(&self) -> (Vec<f32>, Offsets) {
        let mut packed = Vec::new();
        let mut push = |part: &[f32]| {
            let at = packed.len() as u32;
            packed.extend_from_slice(part);
            at
        };
        let offsets = Offsets {
            pre_conv: push(&self.pre_conv),
            pre_mix: push(&self.pre_mix),
            post_conv: push(&self.post_conv),
            post_mix: push(&self.post_mix),
            norm: push(&self.norm),
            gate: push(&self.gate),
        };
        (packed, offsets)
    }
}

fn gate_len(gate: Gate, head_dim: usize) -> usize {
    match gate {
        Gate::None => 0,
        Gate::Scalar => head_dim + 1,
        Gate::Vector => head_dim * head_dim + head_dim,
    }
}

/// Twin of the WGSL `Params` (its comments say what each field means to which stage).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Params {
    pub n_rows: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub first_token: u32,
    pub seq_start: u32,
    pub key_cap: u32,
    pub in_rows: u32,
    pub out_rows: u32,
    pub halo_rows: u32,
    pub conv_q: u32,
    pub conv_k: u32,
    pub conv_offset: u32,
    pub mix_size: u32,
    pub mix_offset: u32,
    pub switches: u32,
    pub norm_offset: u32,
    pub gate_offset: u32,
    pub scale: f32,
    pub depth_factor: f32,
    pub eps: f32,
}

/// Bits of `Params::switches` (the shader's constants).
const NORM: u32 = 1;
const GATE_SCALAR: u32 = 2;
const GATE_VECTOR: u32 = 4;

/// The shader's stages, one pipeline each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Logits,
    Mix,
    Keep,
    Softmax,
    Output,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Logits,
        Stage::Mix,
        Stage::Keep,
        Stage::Softmax,
        Stage::Output,
    ];

    fn flag(&self) -> &'static str {
        match self {
            Stage::Logits => "LOGITS",
            Stage::Mix => "MIX",
            Stage::Keep => "KEEP",
            Stage::Softmax => "SOFTMAX",
            Stage::Output => "OUTPUT",
        }
    }

    pub fn label(&self) -> String {
        format!("mta_{}", self.flag().to_lowercase())
    }

    fn bindings(&self) -> Vec<Binding> {
        use Binding::{Read, ReadWrite, Uniform};
        match self {
            Stage::Logits => vec![Uniform, Read, Read, Read, ReadWrite],
            Stage::Mix => vec![Uniform, Read, Read, ReadWrite, Read],
            Stage::Keep | Stage::Softmax => vec![Uniform, Read, ReadWrite],
            Stage::Output => vec![Uniform, Read, Read, Read, ReadWrite],
        }
    }

    pub fn spec(&self) -> Result<PipelineSpec, GpuError> {
        Ok(PipelineSpec {
            label: self.label(),
            source: shader_source("mta.wgsl", &[self.flag()])?,
            entry: "main",
            overrides: vec![("WG_SIZE".into(), f64::from(WG_SIZE))],
            features: wgpu::Features::empty(),
            bindings: self.bindings(),
            loop_bounding: true,
        })
    }

    /// Threads of a dispatch over rows `first_token..first_token + n_rows`: one per (row, head,
    /// key) for the logits and for the rows kept, per (row, group, key) for the mix, per (row,
    /// head) otherwise.
    fn n_threads(&self, params: &Params) -> u64 {
        let rows_heads = u64::from(params.n_rows) * u64::from(params.n_heads);
        let n_keys = u64::from(params.first_token) + u64::from(params.n_rows);
        match self {
            Stage::Logits => rows_heads * n_keys,
            Stage::Keep => {
                let kept = u64::from(params.n_rows.min(params.halo_rows));
                kept * u64::from(params.n_heads) * n_keys
            }
            Stage::Mix => rows_heads / u64::from(params.mix_size.max(1)) * n_keys,
            Stage::Softmax | Stage::Output => rows_heads,
        }
    }

    fn grid(&self, gpu: &Gpu, params: &Params) -> Result<[u32; 3], GpuError> {
        let what = match self {
            Stage::Logits => "mta logits",
            Stage::Mix => "mta mix",
            Stage::Keep => "mta keep",
            Stage::Softmax => "mta softmax",
            Stage::Output => "mta output",
        };
        grid(
            gpu,
            what,
            self.n_threads(params).div_ceil(u64::from(WG_SIZE)),
        )
    }
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    Stage::ALL.iter().map(Stage::spec).collect()
}

/// The five pipelines, built once per device and shared by every layer's [`MtaPass`].
pub struct Mta {
    kernels: Vec<Arc<Kernel>>,
}

impl Mta {
    pub fn new(gpu: &Gpu) -> Result<Mta, GpuError> {
        let kernels = Stage::ALL
            .iter()
            .map(|stage| gpu.kernel(&stage.spec()?))
            .collect::<Result<_, _>>()?;
        Ok(Mta { kernels })
    }

    fn kernel(&self, stage: Stage) -> &Arc<Kernel> {
        // Stage::ALL lists the stages in declaration order.
        &self.kernels[stage as usize]
    }
}

/// The shape a [`MtaPass`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtaShape {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// Keys a row may see: the dense cache's capacity.
    pub key_cap: u32,
    /// Most rows per dispatch (a prefill chunk).
    pub max_rows: u32,
}

impl MtaShape {
    fn validate(&self) -> Result<(), MtaError> {
        let hd = self.head_dim;
        if hd == 0 || !hd.is_multiple_of(2) || hd > MAX_HEAD_DIM {
            return Err(MtaError::HeadDim {
                head_dim: hd,
                max: MAX_HEAD_DIM,
            });
        }
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return Err(MtaError::HeadGroups {
                n_heads: self.n_heads,
                n_kv_heads: self.n_kv_heads,
            });
        }
        Ok(())
    }

    /// Bytes of one map of `rows` rows per head.
    fn map_bytes(&self, rows: u32) -> u64 {
        u64::from(self.n_heads) * u64::from(rows) * u64::from(self.key_cap) * 4
    }
}

/// The buffers a [`MtaPass`] reads and writes, owned by the caller (f32 unless noted).
pub struct MtaBuffers<'a> {
    /// `[max_rows, n_heads, head_dim]`, raw (un-rotated) queries of the chunk.
    pub q: &'a wgpu::Buffer,
    /// `[key_cap, n_kv_heads, head_dim]`: raw keys, slot `j` holding token `j`.
    pub k_cache: &'a wgpu::Buffer,
    /// `[key_cap, n_kv_heads, head_dim]`.
    pub v_cache: &'a wgpu::Buffer,
    /// `[key_cap, head_dim / 2, 2]` from `attention::rope_table`: positions are distances
    /// `t - j` here, at most `key_cap - 1`.
    pub rope: &'a wgpu::Buffer,
    /// `[max_rows, n_heads, head_dim]`.
    pub out: &'a wgpu::Buffer,
}

/// The maps every layer's stages pass between them, shared by all the layers of a session (each
/// layer's stages run to the end before the next layer's start): the logits, the probabilities
/// and the mixes' output, each `[n_heads, max_rows, key_cap]`.
pub struct MtaMaps {
    shape: MtaShape,
    logits: TrackedBuffer,
    probs: TrackedBuffer,
    mixed: TrackedBuffer,
}

impl MtaMaps {
    /// Checks `shape` and allocates the maps, each checked against the device's limits first.
    pub fn new(gpu: &Gpu, shape: MtaShape) -> Result<MtaMaps, MtaError> {
        shape.validate()?;
        let bytes = shape.map_bytes(shape.max_rows);
        let map = |what| -> Result<TrackedBuffer, MtaError> {
            gpu.check_buffer_size(what, bytes, MAP_USAGE)?;
            Ok(gpu.storage(what, bytes)?)
        };
        Ok(MtaMaps {
            shape,
            logits: map("mta logits map")?,
            probs: map("mta probabilities map")?,
            mixed: map("mta mixed map")?,
        })
    }

    /// Bytes of the three maps.
    pub fn gpu_bytes(&self) -> u64 {
        self.logits.size() + self.probs.size() + self.mixed.size()
    }
}

const MAP_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_DST);

/// One stage as recorded: its params slot, its bound dispatch and its halo ring's rows.
struct Step {
    stage: Stage,
    slot: ParamSlot,
    dispatch: Dispatch,
    halo_rows: u32,
    /// For a mix, its part of the layer; the default (nothing) for the other stages.
    mix: MixPart,
}

/// The part of a layer one mix stage runs: the convolution, whether it mixes heads, and where
/// their weights start.
#[derive(Debug, Clone, Copy, Default)]
struct MixPart {
    conv: Option<Conv>,
    mix: bool,
    conv_offset: u32,
    mix_offset: u32,
}

/// The rows of the halo ring a convolution needs: the `c_q - 1` rows before a chunk.
fn halo_rows(conv: Option<Conv>) -> u32 {
    conv.map_or(0, |c| c.q - 1)
}

/// One layer's MTA attention on the GPU: its weights, the halo rings of its convolutions, and
/// its stages bound to those, to the shared [`MtaMaps`] and to the caller's buffers, in order.
/// [`MtaPass::set_rows`] writes the stages' params for a chunk, [`MtaPass::dispatches`] are
/// what to record.
pub struct MtaPass {
    layer: MtaLayer,
    shape: MtaShape,
    offsets: Offsets,
    steps: Vec<Step>,
    /// The buffers the dispatches bind and that this layer owns (kept alive with them).
    owned: Vec<TrackedBuffer>,
}

impl MtaPass {
    /// Checks `layer`, `weights` and the buffers against `maps`' shape, allocates the halo
    /// rings (checked against the device's limits first) and binds the stages to `maps`,
    /// `buffers` and slots of `arena`.
    pub fn new(
        gpu: &Gpu,
        mta: &Mta,
        arena: &mut UniformArena,
        layer: &MtaLayer,
        weights: &MtaWeights,
        maps: &MtaMaps,
        buffers: &MtaBuffers,
    ) -> Result<MtaPass, MtaError> {
        let shape = maps.shape;
        layer.validate(shape.n_heads)?;
        weights.validate(layer, shape.n_heads, shape.head_dim)?;
        let hd = u64::from(shape.head_dim);
        let rows = u64::from(shape.max_rows) * u64::from(shape.n_heads) * hd;
        let cache = u64::from(shape.key_cap) * u64::from(shape.n_kv_heads) * hd;
        for (what, buffer, n_elems) in [
            ("q", buffers.q, rows),
            ("k_cache", buffers.k_cache, cache),
            ("v_cache", buffers.v_cache, cache),
            ("rope", buffers.rope, u64::from(shape.key_cap) * hd),
            ("out", buffers.out, rows),
        ] {
            if buffer.size() < n_elems * 4 {
                return Err(MtaError::BufferSize {
                    what,
                    bytes: buffer.size(),
                    needed: n_elems * 4,
                });
            }
        }
        let ring = |what, conv: Option<Conv>| -> Result<Option<TrackedBuffer>, MtaError> {
            let rows = halo_rows(conv);
            if rows == 0 {
                return Ok(None);
            }
            let bytes = shape.map_bytes(rows);
            gpu.check_buffer_size(what, bytes, MAP_USAGE)?;
            Ok(Some(gpu.storage(what, bytes)?))
        };
        let pre_ring = ring("mta logits halo ring", layer.pre_conv)?;
        let post_ring = ring("mta probabilities halo ring", layer.post_conv)?;
        let (packed, offsets) = weights.pack();
        let weights_buffer = gpu.storage_with("mta weights", bytemuck::cast_slice(&packed))?;
        let weights_gpu: &wgpu::Buffer = &weights_buffer;
        let (logits, probs, mixed): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer) =
            (&maps.logits, &maps.probs, &maps.mixed);

        // The stages in order, each with what it binds after its params, its halo ring's rows
        // and, for a mix, its part of the layer.
        type Planned<'b> = (Stage, Vec<&'b wgpu::Buffer>, u32, Option<MixPart>);
        let mut plan: Vec<Planned> = vec![(
            Stage::Logits,
            vec![buffers.q, buffers.k_cache, buffers.rope, logits],
            0,
            None,
        )];
        // The convolution and head mixing of the map `input` (pre: the logits, post: the
        // probabilities) into `mixed`, then the input's last rows into the halo ring (a layer
        // without the convolution binds the input in the ring's place: never read).
        fn convolve<'b>(
            plan: &mut Vec<Planned<'b>>,
            [weights, input, mixed]: [&'b wgpu::Buffer; 3],
            ring: Option<&'b wgpu::Buffer>,
            part: MixPart,
        ) {
            let halo = halo_rows(part.conv);
            let resources = vec![weights, input, mixed, ring.unwrap_or(input)];
            plan.push((Stage::Mix, resources, halo, Some(part)));
            if let Some(ring) = ring {
                plan.push((Stage::Keep, vec![input, ring], halo, None));
            }
        }
        let part = |conv: Option<Conv>, mix, conv_offset, mix_offset| {
            (conv.is_some() || mix).then_some(MixPart {
                conv,
                mix,
                conv_offset,
                mix_offset,
            })
        };
        let pre = part(
            layer.pre_conv,
            layer.pre_mix,
            offsets.pre_conv,
            offsets.pre_mix,
        );
        let post = part(
            layer.post_conv,
            layer.post_mix,
            offsets.post_conv,
            offsets.post_mix,
        );
        if let Some(pre) = pre {
            convolve(
                &mut plan,
                [weights_gpu, logits, mixed],
                pre_ring.as_deref(),
                pre,
            );
        }
        let softmax_in = if pre.is_some() { mixed } else { logits };
        plan.push((Stage::Softmax, vec![softmax_in, probs], 0, None));
        if let Some(post) = post {
            convolve(
                &mut plan,
                [weights_gpu, probs, mixed],
                post_ring.as_deref(),
                post,
            );
        }
        let output_in = if post.is_some() { mixed } else { probs };
        plan.push((
            Stage::Output,
            vec![weights_gpu, output_in, buffers.v_cache, buffers.out],
            0,
            None,
        ));

        let mut steps = Vec::with_capacity(plan.len());
        for (stage, resources, halo, mix_part) in plan {
            let slot = arena.slot()?;
            let mut bindings = vec![arena.binding(slot)];
            bindings.extend(resources.iter().map(|b| b.as_entire_binding()));
            let kernel = mta.kernel(stage);
            steps.push(Step {
                stage,
                slot,
                dispatch: Dispatch {
                    kernel: kernel.clone(),
                    bind_group: kernel.bind(gpu, &bindings)?,
                    workgroups: [0; 3],
                },
                halo_rows: halo,
                mix: mix_part.unwrap_or_default(),
            });
        }
        let mut owned = vec![weights_buffer];
        owned.extend(pre_ring);
        owned.extend(post_ring);
        Ok(MtaPass {
            layer: *layer,
            shape,
            offsets,
            steps,
            owned,
        })
    }

    /// Bytes of the weights and halo rings this layer holds on the GPU (the shared maps are
    /// [`MtaMaps::gpu_bytes`]).
    pub fn gpu_bytes(&self) -> u64 {
        self.owned.iter().map(|b| b.size()).sum()
    }

    /// Bytes of the rows its halo rings keep from one step to the next: `c_q - 1` per
    /// convolution (mta.md §7's row ring).
    pub fn ring_bytes(&self) -> u64 {
        let rows = halo_rows(self.layer.pre_conv) + halo_rows(self.layer.post_conv);
        self.shape.map_bytes(rows)
    }

    /// The params of every stage for rows `first_token..first_token + n_rows` of a document
    /// that starts at token `seq_start`. Rows must come in text order, each chunk right after
    /// the one before (the rings then hold the halo rows).
    fn params(&self, step: &Step, first_token: u32, n_rows: u32, seq_start: u32) -> Params {
        let layer = &self.layer;
        let part = step.mix;
        let (conv_q, conv_k) = part.conv.map_or((0, 0), |c| (c.q, c.k));
        let norm = if layer.norm { NORM } else { 0 };
        let gate = match layer.gate {
            Gate::None => 0,
            Gate::Scalar => GATE_SCALAR,
            Gate::Vector => GATE_VECTOR,
        };
        Params {
            n_rows,
            n_heads: self.shape.n_heads,
            n_kv_heads: self.shape.n_kv_heads,
            head_dim: self.shape.head_dim,
            first_token,
            seq_start,
            key_cap: self.shape.key_cap,
            // Every map holds one chunk.
            in_rows: self.shape.max_rows,
            out_rows: self.shape.max_rows,
            halo_rows: step.halo_rows,
            conv_q,
            conv_k,
            conv_offset: part.conv_offset,
            mix_size: if part.mix { layer.mix_size } else { 0 },
            mix_offset: part.mix_offset,
            switches: norm | gate,
            norm_offset: self.offsets.norm,
            gate_offset: self.offsets.gate,
            scale: 1.0 / (self.shape.head_dim as f32).sqrt(),
            depth_factor: layer.depth_factor,
            eps: NORM_EPS,
        }
    }

    /// Writes every stage's params for the chunk into `arena` (uploaded by the caller) and
    /// sets the grids. Fails unless the chunk fits the pass: at most `max_rows` rows, no key
    /// past `key_cap`, the document's start not after the chunk.
    pub fn set_rows(
        &mut self,
        gpu: &Gpu,
        arena: &mut UniformArena,
        first_token: u32,
        n_rows: u32,
        seq_start: u32,
    ) -> Result<(), MtaError> {
        let fits = n_rows <= self.shape.max_rows
            && seq_start <= first_token
            && first_token
                .checked_add(n_rows)
                .is_some_and(|end| end <= self.shape.key_cap);
        if !fits {
            return Err(MtaError::Rows {
                first_token,
                n_rows,
                seq_start,
                max_rows: self.shape.max_rows,
                key_cap: self.shape.key_cap,
            });
        }
        for i in 0..self.steps.len() {
            let params = self.params(&self.steps[i], first_token, n_rows, seq_start);
            let step = &mut self.steps[i];
            arena.set(step.slot, &params)?;
            step.dispatch.workgroups = step.stage.grid(gpu, &params)?;
        }
        Ok(())
    }

    /// The stages' dispatches for the chunk last given to [`MtaPass::set_rows`], in order.
    pub fn dispatches(&self) -> impl Iterator<Item = &Dispatch> {
        self.steps.iter().map(|step| &step.dispatch)
    }
}

/// Shapes of the CPU reference: `n_heads` query heads over `n_kv_heads` kv heads of
/// `head_dim`, `n_tokens` tokens of one document.
#[derive(Debug, Clone, Copy)]
pub struct CpuShape {
    pub n_tokens: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// The scaled logits `Â_h[i, j] = <R(i) q_i, R(j) k_j> / sqrt(d)` of every head as `T x T`
/// maps (row-major), with `Mask_0` applied (zero for `j > i`). `q`: `[T, n_heads, head_dim]`,
/// `k`: `[T, n_kv_heads, head_dim]`, both raw; `rope` from `attention::rope_table`.
pub fn mta_logits_cpu(shape: CpuShape, q: &[f32], k: &[f32], rope: &[f32]) -> Vec<Vec<f32>> {
    let CpuShape {
        n_tokens: t_len,
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = shape;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    (0..n_heads)
        .map(|h| {
            let mut map = vec![0.0; t_len * t_len];
            for i in 0..t_len {
                let mut qi = q[(i * n_heads + h) * hd..][..hd].to_vec();
                rope_cpu(&mut qi, i, rope);
                for j in 0..=i {
                    let mut kj = k[(j * n_kv_heads + h / group) * hd..][..hd].to_vec();
                    rope_cpu(&mut kj, j, rope);
                    let dot: f32 = qi.iter().zip(&kj).map(|(a, b)| a * b).sum();
                    map[i * t_len + j] = dot * scale;
                }
            }
            map
        })
        .collect()
}

/// `Conv_θ(X)` of mta.md §2 on one `T x T` map with `θ [c_q][c_k]`: out-of-range taps read 0.
fn conv_cpu(x: &[f32], t_len: usize, conv: Conv, theta: &[f32]) -> Vec<f32> {
    let (cq, ck) = (conv.q as i64, conv.k as i64);
    let mut out = vec![0.0; t_len * t_len];
    for i in 0..t_len as i64 {
        for j in 0..t_len as i64 {
            let mut sum = 0.0;
            for a in 0..cq {
                for b in 0..ck {
                    let (row, col) = (i - (cq - 1) + a, j - (ck - 1) / 2 + b);
                    if (0..t_len as i64).contains(&row) && (0..t_len as i64).contains(&col) {
                        sum +=
                            theta[(a * ck + b) as usize] * x[(row * t_len as i64 + col) as usize];
                    }
                }
            }
            out[(i * t_len as i64 + j) as usize] = sum;
        }
    }
    out
}

/// Head mixing of mta.md §3 on whole maps: `A'_{g·c+o} = Σ_p w_g[p, o] · A_{g·c+p}`.
fn mix_cpu(maps: &[Vec<f32>], group: usize, w: &[f32]) -> Vec<Vec<f32>> {
    (0..maps.len())
        .map(|head| {
            let (g, o) = (head / group, head % group);
            let mut mixed = vec![0.0; maps[head].len()];
            for p in 0..group {
                let weight = w[(g * group + p) * group + o];
                for (m, x) in mixed.iter_mut().zip(&maps[g * group + p]) {
                    *m += weight * x;
                }
            }
            mixed
        })
        .collect()
}

/// Zeroes the entries above the diagonal (`Mask_0`).
fn mask_zero(map: &mut [f32], t_len: usize) {
    for i in 0..t_len {
        map[i * t_len + i + 1..(i + 1) * t_len].fill(0.0);
    }
}

/// The attention probabilities of mta.md §4 from the masked logits `Mask_0(Â)` of every head
/// (`T x T` maps): pre-softmax conv and mix, softmax over `j <= i` in f32, post-softmax conv
/// (masked before and after) and mix. Post-softmax rows are not renormalised.
pub fn mta_probs_cpu(
    layer: &MtaLayer,
    weights: &MtaWeights,
    t_len: usize,
    logits: &[Vec<f32>],
) -> Vec<Vec<f32>> {
    let convolve = |maps: Vec<Vec<f32>>, conv: Option<Conv>, theta: &[f32]| match conv {
        None => maps,
        Some(c) => {
            let taps = (c.q * c.k) as usize;
            maps.iter()
                .enumerate()
                .map(|(h, m)| conv_cpu(m, t_len, c, &theta[h * taps..(h + 1) * taps]))
                .collect()
        }
    };
    let group = layer.mix_size as usize;
    let mut scores = convolve(logits.to_vec(), layer.pre_conv, &weights.pre_conv);
    if layer.pre_mix {
        scores = mix_cpu(&scores, group, &weights.pre_mix);
    }
    let mut probs: Vec<Vec<f32>> = scores
        .iter()
        .map(|s| {
            let mut p = vec![0.0; t_len * t_len];
            for i in 0..t_len {
                let row = &s[i * t_len..i * t_len + i + 1];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|x| (x - max).exp()).sum();
                for (j, x) in row.iter().enumerate() {
                    p[i * t_len + j] = (x - max).exp() / sum;
                }
            }
            p
        })
        .collect();
    if layer.post_conv.is_some() {
        probs = convolve(probs, layer.post_conv, &weights.post_conv);
        for p in &mut probs {
            mask_zero(p, t_len);
        }
    }
    if layer.post_mix {
        probs = mix_cpu(&probs, group, &weights.post_mix);
    }
    probs
}

/// The layer's output `[T, n_heads, head_dim]` from the probabilities of [`mta_probs_cpu`]
/// and raw values `v [T, n_kv_heads, head_dim]`: `O_h = P_h V_h`, then group norm, gate and
/// depth factor (mta.md §5) as `layer` says.
pub fn mta_output_cpu(
    layer: &MtaLayer,
    weights: &MtaWeights,
    shape: CpuShape,
    probs: &[Vec<f32>],
    v: &[f32],
) -> Vec<f32> {
    let CpuShape {
        n_tokens: t_len,
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = shape;
    let group = n_heads / n_kv_heads;
    let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
    let mut out = vec![0.0; t_len * n_heads * hd];
    for i in 0..t_len {
        for h in 0..n_heads {
            let mut y = vec![0.0f32; hd];
            for j in 0..t_len {
                let p = probs[h][i * t_len + j];
                for (y, v) in y
                    .iter_mut()
                    .zip(&v[(j * n_kv_heads + h / group) * hd..][..hd])
                {
                    *y += p * v;
                }
            }
            if layer.norm {
                let mean_square = y.iter().map(|x| x * x).sum::<f32>() / hd as f32;
                let inv_rms = 1.0 / (mean_square + NORM_EPS).sqrt();
                for (y, gamma) in y.iter_mut().zip(&weights.norm) {
                    *y *= inv_rms * gamma;
                }
            }
            match layer.gate {
                Gate::None => {}
                Gate::Scalar => {
                    let (w, beta) = weights.gate.split_at(hd);
                    let z: f32 = beta[0] + w.iter().zip(&y).map(|(w, y)| w * y).sum::<f32>();
                    y.iter_mut().for_each(|y| *y *= sigmoid(z));
                }
                Gate::Vector => {
                    let (w, b) = weights.gate.split_at(hd * hd);
                    let gates: Vec<f32> = (0..hd)
                        .map(|o| {
                            let z: f32 = w[o * hd..(o + 1) * hd]
                                .iter()
                                .zip(&y)
                                .map(|(w, y)| w * y)
                                .sum();
                            sigmoid(z + b[o])
                        })
                        .collect();
                    y.iter_mut().zip(&gates).for_each(|(y, g)| *y *= g);
                }
            }
            for (o, y) in out[(i * n_heads + h) * hd..][..hd].iter_mut().zip(&y) {
                *o = y * layer.depth_factor;
            }
        }
    }
    out
}

/// CPU reference of one MTA attention layer over a whole document: `q`, `out`: `[T, n_heads,
/// head_dim]`; `k`, `v`: `[T, n_kv_heads, head_dim]` (raw; token `i` at position `i`).
pub fn mta_cpu(
    layer: &MtaLayer,
    weights: &MtaWeights,
    shape: CpuShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rope: &[f32],
) -> Vec<f32> {
    let logits = mta_logits_cpu(shape, q, k, rope);
    let probs = mta_probs_cpu(layer, weights, shape.n_tokens, &logits);
    mta_output_cpu(layer, weights, shape, &probs, v)
}
