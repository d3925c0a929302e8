//! stream: a read of a whole buffer at the device's streaming bandwidth, the yardstick of
//! `sinkstar bench` (issue 9: decode's bytes of weights per second are measured against it).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::shader_source;
use crate::gpu::{grid, Binding, Dispatch, Gpu, GpuError, Kernel, PipelineSpec};

/// Twin of the WGSL `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n_vec4s: u32,
    pub n_threads: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

const WG_SIZE: u32 = 64;

/// How an invocation loads each 16 bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// One vec4<u32>: the device's streaming bandwidth.
    Vec4,
    /// Four u32 words, as the quantized kernels load weight blocks (the shader's WORDS): the
    /// most they can stream where a device pays per load rather than per byte.
    Words,
}

impl Load {
    pub const ALL: [Load; 2] = [Load::Vec4, Load::Words];
}

pub fn spec(load: Load) -> Result<PipelineSpec, GpuError> {
    let (name, defines): (&str, &[&str]) = match load {
        Load::Vec4 => ("stream", &[]),
        Load::Words => ("stream_words", &["WORDS"]),
    };
    Ok(PipelineSpec {
        label: format!("{name}_wg{WG_SIZE}"),
        source: shader_source("stream.wgsl", defines)?,
        entry: "main",
        overrides: vec![("WG_SIZE".into(), f64::from(WG_SIZE))],
        features: wgpu::Features::empty(),
        bindings: vec![Binding::Uniform, Binding::Read, Binding::ReadWrite],
        loop_bounding: true,
    })
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    Load::ALL.into_iter().map(spec).collect()
}

pub struct Stream {
    kernel: Arc<Kernel>,
}

impl Stream {
    pub fn new(gpu: &Gpu, load: Load) -> Result<Stream, GpuError> {
        Ok(Stream {
            kernel: gpu.kernel(&spec(load)?)?,
        })
    }

    /// Binds `data` (`[n_vec4s]` vec4<u32>) and `out` (`[n_threads]` u32) for `n_threads`
    /// invocations (a multiple of the workgroup size, see [`Stream::threads`]).
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        params: wgpu::BindingResource,
        data: &wgpu::Buffer,
        out: &wgpu::Buffer,
        n_threads: u32,
    ) -> Result<Dispatch, GpuError> {
        Ok(Dispatch {
            kernel: self.kernel.clone(),
            bind_group: self.kernel.bind(
                gpu,
                &[params, data.as_entire_binding(), out.as_entire_binding()],
            )?,
            workgroups: grid(gpu, "stream threads", u64::from(n_threads / WG_SIZE))?,
        })
    }

    /// Invocations for a read: enough workgroups to fill any device (a few per shader core of
    /// the largest GPUs), rounded to whole workgroups.
    pub fn threads(n_vec4s: u32) -> u32 {
        const MOST: u32 = 1 << 16;
        n_vec4s.clamp(1, MOST).div_ceil(WG_SIZE) * WG_SIZE
    }
}

/// CPU reference: what invocation `i` of `n_threads` writes, for `data` as u32 words (a
/// multiple of 4).
pub fn stream_cpu(data: &[u32], n_threads: usize) -> Vec<u32> {
    let vec4s: Vec<&[u32]> = data.chunks_exact(4).collect();
    (0..n_threads)
        .map(|i| {
            vec4s
                .iter()
                .skip(i)
                .step_by(n_threads)
                .flat_map(|v| v.iter())
                .fold(0u32, |sum, &w| sum.wrapping_add(w))
        })
        .collect()
}

/// Bytes per second the device streams through [`Stream`] loading as `load` does: the median
/// of `repeat` timed submissions (after one untimed, which pays for the pipeline), each of 8
/// reads of one buffer of up to 256 MiB (less where the device's limits are lower; 8 reads so
/// that a fast GPU's submission overhead does not count).
pub async fn stream_bandwidth(gpu: &Gpu, repeat: usize, load: Load) -> Result<f64, GpuError> {
    const READS: u32 = 8;
    let limit = gpu
        .limits
        .max_storage_buffer_binding_size
        .min(gpu.limits.max_buffer_size);
    let n_vec4s = u32::try_from(limit.min(256 << 20) / 16).unwrap_or(u32::MAX);
    let threads = Stream::threads(n_vec4s);
    let secs = time_reads(gpu, load, n_vec4s, threads, READS, repeat).await?;
    Ok((u64::from(READS) * u64::from(n_vec4s) * 16) as f64 / secs)
}

/// Seconds one dispatch costs beyond its work: the median of `repeat` timed submissions of
/// 1000 dispatches of one workgroup each that read 16 bytes (after one untimed), per
/// dispatch. The benchmark's profile weighs kernel counts with it.
pub async fn dispatch_overhead(gpu: &Gpu, repeat: usize) -> Result<f64, GpuError> {
    const DISPATCHES: u32 = 1000;
    let secs = time_reads(gpu, Load::Vec4, 1, WG_SIZE, DISPATCHES, repeat).await?;
    Ok(secs / f64::from(DISPATCHES))
}

/// The median seconds of `repeat` submissions (after one untimed) of `n_dispatches` reads of
/// `n_vec4s` by `n_threads` invocations loading as `load` does, each submission waited for.
async fn time_reads(
    gpu: &Gpu,
    load: Load,
    n_vec4s: u32,
    n_threads: u32,
    n_dispatches: u32,
    repeat: usize,
) -> Result<f64, GpuError> {
    let data = gpu.storage("stream data", u64::from(n_vec4s) * 16)?;
    let out = gpu.storage("stream sums", u64::from(n_threads) * 4)?;
    let mut arena = crate::gpu::UniformArena::new(gpu, "stream params", 1)?;
    let slot = arena.slot()?;
    arena.set(
        slot,
        &Params {
            n_vec4s,
            n_threads,
            _pad0: 0,
            _pad1: 0,
        },
    )?;
    arena.upload(gpu);
    let dispatch =
        Stream::new(gpu, load)?.dispatch(gpu, arena.binding(slot), &data, &out, n_threads)?;
    let mut secs = Vec::new();
    for run in 0..=repeat.max(1) {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for _ in 0..n_dispatches {
                dispatch.record(&mut pass);
            }
        }
        let start = web_time::Instant::now();
        gpu.queue.submit([encoder.finish()]);
        gpu.finish().await?;
        if run > 0 {
            secs.push(start.elapsed().as_secs_f64());
        }
    }
    secs.sort_by(f64::total_cmp);
    Ok(secs[secs.len() / 2])
}
