use sinkstar::gpu::Gpu;
use sinkstar::kernels::swiglu::{swiglu_cpu, Params, Swiglu};

use crate::{arena_with, assert_close, random_vec, read_f32, rng, run, Tol};

/// Elementwise, but WGSL's `exp` may differ from Rust's by a few ulp.
const TOL: Tol = Tol {
    abs: 1e-6,
    rel: 1e-5,
};

gpu_test!(swiglu_matches_cpu);
async fn swiglu_matches_cpu(gpu: &Gpu) {
    let kernel = Swiglu::new(gpu).unwrap();
    let mut rng = rng(11);
    for (n_rows, hidden_dim) in [(1, 1), (3, 13), (7, 100), (2, 1536)] {
        // Wide range, so both tails of silu (large negative and large positive) are hit.
        let gate_up = random_vec(&mut rng, n_rows * hidden_dim * 2, 100.0);
        let params = Params {
            n_rows: n_rows as u32,
            hidden_dim: hidden_dim as u32,
            _pad0: 0,
            _pad1: 0,
        };
        let (arena, slot) = arena_with(gpu, &params);
        let input = gpu
            .storage_with("gate_up", bytemuck::cast_slice(&gate_up))
            .unwrap();
        let out = gpu
            .storage("out", (n_rows * hidden_dim * 4) as u64)
            .unwrap();
        let dispatch = kernel
            .dispatch(
                gpu,
                arena.binding(slot),
                &input,
                &out,
                n_rows as u32,
                hidden_dim as u32,
            )
            .unwrap();
        run(gpu, &[&dispatch]);
        let got = read_f32(gpu, &out, n_rows * hidden_dim).await;
        let mut want = vec![0.0; n_rows * hidden_dim];
        swiglu_cpu(&gate_up, hidden_dim, &mut want);
        assert_close(&format!("swiglu {n_rows}x{hidden_dim}"), &got, &want, TOL);
    }
}
