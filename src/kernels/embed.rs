//! embed: `out[r] = table[tokens[r]]`, rows of a `[vocab_size, dim]` table in any
//! [`WeightFormat`], decoded on the GPU by the same block decoders as matmul (the default
//! model's Q8_0 embedding is also its LM head, so one upload serves both). Checking token ids
//! against the vocabulary is the caller's job; the shader writes zeros for an id whose row is
//! not in the table rather than reading out of bounds.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::matmul::{check_weight, MatmulError, WeightFormat};
use super::shader_source;
use crate::gpu::{grid, Binding, Dispatch, Gpu, GpuError, Kernel, PipelineSpec};
use crate::model::quant::dequantize;

/// Twin of the WGSL `Params`; also the shape a dispatch is checked against.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Params {
    pub n_rows: u32,
    pub dim: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

impl Params {
    pub fn new(n_rows: u32, dim: u32) -> Params {
        Params {
            n_rows,
            dim,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

/// One invocation per output value; elementwise work, so the size barely matters.
const WG_SIZE: u32 = 64;

/// The variant `embed_<format>`.
pub fn spec(format: WeightFormat) -> Result<PipelineSpec, GpuError> {
    Ok(PipelineSpec {
        label: format!("embed_{}", format.name()),
        source: shader_source("embed.wgsl", format.defines())?,
        entry: "main",
        overrides: vec![("WG_SIZE".into(), f64::from(WG_SIZE))],
        features: wgpu::Features::empty(),
        bindings: vec![
            Binding::Uniform,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
        ],
        loop_bounding: true,
    })
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    WeightFormat::ALL.into_iter().map(spec).collect()
}

pub struct Embed {
    format: WeightFormat,
    kernel: Arc<Kernel>,
}

impl Embed {
    pub fn new(gpu: &Gpu, format: WeightFormat) -> Result<Embed, GpuError> {
        Ok(Embed {
            format,
            kernel: gpu.kernel(&spec(format)?)?,
        })
    }

    /// Binds `table [vocab_size, dim]` (from `matmul::upload_weight`), `tokens [n_rows]` (u32)
    /// and `out [n_rows, dim]` (f32), after checking that `dim` is whole blocks and that the
    /// buffers hold `shape.n_rows` rows.
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        params: wgpu::BindingResource,
        table: &wgpu::Buffer,
        tokens: &wgpu::Buffer,
        out: &wgpu::Buffer,
        shape: Params,
    ) -> Result<Dispatch, MatmulError> {
        let variant = format!("embed_{}", self.format.name());
        let Params { n_rows, dim, .. } = shape;
        if self.format.row_bytes(dim as usize).is_none() {
            return Err(MatmulError::NotBlockMultiple {
                what: variant,
                format: self.format,
                n_in: dim as usize,
                block_elems: self.format.block_elems(),
            });
        }
        let rows = u64::from(n_rows);
        for (buffer, bytes, needed) in [
            ("tokens", tokens.size(), rows * 4),
            ("out", out.size(), rows * u64::from(dim) * 4),
        ] {
            if bytes < needed {
                return Err(MatmulError::BufferTooSmall {
                    variant,
                    buffer,
                    n_rows,
                    bytes,
                    needed,
                });
            }
        }
        Ok(Dispatch {
            kernel: self.kernel.clone(),
            bind_group: self.kernel.bind(
                gpu,
                &[
                    params,
                    table.as_entire_binding(),
                    tokens.as_entire_binding(),
                    out.as_entire_binding(),
                ],
            )?,
            workgroups: Self::grid(gpu, n_rows, dim)?,
        })
    }

    pub fn grid(gpu: &Gpu, n_rows: u32, dim: u32) -> Result<[u32; 3], GpuError> {
        let n_elems = u64::from(n_rows) * u64::from(dim);
        grid(gpu, "embed values", n_elems.div_ceil(WG_SIZE.into()))
    }
}

/// CPU reference. `table` is `[vocab_size, dim]` in `format`, `out` is `[tokens.len(), dim]`;
/// an id past the table gives a row of zeros, as in the shader.
pub fn embed_cpu(
    format: WeightFormat,
    table: &[u8],
    dim: usize,
    vocab_size: usize,
    tokens: &[u32],
    out: &mut [f32],
) -> Result<(), MatmulError> {
    check_weight("embed_cpu table", format, dim, vocab_size, table.len())?;
    if out.len() != tokens.len() * dim {
        return Err(MatmulError::BufferTooSmall {
            variant: "embed_cpu".into(),
            buffer: "out",
            n_rows: tokens.len() as u32,
            bytes: out.len() as u64 * 4,
            needed: (tokens.len() * dim) as u64 * 4,
        });
    }
    if dim == 0 {
        return Ok(());
    }
    // check_weight passed: the table is exactly vocab_size rows of row_bytes.
    let row_bytes = table.len() / vocab_size.max(1);
    for (&token, out_row) in tokens.iter().zip(out.chunks_exact_mut(dim)) {
        let token = token as usize;
        if token >= vocab_size {
            out_row.fill(0.0);
            continue;
        }
        let row = &table[token * row_bytes..(token + 1) * row_bytes];
        dequantize(format.ggml_type(), row, out_row).map_err(|_| MatmulError::WeightBytes {
            what: "embed_cpu table".into(),
            format,
            n_out: vocab_size,
            n_in: dim,
            expected_bytes: vocab_size * row_bytes,
            n_bytes: table.len(),
        })?;
    }
    Ok(())
}
