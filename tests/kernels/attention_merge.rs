use rand::seq::SliceRandom;
use sinkstar::gpu::Gpu;
use sinkstar::kernels::attention::EMPTY_LSE;
use sinkstar::kernels::attention_merge::{attention_merge_cpu, AttentionMerge, Buffers, Params};

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
