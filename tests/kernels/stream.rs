use rand::Rng;
use sinkstar::gpu::Gpu;
use sinkstar::kernels::stream::{stream_cpu, Load, Params, Stream};

use crate::{arena_with, read_u32, rng, run};

gpu_test!(stream_reads_every_element_once);
/// Every invocation's wrapping sum equals the reference's, for buffers smaller than one
/// workgroup, not a multiple of the thread count, and larger than it, loading vec4s or words.
async fn stream_reads_every_element_once(gpu: &Gpu) {
    let mut rng = rng(13);
    let cases = Load::ALL
        .into_iter()
        .flat_map(|load| [1u32, 37, 1000, 70_001].map(|n_vec4s| (load, n_vec4s)));
    for (load, n_vec4s) in cases {
        let kernel = Stream::new(gpu, load).unwrap();
        let data: Vec<u32> = (0..n_vec4s * 4).map(|_| rng.random()).collect();
        let n_threads = Stream::threads(n_vec4s);
        let params = Params {
            n_vec4s,
            n_threads,
            _pad0: 0,
            _pad1: 0,
        };
        let (arena, slot) = arena_with(gpu, &params);
        let input = gpu
            .storage_with("data", bytemuck::cast_slice(&data))
            .unwrap();
        let out = gpu.storage("out", u64::from(n_threads) * 4).unwrap();
        let dispatch = kernel
            .dispatch(gpu, arena.binding(slot), &input, &out, n_threads)
            .unwrap();
        run(gpu, &[&dispatch]);
        let got = read_u32(gpu, &out, n_threads as usize).await;
        assert_eq!(
            got,
            stream_cpu(&data, n_threads as usize),
            "{n_vec4s} vec4s, {load:?}"
        );
    }
}
