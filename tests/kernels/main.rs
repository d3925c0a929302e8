//! GPU kernels against their CPU references, one module per family, on seeded random inputs
//! of awkward sizes. One test binary so CI links once. A test that finds no adapter fails.
//!
//! Each GPU test body is written once, as `async fn name(gpu: &Gpu)`, and `gpu_test!(name)`
//! runs it on both targets: natively as `name::native` (`cargo test --test kernels`, blocking
//! through pollster) and in headless Chromium as `name::browser`
//! (`scripts/test-wasm-kernels.sh`; awaited, since blocking waits hang a web page).
//! `cpu_test!` does the same for the few tests that need no GPU. Chromium's WebGPU is
//! SwiftShader, f32-only and slow, so where a native case list is long the browser runs a cut
//! of it (`BROWSER`); every family and every variant still runs there.

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// `gpu_test!(name)`: the test `name::native` (or `name::browser` on wasm32) awaits
/// `name(gpu)` on the shared device. Defined before the modules so that they can use it.
macro_rules! gpu_test {
    ($name:ident) => {
        mod $name {
            #[cfg(not(target_arch = "wasm32"))]
            #[test]
            fn native() {
                pollster::block_on(async { super::$name(crate::gpu().await).await });
            }

            #[cfg(target_arch = "wasm32")]
            #[wasm_bindgen_test::wasm_bindgen_test]
            async fn browser() {
                super::$name(crate::gpu().await).await;
            }
        }
    };
}

/// `cpu_test!(name)`: the test `name::native` (or `name::browser` on wasm32) calls `name()`.
macro_rules! cpu_test {
    ($name:ident) => {
        mod $name {
            #[cfg(not(target_arch = "wasm32"))]
            #[test]
            fn native() {
                super::$name();
            }

            #[cfg(target_arch = "wasm32")]
            #[wasm_bindgen_test::wasm_bindgen_test]
            fn browser() {
                super::$name();
            }
        }
    };
}

mod attention;
mod attention_merge;
mod embed;
mod matmul;
mod mta;
mod sample;
mod stream;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sinkstar::gpu::{Dispatch, Gpu, GpuOptions, ParamSlot, UniformArena};

/// True in the browser run: long case lists are cut there (SwiftShader takes up to seconds
/// per large dispatch, and the whole run shares one page).
pub const BROWSER: bool = cfg!(target_arch = "wasm32");

fn open_gpu_failed(e: sinkstar::gpu::GpuError) -> ! {
    panic!("kernel tests need a GPU adapter (lavapipe natively, WebGPU in the browser): {e}")
}

/// The device every test shares (native tests run on threads of one process).
#[cfg(not(target_arch = "wasm32"))]
pub async fn gpu() -> &'static Gpu {
    use std::sync::OnceLock;
    static GPU: OnceLock<Gpu> = OnceLock::new();
    // Blocking is fine here: native tests run their bodies under pollster. With subgroups
    // (lavapipe has them), so that the subgroup matvec is tested against its reference too.
    let options = GpuOptions {
        subgroup_matvec: Some(true),
        ..GpuOptions::default()
    };
    GPU.get_or_init(|| Gpu::new_blocking(&options).unwrap_or_else(|e| open_gpu_failed(e)))
}

/// The device every test of the page shares. wgpu's web types are neither `Send` nor `Sync`,
/// so it lives in a thread-local (the page has one thread), leaked to be `'static`.
#[cfg(target_arch = "wasm32")]
pub async fn gpu() -> &'static Gpu {
    use std::cell::OnceCell;
    thread_local! {
        static GPU: OnceCell<&'static Gpu> = const { OnceCell::new() };
    }
    if let Some(gpu) = GPU.with(|cell| cell.get().copied()) {
        return gpu;
    }
    let opened = Gpu::new(&GpuOptions::default())
        .await
        .unwrap_or_else(|e| open_gpu_failed(e));
    // The browser's WebGPU, never a fallback (e.g. WebGL, should wgpu's feature be enabled).
    assert_eq!(
        opened.info.backend,
        wgpu::Backend::BrowserWebGpu,
        "kernel tests in the browser need WebGPU, got {:?}",
        opened.info
    );
    // Tests run one at a time, but if two ever raced here, the second device is dropped.
    GPU.with(|cell| *cell.get_or_init(|| Box::leak(Box::new(opened))))
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

/// `n_elems` f32 values from the start of `buffer`, after all submitted work (awaited: the
/// browser cannot block). A wgpu error raised since the last readback fails the test here.
pub async fn read_f32(gpu: &Gpu, buffer: &wgpu::Buffer, n_elems: usize) -> Vec<f32> {
    let bytes = gpu
        .read("f32 readback", buffer, 0, n_elems as u64 * 4)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A Vec<u8> need not be 4-aligned, so decode rather than cast.
    let words = bytes.chunks_exact(4).map(|b| [b[0], b[1], b[2], b[3]]);
    words.map(f32::from_le_bytes).collect()
}

/// `n_elems` u32 values from the start of `buffer`, as [`read_f32`].
pub async fn read_u32(gpu: &Gpu, buffer: &wgpu::Buffer, n_elems: usize) -> Vec<u32> {
    let bytes = gpu
        .read("u32 readback", buffer, 0, n_elems as u64 * 4)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let words = bytes.chunks_exact(4).map(|b| [b[0], b[1], b[2], b[3]]);
    words.map(u32::from_le_bytes).collect()
}
