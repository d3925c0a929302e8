use sinkstar::gpu::Gpu;
use sinkstar::kernels::kv_write::{kv_write_cpu, Buffers, KvWrite, Params};

use crate::{arena_with, assert_close, random_vec, read_f32, rng, run, Tol};

/// A copy moves values unchanged.
const TOL_EXACT: Tol = Tol { abs: 0.0, rel: 0.0 };

gpu_test!(kv_write_matches_cpu);
async fn kv_write_matches_cpu(gpu: &Gpu) {
    let kernel = KvWrite::new(gpu).unwrap();
    let mut rng = rng(11);
    // Slots out of order and not contiguous; 7 rows of the default model's width and a prime width.
    for (slots, row_elems, capacity) in [
        (vec![3u32], 192usize, 5u32),
        (vec![9, 2, 0, 12, 5, 1, 7], 192, 13),
        (vec![4, 0, 6, 2, 1, 5, 3], 7, 7),
    ] {
        let n_rows = slots.len();
        let k_new = random_vec(&mut rng, n_rows * row_elems, 1.0);
        let v_new = random_vec(&mut rng, n_rows * row_elems, 1.0);
        // Slots not written must keep their old contents.
        let n_cache = capacity as usize * row_elems;
        let mut k_want = random_vec(&mut rng, n_cache, 1.0);
        let mut v_want = random_vec(&mut rng, n_cache, 1.0);
        let params = Params {
            n_rows: n_rows as u32,
            row_elems: row_elems as u32,
            capacity,
            _pad0: 0,
        };
        let (arena, slot) = arena_with(gpu, &params);
        let slots_buf = gpu
            .storage_with("slots", bytemuck::cast_slice(&slots))
            .unwrap();
        let k_new_buf = gpu
            .storage_with("k_new", bytemuck::cast_slice(&k_new))
            .unwrap();
        let v_new_buf = gpu
            .storage_with("v_new", bytemuck::cast_slice(&v_new))
            .unwrap();
        let k_cache = gpu
            .storage_with("k_cache", bytemuck::cast_slice(&k_want))
            .unwrap();
        let v_cache = gpu
            .storage_with("v_cache", bytemuck::cast_slice(&v_want))
            .unwrap();
        let buffers = Buffers {
            slots: &slots_buf,
            k_new: &k_new_buf,
            v_new: &v_new_buf,
            k_cache: &k_cache,
            v_cache: &v_cache,
        };
        let dispatch = kernel
            .dispatch(gpu, arena.binding(slot), &params, &buffers)
            .unwrap();
        run(gpu, &[&dispatch]);
        let k_got = read_f32(gpu, &k_cache, n_cache).await;
        let v_got = read_f32(gpu, &v_cache, n_cache).await;
        kv_write_cpu(&slots, &k_new, &v_new, row_elems, &mut k_want, &mut v_want);
        let name = format!("kv_write {n_rows}x{row_elems} into {capacity}");
        assert_close(&format!("{name} k"), &k_got, &k_want, TOL_EXACT);
        assert_close(&format!("{name} v"), &v_got, &v_want, TOL_EXACT);
    }
}

gpu_test!(kv_write_rejects_small_buffers);
async fn kv_write_rejects_small_buffers(gpu: &Gpu) {
    let kernel = KvWrite::new(gpu).unwrap();
    let params = Params {
        n_rows: 2,
        row_elems: 8,
        capacity: 4,
        _pad0: 0,
    };
    let (arena, slot) = arena_with(gpu, &params);
    let small = gpu.storage("small", 4 * 8).unwrap();
    let rows = gpu.storage("rows", 4 * 16).unwrap();
    let cache = gpu.storage("cache", 4 * 32).unwrap();
    let buffers = Buffers {
        slots: &rows,
        k_new: &rows,
        v_new: &small,
        k_cache: &cache,
        v_cache: &cache,
    };
    let err = kernel
        .dispatch(gpu, arena.binding(slot), &params, &buffers)
        .err()
        .expect("v_new is too small");
    assert!(err.to_string().contains("`v_new`"), "{err}");
}
