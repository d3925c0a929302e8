//! How a step's dispatches are recorded: each under the [`Part`] of the forward pass it
//! belongs to, all of them or one part alone (the profile of
//! [`Session::profile_decode`](super::Session::profile_decode)), counting what is recorded.

use crate::gpu::{Dispatch, Gpu};
use crate::kernels::matmul::Matmul;
use crate::Result;

use super::session::MatmulDispatch;

/// The parts of a step's forward pass, as
/// [`Session::profile_decode`](super::Session::profile_decode) times them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Embed,
    /// The attention norm, the q, k and v projections and the cache write (one matmul).
    Qkv,
    /// Attention over the cache (Multi-Token Attention's stages in an MTA layer), and Star's
    /// merge of partial attentions; in decode with the fused output projection, each head's
    /// share of that projection too.
    Attention,
    /// The output projection with its residual add (in decode with the fused projection: none,
    /// its work is in `Attention`, its residual add in `GateUp` and `Down`).
    Output,
    /// The FFN norm, the gate and up projections and SwiGLU (one matmul).
    GateUp,
    /// The FFN's down projection with its residual add.
    Down,
    /// The final norm and the LM head (one matmul).
    Head,
    Sample,
}

impl Part {
    pub const ALL: [Part; 8] = [
        Part::Embed,
        Part::Qkv,
        Part::Attention,
        Part::Output,
        Part::GateUp,
        Part::Down,
        Part::Head,
        Part::Sample,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Part::Embed => "embed",
            Part::Qkv => "norm + q, k, v projections + cache write",
            Part::Attention => "attention",
            Part::Output => "output projection + residual",
            Part::GateUp => "norm + gate/up projection + SwiGLU",
            Part::Down => "down projection + residual",
            Part::Head => "norm + LM head",
            Part::Sample => "sampler",
        }
    }

    /// [`Part::name`] in a profile of a session where attention may also compute the output
    /// projection ([`Session::projects_in_attention`](super::Session::projects_in_attention)).
    pub fn name_in_step(self, projects_in_attention: bool) -> &'static str {
        match self {
            Part::Attention if projects_in_attention => "attention + output projection",
            _ => self.name(),
        }
    }
}

/// Records a step's dispatches into a compute pass, each under its [`Part`]: all of them, or
/// one part alone (the profile), counting what it records.
pub(super) struct Recorder<'a, 'p> {
    pass: &'a mut wgpu::ComputePass<'p>,
    only: Option<Part>,
    pub(super) recorded: usize,
}

impl<'a, 'p> Recorder<'a, 'p> {
    pub(super) fn new(pass: &'a mut wgpu::ComputePass<'p>, only: Option<Part>) -> Self {
        Recorder {
            pass,
            only,
            recorded: 0,
        }
    }

    pub(super) fn record(&mut self, part: Part, dispatch: &Dispatch, grid: [u32; 3]) {
        if self.only.is_none_or(|only| only == part) && !grid.contains(&0) {
            dispatch.record_grid(self.pass, grid);
            self.recorded += 1;
        }
    }

    /// The decode form for one row, the tiled form for more.
    pub(super) fn matmul(
        &mut self,
        gpu: &Gpu,
        part: Part,
        m: &MatmulDispatch,
        n_rows: u32,
    ) -> Result<()> {
        self.matmul_as(gpu, part, m, n_rows == 1, n_rows)
    }

    /// The decode form of `m` if `decode` (x is one row), else the tiled one, for `n_rows`
    /// output rows.
    pub(super) fn matmul_as(
        &mut self,
        gpu: &Gpu,
        part: Part,
        m: &MatmulDispatch,
        decode: bool,
        n_rows: u32,
    ) -> Result<()> {
        let (dispatch, variant) = match decode {
            true => (&m.decode, m.decode_variant),
            false => (&m.prefill, m.prefill_variant),
        };
        let grid = Matmul::grid(gpu, variant, n_rows, m.shape.n_out)?;
        self.record(part, dispatch, grid);
        Ok(())
    }
}
