use rand::Rng;
use sinkstar::gpu::Gpu;
use sinkstar::kernels::embed::{embed_cpu, Embed, Params};
use sinkstar::kernels::matmul::{upload_weight, MatmulError, WeightFormat};
use sinkstar::model::quant::quantize;

use crate::{arena_with, assert_close, random_vec, read_f32, rng, run, Tol, BROWSER};

/// Both sides decode the same blocks; the shader may fuse `d * q + m` into one rounding, so
/// values may differ in the last bit (values are within [-1, 1]).
const TOL_DECODE: Tol = Tol {
    abs: 1e-7,
    rel: 1e-6,
};

/// Looks `tokens` up in a random `[vocab_size, dim]` table and compares with `embed_cpu`.
async fn check(
    gpu: &Gpu,
    kernel: &Embed,
    format: WeightFormat,
    dim: usize,
    vocab_size: usize,
    tokens: &[u32],
) {
    let mut rng = rng((dim * 7919 + vocab_size) as u64);
    let table = quantize(
        format.ggml_type(),
        &random_vec(&mut rng, vocab_size * dim, 1.0),
    );
    let table_buf = upload_weight(gpu, "table", format, dim, &table).unwrap();
    let tokens_buf = gpu
        .storage_with("tokens", bytemuck::cast_slice(tokens))
        .unwrap();
    let n_rows = tokens.len();
    // Filled with NaN so that a value the kernel fails to write shows up.
    let out = gpu
        .storage_with("out", bytemuck::cast_slice(&vec![f32::NAN; n_rows * dim]))
        .unwrap();
    let shape = Params::new(n_rows as u32, dim as u32);
    let (arena, slot) = arena_with(gpu, &shape);
    let dispatch = kernel
        .dispatch(
            gpu,
            arena.binding(slot),
            &table_buf,
            &tokens_buf,
            &out,
            shape,
        )
        .unwrap();
    run(gpu, &[&dispatch]);
    let got = read_f32(gpu, &out, n_rows * dim).await;
    let mut want = vec![0.0; n_rows * dim];
    embed_cpu(format, &table, dim, vocab_size, tokens, &mut want).unwrap();
    let name = format!(
        "embed_{} vocab {vocab_size} dim {dim} rows {n_rows}",
        format.name()
    );
    assert_close(&name, &got, &want, TOL_DECODE);
}

gpu_test!(embed_matches_cpu);
async fn embed_matches_cpu(gpu: &Gpu) {
    // The browser keeps, per format, an odd number of blocks (an odd width for float formats),
    // a one-row table and a prime-sized one, and 7 rows (which include the ids past the table).
    let (block_widths, float_widths, vocab_sizes, row_counts): (
        &[usize],
        &[usize],
        &[usize],
        &[usize],
    ) = if BROWSER {
        (&[96], &[7], &[1, 67], &[1, 7])
    } else {
        (&[32, 96, 576], &[1, 7, 45], &[1, 5, 67], &[1, 2, 7, 33])
    };
    for format in WeightFormat::ALL {
        let kernel = Embed::new(gpu, format).unwrap();
        let mut widths = block_widths.to_vec();
        if format.block_elems() == 1 {
            // Rows of odd length leave the next row 2-byte aligned for F16 and BF16.
            widths.extend(float_widths);
        }
        for &dim in &widths {
            for &vocab_size in vocab_sizes {
                for &n_rows in row_counts {
                    let mut rng = rng((n_rows * 31 + vocab_size) as u64);
                    let mut tokens: Vec<u32> = (0..n_rows)
                        .map(|_| rng.random_range(0..vocab_size as u32))
                        .collect();
                    // The last row of the table, and an id past it, which gives zeros.
                    tokens[0] = vocab_size as u32 - 1;
                    if n_rows > 2 {
                        tokens[1] = vocab_size as u32;
                        tokens[2] = u32::MAX;
                    }
                    check(gpu, &kernel, format, dim, vocab_size, &tokens).await;
                }
            }
        }
    }
}

gpu_test!(embed_matches_cpu_on_model_shape);
async fn embed_matches_cpu_on_model_shape(gpu: &Gpu) {
    // token_embd.weight of the default model: [49152, 576] Q8_0.
    let format = WeightFormat::Q8_0;
    let kernel = Embed::new(gpu, format).unwrap();
    check(gpu, &kernel, format, 576, 49152, &[1, 0, 49151, 2, 12345]).await;
}

gpu_test!(embed_rejects_bad_shapes_with_typed_errors);
async fn embed_rejects_bad_shapes_with_typed_errors(gpu: &Gpu) {
    let format = WeightFormat::Q8_0;
    let kernel = Embed::new(gpu, format).unwrap();
    let table = upload_weight(gpu, "table", format, 32, &[0; 34]).unwrap();
    let tokens = gpu.storage("tokens", 8).unwrap();
    let out = gpu.storage("out", 2 * 32 * 4).unwrap();
    let (arena, slot) = arena_with(gpu, &Params::new(2, 32));
    let cases = [(Params::new(2, 33), "dim"), (Params::new(3, 32), "rows")];
    for (shape, what) in cases {
        let e = kernel
            .dispatch(gpu, arena.binding(slot), &table, &tokens, &out, shape)
            .err()
            .unwrap_or_else(|| panic!("bad {what} accepted"));
        match what {
            "dim" => assert!(
                matches!(e, MatmulError::NotBlockMultiple { n_in: 33, .. }),
                "{e:?}"
            ),
            _ => assert!(
                matches!(
                    e,
                    MatmulError::BufferTooSmall {
                        buffer: "tokens",
                        n_rows: 3,
                        ..
                    }
                ),
                "{e:?}"
            ),
        }
    }
}
