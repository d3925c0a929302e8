use sinkstar::gpu::{Gpu, TrackedBuffer};
use sinkstar::kernels::matmul::{
    check_weight, matmul_cpu, sum_parts_cpu, upload_weight, CacheOutputs, Epilogue, Inputs, Matmul,
    MatmulError, MatmulKind, Params, Prologue, SharedTile, Variant, WeightFormat, VEC_STAGED_X,
    VEC_X_BYTES,
};
use sinkstar::model::quant::quantize;

use crate::{arena_with, assert_close, random_vec, read_f32, rng, run, Tol, BROWSER};

/// Both sides decode the same blocks, so only the summation order (and the shader's fused
/// `d * q + m`) differs. With x and W in [-1, 1] the largest difference seen over these shapes
/// was 2.5e-6 * sqrt(n_in) (the tile kernel at n_in = 1536); this allows 4x that.
const ABS_PER_SQRT_N_IN: f32 = 1e-5;
/// Large outputs (up to ~sqrt(n_in) here): the same rounding, relative to the value.
const REL: f32 = 1e-4;

fn tol(n_in: usize) -> Tol {
    Tol {
        abs: ABS_PER_SQRT_N_IN * (n_in as f32).sqrt(),
        rel: REL,
    }
}

/// The kinds every shape is checked with: both tiles of the shared form are one shader with
/// other override constants, and a cold compile costs lavapipe about 3 s per pipeline (CI has
/// no shader cache), so the sweep takes the small tile and
/// `matmul_shared_tiles_span_several_row_tiles` both.
const SWEPT: [MatmulKind; 4] = [
    MatmulKind::Vec,
    MatmulKind::Subgroup,
    MatmulKind::Tile,
    MatmulKind::Shared(SharedTile::SMALL),
];

/// Every kernel of one format: vec, subgroup (natively: the browser has no subgroups), tile
/// and the small shared tile, raw and normalising, with every epilogue.
fn kernels(gpu: &Gpu, format: WeightFormat) -> Vec<Matmul> {
    kernels_of(gpu, format, &SWEPT)
}

/// The kernels of `kinds` the device can run, in one format, raw and normalising, with every
/// epilogue; the forms whose stream is held in parts have a test of their own
/// (`matmul_sums_the_streams_parts`).
fn kernels_of(gpu: &Gpu, format: WeightFormat, kinds: &[MatmulKind]) -> Vec<Matmul> {
    let mut all = Vec::new();
    for &kind in kinds {
        if !gpu.features.contains(kind.features()) {
            continue;
        }
        for prologue in [Prologue::Raw, Prologue::RmsNorm] {
            for epilogue in Epilogue::ALL {
                if epilogue != Epilogue::AccumulateParts {
                    all.push(Matmul::new(gpu, format, kind, prologue, epilogue).unwrap());
                }
            }
        }
    }
    all
}

/// x as `kind` binds it: vec kernels read a uniform buffer of at least VEC_X_BYTES.
fn x_buffer(gpu: &Gpu, kind: MatmulKind, x: &[f32]) -> TrackedBuffer {
    let bytes: &[u8] = bytemuck::cast_slice(x);
    match kind {
        MatmulKind::Tile | MatmulKind::Subgroup | MatmulKind::Shared(_) => {
            gpu.storage_with("x", bytes).unwrap()
        }
        MatmulKind::Vec => {
            use wgpu::BufferUsages as U;
            let size = VEC_X_BYTES.max(bytes.len() as u64);
            let buffer = gpu
                .buffer("x", size, U::STORAGE | U::UNIFORM | U::COPY_DST)
                .unwrap();
            gpu.queue.write_buffer(&buffer, 0, bytes);
            buffer
        }
    }
}

/// Random `[n_out, n_in]` weights in `format`, as the GGUF would store them.
fn random_weight(seed: u64, format: WeightFormat, n_in: usize, n_out: usize) -> Vec<u8> {
    let values = random_vec(&mut rng(seed), n_in * n_out, 1.0);
    quantize(format.ggml_type(), &values)
}

/// Llama's RMSNorm epsilon order of magnitude; large enough to matter for rows of small x.
const EPS: f32 = 1e-5;

/// One random problem: `n_rows` rows of x after `first_row` rows the kernels must skip (odd
/// row counts start one row in), a norm weight, and the values out holds before.
struct Problem {
    n_rows: usize,
    n_in: usize,
    n_out: usize,
    first_row: usize,
    x: Vec<f32>,
    gamma: Vec<f32>,
    out_before: Vec<f32>,
}

impl Problem {
    fn new(seed: u64, n_rows: usize, n_in: usize, n_out: usize) -> Problem {
        let first_row = n_rows % 2;
        let mut rng = rng(seed);
        Problem {
            n_rows,
            n_in,
            n_out,
            first_row,
            x: random_vec(&mut rng, (first_row + n_rows) * n_in, 1.0),
            gamma: random_vec(&mut rng, n_in, 1.5),
            out_before: random_vec(&mut rng, n_rows * n_out, 1.0),
        }
    }

    fn shape(&self) -> Params {
        Params::new(self.n_rows as u32, self.n_in as u32, self.n_out as u32)
            .with_eps(EPS)
            .from_row(self.first_row as u32)
    }

    /// The reference for `variant` on weights `weight_bytes` (columns as one row for Split).
    fn want(&self, variant: Variant, weight_bytes: &[u8]) -> Vec<f32> {
        let mut want = self.out_before.clone();
        matmul_cpu(
            variant.format,
            weight_bytes,
            self.n_in,
            self.n_out,
            &self.x[self.first_row * self.n_in..],
            &mut want,
            variant
                .prologue
                .normalises()
                .then_some((&self.gamma[..], EPS)),
            variant.epilogue,
        )
        .unwrap();
        want
    }

    fn inputs<'a>(
        &self,
        variant: Variant,
        weight: &'a wgpu::Buffer,
        x: &'a wgpu::Buffer,
        gamma: &'a wgpu::Buffer,
    ) -> Inputs<'a> {
        match variant.prologue.normalises() {
            true => normed(weight, x, gamma),
            false => raw(weight, x),
        }
    }
}

/// Runs every kernel in `kernels` (all of one format) on one random problem and compares it with
/// `matmul_cpu`: `n_out` outputs, from as many weight rows (twice as many for SwiGLU, whose
/// weight is a stacked gate and up of `n_out` rows each). Vec kernels are skipped where x does
/// not fit their uniform buffer.
async fn check_shape(gpu: &Gpu, kernels: &[Matmul], n_rows: usize, n_in: usize, n_out: usize) {
    let format = kernels[0].variant().format;
    // In u64: usize is 32 bits on wasm32, and the grid-spill test has 2^18 rows.
    let seed = n_rows as u64 * 1_000_003 + n_in as u64 * 1009 + n_out as u64;
    let stacked_bytes = random_weight(seed, format, n_in, 2 * n_out);
    let problem = Problem::new(seed + 1, n_rows, n_in, n_out);
    // The first n_out rows of the stacked weight serve the plain epilogues.
    let row_bytes = format.row_bytes(n_in).unwrap();
    let plain_bytes = &stacked_bytes[..n_out * row_bytes];
    let plain = upload_weight(gpu, "weight", format, n_in, plain_bytes).unwrap();
    let stacked = upload_weight(gpu, "gate_up", format, n_in, &stacked_bytes).unwrap();
    let gamma = gpu
        .storage_with("gamma", bytemuck::cast_slice(&problem.gamma))
        .unwrap();
    let shape = problem.shape();
    let (arena, slot) = arena_with(gpu, &shape);
    for kernel in kernels {
        let variant = kernel.variant();
        if variant.kind == MatmulKind::Vec && (problem.x.len() * 4) as u64 > VEC_X_BYTES {
            continue;
        }
        let (weight, weight_bytes) = match variant.epilogue {
            Epilogue::Swiglu => (&stacked, &stacked_bytes[..]),
            _ => (&plain, plain_bytes),
        };
        let x_buf = x_buffer(gpu, variant.kind, &problem.x);
        let inputs = problem.inputs(variant, weight, &x_buf, &gamma);
        if variant.epilogue == Epilogue::Split {
            check_split(gpu, kernel, inputs, &problem, weight_bytes).await;
            continue;
        }
        let out = gpu
            .storage_with("out", bytemuck::cast_slice(&problem.out_before))
            .unwrap();
        let dispatch = kernel
            .dispatch(gpu, arena.binding(slot), inputs, &out, shape)
            .unwrap();
        run(gpu, &[&dispatch]);
        let got = read_f32(gpu, &out, n_rows * n_out).await;
        let want = problem.want(variant, weight_bytes);
        let name = format!("{} {n_rows}x{n_in}->{n_out}", variant.name());
        assert_close(&name, &got, &want, tol(n_in));
    }
}

/// A value no kernel computes: cache rows left alone must still hold it.
const UNTOUCHED: f32 = 7.25;

/// A stacked q/k/v matmul: `n_out` columns split as `n_out - 2 kv` of q and `kv = n_out / 3`
/// each of k and v (shapes with no room for three parts are skipped), into caches of two rows
/// more than the step's, at slots in reverse order; with more than one row, row 0 is not
/// stored (a slot past the cache). q against its columns of the reference, every cache row
/// against the row stored there or `UNTOUCHED`.
async fn check_split(
    gpu: &Gpu,
    kernel: &Matmul,
    inputs: Inputs<'_>,
    problem: &Problem,
    weight_bytes: &[u8],
) {
    let (n_rows, n_in, n_out) = (problem.n_rows, problem.n_in, problem.n_out);
    let kv = n_out / 3;
    let q = n_out - 2 * kv;
    if kv == 0 {
        return;
    }
    let variant = kernel.variant();
    let capacity = n_rows + 2;
    let slots: Vec<u32> = (0..n_rows)
        .map(|r| match r {
            0 if n_rows > 1 => u32::MAX,
            _ => (capacity - 1 - r) as u32,
        })
        .collect();
    let shape = Params::split_qkv(
        n_rows as u32,
        n_in as u32,
        q as u32,
        kv as u32,
        capacity as u32,
    )
    .with_eps(EPS)
    .from_row(problem.first_row as u32);
    let (arena, slot) = arena_with(gpu, &shape);
    let filled = |what, rows: usize| {
        let values = vec![UNTOUCHED; rows * kv.max(q)];
        gpu.storage_with(what, bytemuck::cast_slice(&values))
            .unwrap()
    };
    let (q_out, k_cache, v_cache) = (
        filled("q", n_rows),
        filled("k", capacity),
        filled("v", capacity),
    );
    let slots_buf = gpu
        .storage_with("slots", bytemuck::cast_slice(&slots))
        .unwrap();
    let outputs = CacheOutputs {
        q: &q_out,
        k_cache: &k_cache,
        v_cache: &v_cache,
        slots: &slots_buf,
    };
    let dispatch = kernel
        .dispatch_split(gpu, arena.binding(slot), inputs, outputs, shape)
        .unwrap();
    run(gpu, &[&dispatch]);
    let want = problem.want(variant, weight_bytes);
    let columns =
        |start: usize, cols: usize, row: usize| want[row * n_out + start..][..cols].to_vec();
    let name = format!("{} {n_rows}x{n_in}->{n_out}", variant.name());
    let got = read_f32(gpu, &q_out, n_rows * q).await;
    let want_q: Vec<f32> = (0..n_rows).flat_map(|r| columns(0, q, r)).collect();
    assert_close(&format!("{name} q"), &got, &want_q, tol(n_in));
    for (part, cache, start) in [("k", &k_cache, q), ("v", &v_cache, q + kv)] {
        let got = read_f32(gpu, cache, capacity * kv).await;
        let want: Vec<f32> = (0..capacity)
            .flat_map(
                |slot| match slots.iter().position(|&s| s as usize == slot) {
                    Some(row) => columns(start, kv, row),
                    None => vec![UNTOUCHED; kv],
                },
            )
            .collect();
        assert_close(&format!("{name} {part} cache"), &got, &want, tol(n_in));
    }
}

/// Inputs of a kernel that does not normalise.
fn raw<'a>(weight: &'a wgpu::Buffer, x: &'a wgpu::Buffer) -> Inputs<'a> {
    Inputs {
        weight,
        x,
        gamma: None,
    }
}

/// Inputs of a kernel that normalises with `gamma`.
fn normed<'a>(
    weight: &'a wgpu::Buffer,
    x: &'a wgpu::Buffer,
    gamma: &'a wgpu::Buffer,
) -> Inputs<'a> {
    Inputs {
        weight,
        x,
        gamma: Some(gamma),
    }
}

gpu_test!(matmul_matches_cpu);
async fn matmul_matches_cpu(gpu: &Gpu) {
    // One block, an odd number of blocks, the model's width; float formats (one weight per
    // block) also get rows that end inside a chunk of 32 (the kernels' tail loop).
    // Rows and outputs: 1 and a prime below the workgroup width, and sizes past one workgroup
    // and one tile. The browser keeps, per format, an odd number of blocks (and a tail), a
    // single row and a prime past one tile, and outputs below and past one workgroup.
    let (block_widths, float_widths, row_counts, out_counts): (
        &[usize],
        &[usize],
        &[usize],
        &[usize],
    ) = if BROWSER {
        (&[96], &[36], &[1, 7], &[5, 67])
    } else {
        (
            &[32, 96, 576],
            &[4, 36, 100],
            &[1, 2, 7, 33],
            &[1, 5, 67, 192],
        )
    };
    for format in WeightFormat::ALL {
        let kernels = kernels(gpu, format);
        let mut widths = block_widths.to_vec();
        if format.block_elems() == 1 {
            widths.extend(float_widths);
        }
        for &n_rows in row_counts {
            for &n_in in &widths {
                for &n_out in out_counts {
                    check_shape(gpu, &kernels, n_rows, n_in, n_out).await;
                }
            }
        }
    }
}

gpu_test!(matmul_matches_cpu_on_model_shapes);
async fn matmul_matches_cpu_on_model_shapes(gpu: &Gpu) {
    for format in WeightFormat::ALL {
        let kernels = kernels(gpu, format);
        // ffn_gate / ffn_up of the default model, a prefill of 5 tokens.
        check_shape(gpu, &kernels, 5, 576, 1536).await;
        if format == WeightFormat::Q4_1 {
            // A row wider than the vec form stages in workgroup memory when it normalises.
            check_shape(gpu, &kernels, 1, VEC_STAGED_X as usize + 32, 5).await;
        }
        if format == WeightFormat::Q8_0 {
            // The tied LM head: 49152 outputs need a 2-D grid.
            check_shape(gpu, &kernels, 1, 576, 49152).await;
        }
    }
}

gpu_test!(matmul_sums_the_streams_parts);
/// The residual stream held as its rows and parts of as many rows after them (attention's fused
/// output projection writes them): the FFN norm's prologue sums the parts into x (the vec form
/// once per workgroup, into workgroup memory; subgroup and tile as they load), the down
/// projection's epilogue into out, against `matmul_cpu` on the summed stream
/// (`sum_parts_cpu`); the parts stay as they were. Decode's one row over two workgroups of the
/// vec form, the second partly filled, and a few rows after a skipped one at the default model's
/// width; 9 parts (its heads) and 3; a row past the vec form's staging.
async fn matmul_sums_the_streams_parts(gpu: &Gpu) {
    let cases = [
        (WeightFormat::Q4_1, MatmulKind::Vec),
        (WeightFormat::Q4_1, MatmulKind::Subgroup),
        (WeightFormat::Q4_1, MatmulKind::Tile),
        (WeightFormat::Q8_0, MatmulKind::Vec),
        (WeightFormat::F16, MatmulKind::Vec),
    ];
    for (format, kind) in cases {
        if !gpu.features.contains(kind.features()) {
            continue;
        }
        let norm = Matmul::new(gpu, format, kind, Prologue::PartsRmsNorm, Epilogue::Swiglu);
        let down = Matmul::new(gpu, format, kind, Prologue::Raw, Epilogue::AccumulateParts);
        let (norm, down) = (norm.unwrap(), down.unwrap());
        // The last: a row wider than the vec form stages.
        for (n_rows, n_in, n_out, n_parts) in [
            (1, 96, 133, 9),
            (3, 576, 5, 3),
            (1, VEC_STAGED_X as usize + 32, 5, 2),
        ] {
            let name = |what: &str| format!("{what} {n_rows}x{n_in}->{n_out} {n_parts} parts");
            let seed = (n_rows * 1009 + n_in) as u64;
            let mut rng = rng(seed);
            let stacked_bytes = random_weight(seed, format, n_in, 2 * n_out);
            let stacked = upload_weight(gpu, "gate_up", format, n_in, &stacked_bytes).unwrap();
            let gamma = random_vec(&mut rng, n_in, 1.5);
            let gamma_buf = gpu
                .storage_with("gamma", bytemuck::cast_slice(&gamma))
                .unwrap();

            // The norm of the stream, rows after a skipped one.
            let first_row = n_rows % 2;
            let x_rows = first_row + n_rows;
            let x_held = random_vec(&mut rng, (1 + n_parts) * x_rows * n_in, 1.0);
            let out_before = random_vec(&mut rng, n_rows * n_out, 1.0);
            let stream = sum_parts_cpu(&x_held, n_parts);
            let mut want = out_before.clone();
            let x_stream = &stream[first_row * n_in..];
            let norm_of = Some((&gamma[..], EPS));
            matmul_cpu(
                format,
                &stacked_bytes,
                n_in,
                n_out,
                x_stream,
                &mut want,
                norm_of,
                Epilogue::Swiglu,
            )
            .unwrap();
            let x = x_buffer(gpu, kind, &x_held);
            let out = gpu
                .storage_with("out", bytemuck::cast_slice(&out_before))
                .unwrap();
            let shape = Params::new(n_rows as u32, n_in as u32, n_out as u32)
                .with_eps(EPS)
                .from_row(first_row as u32)
                .with_parts(n_parts as u32);
            let (arena, slot) = arena_with(gpu, &shape);
            let inputs = normed(&stacked, &x, &gamma_buf);
            let dispatch = norm
                .dispatch(gpu, arena.binding(slot), inputs, &out, shape)
                .unwrap();
            run(gpu, &[&dispatch]);
            let got = read_f32(gpu, &out, n_rows * n_out).await;
            assert_close(&name(&norm.variant().name()), &got, &want, tol(n_in));

            // The down projection into the stream, its parts after it.
            let row_bytes = format.row_bytes(n_in).unwrap();
            let plain_bytes = &stacked_bytes[..n_out * row_bytes];
            let plain = upload_weight(gpu, "down", format, n_in, plain_bytes).unwrap();
            let act = random_vec(&mut rng, n_rows * n_in, 1.0);
            let out_held = random_vec(&mut rng, (1 + n_parts) * n_rows * n_out, 1.0);
            let mut want = sum_parts_cpu(&out_held, n_parts);
            matmul_cpu(
                format,
                plain_bytes,
                n_in,
                n_out,
                &act,
                &mut want,
                None,
                Epilogue::AccumulateParts,
            )
            .unwrap();
            want.extend(&out_held[n_rows * n_out..]);
            let x = x_buffer(gpu, kind, &act);
            let out = gpu
                .storage_with("out", bytemuck::cast_slice(&out_held))
                .unwrap();
            let shape =
                Params::new(n_rows as u32, n_in as u32, n_out as u32).with_parts(n_parts as u32);
            let (arena, slot) = arena_with(gpu, &shape);
            let dispatch = down
                .dispatch(gpu, arena.binding(slot), raw(&plain, &x), &out, shape)
                .unwrap();
            run(gpu, &[&dispatch]);
            let got = read_f32(gpu, &out, out_held.len()).await;
            assert_close(&name(&down.variant().name()), &got, &want, tol(n_in));
        }
    }
}

gpu_test!(matmul_parts_reject_buffers_that_cannot_hold_them);
/// A stream in parts needs room for them all: x or out one row only, more than the vec form's
/// uniform x holds.
async fn matmul_parts_reject_buffers_that_cannot_hold_them(gpu: &Gpu) {
    let format = WeightFormat::Q4_1;
    let new =
        |kind, prologue, epilogue| Matmul::new(gpu, format, kind, prologue, epilogue).unwrap();
    let gamma = gpu.storage("gamma", 4 * 2080).unwrap();
    let too_small = |e: MatmulError, what: &str| {
        assert!(
            matches!(&e, MatmulError::BufferTooSmall { buffer, .. } if *buffer == what),
            "{e:?}"
        );
    };
    let (n_in, n_out) = (64u32, 3u32);
    let weight = |n_in, n_out| {
        let bytes = random_weight(3, format, n_in as usize, n_out as usize);
        upload_weight(gpu, "w", format, n_in as usize, &bytes).unwrap()
    };
    let stacked = weight(n_in, 2 * n_out);
    let plain = weight(n_in, n_out);
    let shape = Params::new(1, n_in, n_out).with_parts(9);
    let (arena, slot) = arena_with(gpu, &shape);
    let one_row = x_buffer(gpu, MatmulKind::Tile, &vec![0.0; n_in as usize]);
    let out = gpu.storage("out", 4 * u64::from(n_out)).unwrap();
    let norm = new(MatmulKind::Tile, Prologue::PartsRmsNorm, Epilogue::Swiglu);
    let inputs = normed(&stacked, &one_row, &gamma);
    let e = norm
        .dispatch(gpu, arena.binding(slot), inputs, &out, shape)
        .err()
        .unwrap();
    too_small(e, "x");
    let down = new(MatmulKind::Tile, Prologue::Raw, Epilogue::AccumulateParts);
    let e = down
        .dispatch(gpu, arena.binding(slot), raw(&plain, &one_row), &out, shape)
        .err()
        .unwrap();
    too_small(e, "out");

    // 10 copies of a 2048-wide row: 80 KiB, past the vec form's 64 KiB uniform x.
    let vec_norm = new(MatmulKind::Vec, Prologue::PartsRmsNorm, Epilogue::Store);
    let big_out = gpu.storage("out", 4 * 16).unwrap();
    let w = weight(2048, 16);
    let x = x_buffer(gpu, MatmulKind::Vec, &[0.0; 4]);
    let shape = Params::new(1, 2048, 16).with_parts(9);
    let (arena, slot) = arena_with(gpu, &shape);
    let inputs = normed(&w, &x, &gamma);
    let e = vec_norm
        .dispatch(gpu, arena.binding(slot), inputs, &big_out, shape)
        .err()
        .unwrap();
    assert!(
        matches!(e, MatmulError::TooManyRows { n_rows: 10, .. }),
        "{e:?}"
    );
}

gpu_test!(matmul_spills_grid_into_y);
async fn matmul_spills_grid_into_y(gpu: &Gpu) {
    // More row tiles than one grid dimension holds (65535 on lavapipe), kept cheap with tiny
    // rows; 3 rows past a whole tile.
    let (n_in, n_out) = (4, 1);
    let n_rows = 4 * gpu.limits.max_compute_workgroups_per_dimension as usize + 7;
    let variant = Variant {
        format: WeightFormat::F32,
        kind: MatmulKind::Tile,
        prologue: Prologue::Raw,
        epilogue: Epilogue::Store,
    };
    let grid = Matmul::grid(gpu, variant, n_rows as u32, n_out as u32).unwrap();
    assert!(grid[1] > 1, "no spill: {grid:?}");
    let kernels = kernels_of(gpu, WeightFormat::F32, &[MatmulKind::Tile]);
    check_shape(gpu, &kernels, n_rows, n_in, n_out).await;
}

gpu_test!(matmul_rejects_bad_shapes_with_typed_errors);
async fn matmul_rejects_bad_shapes_with_typed_errors(gpu: &Gpu) {
    let format = WeightFormat::Q4_1;

    // A weight of the wrong length, before upload: the error names the shape.
    let e = check_weight("blk.0.ffn_up.weight", format, 576, 1536, 552_960 - 20).unwrap_err();
    assert!(
        matches!(
            e,
            MatmulError::WeightBytes {
                n_out: 1536,
                n_in: 576,
                expected_bytes: 552_960,
                n_bytes: 552_940,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("[1536, 576] q4_1"), "{e}");
    let e = check_weight("w", format, 100, 3, 300).unwrap_err();
    assert!(
        matches!(e, MatmulError::NotBlockMultiple { n_in: 100, .. }),
        "{e:?}"
    );
    check_weight("w", format, 64, 3, 120).unwrap();
    let e = upload_weight(gpu, "cut", format, 64, &[0; 60])
        .err()
        .expect("a row and a half is rejected");
    assert!(
        matches!(
            e,
            MatmulError::NotWholeRows {
                n_bytes: 60,
                row_bytes: 40,
                ..
            }
        ),
        "{e:?}"
    );
    let e = upload_weight(gpu, "part", format, 48, &[0; 40])
        .err()
        .expect("rows of part of a block are rejected");
    assert!(
        matches!(e, MatmulError::NotBlockMultiple { n_in: 48, .. }),
        "{e:?}"
    );

    // The same at dispatch, against the uploaded buffer: one row short, and a Q8_0 matrix of
    // the right shape bound to a Q4_1 kernel.
    let (n_rows, n_in, n_out) = (2u32, 64u32, 3u32);
    let x = x_buffer(gpu, MatmulKind::Tile, &vec![0.0; 2 * 64]);
    let out = gpu.storage("out", 2 * 3 * 4).unwrap();
    let shape = Params::new(n_rows, n_in, n_out);
    let (arena, slot) = arena_with(gpu, &shape);
    let new =
        |kind, prologue, epilogue| Matmul::new(gpu, format, kind, prologue, epilogue).unwrap();
    let tile = new(MatmulKind::Tile, Prologue::Raw, Epilogue::Store);
    let short = upload_weight(gpu, "short", format, 64, &random_weight(1, format, 64, 2)).unwrap();
    let q8_0 = WeightFormat::Q8_0;
    let other = upload_weight(gpu, "q8_0", q8_0, 64, &random_weight(1, q8_0, 64, 3)).unwrap();
    for weight in [&short, &other] {
        let e = tile
            .dispatch(gpu, arena.binding(slot), raw(weight, &x), &out, shape)
            .err()
            .expect("a weight of the wrong size is rejected");
        assert!(
            matches!(
                e,
                // 3 rows of 2 blocks' codes (32 bytes) and scales (8), padded to 16 bytes.
                MatmulError::WeightBuffer {
                    n_out: 3,
                    n_in: 64,
                    expected_bytes: 144,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("[3, 64] q4_1"), "{e}");
    }

    // A split kernel given one output, and a split that leaves unequal k and v.
    let split = new(MatmulKind::Tile, Prologue::Raw, Epilogue::Split);
    let weight = upload_weight(gpu, "w", format, 64, &random_weight(1, format, 64, 3)).unwrap();
    let e = split
        .dispatch(gpu, arena.binding(slot), raw(&weight, &x), &out, shape)
        .err()
        .expect("one output for three is rejected");
    assert!(
        matches!(
            e,
            MatmulError::Outputs {
                expected: 3,
                got: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let uneven = Params { split: 2, ..shape };
    let caches = CacheOutputs {
        q: &out,
        k_cache: &out,
        v_cache: &out,
        slots: &out,
    };
    let e = split
        .dispatch_split(gpu, arena.binding(slot), raw(&weight, &x), caches, uneven)
        .err()
        .expect("k and v of unequal widths are rejected");
    assert!(
        matches!(
            e,
            MatmulError::Split {
                split: 2,
                n_out: 3,
                ..
            }
        ),
        "{e:?}"
    );

    // A SwiGLU kernel given a plain [3, 64] weight: it needs the stacked [6, 64].
    let swiglu = new(MatmulKind::Tile, Prologue::Raw, Epilogue::Swiglu);
    let e = swiglu
        .dispatch(gpu, arena.binding(slot), raw(&weight, &x), &out, shape)
        .err()
        .expect("an unstacked weight is rejected");
    assert!(
        matches!(
            e,
            MatmulError::WeightBuffer {
                n_out: 6,
                expected_bytes: 288,
                ..
            }
        ),
        "{e:?}"
    );

    // Buffers too small for the rows, and a vec kernel given what it cannot bind.
    let small_out = gpu.storage("out", 4).unwrap();
    let e = tile
        .dispatch(
            gpu,
            arena.binding(slot),
            raw(&weight, &x),
            &small_out,
            shape,
        )
        .err()
        .expect("a short out is rejected");
    assert!(
        matches!(
            e,
            MatmulError::BufferTooSmall {
                buffer: "out",
                needed: 24,
                ..
            }
        ),
        "{e:?}"
    );
    let vec = new(MatmulKind::Vec, Prologue::Raw, Epilogue::Store);
    let e = vec
        .dispatch(gpu, arena.binding(slot), raw(&weight, &x), &out, shape)
        .err()
        .expect("a storage-only x is rejected by vec");
    assert!(matches!(e, MatmulError::XNotUniform { .. }), "{e:?}");
    let many = Params::new(1000, n_in, n_out);
    let e = vec
        .dispatch(gpu, arena.binding(slot), raw(&weight, &x), &out, many)
        .err()
        .expect("too many rows for the uniform x are rejected");
    assert!(
        matches!(e, MatmulError::TooManyRows { n_rows: 1000, .. }),
        "{e:?}"
    );
    // Rows read from past the end of x.
    let e = tile
        .dispatch(
            gpu,
            arena.binding(slot),
            raw(&weight, &x),
            &out,
            shape.from_row(1),
        )
        .err()
        .expect("rows past x are rejected");
    assert!(
        matches!(
            e,
            MatmulError::BufferTooSmall {
                buffer: "x",
                needed: 768,
                ..
            }
        ),
        "{e:?}"
    );

    // A norm's weight missing, given to a kernel that does not normalise, or too short.
    let norm = new(MatmulKind::Tile, Prologue::RmsNorm, Epilogue::Store);
    let gamma = gpu.storage("gamma", 64 * 4).unwrap();
    let short_gamma = gpu.storage("gamma", 63 * 4).unwrap();
    let with_gamma = |gamma| Inputs {
        gamma: Some(gamma),
        ..raw(&weight, &x)
    };
    for (kernel, inputs, what) in [
        (&norm, raw(&weight, &x), "give the norm's weight"),
        (&tile, with_gamma(&gamma), "does not normalise"),
    ] {
        let e = kernel
            .dispatch(gpu, arena.binding(slot), inputs, &out, shape)
            .err()
            .expect("a norm's weight where none belongs, or none where one does, is rejected");
        assert!(matches!(e, MatmulError::Norm { .. }), "{e:?}");
        assert!(e.to_string().contains(what), "{e}");
    }
    let e = norm
        .dispatch(
            gpu,
            arena.binding(slot),
            with_gamma(&short_gamma),
            &out,
            shape,
        )
        .err()
        .expect("a short norm weight is rejected");
    assert!(
        matches!(
            e,
            MatmulError::BufferTooSmall {
                buffer: "gamma",
                needed: 256,
                ..
            }
        ),
        "{e:?}"
    );

    // Caches too small for their capacity, and too few slots for the rows.
    let w9 = upload_weight(gpu, "w9", format, 64, &random_weight(1, format, 64, 9)).unwrap();
    let qkv = Params::split_qkv(n_rows, n_in, 3, 3, 4);
    let big = gpu.storage("big", 4 * 3 * 4).unwrap();
    let one = gpu.storage("one slot", 4).unwrap();
    for (k_cache, slots, buffer, needed) in [(&out, &big, "k_cache", 48), (&big, &one, "slots", 8)]
    {
        let caches = CacheOutputs {
            q: &big,
            k_cache,
            v_cache: &big,
            slots,
        };
        let e = split
            .dispatch_split(gpu, arena.binding(slot), raw(&w9, &x), caches, qkv)
            .err()
            .expect("a short cache or slot table is rejected");
        assert!(
            matches!(e, MatmulError::BufferTooSmall { buffer: b, needed: n, .. } if b == buffer && n == needed),
            "{e:?}"
        );
    }

    // Float weights are whole blocks at any n_in, but the kernels read x as vec4.
    let f32_weight = upload_weight(gpu, "f32", WeightFormat::F32, 7, &[0; 3 * 7 * 4]).unwrap();
    let f32_tile = Matmul::new(
        gpu,
        WeightFormat::F32,
        MatmulKind::Tile,
        Prologue::Raw,
        Epilogue::Store,
    )
    .unwrap();
    let odd = Params::new(2, 7, 3);
    let e = f32_tile
        .dispatch(gpu, arena.binding(slot), raw(&f32_weight, &x), &out, odd)
        .err()
        .expect("n_in = 7 is rejected");
    assert!(matches!(e, MatmulError::NotVec4 { n_in: 7, .. }), "{e:?}");

    // The reference checks the same way.
    let mut out = vec![0.0; 6];
    let e = matmul_cpu(
        format,
        &[0; 100],
        64,
        3,
        &[0.0; 128],
        &mut out,
        None,
        Epilogue::Store,
    )
    .unwrap_err();
    assert!(
        matches!(e, MatmulError::WeightBytes { n_bytes: 100, .. }),
        "{e:?}"
    );
    let e = matmul_cpu(
        format,
        &[0; 120],
        64,
        3,
        &[0.0; 128],
        &mut out,
        Some((&[1.0; 63], EPS)),
        Epilogue::Store,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            MatmulError::BufferTooSmall {
                buffer: "gamma",
                ..
            }
        ),
        "{e:?}"
    );
}

gpu_test!(matmul_subgroup_form_where_the_device_has_subgroups);
async fn matmul_subgroup_form_where_the_device_has_subgroups(gpu: &Gpu) {
    // Natively the tests' device is opened with subgroups (lavapipe has them), so `kernels`
    // includes the subgroup form; wgpu's web backend offers none, and the form is refused there
    // by name.
    let made = Matmul::new(
        gpu,
        WeightFormat::Q4_1,
        MatmulKind::Subgroup,
        Prologue::RmsNorm,
        Epilogue::Split,
    );
    if BROWSER {
        let e = made.err().expect("no subgroups in the browser");
        assert!(
            matches!(&e, sinkstar::gpu::GpuError::MissingFeature { kernel, .. }
                if kernel == "matmul_q4_1_subgroup_norm_split"),
            "{e}"
        );
    } else {
        assert!(
            gpu.subgroup_matvec,
            "the native test device decodes with subgroups"
        );
        made.unwrap();
    }
}

gpu_test!(matmul_shared_tiles_span_several_row_tiles);
/// The workgroup-memory forms over more rows than one tile of either size (70: one LARGE tile
/// and a few rows, 130: past two), with a float format's tail after its last whole chunk.
async fn matmul_shared_tiles_span_several_row_tiles(gpu: &Gpu) {
    for (format, n_rows, n_in, n_out) in [
        (WeightFormat::Q4_1, 70, 96, 67),
        (WeightFormat::F32, 130, 36, 5),
    ] {
        let kinds = SharedTile::ALL.map(MatmulKind::Shared);
        let kernels = kernels_of(gpu, format, &kinds);
        assert_eq!(kernels.len(), 16, "2 tiles x 2 prologues x 4 epilogues");
        check_shape(gpu, &kernels, n_rows, n_in, n_out).await;
    }
}

cpu_test!(shared_tile_is_the_largest_the_limits_hold);
fn shared_tile_is_the_largest_the_limits_hold() {
    // WebGPU's guaranteed limits hold the 64 x 64 tile exactly (256 invocations, 16 KiB).
    let webgpu = wgpu::Limits::default();
    assert_eq!(SharedTile::for_limits(&webgpu), Some(SharedTile::LARGE));
    assert_eq!(SharedTile::LARGE.workgroup_bytes(), 16384);
    // The downlevel limits stop 32 bytes short of 16 KiB: the 32 x 32 tile.
    let downlevel = wgpu::Limits::downlevel_defaults();
    assert_eq!(downlevel.max_compute_workgroup_storage_size, 16352);
    assert_eq!(SharedTile::for_limits(&downlevel), Some(SharedTile::SMALL));
    // Room for the bytes but fewer than 256 invocations along x.
    let narrow = wgpu::Limits {
        max_compute_workgroup_size_x: 128,
        ..webgpu.clone()
    };
    assert_eq!(SharedTile::for_limits(&narrow), Some(SharedTile::SMALL));
    // Below even the small tile (a device without compute shaders: WebGL's limits): no
    // shared form, and prefill keeps the register tiles.
    let none = wgpu::Limits::downlevel_webgl2_defaults();
    assert_eq!(SharedTile::for_limits(&none), None);
}
