//! GPU kernels against their CPU references, one module per family, on seeded random inputs
//! of awkward sizes. One test binary so CI links once. A test that finds no adapter fails.

mod attention;
mod embed;
mod kv_write;
mod matmul;
mod rms_norm;
mod sample;
mod swiglu;

use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sinkstar::gpu::{Dispatch, Gpu, GpuOptions, ParamSlot, UniformArena};

/// The device every test shares (tests run on threads of one process).
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        Gpu::new_blocking(&GpuOptions::default())
            .unwrap_or_else(|e| panic!("kernel tests need a GPU adapter (lavapipe will do): {e}"))
    })
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in `[-scale, scale)`.
pub fn random_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Absolute and relative parts of a tolerance: `|g - c| <= abs + rel * |c|`.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub abs: f32,
    pub rel: f32,
}

/// f32 reductions (norms, dot products, softmax): summation order differs between GPU and CPU.
pub const TOL_REDUCTION: Tol = Tol {
    abs: 1e-5,
    rel: 1e-4,
};

/// Fails with the variant name, the number of failures, the worst error and its index, and the
/// first few mismatching pairs. Exactly one side non-finite is a failure.
pub fn assert_close(variant: &str, gpu: &[f32], cpu: &[f32], tol: Tol) {
    assert_eq!(gpu.len(), cpu.len(), "{variant}: length differs");
    let mut failures = Vec::new();
    let (mut worst, mut worst_at) = (0.0f32, 0);
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let bad = if g.is_finite() != c.is_finite() {
            true
        } else if !c.is_finite() {
            g != c
        } else {
            let err = (g - c).abs();
            if err > worst {
                (worst, worst_at) = (err, i);
            }
            err > tol.abs + tol.rel * c.abs()
        };
        if bad {
            failures.push((i, g, c));
        }
    }
    assert!(
        failures.is_empty(),
        "{variant}: {} of {} elements differ (tol {tol:?}); max abs error {worst} at {worst_at}; \
         first (index, gpu, cpu): {:?}",
        failures.len(),
        gpu.len(),
        &failures[..failures.len().min(8)]
    );
}

/// A one-slot arena holding `params`, uploaded, and that slot.
pub fn arena_with<P: bytemuck::Pod>(gpu: &Gpu, params: &P) -> (UniformArena, ParamSlot) {
    let mut arena = UniformArena::new(gpu, "test params", 1).unwrap();
    let slot = arena.slot().unwrap();
    arena.set(slot, params).unwrap();
    arena.upload(gpu);
    (arena, slot)
}

/// Records `dispatches` into one compute pass and submits it.
pub fn run(gpu: &Gpu, dispatches: &[&Dispatch]) {
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for dispatch in dispatches {
            dispatch.record(&mut pass);
        }
    }
    gpu.queue.submit([encoder.finish()]);
}
