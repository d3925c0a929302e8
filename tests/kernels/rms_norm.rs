use sinkstar::gpu::Gpu;
use sinkstar::kernels::rms_norm::{rms_norm_cpu, Params, RmsNorm};

use crate::{arena_with, assert_close, random_vec, read_f32, rng, run, TOL_REDUCTION};

gpu_test!(rms_norm_matches_cpu);
async fn rms_norm_matches_cpu(gpu: &Gpu) {
    let kernel = RmsNorm::new(gpu).unwrap();
    let mut rng = rng(7);
    // 1, a prime, a non-multiple of the workgroup size, the model's width.
    for (first_row, n_rows, dim) in [
        (0, 1, 1),
        (0, 3, 7),
        (2, 5, 65),
        (0, 2, 576),
        (4, 1, 576),
        (0, 17, 1536),
    ] {
        let x = random_vec(&mut rng, (first_row + n_rows) * dim, 3.0);
        let weight = random_vec(&mut rng, dim, 1.5);
        let eps = 1e-5;
        let params = Params {
            n_rows: n_rows as u32,
            dim: dim as u32,
            eps,
            first_row: first_row as u32,
        };
        let (arena, slot) = arena_with(gpu, &params);
        let x_buf = gpu.storage_with("x", bytemuck::cast_slice(&x)).unwrap();
        let w_buf = gpu
            .storage_with("weight", bytemuck::cast_slice(&weight))
            .unwrap();
        let out = gpu.storage("out", (n_rows * dim * 4) as u64).unwrap();
        let dispatch = kernel
            .dispatch(
                gpu,
                arena.binding(slot),
                &x_buf,
                &w_buf,
                &out,
                n_rows as u32,
            )
            .unwrap();
        run(gpu, &[&dispatch]);
        let got = read_f32(gpu, &out, n_rows * dim).await;
        let mut want = vec![0.0; n_rows * dim];
        rms_norm_cpu(&x[first_row * dim..], &weight, eps, &mut want);
        assert_close(
            &format!("rms_norm {first_row}+{n_rows}x{dim}"),
            &got,
            &want,
            TOL_REDUCTION,
        );
    }
}
