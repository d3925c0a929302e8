//! The uniform arena: every dispatch's `Params` lives in one buffer at its own aligned offset,
//! so a forward step rewrites all of them with a single `write_buffer` and bind groups are
//! made once per session.

use super::{Gpu, GpuError, TrackedBuffer};

/// Index of one `Params` struct in a [`UniformArena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSlot(u32);

pub struct UniformArena {
    buffer: TrackedBuffer,
    /// Host copy of the whole buffer, uploaded by [`UniformArena::upload`].
    staging: Vec<u8>,
    stride: usize,
    n_used: u32,
}

impl UniformArena {
    /// An arena for `n_slots` structs of up to 256 bytes each. Slots start at multiples of
    /// 256, which is also a multiple of every adapter's uniform offset alignment (a power of
    /// two, at most 256; lavapipe's is only 32, too small for some `Params`).
    pub fn new(gpu: &Gpu, what: &str, n_slots: u32) -> Result<UniformArena, GpuError> {
        let stride = gpu.limits.min_uniform_buffer_offset_alignment.max(256) as usize;
        let bytes = stride as u64 * u64::from(n_slots.max(1));
        let buffer = gpu.buffer(
            what,
            bytes,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        Ok(UniformArena {
            buffer,
            staging: vec![0; bytes as usize],
            stride,
            n_used: 0,
        })
    }

    /// Reserves the next free slot.
    pub fn slot(&mut self) -> Result<ParamSlot, GpuError> {
        let capacity = (self.staging.len() / self.stride) as u32;
        if self.n_used >= capacity {
            return Err(GpuError::Limit {
                what: "uniform arena".into(),
                limit_name: "slots",
                limit: capacity.into(),
                needed: u64::from(self.n_used) + 1,
            });
        }
        self.n_used += 1;
        Ok(ParamSlot(self.n_used - 1))
    }

    /// Writes `params` into the host copy of `slot`; [`UniformArena::upload`] sends it.
    pub fn set<P: bytemuck::Pod>(&mut self, slot: ParamSlot, params: &P) -> Result<(), GpuError> {
        let bytes = bytemuck::bytes_of(params);
        if bytes.len() > self.stride {
            return Err(GpuError::ParamsTooLarge {
                bytes: bytes.len(),
                stride: self.stride,
            });
        }
        let start = slot.0 as usize * self.stride;
        self.staging[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// The binding of `slot` for a bind group.
    pub fn binding(&self, slot: ParamSlot) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: u64::from(slot.0) * self.stride as u64,
            size: std::num::NonZeroU64::new(self.stride as u64),
        })
    }

    /// Queues the used part of the host copy for the next submission.
    pub fn upload(&self, gpu: &Gpu) {
        let used = self.n_used as usize * self.stride;
        gpu.queue
            .write_buffer(&self.buffer, 0, &self.staging[..used]);
    }
}
