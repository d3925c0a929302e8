use rand::Rng;
use sinkstar::gpu::Gpu;
use sinkstar::kernels::embed::{embed_cpu, Embed, Params};
use sinkstar::kernels::matmul::{upload_weight, MatmulError, WeightFormat};
use sinkstar::model::quant::quantize;

use crate::{arena_with, assert_close, gpu, random_vec, rng, run, Tol};

/// Both sides decode the same blocks; the shader may fuse `d * q + m` into one rounding, so
/// values may differ in the last bit (values are within [-1, 1]).
const TOL_DECODE: Tol = Tol {
    abs: 1e-7,
    rel: 1e-6,
};

/// Looks `tokens` up in a random `[vocab_size, dim]` table and compares with `embed_cpu`.
fn check(
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
    let table_buf = upload_weight(gpu, "table", format, &table).unwrap();
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
    let got = gpu.read_f32(&out, n_rows * dim).unwrap();
    let mut want = vec![0.0; n_rows * dim];
    embed_cpu(format, &table, dim, vocab_size, tokens, &mut want).unwrap();
    let name = format!(
        "embed_{} vocab {vocab_size} dim {dim} rows {n_rows}",
        format.name()
    );
    assert_close(&name, &got, &want, TOL_DECODE);
}

#[test]
fn embed_matches_cpu() {
    let gpu = gpu();
    for format in WeightFormat::ALL {
        let kernel = Embed::new(gpu, format).unwrap();
        let mut widths = vec![32, 96, 576];
        if format.block_elems() == 1 {
            // Rows of odd length leave the next row 2-byte aligned for F16 and BF16.
            widths.extend([1, 7, 45]);
        }
        for &dim in &widths {
            for vocab_size in [1, 5, 67] {
                for n_rows in [1, 2, 7, 33] {
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
                    check(gpu, &kernel, format, dim, vocab_size, &tokens);
                }
            }
        }
    }
}

#[test]
fn embed_matches_cpu_on_model_shape() {
    let gpu = gpu();
    // token_embd.weight of the default model: [49152, 576] Q8_0.
    let format = WeightFormat::Q8_0;
    let kernel = Embed::new(gpu, format).unwrap();
    check(gpu, &kernel, format, 576, 49152, &[1, 0, 49151, 2, 12345]);
}

#[test]
fn embed_rejects_bad_shapes_with_typed_errors() {
    let gpu = gpu();
    let format = WeightFormat::Q8_0;
    let kernel = Embed::new(gpu, format).unwrap();
    let table = upload_weight(gpu, "table", format, &[0; 34]).unwrap();
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
