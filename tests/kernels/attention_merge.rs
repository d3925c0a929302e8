use rand::seq::SliceRandom;
use sinkstar::gpu::Gpu;
use sinkstar::kernels::attention::{
    self, project_heads_cpu, AttentionError, Projection, ProjectionBuffers, EMPTY_LSE,
};
use sinkstar::kernels::attention_merge::{
    attention_merge_cpu, AttentionMerge, Buffers, Params, Variant,
};
use sinkstar::kernels::matmul::{upload_weight, WeightFormat};
use sinkstar::model::quant::quantize;

use crate::attention::{TOL_PROJECTION, UNTOUCHED};
use crate::{arena_with, assert_close, random_vec, read_f32, rng, run, Tol, TOL_REDUCTION};

/// A few exps and a weighted sum per element, in f32 against the reference's f64.
const TOL_MERGE: Tol = TOL_REDUCTION;

/// Merges `n_parts` partial attentions (`parts [n_parts, n_rows, n_heads, head_dim]`,
/// `parts_lse [n_parts, n_rows, n_heads]`) on the GPU; returns the output and its LSEs.
pub async fn merge_gpu(
    gpu: &Gpu,
    n_parts: usize,
    n_rows: usize,
    n_heads: usize,
    head_dim: usize,
    parts: &[f32],
    parts_lse: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let params = Params::new(
        n_parts as u32,
        n_rows as u32,
        n_heads as u32,
        head_dim as u32,
    );
    let (arena, slot) = arena_with(gpu, &params);
    let storage = |what, data: &[f32]| gpu.storage_with(what, bytemuck::cast_slice(data)).unwrap();
    let n_vecs = n_rows * n_heads;
    // NaN-filled, so that an element the kernel leaves unwritten fails.
    let out = storage("out", &vec![f32::NAN; n_vecs * head_dim]);
    let out_lse = storage("out_lse", &vec![f32::NAN; n_vecs]);
    let parts = storage("parts", parts);
    let parts_lse = storage("parts_lse", parts_lse);
    let buffers = Buffers {
        parts: &parts,
        parts_lse: &parts_lse,
        out: &out,
        out_lse: &out_lse,
    };
    let dispatch = AttentionMerge::new(gpu)
        .unwrap()
        .dispatch(gpu, arena.binding(slot), &params, &buffers)
        .unwrap();
    run(gpu, &[&dispatch]);
    (
        read_f32(gpu, &out, n_vecs * head_dim).await,
        read_f32(gpu, &out_lse, n_vecs).await,
    )
}

gpu_test!(merge_check_vector);
/// star.md §4's check vector: partition 1 scores [1, 2] over values [[1,0],[0,1]], partition 2
/// score [0] over [[2,2]]; merged, the softmax over all three keys.
async fn merge_check_vector(gpu: &Gpu) {
    let lse_1 = (1f32.exp() + 2f32.exp()).ln();
    let a_1 = [1f32.exp() / lse_1.exp(), 2f32.exp() / lse_1.exp()];
    let parts = [a_1[0], a_1[1], 2.0, 2.0];
    let parts_lse = [lse_1, 0.0];
    let want = [0.424790, 0.845302];
    let want_lse = [2.407606];
    let tol = Tol {
        abs: 1e-6,
        rel: 0.0,
    };
    assert_close("lse_1", &[lse_1], &[2.313262], tol);
    let (out, lse) = merge_gpu(gpu, 2, 1, 1, 2, &parts, &parts_lse).await;
    assert_close("gpu merge", &out, &want, tol);
    assert_close("gpu merge lse", &lse, &want_lse, tol);
    let (out, lse) = attention_merge_cpu(2, 2, &parts, &parts_lse);
    assert_close("cpu merge", &out, &want, tol);
    assert_close("cpu merge lse", &lse, &want_lse, tol);
}

gpu_test!(merge_matches_cpu_in_any_order);
/// Random parts of awkward shapes (5 parts, 7 rows, 9 heads, head_dim 80; one head 128), in
/// every shuffled order, against the reference; the order changes only rounding.
async fn merge_matches_cpu_in_any_order(gpu: &Gpu) {
    let mut rng = rng(41);
    for (n_parts, n_rows, n_heads, head_dim) in [(5, 7, 9, 80), (2, 1, 1, 128), (1, 3, 4, 64)] {
        let n_vecs = n_rows * n_heads;
        let parts = random_vec(&mut rng, n_parts * n_vecs * head_dim, 2.0);
        let parts_lse = random_vec(&mut rng, n_parts * n_vecs, 20.0);
        let (want, want_lse) = attention_merge_cpu(n_parts, head_dim, &parts, &parts_lse);
        let mut order: Vec<usize> = (0..n_parts).collect();
        for _ in 0..3 {
            order.shuffle(&mut rng);
            let shuffled: Vec<f32> = order
                .iter()
                .flat_map(|&p| parts[p * n_vecs * head_dim..(p + 1) * n_vecs * head_dim].to_vec())
                .collect();
            let shuffled_lse: Vec<f32> = order
                .iter()
                .flat_map(|&p| parts_lse[p * n_vecs..(p + 1) * n_vecs].to_vec())
                .collect();
            let label =
                format!("{n_parts} parts in order {order:?}, {n_rows}x{n_heads}x{head_dim}");
            let (out, lse) = merge_gpu(
                gpu,
                n_parts,
                n_rows,
                n_heads,
                head_dim,
                &shuffled,
                &shuffled_lse,
            )
            .await;
            assert_close(&label, &out, &want, TOL_MERGE);
            assert_close(&format!("{label} lse"), &lse, &want_lse, TOL_MERGE);
            let (out, lse) = attention_merge_cpu(n_parts, head_dim, &shuffled, &shuffled_lse);
            assert_close(&format!("{label} cpu"), &out, &want, TOL_MERGE);
            assert_close(&format!("{label} cpu lse"), &lse, &want_lse, TOL_MERGE);
        }
    }
}

gpu_test!(merge_with_empty_parts_is_identity);
/// An empty part (LSE = EMPTY_LSE, output zeros or garbage) changes nothing; all parts empty
/// give zeros and the empty LSE.
async fn merge_with_empty_parts_is_identity(gpu: &Gpu) {
    let mut rng = rng(42);
    let (n_rows, n_heads, head_dim) = (3, 9, 64);
    let n_vecs = n_rows * n_heads;
    let real = random_vec(&mut rng, n_vecs * head_dim, 1.0);
    let real_lse = random_vec(&mut rng, n_vecs, 5.0);
    let garbage = random_vec(&mut rng, n_vecs * head_dim, 1e6);
    let empty_lse = vec![EMPTY_LSE; n_vecs];
    let parts = [garbage.clone(), real.clone(), garbage.clone()].concat();
    let parts_lse = [empty_lse.clone(), real_lse.clone(), empty_lse.clone()].concat();
    let (out, lse) = merge_gpu(gpu, 3, n_rows, n_heads, head_dim, &parts, &parts_lse).await;
    let exact = Tol { abs: 0.0, rel: 0.0 };
    assert_close("real part between empty ones", &out, &real, exact);
    assert_close("lse", &lse, &real_lse, exact);
    let (out, lse) = attention_merge_cpu(3, head_dim, &parts, &parts_lse);
    assert_close("cpu", &out, &real, exact);
    assert_close("cpu lse", &lse, &real_lse, exact);
    let parts = [garbage.clone(), garbage].concat();
    let parts_lse = [empty_lse.clone(), empty_lse.clone()].concat();
    let (out, lse) = merge_gpu(gpu, 2, n_rows, n_heads, head_dim, &parts, &parts_lse).await;
    assert_close("all empty", &out, &vec![0.0; out.len()], exact);
    assert_close("all empty lse", &lse, &empty_lse, exact);
}

gpu_test!(merge_survives_extreme_logits);
/// star.md §7.3: LSEs of ±80 and a spread of 1e4 neither overflow nor give NaN: the part with
/// the largest LSE takes all the weight and the merged LSE is its own.
async fn merge_survives_extreme_logits(gpu: &Gpu) {
    let mut rng = rng(43);
    let head_dim = 64;
    let lses = [
        [80.0, -80.0, 0.0],
        [-1e4, 0.0, 1e4 - 1.0],
        [80.0, 80.0, -1e4],
    ];
    for part_lse in lses {
        let parts = random_vec(&mut rng, 3 * head_dim, 1.0);
        let (out, lse) = merge_gpu(gpu, 3, 1, 1, head_dim, &parts, &part_lse).await;
        let (want, want_lse) = attention_merge_cpu(3, head_dim, &parts, &part_lse);
        let label = format!("lses {part_lse:?}");
        assert!(
            out.iter().chain(&lse).all(|x| x.is_finite()),
            "{label}: non-finite output"
        );
        assert_close(&label, &out, &want, TOL_MERGE);
        assert_close(&format!("{label} lse"), &lse, &want_lse, TOL_MERGE);
    }
}

/// The projecting merge of `parts` (as [`merge_gpu`] takes them) with W_o's blocks `weight` in
/// `output`'s format: the merged output, its LSEs, and the residual buffer `[(1 + n_heads)
/// n_rows, dim]`, whose first `n_rows` rows hold [`UNTOUCHED`] before.
async fn merge_projecting_gpu(
    gpu: &Gpu,
    params: &Params,
    output: Projection,
    parts: &[f32],
    parts_lse: &[f32],
    weight: &[u8],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (arena, slot) = arena_with(gpu, params);
    let storage = |what, data: &[f32]| gpu.storage_with(what, bytemuck::cast_slice(data)).unwrap();
    let n_vecs = (params.n_rows * params.n_heads) as usize;
    let head_dim = params.head_dim as usize;
    let out = storage("out", &vec![f32::NAN; n_vecs * head_dim]);
    let out_lse = storage("out_lse", &vec![f32::NAN; n_vecs]);
    let parts = storage("parts", parts);
    let parts_lse = storage("parts_lse", parts_lse);
    let n_stream = params.n_rows as usize * output.dim as usize;
    let mut held = vec![UNTOUCHED; n_stream];
    held.resize((1 + params.n_heads as usize) * n_stream, f32::NAN);
    let residual = storage("residual", &held);
    let q_dim = (params.n_heads * params.head_dim) as usize;
    let weight = upload_weight(gpu, "wo", output.format, q_dim, weight).unwrap();
    let buffers = Buffers {
        parts: &parts,
        parts_lse: &parts_lse,
        out: &out,
        out_lse: &out_lse,
    };
    let projection = ProjectionBuffers {
        weight: &weight,
        residual: &residual,
    };
    let dispatch = AttentionMerge::projecting(gpu, params.head_dim, output)
        .unwrap()
        .dispatch_projecting(gpu, arena.binding(slot), params, &buffers, &projection)
        .unwrap();
    run(gpu, &[&dispatch]);
    (
        read_f32(gpu, &out, n_vecs * head_dim).await,
        read_f32(gpu, &out_lse, n_vecs).await,
        read_f32(gpu, &residual, held.len()).await,
    )
}

/// The attention shape `project_heads_cpu` reads (rows, heads, head width) of a merge.
fn attention_shape(params: &Params) -> attention::Params {
    attention::Params {
        n_rows: params.n_rows,
        n_heads: params.n_heads,
        n_kv_heads: params.n_heads,
        head_dim: params.head_dim,
        n_slots: 0,
        first_token: 0,
        n_sink: 0,
        window: 1,
        scale: 1.0,
        block: 0,
        anchor: 0,
        n_parts: 1,
    }
}

gpu_test!(merge_projects_each_head_into_its_part);
/// The projecting form (a decoded row's split walk): the merged output and LSEs as the pairs
/// form's reference gives them, and each head's share of W_o·a in its part of the residual
/// buffer (after the step's rows, which stay as they were) against `project_heads_cpu`, in
/// every weight format; heads of one and two chunks, one and two rows, widths below and past
/// one workgroup, a part that saw no key, and a vector no part saw.
async fn merge_projects_each_head_into_its_part(gpu: &Gpu) {
    let mut rng = rng(44);
    let mut cases: Vec<(WeightFormat, Params, u32)> = WeightFormat::ALL
        .into_iter()
        .map(|format| (format, Params::new(3, 1, 4, 32), 40))
        .collect();
    cases.push((WeightFormat::Q4_1, Params::new(5, 1, 9, 64), 100));
    cases.push((WeightFormat::Q8_0, Params::new(2, 2, 3, 64), 72));
    for (format, params, dim) in cases {
        let output = Projection { format, dim };
        let (n_parts, head_dim) = (params.n_parts as usize, params.head_dim as usize);
        let n_vecs = (params.n_rows * params.n_heads) as usize;
        let parts = random_vec(&mut rng, n_parts * n_vecs * head_dim, 1.0);
        let mut parts_lse = random_vec(&mut rng, n_parts * n_vecs, 10.0);
        // Part 1 saw no key of the first vector; no part saw any key of the last one.
        parts_lse[n_vecs] = EMPTY_LSE;
        for p in 0..n_parts {
            parts_lse[p * n_vecs + n_vecs - 1] = EMPTY_LSE;
        }
        let q_dim = params.n_heads as usize * head_dim;
        let w = random_vec(&mut rng, dim as usize * q_dim, 1.0);
        let weight = quantize(format.ggml_type(), &w);
        let (got, got_lse, residual) =
            merge_projecting_gpu(gpu, &params, output, &parts, &parts_lse, &weight).await;
        let (want, want_lse) = attention_merge_cpu(n_parts, head_dim, &parts, &parts_lse);
        let label = format!(
            "{} {n_parts} parts of {}x{}",
            Variant::projecting(params.head_dim, output)
                .unwrap()
                .label(),
            params.n_rows,
            params.n_heads
        );
        assert_close(&label, &got, &want, TOL_MERGE);
        assert_close(&format!("{label} lse"), &got_lse, &want_lse, TOL_MERGE);
        let n_stream = params.n_rows as usize * dim as usize;
        let untouched = vec![UNTOUCHED; n_stream];
        let exact = Tol { abs: 0.0, rel: 0.0 };
        assert_close(
            &format!("{label} stream rows"),
            &residual[..n_stream],
            &untouched,
            exact,
        );
        // The parts of the kernel's own output: the projection is checked on its own.
        let shape = attention_shape(&params);
        let want_parts = project_heads_cpu(output, &weight, &shape, &got).unwrap();
        assert_close(
            &format!("{label} parts"),
            &residual[n_stream..],
            &want_parts,
            TOL_PROJECTION,
        );
    }
}

gpu_test!(merge_rejects_bad_shapes);
/// Typed errors, never a dispatch: a projecting form for heads that are not whole 32-value
/// chunks; a shape of another head width than the pipeline's, or an odd one for the pairs
/// form; W_o of the wrong size; a residual buffer without room for the parts; buffers too
/// small for the parts.
async fn merge_rejects_bad_shapes(gpu: &Gpu) {
    let output = Projection {
        format: WeightFormat::Q8_0,
        dim: 64,
    };
    let err = AttentionMerge::projecting(gpu, 48, output).err();
    assert!(
        matches!(
            err,
            Some(AttentionError::ProjectionHeadDim { head_dim: 48 })
        ),
        "{err:?}"
    );
    let params = Params::new(2, 1, 3, 32);
    let (arena, slot) = arena_with(gpu, &params);
    let storage = |what, n: usize| gpu.storage_with(what, &vec![0u8; 4 * n]).unwrap();
    let parts = storage("parts", 2 * 3 * 32);
    let parts_lse = storage("parts_lse", 2 * 3);
    let out = storage("out", 3 * 32);
    let out_lse = storage("out_lse", 3);
    let buffers = Buffers {
        parts: &parts,
        parts_lse: &parts_lse,
        out: &out,
        out_lse: &out_lse,
    };
    let w = random_vec(&mut rng(45), 64 * 96, 1.0);
    let weight = upload_weight(
        gpu,
        "wo",
        output.format,
        96,
        &quantize(output.format.ggml_type(), &w),
    )
    .unwrap();
    let residual = storage("residual", 4 * 64);
    let projecting = AttentionMerge::projecting(gpu, 32, output).unwrap();
    let bind = |params: &Params, buffers: &Buffers, weight, residual| {
        let projection = ProjectionBuffers { weight, residual };
        projecting.dispatch_projecting(gpu, arena.binding(slot), params, buffers, &projection)
    };
    let fails = |result: Result<_, AttentionError>| result.err().expect("a merge that cannot run");
    assert!(bind(&params, &buffers, &weight, &residual).is_ok());
    let wider = Params::new(2, 1, 3, 64);
    let err = fails(bind(&wider, &buffers, &weight, &residual));
    assert!(
        matches!(err, AttentionError::MergeHeadDim { head_dim: 64, .. }),
        "{err:?}"
    );
    let short_residual = storage("residual", 3 * 64);
    let err = fails(bind(&params, &buffers, &weight, &short_residual));
    assert!(
        matches!(
            err,
            AttentionError::BufferSize {
                kernel: "attention_merge",
                what: "residual",
                ..
            }
        ),
        "{err:?}"
    );
    let other_weight = storage("wo", 100);
    let err = fails(bind(&params, &buffers, &other_weight, &residual));
    assert!(
        matches!(err, AttentionError::BufferSize { what: "weight", .. }),
        "{err:?}"
    );
    let three_parts = Params::new(3, 1, 3, 32);
    let err = fails(bind(&three_parts, &buffers, &weight, &residual));
    assert!(
        matches!(err, AttentionError::BufferSize { what: "parts", .. }),
        "{err:?}"
    );
    let odd = Params::new(1, 1, 1, 5);
    let err = AttentionMerge::new(gpu)
        .unwrap()
        .dispatch(gpu, arena.binding(slot), &odd, &buffers)
        .err();
    assert!(
        matches!(err, Some(AttentionError::MergeHeadDim { head_dim: 5, .. })),
        "{err:?}"
    );
}
