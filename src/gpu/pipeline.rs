//! Compute pipelines with explicit bind group layouts, and recorded dispatches.
//!
//! Layouts are explicit because wgpu's automatic layout drops bindings a variant does not use,
//! after which the shared bind code would fail.

use std::sync::Arc;

use super::{Gpu, GpuError};

/// What a binding slot holds, in `@binding` order (all in group 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Uniform,
    Read,
    ReadWrite,
}

/// Everything that makes one pipeline variant. `label` is the variant name (`matmul_q4_1_f32`),
/// used as the cache key, the pipeline label and the test case name.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub label: String,
    /// Preprocessed WGSL.
    pub source: String,
    pub entry: &'static str,
    /// Values of the shader's `override` constants.
    pub overrides: Vec<(String, f64)>,
    /// Device features the shader needs (`Gpu::kernel` checks them): empty for every kernel
    /// that runs everywhere.
    pub features: wgpu::Features,
    pub bindings: Vec<Binding>,
    /// Whether naga bounds every loop (a counter and an exit test per iteration, which guards
    /// against a shader that could spin forever; the browser always has it). `false` only for
    /// shaders whose every loop runs to a bound set by constants or the dispatch's params, and
    /// where leaving it out was measured to help: the register-tiled prefill matmul and the
    /// tiled attention (prefill 17-23% faster on lavapipe; the decode kernels were 10% slower
    /// without it, so they keep it).
    pub loop_bounding: bool,
}

/// A built pipeline and its bind group layout.
pub struct Kernel {
    pub label: String,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    n_bindings: usize,
}

impl Kernel {
    pub(super) fn new(gpu: &Gpu, spec: &PipelineSpec) -> Result<Kernel, GpuError> {
        let n_storage = spec
            .bindings
            .iter()
            .filter(|b| **b != Binding::Uniform)
            .count() as u64;
        let limit = u64::from(gpu.limits.max_storage_buffers_per_shader_stage);
        if n_storage > limit {
            return Err(GpuError::Limit {
                what: format!("kernel `{}`", spec.label),
                limit_name: "max_storage_buffers_per_shader_stage",
                limit,
                needed: n_storage,
            });
        }
        let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
            .bindings
            .iter()
            .enumerate()
            .map(|(i, binding)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match binding {
                        Binding::Uniform => wgpu::BufferBindingType::Uniform,
                        Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let shader_error = |e: GpuError| match e {
            GpuError::Create { message, .. } => GpuError::Shader {
                variant: spec.label.clone(),
                message,
            },
            other => other,
        };
        let (pipeline, layout) = gpu
            .scoped(&spec.label, || {
                let device = &gpu.device;
                let checks = wgpu::ShaderRuntimeChecks {
                    force_loop_bounding: spec.loop_bounding,
                    ..wgpu::ShaderRuntimeChecks::checked()
                };
                // SAFETY: every check but loop bounding stays on, and a spec turns that off only
                // for a shader whose loops all end (see `PipelineSpec::loop_bounding`).
                let module = unsafe {
                    device.create_shader_module_trusted(
                        wgpu::ShaderModuleDescriptor {
                            label: Some(&spec.label),
                            source: wgpu::ShaderSource::Wgsl(spec.source.as_str().into()),
                        },
                        checks,
                    )
                };
                let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(&spec.label),
                    entries: &entries,
                });
                let pipeline_layout =
                    device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(&spec.label),
                        bind_group_layouts: &[Some(&layout)],
                        immediate_size: 0,
                    });
                let constants: Vec<(&str, f64)> = spec
                    .overrides
                    .iter()
                    .map(|(name, value)| (name.as_str(), *value))
                    .collect();
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&spec.label),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(spec.entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                });
                (pipeline, layout)
            })
            .map_err(shader_error)?;
        Ok(Kernel {
            label: spec.label.clone(),
            pipeline,
            layout,
            n_bindings: spec.bindings.len(),
        })
    }

    /// A bind group over `resources`, one per binding in order.
    pub fn bind(
        &self,
        gpu: &Gpu,
        resources: &[wgpu::BindingResource],
    ) -> Result<wgpu::BindGroup, GpuError> {
        if resources.len() != self.n_bindings {
            return Err(GpuError::BindingCount {
                what: "bind group".into(),
                kernel: self.label.clone(),
                n_bindings: resources.len(),
                expected: self.n_bindings,
            });
        }
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: resource.clone(),
            })
            .collect();
        gpu.scoped(&format!("bind group of `{}`", self.label), || {
            gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&self.label),
                layout: &self.layout,
                entries: &entries,
            })
        })
    }
}

/// A kernel bound to its buffers, recorded into a compute pass as often as needed.
pub struct Dispatch {
    pub kernel: Arc<Kernel>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass) {
        self.record_grid(pass, self.workgroups);
    }

    /// Records with another grid (e.g. a prefill chunk of a different length).
    pub fn record_grid(&self, pass: &mut wgpu::ComputePass, workgroups: [u32; 3]) {
        if workgroups.contains(&0) {
            return;
        }
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
    }
}

/// Lays `n_workgroups` out as an `[x, y, 1]` grid with `x` within the per-dimension limit;
/// kernels recover the flat index as `wid.x + wid.y * num_workgroups.x` and skip indices past
/// their count. Fails when even the 2-D grid cannot hold them.
pub fn grid(gpu: &Gpu, what: &str, n_workgroups: u64) -> Result<[u32; 3], GpuError> {
    let max = u64::from(gpu.limits.max_compute_workgroups_per_dimension);
    if n_workgroups <= max {
        return Ok([n_workgroups as u32, 1, 1]);
    }
    let y = n_workgroups.div_ceil(max);
    if y > max {
        return Err(GpuError::Limit {
            what: what.to_string(),
            limit_name: "max_compute_workgroups_per_dimension (squared)",
            limit: max * max,
            needed: n_workgroups,
        });
    }
    Ok([n_workgroups.div_ceil(y) as u32, y as u32, 1])
}
