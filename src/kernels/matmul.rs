//! matmul: `out[r, o] (+)= sum_i x[r, i] * W[o, i]` for a weight matrix `W [n_out, n_in]` kept
//! on the GPU in its ggml blocks (quantized ones with each row's codes and scales apart, so
//! that codes load as aligned vec4s: [`pack_rows`]) and decoded inside the shader.
//!
//! Two kernels per weight format: `vec` for decoding (one or a few rows) and `tile` for prefill
//! (each decoded weight reused for 4 rows of x). Both can RMS-normalise x first, which is how the
//! norms before attention, the FFN and the head are fused ([`Prologue`]), and accumulate into
//! `out`, which is how residual adds are fused (`x = x + Wo·a`), apply SwiGLU to (gate, up) row
//! pairs of a stacked weight, which is how the FFN's activation is fused, or split a stacked
//! q/k/v projection into q and the KV cache's rows, which is how the cache write is fused
//! ([`Epilogue`]). The vec kernel reads x from a uniform buffer
//! (twice as fast on lavapipe), so its x buffers need `BufferUsages::UNIFORM` and at least
//! [`VEC_X_BYTES`] bytes. A dispatch checks the buffers it binds against the shape it is given
//! and returns a [`MatmulError`] naming both, never a panic. The embed kernel reads the same
//! weights.
//! What this module leaves to others: reading GGUF files (`model::gguf`), mapping ggml types
//! to [`WeightFormat`], and choosing between `vec` and `tile` (the forward pass).

use std::fmt;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::shader_source;
use crate::gpu::{grid, Binding, Dispatch, Gpu, GpuError, Kernel, PipelineSpec, TrackedBuffer};
use crate::model::gguf::GgmlType;
use crate::model::quant::dequantize;

/// How the weights of a matrix are stored: the ggml block types sinkstar decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 6] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q8_0,
    ];

    /// Weights per block (1 for the float formats).
    pub fn block_elems(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => 1,
            WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::BF16 => 2,
            WeightFormat::Q4_0 => 18, // f16 d, 16 bytes of nibbles
            WeightFormat::Q4_1 => 20, // f16 d, f16 m, 16 bytes of nibbles
            WeightFormat::Q8_0 => 34, // f16 d, 32 int8
        }
    }

    /// Lower-case ggml name, used in variant names (`matmul_q4_1_vec`).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::BF16 => "bf16",
            WeightFormat::Q4_0 => "q4_0",
            WeightFormat::Q4_1 => "q4_1",
            WeightFormat::Q8_0 => "q8_0",
        }
    }

    /// The preprocessor flags that select this format in `common/quant.wgsl`.
    pub fn defines(self) -> &'static [&'static str] {
        match self {
            WeightFormat::F32 => &["F32"],
            // The two 2-byte formats share their decoding but for the last step (HALF).
            WeightFormat::F16 => &["F16", "HALF"],
            WeightFormat::BF16 => &["BF16", "HALF"],
            WeightFormat::Q4_0 => &["Q4_0", "Q4", "PACKED"],
            WeightFormat::Q4_1 => &["Q4_1", "Q4", "PACKED"],
            WeightFormat::Q8_0 => &["Q8_0", "PACKED"],
        }
    }

    /// Bytes of a row of `n_elems` weights, or `None` if that is not a whole number of blocks
    /// or overflows.
    pub fn row_bytes(self, n_elems: usize) -> Option<usize> {
        if !n_elems.is_multiple_of(self.block_elems()) {
            return None;
        }
        (n_elems / self.block_elems()).checked_mul(self.block_bytes())
    }

    /// Bytes of a row of `n_elems` weights as [`upload_weight`] lays it out on the GPU: the ggml
    /// bytes for the float formats; for the quantized ones the blocks' codes, then their scales
    /// (see [`pack_rows`]), padded to 16 bytes. `None` where `n_elems` is not whole blocks or
    /// the size overflows.
    pub fn gpu_row_bytes(self, n_elems: usize) -> Option<usize> {
        let raw = self.row_bytes(n_elems)?;
        let Some((qs, scale_bytes)) = self.packing() else {
            return Some(raw);
        };
        let n_blocks = n_elems / self.block_elems();
        let scales = n_blocks.checked_mul(scale_bytes)?.next_multiple_of(4);
        n_blocks
            .checked_mul(qs)?
            .checked_add(scales)?
            .checked_next_multiple_of(16)
    }

    /// Bytes of a block's codes and of its scales in the GPU layout of a quantized format
    /// (`None` for the float formats, kept as they are).
    fn packing(self) -> Option<(usize, usize)> {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => None,
            WeightFormat::Q4_0 => Some((16, 2)),
            WeightFormat::Q4_1 => Some((16, 4)),
            WeightFormat::Q8_0 => Some((32, 2)),
        }
    }

    /// The same layout as a ggml type, for the CPU decoders of `model::quant`.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            WeightFormat::F32 => GgmlType::F32,
            WeightFormat::F16 => GgmlType::F16,
            WeightFormat::BF16 => GgmlType::BF16,
            WeightFormat::Q4_0 => GgmlType::Q4_0,
            WeightFormat::Q4_1 => GgmlType::Q4_1,
            WeightFormat::Q8_0 => GgmlType::Q8_0,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shape errors of the kernels that read weight matrices (matmul and embed). Each names the
/// weight or kernel and the sizes involved.
#[derive(Debug, thiserror::Error)]
pub enum MatmulError {
    #[error("weight `{what}`: n_in = {n_in} is not a multiple of the {format} block of {block_elems} values")]
    NotBlockMultiple {
        what: String,
        format: WeightFormat,
        n_in: usize,
        block_elems: usize,
    },
    #[error(
        "weight `{what}`: {n_bytes} bytes are not whole {format} rows of {n_in} values ({row_bytes} bytes)"
    )]
    NotWholeRows {
        what: String,
        format: WeightFormat,
        n_in: usize,
        n_bytes: usize,
        row_bytes: usize,
    },
    #[error("weight `{what}`: a [{n_out}, {n_in}] {format} matrix takes {expected_bytes} bytes, {n_bytes} given")]
    WeightBytes {
        what: String,
        format: WeightFormat,
        n_out: usize,
        n_in: usize,
        expected_bytes: usize,
        n_bytes: usize,
    },
    #[error("kernel `{variant}`: a [{n_out}, {n_in}] {format} weight needs a {expected_bytes}-byte buffer (see upload_weight), the one bound has {bytes}")]
    WeightBuffer {
        variant: String,
        format: WeightFormat,
        n_out: u32,
        n_in: u32,
        expected_bytes: u64,
        bytes: u64,
    },
    #[error(
        "kernel `{variant}` reads x 4 values at a time: n_in = {n_in} must be a multiple of 4"
    )]
    NotVec4 { variant: String, n_in: u32 },
    #[error(
        "kernel `{variant}`: buffer `{buffer}` has {bytes} bytes, {n_rows} rows need {needed}"
    )]
    BufferTooSmall {
        variant: String,
        buffer: &'static str,
        n_rows: u32,
        bytes: u64,
        needed: u64,
    },
    #[error("kernel `{variant}` reads x from a uniform buffer: create x with BufferUsages::UNIFORM and at least {needed} bytes (see matmul::VEC_X_BYTES)")]
    XNotUniform { variant: String, needed: u64 },
    #[error("kernel `{variant}`: {n_rows} rows of {n_in} values exceed the {capacity} values of its uniform x; use the tile kernel")]
    TooManyRows {
        variant: String,
        n_rows: u32,
        n_in: u32,
        capacity: u64,
    },
    #[error("kernel `{variant}` binds {expected} output buffers, {got} given")]
    Outputs {
        variant: String,
        expected: usize,
        got: usize,
    },
    #[error(
        "kernel `{variant}`: split = {split} of {n_out} columns leaves no two equal k and v parts"
    )]
    Split {
        variant: String,
        n_out: u32,
        split: u32,
    },
    #[error("kernel `{variant}`: {reason}")]
    Norm { variant: String, reason: String },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Checks that `n_bytes` is exactly a `[n_out, n_in]` matrix of `format`, for loaders that
/// want the error before uploading.
pub fn check_weight(
    what: &str,
    format: WeightFormat,
    n_in: usize,
    n_out: usize,
    n_bytes: usize,
) -> Result<(), MatmulError> {
    let expected_bytes = weight_bytes(what, format, n_in, n_out)?;
    if expected_bytes != Some(n_bytes) {
        return Err(MatmulError::WeightBytes {
            what: what.to_string(),
            format,
            n_out,
            n_in,
            expected_bytes: expected_bytes.unwrap_or(usize::MAX),
            n_bytes,
        });
    }
    Ok(())
}

/// Bytes of a `[n_out, n_in]` matrix of `format` in its ggml blocks (`None` on overflow), or
/// the error for an `n_in` that is not a whole number of blocks.
fn weight_bytes(
    what: &str,
    format: WeightFormat,
    n_in: usize,
    n_out: usize,
) -> Result<Option<usize>, MatmulError> {
    let row_bytes = format
        .row_bytes(n_in)
        .ok_or_else(|| MatmulError::NotBlockMultiple {
            what: what.to_string(),
            format,
            n_in,
            block_elems: format.block_elems(),
        })?;
    Ok(row_bytes.checked_mul(n_out))
}

/// The size of the buffer [`upload_weight`] makes for a `[n_out, n_in]` matrix of `format`:
/// [`WeightFormat::gpu_row_bytes`] per row, zero-padded to whole 32-bit words (float formats:
/// the shader reads `array<u32>`), and never empty; `None` where `n_in` is not a whole number
/// of blocks or the size overflows.
pub fn weight_buffer_bytes(format: WeightFormat, n_in: usize, n_out: usize) -> Option<u64> {
    let bytes = format.gpu_row_bytes(n_in)?.checked_mul(n_out)?;
    Some(bytes.max(4).next_multiple_of(4) as u64)
}

/// The GPU layout of the ggml rows `raw` (rows of `n_in` weights of a quantized `format`, whole
/// rows): each row's blocks' codes in block order (16 bytes of nibbles, or 32 int8), then
/// their scales (Q4_1: the block's first word, f16 d and f16 m; Q4_0 and Q8_0: f16 d, two
/// blocks to a word), zero-padded to [`WeightFormat::gpu_row_bytes`], so that the shader
/// loads a block's codes as aligned vec4s (common/quant.wgsl). The float formats are returned
/// as they are.
pub fn pack_rows(format: WeightFormat, n_in: usize, raw: &[u8]) -> Vec<u8> {
    let (Some((qs, scale_bytes)), Some(row_bytes), Some(stride)) = (
        format.packing(),
        format.row_bytes(n_in),
        format.gpu_row_bytes(n_in),
    ) else {
        return raw.to_vec();
    };
    if row_bytes == 0 {
        return Vec::new();
    }
    let block = format.block_bytes();
    let n_blocks = n_in / format.block_elems();
    let mut packed = vec![0u8; raw.len() / row_bytes * stride];
    for (row, out) in raw
        .chunks_exact(row_bytes)
        .zip(packed.chunks_exact_mut(stride))
    {
        let (codes, scales) = out.split_at_mut(n_blocks * qs);
        for (b, block) in row.chunks_exact(block).enumerate() {
            // A block is its scales (d, and m for Q4_1), then its codes.
            let (scale, code) = block.split_at(block.len() - qs);
            codes[b * qs..][..qs].copy_from_slice(code);
            scales[b * scale_bytes..][..scale_bytes].copy_from_slice(scale);
        }
    }
    packed
}

/// Uploads a weight matrix `[n_out, n_in]` (ggml `ne = [n_in, n_out]`) given as the ggml blocks
/// of the GGUF, `bytes`, in the GPU layout of [`pack_rows`], sized as [`weight_buffer_bytes`]
/// says. `bytes` must be whole rows of `n_in` weights of `format`; dispatches check the
/// buffer's size against the shape they are given.
pub fn upload_weight(
    gpu: &Gpu,
    what: &str,
    format: WeightFormat,
    n_in: usize,
    bytes: &[u8],
) -> Result<TrackedBuffer, MatmulError> {
    // One row cannot overflow: `None` is only for the sizes of many.
    let row_bytes = weight_bytes(what, format, n_in, 1)?.unwrap_or(usize::MAX);
    if !bytes.len().is_multiple_of(row_bytes.max(1)) {
        return Err(MatmulError::NotWholeRows {
            what: what.to_string(),
            format,
            n_in,
            n_bytes: bytes.len(),
            row_bytes,
        });
    }
    let n_out = bytes.len() / row_bytes.max(1);
    let size =
        weight_buffer_bytes(format, n_in, n_out).ok_or_else(|| MatmulError::WeightBytes {
            what: what.to_string(),
            format,
            n_out,
            n_in,
            expected_bytes: usize::MAX,
            n_bytes: bytes.len(),
        })?;
    let mut packed = pack_rows(format, n_in, bytes);
    // write_buffer needs a multiple of 4 bytes; the buffer's padding is zero.
    packed.resize(size as usize, 0);
    let buffer = gpu.storage(what, size)?;
    gpu.queue.write_buffer(&buffer, 0, &packed);
    Ok(buffer)
}

/// Twin of the WGSL `Params`; also the shape a dispatch is checked against.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Params {
    pub n_rows: u32,
    pub n_in: u32,
    pub n_out: u32,
    /// [`Epilogue::Split`]: the columns that go to q; 0 otherwise.
    pub split: u32,
    /// The row of x that row 0 of out comes from: the LM head reads a chunk's last row only.
    pub first_row: u32,
    /// [`Epilogue::Split`]: the rows of the k and v caches; 0 otherwise.
    pub capacity: u32,
    /// [`Prologue::RmsNorm`], [`Prologue::PartsRmsNorm`]: the norm's epsilon.
    pub eps: f32,
    /// [`Prologue::PartsRmsNorm`], [`Epilogue::AccumulateParts`]: the parts the residual
    /// stream is held in after its rows; 0 otherwise.
    pub n_parts: u32,
}

impl Params {
    pub fn new(n_rows: u32, n_in: u32, n_out: u32) -> Params {
        Params {
            n_rows,
            n_in,
            n_out,
            split: 0,
            first_row: 0,
            capacity: 0,
            eps: 0.0,
            n_parts: 0,
        }
    }

    /// The shape of a stacked q/k/v projection: `q_dim` columns of q, then k and v of
    /// `kv_dim` each, into caches of `capacity` rows.
    pub fn split_qkv(n_rows: u32, n_in: u32, q_dim: u32, kv_dim: u32, capacity: u32) -> Params {
        Params {
            split: q_dim,
            capacity,
            ..Params::new(n_rows, n_in, q_dim + 2 * kv_dim)
        }
    }

    /// With [`Prologue::RmsNorm`]'s epsilon.
    pub fn with_eps(self, eps: f32) -> Params {
        Params { eps, ..self }
    }

    /// Reading x from row `first_row` on.
    pub fn from_row(self, first_row: u32) -> Params {
        Params { first_row, ..self }
    }

    /// With the residual stream held in `n_parts` parts after its rows.
    pub fn with_parts(self, n_parts: u32) -> Params {
        Params { n_parts, ..self }
    }
}

/// Which kernel: `Vec` or `Subgroup` for one or a few rows (decoding), `Tile` or `Shared` for
/// many (prefill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulKind {
    /// Each invocation 4 whole weight rows, x from a uniform buffer: the form for CPU drivers.
    Vec,
    /// Each subgroup 4 weight rows, its lanes taking a row's blocks in turn (neighbouring lanes,
    /// neighbouring blocks), x from a storage buffer: the form for GPUs. Needs
    /// `Features::SUBGROUP`.
    Subgroup,
    /// Each invocation 4 rows x 8 weight rows in registers, no workgroup memory: the prefill
    /// form for CPU drivers (barriers cost them 5-10x).
    Tile,
    /// A workgroup's rows of x and weight rows staged chunk by chunk in workgroup memory, each
    /// weight decoded once for all its rows, each invocation 4 x 4 of them: the prefill form
    /// for GPUs, its tile sized per adapter ([`SharedTile::for_limits`]).
    Shared(SharedTile),
}

/// The tile of [`MatmulKind::Shared`]: `rows` rows of x by `cols` weight rows per workgroup
/// (override constants `TILE_M`, `TILE_N` in matmul.wgsl), `rows * cols / 16` invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedTile {
    pub rows: u32,
    pub cols: u32,
}

impl SharedTile {
    /// 64 x 64: 256 invocations and 16 KiB of workgroup memory, the least WebGPU guarantees; a
    /// weight serves 64 rows of x.
    pub const LARGE: SharedTile = SharedTile { rows: 64, cols: 64 };
    /// 32 x 32: 64 invocations and 8 KiB, for adapters below WebGPU's minimums (and short
    /// prompts: a 64-token chunk fills one row tile either way).
    pub const SMALL: SharedTile = SharedTile { rows: 32, cols: 32 };
    pub const ALL: [SharedTile; 2] = [SharedTile::SMALL, SharedTile::LARGE];

    /// The largest tile `limits` hold (a device's: [`Gpu::limits`]), if any.
    pub fn for_limits(limits: &wgpu::Limits) -> Option<SharedTile> {
        let fits = |tile: &SharedTile| {
            let invocations = limits
                .max_compute_invocations_per_workgroup
                .min(limits.max_compute_workgroup_size_x);
            tile.invocations() <= invocations
                && tile.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
        };
        SharedTile::ALL.into_iter().rev().find(fits)
    }

    pub fn invocations(self) -> u32 {
        self.rows * self.cols / 16
    }

    /// `xs` and `ws`: one 32-value chunk of each row of x and each weight row, in f32.
    pub fn workgroup_bytes(self) -> u32 {
        (self.rows + self.cols) * 32 * 4
    }
}

impl MatmulKind {
    pub const ALL: [MatmulKind; 5] = [
        MatmulKind::Vec,
        MatmulKind::Subgroup,
        MatmulKind::Tile,
        MatmulKind::Shared(SharedTile::SMALL),
        MatmulKind::Shared(SharedTile::LARGE),
    ];

    /// The decode form `gpu` runs ([`Gpu::subgroup_matvec`]).
    pub fn decode(gpu: &Gpu) -> MatmulKind {
        if gpu.subgroup_matvec {
            MatmulKind::Subgroup
        } else {
            MatmulKind::Vec
        }
    }

    /// The prefill form `gpu` runs ([`Gpu::shared_prefill`]; registers only on a device too
    /// small for either shared tile).
    pub fn prefill(gpu: &Gpu) -> MatmulKind {
        match SharedTile::for_limits(&gpu.limits) {
            Some(tile) if gpu.shared_prefill => MatmulKind::Shared(tile),
            _ => MatmulKind::Tile,
        }
    }

    pub fn name(self) -> String {
        match self {
            MatmulKind::Vec => "vec".into(),
            MatmulKind::Subgroup => "subgroup".into(),
            MatmulKind::Tile => "tile".into(),
            MatmulKind::Shared(tile) => format!("shared{}x{}", tile.rows, tile.cols),
        }
    }

    /// The device features the form needs.
    pub fn features(self) -> wgpu::Features {
        match self {
            MatmulKind::Subgroup => wgpu::Features::SUBGROUP,
            MatmulKind::Vec | MatmulKind::Tile | MatmulKind::Shared(_) => wgpu::Features::empty(),
        }
    }

    /// The matvec forms (one row of x per workgroup).
    pub fn is_matvec(self) -> bool {
        matches!(self, MatmulKind::Vec | MatmulKind::Subgroup)
    }
}

/// Measured on lavapipe (Q4_1, 576 -> 1536): 16 is as fast as 8 at 1536 outputs and up to 1.4x
/// faster at 192 and 576, where 8 leaves too few workgroups.
const VEC_WG_SIZE: u32 = 16;
/// The vec form with [`Prologue::PartsRmsNorm`] (decode's gate/up): every workgroup sums the
/// row's parts again as it stages x, so fewer, wider workgroups sum them fewer times. Measured
/// on lavapipe (SmolLM2-135M, 9 parts, 576 -> 2 x 1536, 2 cores): 64 takes gate/up from
/// 42.6-44.9 to 38.5-40.8 ms per token against 16 (the smallest of several alternating runs).
const PARTS_VEC_WG_SIZE: u32 = 64;
/// Measured on lavapipe (Q4_1, 128 rows, 576 -> 1536): 8, 16 and 32 within noise.
const TILE_WG_SIZE: u32 = 16;
/// Two subgroups of 32 (NVIDIA), one of 64 (AMD), eight of 8 (lavapipe): the shader's loops take
/// any size.
const SUBGROUP_WG_SIZE: u32 = 64;
/// `WG_ROWS` in matmul.wgsl: 8 quads of weight rows, so that a subgroup of 32 lanes takes 4.
const SUBGROUP_WG_ROWS: u32 = 32;

/// Size of the vec kernel's uniform x (`X_VEC4S` in matmul.wgsl): 64 KiB, the smallest
/// `max_uniform_buffer_binding_size` WebGPU allows. x buffers for vec kernels need
/// `BufferUsages::UNIFORM` and at least this many bytes; lavapipe reads x about twice as fast
/// from a uniform buffer as from a storage buffer.
pub const VEC_X_BYTES: u64 = 65536;

/// Widest row of x the vec form stages when it normalises (`STAGED_VEC4S` vec4s in
/// matmul.wgsl: 8 KiB of workgroup memory, declared whatever the row, so kept to what the
/// models here need); wider rows are read as the other forms read them.
pub const VEC_STAGED_X: u32 = 2048;

/// What a matmul does to x before multiplying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prologue {
    /// x as it is.
    Raw,
    /// Each row of x RMS-normalised with the weight `gamma [n_in]`:
    /// `gamma[i] * x[i] / sqrt(mean_j x[j]^2 + eps)` (the norm before attention, the FFN or the
    /// head, fused). Every invocation computes its rows' norms itself, but in the vec form,
    /// whose workgroup normalises its row once into workgroup memory (rows up to
    /// [`VEC_STAGED_X`]).
    RmsNorm,
    /// [`Prologue::RmsNorm`] of the residual stream held as x's `first_row + n_rows` rows
    /// followed by `n_parts` parts of as many rows, summed as x is loaded: the heads' shares of
    /// the output projection that the attention kernel's fused projection writes there
    /// (`attention::Projection`), so that decode's FFN norm reads `x + Wo·a` with no dispatch
    /// for the projection.
    PartsRmsNorm,
}

impl Prologue {
    pub const ALL: [Prologue; 3] = [Prologue::Raw, Prologue::RmsNorm, Prologue::PartsRmsNorm];

    /// Whether x is RMS-normalised (the variant binds a `gamma`).
    pub fn normalises(self) -> bool {
        self != Prologue::Raw
    }

    fn suffix(self) -> &'static str {
        match self {
            Prologue::Raw => "",
            Prologue::RmsNorm => "_norm",
            Prologue::PartsRmsNorm => "_parts_norm",
        }
    }

    fn defines(self) -> &'static [&'static str] {
        match self {
            Prologue::Raw => &[],
            Prologue::RmsNorm => &["NORM"],
            Prologue::PartsRmsNorm => &["NORM", "X_PARTS"],
        }
    }
}

/// What a matmul does with its sums `y = W·x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// `out = y`.
    Store,
    /// `out += y` (a fused residual add).
    Accumulate,
    /// `W` stacks a gate and an up projection (`[2 n_out, n_in]`, gate rows first) and
    /// `out[r, o] = silu(y[r, o]) * y[r, n_out + o]`: the FFN's SwiGLU, fused.
    Swiglu,
    /// `W` stacks the q, k and v projections: columns `0..split` of `y` go to q, the two halves
    /// of the rest to rows `slots[r]` of the k and v caches (a slot at or past the capacity is
    /// not written): the projections and the cache write in one dispatch.
    Split,
    /// [`Epilogue::Accumulate`] into the residual stream held as out's `n_rows` rows followed
    /// by `n_parts` parts of as many rows ([`Prologue::PartsRmsNorm`]'s): `out[r] += y[r] +
    /// Σ parts[r]`, the parts' residual add done where the stream is written (decode's down
    /// projection).
    AccumulateParts,
}

impl Epilogue {
    pub const ALL: [Epilogue; 5] = [
        Epilogue::Store,
        Epilogue::Accumulate,
        Epilogue::Swiglu,
        Epilogue::Split,
        Epilogue::AccumulateParts,
    ];

    /// Rows of `W` per output column.
    pub fn weight_rows_per_output(self) -> u32 {
        match self {
            Epilogue::Store
            | Epilogue::Accumulate
            | Epilogue::AccumulateParts
            | Epilogue::Split => 1,
            Epilogue::Swiglu => 2,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Epilogue::Store => "",
            Epilogue::Accumulate => "_acc",
            Epilogue::Swiglu => "_swiglu",
            Epilogue::Split => "_split",
            Epilogue::AccumulateParts => "_acc_parts",
        }
    }

    fn defines(self) -> &'static [&'static str] {
        match self {
            Epilogue::Store => &[],
            Epilogue::Accumulate => &["ACCUMULATE"],
            Epilogue::Swiglu => &["SWIGLU"],
            Epilogue::Split => &["SPLIT"],
            Epilogue::AccumulateParts => &["ACCUMULATE", "OUT_PARTS"],
        }
    }
}

/// One pipeline variant: `matmul_<format>_<kind>[_norm][_acc|_swiglu|_split]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    pub format: WeightFormat,
    pub kind: MatmulKind,
    pub prologue: Prologue,
    pub epilogue: Epilogue,
}

impl Variant {
    pub fn all() -> Vec<Variant> {
        let mut all = Vec::new();
        for format in WeightFormat::ALL {
            for kind in MatmulKind::ALL {
                for prologue in Prologue::ALL {
                    for epilogue in Epilogue::ALL {
                        all.push(Variant {
                            format,
                            kind,
                            prologue,
                            epilogue,
                        });
                    }
                }
            }
        }
        all
    }

    pub fn name(&self) -> String {
        format!(
            "matmul_{}_{}{}{}",
            self.format.name(),
            self.kind.name(),
            self.prologue.suffix(),
            self.epilogue.suffix()
        )
    }

    pub fn spec(&self) -> Result<PipelineSpec, GpuError> {
        let mut defines = self.format.defines().to_vec();
        match self.kind {
            MatmulKind::Vec => defines.extend(["MATVEC", "UNIFORM_X"]),
            MatmulKind::Subgroup => defines.extend(["MATVEC", "SUBGROUP"]),
            MatmulKind::Tile => {}
            MatmulKind::Shared(_) => defines.push("SHARED"),
        }
        defines.extend(self.epilogue.defines());
        defines.extend(self.prologue.defines());
        if self.stages_x() {
            defines.push("STAGE_X");
        }
        let (wg_size, _, _) = self.block();
        let mut overrides = vec![("WG_SIZE".into(), f64::from(wg_size))];
        if let MatmulKind::Shared(tile) = self.kind {
            overrides.push(("TILE_M".into(), f64::from(tile.rows)));
            overrides.push(("TILE_N".into(), f64::from(tile.cols)));
        }
        Ok(PipelineSpec {
            label: self.name(),
            source: shader_source("matmul.wgsl", &defines)?,
            entry: "main",
            overrides,
            features: self.kind.features(),
            bindings: [
                Binding::Uniform,
                Binding::Read,
                match self.kind {
                    MatmulKind::Vec => Binding::Uniform,
                    MatmulKind::Subgroup | MatmulKind::Tile | MatmulKind::Shared(_) => {
                        Binding::Read
                    }
                },
            ]
            .into_iter()
            .chain(std::iter::repeat_n(Binding::ReadWrite, self.n_outputs()))
            // Split's slots, then the norm's weight.
            .chain((self.epilogue == Epilogue::Split).then_some(Binding::Read))
            .chain(self.prologue.normalises().then_some(Binding::Read))
            .collect(),
            // The register tiles' loops run to n_in and constants (measured: PipelineSpec).
            loop_bounding: self.kind != MatmulKind::Tile,
        })
    }

    /// Workgroup size, and the rows of x and the weight rows one workgroup computes (fixed in
    /// the shader, which unrolls an invocation's share by hand: lavapipe keeps loop-indexed
    /// register arrays in memory).
    fn block(&self) -> (u32, u32, u32) {
        match self.kind {
            MatmulKind::Vec if self.prologue == Prologue::PartsRmsNorm => {
                (PARTS_VEC_WG_SIZE, 1, 4 * PARTS_VEC_WG_SIZE)
            }
            MatmulKind::Vec => (VEC_WG_SIZE, 1, 4 * VEC_WG_SIZE),
            MatmulKind::Subgroup => (SUBGROUP_WG_SIZE, 1, SUBGROUP_WG_ROWS),
            MatmulKind::Tile => (TILE_WG_SIZE, 4, 8 * TILE_WG_SIZE),
            MatmulKind::Shared(tile) => (tile.invocations(), tile.rows, tile.cols),
        }
    }

    /// Whether the kernel normalises a row of x once per workgroup, into workgroup memory (rows
    /// up to [`VEC_STAGED_X`] wide): the vec form, whose invocations each read the whole row;
    /// with the parts they would each sum them all (3x slower on lavapipe), and without them
    /// staging saves every invocation its pass over the squares and its loads of gamma (5-10%
    /// of a decoded token on lavapipe). The subgroup form's lanes and the tiles' rows share the
    /// row out already.
    fn stages_x(&self) -> bool {
        self.kind == MatmulKind::Vec && self.prologue.normalises()
    }

    /// Output buffers it binds: q and the k and v caches for [`Epilogue::Split`], else one.
    fn n_outputs(&self) -> usize {
        match self.epilogue {
            Epilogue::Split => 3,
            _ => 1,
        }
    }
}

/// What a matmul reads: the weight (from [`upload_weight`]), x, and the norm's weight
/// `gamma [n_in]` (f32) for the normalising prologues.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub weight: &'a wgpu::Buffer,
    pub x: &'a wgpu::Buffer,
    pub gamma: Option<&'a wgpu::Buffer>,
}

/// Where [`Epilogue::Split`] writes: `q [n_rows, split]`, and the caches
/// `[capacity, (n_out - split) / 2]` at rows `slots [n_rows]` (u32).
#[derive(Clone, Copy)]
pub struct CacheOutputs<'a> {
    pub q: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub slots: &'a wgpu::Buffer,
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    Variant::all().iter().map(Variant::spec).collect()
}

/// One built matmul variant.
pub struct Matmul {
    variant: Variant,
    kernel: Arc<Kernel>,
}

impl Matmul {
    pub fn new(
        gpu: &Gpu,
        format: WeightFormat,
        kind: MatmulKind,
        prologue: Prologue,
        epilogue: Epilogue,
    ) -> Result<Matmul, GpuError> {
        let variant = Variant {
            format,
            kind,
            prologue,
            epilogue,
        };
        Ok(Matmul {
            variant,
            kernel: gpu.kernel(&variant.spec()?)?,
        })
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Binds `inputs` (the weight `[n_out, n_in]`, `[2 n_out, n_in]` for [`Epilogue::Swiglu`];
    /// x `[first_row + n_rows, n_in]`) and `out [n_rows, n_out]` (f32), after checking them
    /// against `shape`: the weight must be exactly that matrix, x and out must hold its rows,
    /// gamma is given exactly when the variant normalises. `params` must hold `shape`, or the
    /// same with fewer rows recorded with [`Matmul::grid`].
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        params: wgpu::BindingResource,
        inputs: Inputs,
        out: &wgpu::Buffer,
        shape: Params,
    ) -> Result<Dispatch, MatmulError> {
        self.bind(gpu, params, inputs, &[("out", out)], None, shape)
    }

    /// [`Matmul::dispatch`] for [`Epilogue::Split`]: q and the cache rows of `outputs`.
    pub fn dispatch_split(
        &self,
        gpu: &Gpu,
        params: wgpu::BindingResource,
        inputs: Inputs,
        outputs: CacheOutputs,
        shape: Params,
    ) -> Result<Dispatch, MatmulError> {
        let outs = [
            ("q", outputs.q),
            ("k_cache", outputs.k_cache),
            ("v_cache", outputs.v_cache),
        ];
        self.bind(gpu, params, inputs, &outs, Some(outputs.slots), shape)
    }

    fn bind(
        &self,
        gpu: &Gpu,
        params: wgpu::BindingResource,
        inputs: Inputs,
        outs: &[(&'static str, &wgpu::Buffer)],
        slots: Option<&wgpu::Buffer>,
        shape: Params,
    ) -> Result<Dispatch, MatmulError> {
        let variant = self.variant.name();
        if outs.len() != self.variant.n_outputs() {
            return Err(MatmulError::Outputs {
                variant,
                expected: self.variant.n_outputs(),
                got: outs.len(),
            });
        }
        let Inputs { weight, x, gamma } = inputs;
        let Params {
            n_rows,
            n_in,
            n_out,
            first_row,
            ..
        } = shape;
        let format = self.variant.format;
        let weight_rows = n_out * self.variant.epilogue.weight_rows_per_output();
        // The error for an n_in of part of a block, then the GPU layout's size.
        weight_bytes(&variant, format, n_in as usize, weight_rows as usize)?;
        let expected = weight_buffer_bytes(format, n_in as usize, weight_rows as usize);
        if expected != Some(weight.size()) {
            return Err(MatmulError::WeightBuffer {
                variant,
                format,
                n_out: weight_rows,
                n_in,
                expected_bytes: expected.unwrap_or(u64::MAX),
                bytes: weight.size(),
            });
        }
        if !n_in.is_multiple_of(4) {
            return Err(MatmulError::NotVec4 { variant, n_in });
        }
        let rows = u64::from(n_rows);
        let too_small = |buffer, bytes, needed| MatmulError::BufferTooSmall {
            variant: variant.clone(),
            buffer,
            n_rows,
            bytes,
            needed,
        };
        // The residual stream's parts are held after x's rows, or after out's.
        let x_copies = match self.variant.prologue {
            Prologue::PartsRmsNorm => 1 + u64::from(shape.n_parts),
            Prologue::Raw | Prologue::RmsNorm => 1,
        };
        let out_copies = match self.variant.epilogue {
            Epilogue::AccumulateParts => 1 + u64::from(shape.n_parts),
            _ => 1,
        };
        let x_bytes = x_copies * (u64::from(first_row) + rows) * u64::from(n_in) * 4;
        let x_binding = match self.variant.kind {
            MatmulKind::Tile | MatmulKind::Subgroup | MatmulKind::Shared(_) => {
                if x.size() < x_bytes {
                    return Err(too_small("x", x.size(), x_bytes));
                }
                x.as_entire_binding()
            }
            MatmulKind::Vec => {
                if x_bytes > VEC_X_BYTES {
                    return Err(MatmulError::TooManyRows {
                        variant,
                        n_rows: (x_copies * u64::from(first_row + n_rows)) as u32,
                        n_in,
                        capacity: VEC_X_BYTES / 4,
                    });
                }
                if !x.usage().contains(wgpu::BufferUsages::UNIFORM) || x.size() < VEC_X_BYTES {
                    return Err(MatmulError::XNotUniform {
                        variant,
                        needed: VEC_X_BYTES,
                    });
                }
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: x,
                    offset: 0,
                    size: wgpu::BufferSize::new(VEC_X_BYTES),
                })
            }
        };
        let gamma = match (self.variant.prologue, gamma) {
            (Prologue::RmsNorm | Prologue::PartsRmsNorm, Some(gamma)) => {
                let needed = u64::from(n_in) * 4;
                if gamma.size() < needed {
                    return Err(too_small("gamma", gamma.size(), needed));
                }
                Some(gamma)
            }
            (Prologue::RmsNorm | Prologue::PartsRmsNorm, None) => {
                return Err(MatmulError::Norm {
                    variant,
                    reason: "normalises x: give the norm's weight (gamma)".into(),
                })
            }
            (Prologue::Raw, Some(_)) => {
                return Err(MatmulError::Norm {
                    variant,
                    reason: "does not normalise x: a norm's weight was given".into(),
                })
            }
            (Prologue::Raw, None) => None,
        };
        let split = shape.split;
        // The bytes each output must hold.
        let needs: Vec<u64> = match self.variant.epilogue {
            Epilogue::Split => {
                if split == 0 || split >= n_out || !(n_out - split).is_multiple_of(2) {
                    return Err(MatmulError::Split {
                        variant,
                        n_out,
                        split,
                    });
                }
                let kv = u64::from((n_out - split) / 2);
                let cache = u64::from(shape.capacity) * kv * 4;
                vec![rows * u64::from(split) * 4, cache, cache]
            }
            _ => vec![out_copies * rows * u64::from(n_out) * 4],
        };
        for (&(what, out), needed) in outs.iter().zip(needs) {
            if out.size() < needed {
                return Err(too_small(what, out.size(), needed));
            }
        }
        if let Some(slots) = slots {
            if slots.size() < rows * 4 {
                return Err(too_small("slots", slots.size(), rows * 4));
            }
        }
        let mut bindings = vec![params, weight.as_entire_binding(), x_binding];
        bindings.extend(outs.iter().map(|(_, out)| out.as_entire_binding()));
        bindings.extend(slots.map(|slots| slots.as_entire_binding()));
        bindings.extend(gamma.map(|gamma| gamma.as_entire_binding()));
        Ok(Dispatch {
            kernel: self.kernel.clone(),
            bind_group: self.kernel.bind(gpu, &bindings)?,
            workgroups: Self::grid(gpu, self.variant, n_rows, n_out)?,
        })
    }

    /// The grid of `variant` for `n_rows` rows and `n_out` outputs: one workgroup
    /// per block of columns and rows (vec: 4 weight rows per invocation of 1 row of x; subgroup:
    /// 32 weight rows of 1 row; tile: 8 weight rows per invocation of 4 rows; shared: the tile's
    /// weight rows and rows; SwiGLU's outputs take two weight rows each), spilling into y past
    /// the per-dimension limit.
    pub fn grid(
        gpu: &Gpu,
        variant: Variant,
        n_rows: u32,
        n_out: u32,
    ) -> Result<[u32; 3], GpuError> {
        let (_, rows, weight_rows) = variant.block();
        let cols = weight_rows / variant.epilogue.weight_rows_per_output();
        let n_col_groups = u64::from(n_out).div_ceil(u64::from(cols));
        let n_row_tiles = u64::from(n_rows).div_ceil(u64::from(rows));
        grid(gpu, "matmul workgroups", n_col_groups * n_row_tiles)
    }
}

/// CPU reference: decodes the same blocks with `model::quant` and multiplies in plain loops.
/// `weight` is `[n_out, n_in]` in `format` (`[2 n_out, n_in]` for [`Epilogue::Swiglu`]), `x`
/// is `[n_rows, n_in]`, `out` is `[n_rows, n_out]`; `norm` is [`Prologue::RmsNorm`]'s
/// `(gamma [n_in], eps)`, applied to x first as a separate step (the Llama RMSNorm).
/// [`Epilogue::Split`] is a layout: the reference keeps q, k and v in one row. The parts of
/// [`Prologue::PartsRmsNorm`] and [`Epilogue::AccumulateParts`] are a layout too: give x and
/// out as the streams they hold ([`sum_parts_cpu`]); `AccumulateParts` then accumulates.
// Eight arguments: the shape is spelled out so that the reference shares no code with the
// dispatch it checks.
#[allow(clippy::too_many_arguments)]
pub fn matmul_cpu(
    format: WeightFormat,
    weight: &[u8],
    n_in: usize,
    n_out: usize,
    x: &[f32],
    out: &mut [f32],
    norm: Option<(&[f32], f32)>,
    epilogue: Epilogue,
) -> Result<(), MatmulError> {
    let n_w = n_out * epilogue.weight_rows_per_output() as usize;
    check_weight("matmul_cpu weight", format, n_in, n_w, weight.len())?;
    let n_rows = x.len().checked_div(n_in).unwrap_or(0);
    let too_small = |buffer, len: usize, needed: usize| MatmulError::BufferTooSmall {
        variant: "matmul_cpu".into(),
        buffer,
        n_rows: n_rows as u32,
        bytes: len as u64 * 4,
        needed: needed as u64 * 4,
    };
    if x.len() != n_rows * n_in {
        return Err(too_small("x", x.len(), (n_rows + 1) * n_in));
    }
    if out.len() != n_rows * n_out {
        return Err(too_small("out", out.len(), n_rows * n_out));
    }
    if let Some((gamma, _)) = norm {
        if gamma.len() != n_in {
            return Err(too_small("gamma", gamma.len(), n_in));
        }
    }
    let mut w = vec![0.0f32; n_w * n_in]; // [n_w, n_in]
    dequantize(format.ggml_type(), weight, &mut w).map_err(|_| MatmulError::WeightBytes {
        what: "matmul_cpu weight".into(),
        format,
        n_out: n_w,
        n_in,
        expected_bytes: n_w * format.row_bytes(n_in).unwrap_or(0),
        n_bytes: weight.len(),
    })?;
    if n_in == 0 {
        return Ok(());
    }
    let dot = |x_row: &[f32], o: usize| -> f32 {
        let w_row = &w[o * n_in..(o + 1) * n_in];
        x_row.iter().zip(w_row).map(|(xi, wi)| xi * wi).sum()
    };
    for (x_row, out_row) in x.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)) {
        let normed: Vec<f32>;
        let x_row = match norm {
            Some((gamma, eps)) => {
                let mean_square = x_row.iter().map(|v| v * v).sum::<f32>() / n_in as f32;
                let scale = 1.0 / (mean_square + eps).sqrt();
                normed = x_row
                    .iter()
                    .zip(gamma)
                    .map(|(v, g)| g * (v * scale))
                    .collect();
                &normed
            }
            None => x_row,
        };
        for (o, out) in out_row.iter_mut().enumerate() {
            *out = match epilogue {
                Epilogue::Store | Epilogue::Split => dot(x_row, o),
                Epilogue::Accumulate | Epilogue::AccumulateParts => *out + dot(x_row, o),
                Epilogue::Swiglu => {
                    let (gate, up) = (dot(x_row, o), dot(x_row, n_out + o));
                    gate / (1.0 + (-gate).exp()) * up
                }
            };
        }
    }
    Ok(())
}

/// CPU reference of the parts layout ([`Prologue::PartsRmsNorm`], [`Epilogue::AccumulateParts`]):
/// the stream that `held`, its first `held.len() / (1 + n_parts)` values followed by `n_parts`
/// parts of as many, stands for: those values plus every part's, element by element.
pub fn sum_parts_cpu(held: &[f32], n_parts: usize) -> Vec<f32> {
    let len = held.len() / (1 + n_parts);
    let mut stream = held[..len].to_vec();
    for part in held[len..].chunks_exact(len.max(1)).take(n_parts) {
        for (s, p) in stream.iter_mut().zip(part) {
            *s += p;
        }
    }
    stream
}
