//! The adapter, the device and everything created on it: buffers (limits checked first, memory
//! counted), pipelines (cached by variant name) and error scopes that turn wgpu validation
//! errors into typed errors instead of panics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::pipeline::{Kernel, PipelineSpec};
use super::GpuError;

/// How to choose the adapter.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// `vulkan`, `metal`, `dx12`, `gl`, `webgpu` or `all`; `None` reads `WGPU_BACKEND`, else all.
    pub backend: Option<String>,
    /// Index into [`list_adapters`]; `None` takes the best adapter wgpu offers.
    pub adapter: Option<usize>,
    /// Whether decode's matvecs use subgroup operations (the `subgroup` matmul form):
    /// `None` where the adapter has them and is not a CPU (lavapipe has them, but runs that form
    /// slower than its register-blocked one: notes/platform.md), never in the browser (wgpu's web
    /// backend does not report them); `Some(true)` fails on an adapter without them.
    pub subgroup_matvec: Option<bool>,
    /// Workgroups decode attention aims to keep busy: a long cache's walk is split into parts
    /// (flash-decoding) until rows × heads × parts reaches this. `None`: the CPU cores on a CPU
    /// adapter ([`CPU_DECODE_WORKGROUPS`] in the browser), [`GPU_DECODE_WORKGROUPS`] otherwise.
    pub decode_workgroups: Option<u32>,
    /// Threads of decode attention's workgroup (one per row and head, and part of a split
    /// walk), at most as many as keep its merge within 16 KiB of workgroup memory: `None`:
    /// [`CPU_DECODE_ATTENTION_THREADS`] on a CPU adapter, [`GPU_DECODE_ATTENTION_THREADS`]
    /// otherwise.
    pub decode_attention_threads: Option<u32>,
    /// Whether prefill's matmuls stage their tiles in workgroup memory (the `shared` matmul
    /// form) rather than registers only (`tile`): `None` on adapters that are not CPUs (CPU
    /// drivers run barriers 5-10x slower).
    pub shared_prefill: Option<bool>,
    /// Whether decode folds each head's share of the attention output projection into the
    /// attention kernel, whose parts the FFN's matmuls then sum into the residual stream (4
    /// dispatches a layer instead of 5): `None` or `Some(true)` wherever the model's shapes allow
    /// it (heads of whole 32-value chunks, parts that fit the vec matvec's uniform x);
    /// `Some(false)` keeps the projection a matmul of its own (for comparison).
    pub fuse_output_projection: Option<bool>,
}

/// [`GpuOptions::decode_workgroups`] on adapters that are not CPUs: WebGPU does not say how
/// many compute units a device has; this is about two workgroups per unit of a large GPU, and
/// the split stops at [`crate::kernels::attention::MIN_PART_SLOTS`] slots per part anyway.
pub const GPU_DECODE_WORKGROUPS: u32 = 256;
/// [`GpuOptions::decode_workgroups`] on a CPU adapter where the core count is unknown.
pub const CPU_DECODE_WORKGROUPS: u32 = 4;
/// [`GpuOptions::decode_attention_threads`] on a CPU adapter: a CPU driver runs a workgroup's
/// threads a SIMD vector at a time, so more threads buy no parallelism, only their merge and
/// each one's rotation of the query. Measured on lavapipe (SmolLM2-135M, 2 cores): attention
/// with the output projection 32-40 ms per token at 64 threads, 22-25 at 32, 19-20 at 16 for
/// a short cache; with the default sink ring full, 294-312 against 303-337 ms per token. One
/// vector of lavapipe's 256-bit SIMD, 8 threads, decodes 3.5-5.4% faster again than 16, short
/// cache and ring full, in either order of `bench --versus` (docs/results/versus/).
pub const CPU_DECODE_ATTENTION_THREADS: u32 = 8;
/// [`GpuOptions::decode_attention_threads`] on a GPU: two warps of 32, one wave of 64 share a
/// head's keys, and a split walk's workgroups fill the device.
pub const GPU_DECODE_ATTENTION_THREADS: u32 = 64;

/// What `sinkstar info` shows of an adapter.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
}

/// One open device with its queue. Cheap to share by reference; pipelines are cached inside.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Features requested for the device: subgroups when decode uses them, nothing else (the
    /// f32 path runs everywhere).
    pub features: wgpu::Features,
    /// Decode's matvecs use subgroup operations ([`GpuOptions::subgroup_matvec`]).
    pub subgroup_matvec: bool,
    /// [`GpuOptions::decode_workgroups`], resolved.
    pub decode_workgroups: u32,
    /// [`GpuOptions::decode_attention_threads`], resolved (before the cap for wide heads).
    pub decode_attention_threads: u32,
    /// Prefill's matmuls use workgroup-memory tiles ([`GpuOptions::shared_prefill`]).
    pub shared_prefill: bool,
    /// [`GpuOptions::fuse_output_projection`], resolved.
    pub fuse_output_projection: bool,
    /// Features the adapter offers.
    pub adapter_features: wgpu::Features,
    pipelines: Mutex<HashMap<String, Arc<Kernel>>>,
    /// Bytes and number of buffers created through [`Gpu::buffer`] and still alive (what
    /// `bench` reports).
    allocated: Arc<Allocated>,
    /// Errors wgpu raised outside an error scope (e.g. during a submit), reported at readback.
    uncaptured: Arc<Mutex<Vec<String>>>,
}

fn instance(backend: Option<&str>) -> Result<wgpu::Instance, GpuError> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(name) = backend {
        desc.backends = parse_backends(name)?;
    }
    Ok(wgpu::Instance::new(desc))
}

fn parse_backends(name: &str) -> Result<wgpu::Backends, GpuError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "vulkan" => wgpu::Backends::VULKAN,
        "metal" => wgpu::Backends::METAL,
        "dx12" => wgpu::Backends::DX12,
        "gl" => wgpu::Backends::GL,
        "webgpu" => wgpu::Backends::BROWSER_WEBGPU,
        "all" => wgpu::Backends::all(),
        _ => {
            return Err(GpuError::UnknownBackend {
                name: name.to_string(),
            })
        }
    })
}

fn summary(index: usize, info: &wgpu::AdapterInfo) -> AdapterSummary {
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
    }
}

/// Every adapter the chosen backends offer, in wgpu's order (the order `--adapter` indexes).
pub async fn list_adapters(backend: Option<&str>) -> Result<Vec<AdapterSummary>, GpuError> {
    let instance = instance(backend)?;
    let adapters = instance
        .enumerate_adapters(instance_backends(backend)?)
        .await;
    Ok(adapters
        .iter()
        .enumerate()
        .map(|(i, a)| summary(i, &a.get_info()))
        .collect())
}

fn instance_backends(backend: Option<&str>) -> Result<wgpu::Backends, GpuError> {
    match backend {
        Some(name) => parse_backends(name),
        None => Ok(wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())),
    }
}

/// This machine's cores, where the platform tells (a CPU adapter runs its workgroups on them).
fn cpu_cores() -> Option<u32> {
    if cfg!(target_arch = "wasm32") {
        return None;
    }
    std::thread::available_parallelism()
        .ok()
        .map(|n| n.get() as u32)
}

impl Gpu {
    /// Opens a device on the chosen adapter with the adapter's own limits (the defaults are far
    /// below what a model needs, e.g. storage bindings).
    pub async fn new(options: &GpuOptions) -> Result<Gpu, GpuError> {
        let backend = options.backend.as_deref();
        let instance = instance(backend)?;
        let backends = instance_backends(backend)?;
        let no_adapter = || GpuError::NoAdapter {
            backends: format!("{backends:?}"),
            hint: if cfg!(target_arch = "wasm32") {
                ": this browser has no WebGPU (try Chromium with --enable-unsafe-webgpu)".into()
            } else {
                ": install a Vulkan driver (on machines without a GPU: Mesa's lavapipe, \
                 package mesa-vulkan-drivers)"
                    .into()
            },
        };
        let adapter = match options.adapter {
            Some(index) => {
                let mut adapters = instance.enumerate_adapters(backends).await;
                if adapters.is_empty() {
                    return Err(no_adapter());
                }
                if index >= adapters.len() {
                    return Err(GpuError::AdapterIndex {
                        index,
                        available: adapters.len(),
                    });
                }
                adapters.swap_remove(index)
            }
            None => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                })
                .await
                .map_err(|_| no_adapter())?,
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let adapter_features = adapter.features();
        // Never on the web: naga rejects the `enable subgroups;` Chromium requires.
        let subgroups =
            !cfg!(target_arch = "wasm32") && adapter_features.contains(wgpu::Features::SUBGROUP);
        // CPU drivers (lavapipe, SwiftShader) get the CPU forms of the kernels by default.
        let cpu = info.device_type == wgpu::DeviceType::Cpu;
        let subgroup_matvec = match options.subgroup_matvec {
            Some(true) if !subgroups => {
                return Err(GpuError::MissingFeature {
                    kernel: "the subgroup matvec (requested)".into(),
                    feature: "SUBGROUP".into(),
                    adapter: info.name.clone(),
                })
            }
            Some(wanted) => wanted,
            None => subgroups && !cpu,
        };
        let decode_workgroups = options.decode_workgroups.unwrap_or_else(|| {
            if cpu {
                cpu_cores().unwrap_or(CPU_DECODE_WORKGROUPS)
            } else {
                GPU_DECODE_WORKGROUPS
            }
        });
        let decode_attention_threads = options.decode_attention_threads.unwrap_or(if cpu {
            CPU_DECODE_ATTENTION_THREADS
        } else {
            GPU_DECODE_ATTENTION_THREADS
        });
        let shared_prefill = options.shared_prefill.unwrap_or(!cpu);
        let features = if subgroup_matvec {
            wgpu::Features::SUBGROUP
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("sinkstar"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::RequestDevice {
                adapter: info.name.clone(),
                message: e.to_string(),
            })?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut errors) = sink.lock() {
                errors.push(e.to_string());
            }
        }));
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            features,
            subgroup_matvec,
            decode_workgroups: decode_workgroups.max(1),
            decode_attention_threads: decode_attention_threads.max(1),
            shared_prefill,
            fuse_output_projection: options.fuse_output_projection.unwrap_or(true),
            adapter_features,
            pipelines: Mutex::new(HashMap::new()),
            allocated: Arc::new(Allocated::default()),
            uncaptured,
        })
    }

    /// Blocking form of [`Gpu::new`] for native code.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(options: &GpuOptions) -> Result<Gpu, GpuError> {
        pollster::block_on(Gpu::new(options))
    }

    pub fn summary(&self) -> AdapterSummary {
        summary(0, &self.info)
    }

    /// Bytes held by live buffers made with [`Gpu::buffer`].
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.bytes.load(Ordering::Relaxed)
    }

    /// Live buffers made with [`Gpu::buffer`].
    pub fn n_buffers(&self) -> u64 {
        self.allocated.count.load(Ordering::Relaxed)
    }

    /// Pipelines built so far (each variant once: [`Gpu::kernel`] caches them), the start-up
    /// work a CPU driver pays most for.
    pub fn n_pipelines(&self) -> usize {
        self.pipelines.lock().map_or(0, |cache| cache.len())
    }

    /// Runs `create` inside validation and out-of-memory error scopes and turns what they
    /// catch into `GpuError::Create` naming `what`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn scoped<T>(&self, what: &str, create: impl FnOnce() -> T) -> Result<T, GpuError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = create();
        let errors = [validation.pop(), oom.pop()].map(pollster::block_on);
        match errors.into_iter().flatten().next() {
            Some(e) => Err(GpuError::Create {
                what: what.to_string(),
                message: e.to_string(),
            }),
            None => Ok(value),
        }
    }

    /// In the browser an error scope answers with a promise, which nothing synchronous may
    /// wait for: errors go to the uncaptured-error log instead and surface at the next
    /// readback ([`Gpu::read_mapped`]) or here. Sizes and limits are checked before anything
    /// is created, so what is left to catch are driver failures.
    #[cfg(target_arch = "wasm32")]
    pub fn scoped<T>(&self, what: &str, create: impl FnOnce() -> T) -> Result<T, GpuError> {
        let value = create();
        self.check_uncaptured().map_err(|e| GpuError::Create {
            what: what.to_string(),
            message: e.to_string(),
        })?;
        Ok(value)
    }

    /// Fails if wgpu reported an error outside a scope since the last check.
    pub fn check_uncaptured(&self) -> Result<(), GpuError> {
        let mut errors = self.uncaptured.lock().map_err(|_| GpuError::Device {
            message: "error log poisoned".into(),
        })?;
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.join("; ");
        errors.clear();
        Err(GpuError::Device { message })
    }

    /// Fails with `BufferTooLarge` unless a buffer of `bytes` bytes with `usage` fits the
    /// device's limits. Lets callers check every size before creating (or computing) anything.
    pub fn check_buffer_size(
        &self,
        what: &str,
        bytes: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<(), GpuError> {
        let too_large = |limit: u64, limit_name| GpuError::BufferTooLarge {
            what: what.to_string(),
            bytes,
            limit,
            limit_name,
        };
        if bytes > self.limits.max_buffer_size {
            return Err(too_large(self.limits.max_buffer_size, "max_buffer_size"));
        }
        // Storage buffers are bound whole, so they must also fit one storage binding.
        if usage.contains(wgpu::BufferUsages::STORAGE)
            && bytes > self.limits.max_storage_buffer_binding_size
        {
            return Err(too_large(
                self.limits.max_storage_buffer_binding_size,
                "max_storage_buffer_binding_size",
            ));
        }
        Ok(())
    }

    /// A buffer of `bytes` bytes, checked against the device limits before anything is created.
    pub fn buffer(
        &self,
        what: &str,
        bytes: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<TrackedBuffer, GpuError> {
        // wgpu rejects zero-sized bindings; a 4-byte buffer stands in for an empty one.
        let bytes = bytes.max(4).next_multiple_of(4);
        self.check_buffer_size(what, bytes, usage)?;
        let buffer = self.scoped(what, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(what),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        })?;
        self.allocated.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.allocated.count.fetch_add(1, Ordering::Relaxed);
        Ok(TrackedBuffer {
            buffer,
            allocated: self.allocated.clone(),
        })
    }

    /// A storage buffer (read/write by shaders, copy in and out) of `bytes` bytes.
    pub fn storage(&self, what: &str, bytes: u64) -> Result<TrackedBuffer, GpuError> {
        use wgpu::BufferUsages as U;
        self.buffer(what, bytes, U::STORAGE | U::COPY_DST | U::COPY_SRC)
    }

    /// A storage buffer filled with `data`.
    pub fn storage_with(&self, what: &str, data: &[u8]) -> Result<TrackedBuffer, GpuError> {
        let buffer = self.storage(what, data.len() as u64)?;
        self.queue.write_buffer(&buffer, 0, data);
        Ok(buffer)
    }

    /// The cached pipeline for `spec`, built on first use (the label is the cache key).
    pub fn kernel(&self, spec: &PipelineSpec) -> Result<Arc<Kernel>, GpuError> {
        let mut cache = self.pipelines.lock().map_err(|_| GpuError::Device {
            message: "pipeline cache poisoned".into(),
        })?;
        if let Some(kernel) = cache.get(&spec.label) {
            return Ok(kernel.clone());
        }
        if !self.features.contains(spec.features) {
            return Err(GpuError::MissingFeature {
                kernel: spec.label.clone(),
                feature: format!("{:?}", spec.features - self.features),
                adapter: self.info.name.clone(),
            });
        }
        let kernel = Arc::new(Kernel::new(self, spec)?);
        cache.insert(spec.label.clone(), kernel.clone());
        Ok(kernel)
    }

    /// Copies `bytes` bytes of `buffer` from `offset` back to the host. Waits for all work
    /// submitted before it.
    pub async fn read(
        &self,
        what: &str,
        buffer: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> Result<Vec<u8>, GpuError> {
        use wgpu::BufferUsages as U;
        let staging = self.buffer(what, bytes, U::MAP_READ | U::COPY_DST)?;
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        self.read_mapped(what, &staging, bytes).await
    }

    /// Waits until all work submitted so far has run (e.g. to report progress between long
    /// submissions). A wgpu error raised meanwhile is returned here.
    pub async fn finish(&self) -> Result<(), GpuError> {
        let fail = |message: String| GpuError::Readback {
            what: "submitted work".to_string(),
            message,
        };
        let (sender, receiver) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = sender.send(());
        });
        // Native backends need a poll to make progress; on the web it is a no-op.
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| fail(e.to_string()))?;
        receiver
            .await
            .map_err(|_| fail("work-done callback dropped".into()))?;
        self.check_uncaptured()
    }

    /// Maps a `MAP_READ` buffer and copies its first `bytes` bytes out, then unmaps it.
    pub async fn read_mapped(
        &self,
        what: &str,
        staging: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<u8>, GpuError> {
        let fail = |message: String| GpuError::Readback {
            what: what.to_string(),
            message,
        };
        let slice = staging.slice(..bytes);
        let (sender, receiver) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        // Native backends need a poll to make progress; on the web it is a no-op.
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| fail(e.to_string()))?;
        receiver
            .await
            .map_err(|_| fail("map callback dropped".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let data = slice
            .get_mapped_range()
            .map_err(|e| fail(e.to_string()))?
            .to_vec();
        staging.unmap();
        self.check_uncaptured()?;
        Ok(data)
    }

    /// Blocking readback of `bytes` bytes as f32 values, for native code and tests.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32(&self, buffer: &wgpu::Buffer, n_elems: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = pollster::block_on(self.read("f32 readback", buffer, 0, n_elems as u64 * 4))?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Blocking readback of u32 values.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32(&self, buffer: &wgpu::Buffer, n_elems: usize) -> Result<Vec<u32>, GpuError> {
        let bytes = pollster::block_on(self.read("u32 readback", buffer, 0, n_elems as u64 * 4))?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }
}

#[derive(Default)]
struct Allocated {
    bytes: AtomicU64,
    count: AtomicU64,
}

/// A buffer that counts towards [`Gpu::allocated_bytes`] and [`Gpu::n_buffers`] while it lives.
pub struct TrackedBuffer {
    buffer: wgpu::Buffer,
    allocated: Arc<Allocated>,
}

impl std::ops::Deref for TrackedBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for TrackedBuffer {
    fn drop(&mut self) {
        self.allocated
            .bytes
            .fetch_sub(self.buffer.size(), Ordering::Relaxed);
        self.allocated.count.fetch_sub(1, Ordering::Relaxed);
    }
}
