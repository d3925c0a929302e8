//! How a step's dispatches are recorded: each under the [`Part`] of the forward pass it
//! belongs to, all of them or one part alone (the profile of
//! [`Session::profile_decode`](super::Session::profile_decode)), counting what is recorded.

use crate::gpu::{Dispatch, Gpu};
use crate::kernels::matmul::{Matmul, MatmulKind};
use crate::Result;

use super::session::MatmulDispatch;

/// The parts of a step's forward pass, as
/// [`Session::profile_decode`](super::Session::profile_decode) times them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Embed,
    /// The RMS norms before attention, before the FFN and before the head.
    Norm,
    Qkv,
    KvWrite,
    /// Attention over the cache (Multi-Token Attention's stages in an MTA layer), and Star's
    /// merge of partial attentions.
    Attention,
    /// The output projection with its residual add.
    Output,
    /// The FFN's gate and up projections with SwiGLU.
    GateUp,
    /// The FFN's down projection with its residual add.
    Down,
    /// The LM head.
    Head,
    Sample,
}

impl Part {
    pub const ALL: [Part; 10] = [
        Part::Embed,
        Part::Norm,
        Part::Qkv,
        Part::KvWrite,
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
            Part::Norm => "rms norms",
            Part::Qkv => "q, k, v projections",
            Part::KvWrite => "kv cache write",
            Part::Attention => "attention",
            Part::Output => "output projection + residual",
            Part::GateUp => "gate/up projection + SwiGLU",
            Part::Down => "down projection + residual",
            Part::Head => "LM head",
            Part::Sample => "sampler",
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

    /// The matvec form for one row (decode), the tiled form for more.
    pub(super) fn matmul(
        &mut self,
        gpu: &Gpu,
        part: Part,
        m: &MatmulDispatch,
        n_rows: u32,
    ) -> Result<()> {
        let (dispatch, kind) = match n_rows {
            1 => (&m.vec, MatmulKind::Vec),
            _ => (&m.tile, MatmulKind::Tile),
        };
        let grid = Matmul::grid(gpu, kind, m.epilogue, n_rows, m.n_out)?;
        self.record(part, dispatch, grid);
        Ok(())
    }
}
