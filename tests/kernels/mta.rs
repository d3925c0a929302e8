//! Multi-Token Attention: the CPU reference against the spec's worked example and standard
//! attention, then the GPU stages (through `MtaPass`, the way a model runs them) against the CPU
//! reference in single-pass prefill, chunked prefill and token-by-token decode (mta.md §11).

use rand::rngs::StdRng;
use rand::Rng;
use sinkstar::gpu::{Gpu, TrackedBuffer, UniformArena};
use sinkstar::kernels::attention::{attention_cpu, rope_table, Params as AttentionParams};
use sinkstar::kernels::mta::{
    depth_factor, mta_cpu, mta_output_cpu, mta_probs_cpu, Conv, CpuShape, Gate, Mta, MtaBuffers,
    MtaError, MtaLayer, MtaMaps, MtaPass, MtaShape, MtaWeights,
};

use crate::{assert_close, random_vec, read_f32, rng, Tol, BROWSER, TOL_REDUCTION};

/// The spec's bound on its worked example (mta.md §11).
const TOL_EXAMPLE: Tol = Tol {
    abs: 1e-6,
    rel: 0.0,
};

/// Dot products over up to 128 dims, convolutions of up to 66 taps, softmax sums over up to 40
/// keys and the group norm, all in f32 and summed in another order than the reference.
const TOL_MTA: Tol = TOL_REDUCTION;

const BASE: f64 = 10_000.0;

/// One document's raw queries, keys and values (`[T, heads, head_dim]`).
struct Inputs {
    shape: CpuShape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Inputs {
    /// Queries scaled up so that softmaxes are far from uniform.
    fn random(rng: &mut StdRng, shape: CpuShape) -> Inputs {
        let CpuShape {
            n_tokens,
            n_heads,
            n_kv_heads,
            head_dim,
        } = shape;
        Inputs {
            shape,
            q: random_vec(rng, n_tokens * n_heads * head_dim, 3.0),
            k: random_vec(rng, n_tokens * n_kv_heads * head_dim, 1.0),
            v: random_vec(rng, n_tokens * n_kv_heads * head_dim, 1.0),
        }
    }

    fn rope(&self) -> Vec<f32> {
        rope_table(BASE, self.shape.head_dim, self.shape.n_tokens.max(1))
    }

    fn cpu(&self, layer: &MtaLayer, weights: &MtaWeights) -> Vec<f32> {
        mta_cpu(
            layer,
            weights,
            self.shape,
            &self.q,
            &self.k,
            &self.v,
            &self.rope(),
        )
    }

    /// Standard causal attention over the same inputs (the dense policy of attention_cpu),
    /// with logits scaled by `scale_factor / sqrt(head_dim)`.
    fn standard(&self, scale_factor: f32) -> Vec<f32> {
        let CpuShape {
            n_tokens,
            n_heads,
            n_kv_heads,
            head_dim,
        } = self.shape;
        let params = AttentionParams {
            n_rows: n_tokens as u32,
            n_heads: n_heads as u32,
            n_kv_heads: n_kv_heads as u32,
            head_dim: head_dim as u32,
            n_slots: n_tokens as u32,
            first_token: 0,
            n_sink: n_tokens as u32,
            window: 1,
            scale: scale_factor / (head_dim as f32).sqrt(),
            block: 0,
            anchor: 0,
            n_parts: 1,
        };
        let slot_token: Vec<u32> = (0..n_tokens as u32).collect();
        let mut out = vec![0.0; self.q.len()];
        attention_cpu(
            &params,
            &self.q,
            &self.k,
            &self.v,
            &slot_token,
            &self.rope(),
            &mut out,
        );
        out
    }
}

/// Random weights of the right shapes for `layer` (kernels near identity so that the maps stay
/// in a sensible range, mixes and gates dense).
fn random_weights(rng: &mut StdRng, layer: &MtaLayer, n_heads: usize, hd: usize) -> MtaWeights {
    let mut weights = MtaWeights::identity(layer, n_heads as u32, hd as u32);
    for part in [
        &mut weights.pre_conv,
        &mut weights.pre_mix,
        &mut weights.post_conv,
        &mut weights.post_mix,
    ] {
        part.iter_mut()
            .for_each(|w| *w += rng.random_range(-0.5..0.5));
    }
    weights
        .norm
        .iter_mut()
        .for_each(|w| *w = rng.random_range(0.5..1.5));
    weights
        .gate
        .iter_mut()
        .for_each(|w| *w = rng.random_range(-0.3..0.3));
    weights
}

/// Runs `layer` on the GPU over documents packed one after another into one cache (each its own
/// `seq_start`), feeding each in chunks of `chunk` rows (1: token by token, as decode does);
/// returns every row's output.
async fn run_gpu(
    gpu: &Gpu,
    layer: &MtaLayer,
    weights: &MtaWeights,
    docs: &[&Inputs],
    chunk: usize,
) -> Vec<f32> {
    run_gpu_stack(gpu, &[(layer, weights, docs)], chunk)
        .await
        .remove(0)
}

/// [`run_gpu`] for several layers at once, as a model runs them: each layer with its own
/// queries, caches and output but one [`MtaMaps`] shared by all, every chunk recorded for every
/// layer in one compute pass. The layers' documents have the same lengths.
async fn run_gpu_stack(
    gpu: &Gpu,
    stack: &[(&MtaLayer, &MtaWeights, &[&Inputs])],
    chunk: usize,
) -> Vec<Vec<f32>> {
    let docs = stack[0].2;
    let CpuShape {
        n_heads,
        n_kv_heads,
        head_dim: hd,
        ..
    } = docs[0].shape;
    let n_total: usize = docs.iter().map(|d| d.shape.n_tokens).sum();
    let row_elems = n_heads * hd;
    let storage = |what, data: &[f32]| gpu.storage_with(what, bytemuck::cast_slice(data)).unwrap();
    let rope = storage("rope", &rope_table(BASE, hd, n_total));
    let mta = Mta::new(gpu).unwrap();
    let mut arena = UniformArena::new(gpu, "mta params", 8 * stack.len() as u32).unwrap();
    let shape = MtaShape {
        n_heads: n_heads as u32,
        n_kv_heads: n_kv_heads as u32,
        head_dim: hd as u32,
        key_cap: n_total as u32,
        max_rows: chunk as u32,
    };
    let maps = MtaMaps::new(gpu, shape).unwrap();
    struct Layer {
        q: TrackedBuffer,
        out: TrackedBuffer,
        pass: MtaPass,
        _caches: [TrackedBuffer; 2],
    }
    let mut layers: Vec<Layer> = stack
        .iter()
        .map(|&(layer, weights, docs)| {
            let (k, v): (Vec<f32>, Vec<f32>) = (
                docs.iter().flat_map(|d| d.k.clone()).collect(),
                docs.iter().flat_map(|d| d.v.clone()).collect(),
            );
            let (k_cache, v_cache) = (storage("k_cache", &k), storage("v_cache", &v));
            let q = gpu.storage("q", (chunk * row_elems * 4) as u64).unwrap();
            let out = gpu.storage("out", (chunk * row_elems * 4) as u64).unwrap();
            let buffers = MtaBuffers {
                q: &q,
                k_cache: &k_cache,
                v_cache: &v_cache,
                rope: &rope,
                out: &out,
            };
            let pass =
                MtaPass::new(gpu, &mta, &mut arena, layer, weights, &maps, &buffers).unwrap();
            Layer {
                q,
                out,
                pass,
                _caches: [k_cache, v_cache],
            }
        })
        .collect();
    let mut got = vec![Vec::with_capacity(n_total * row_elems); stack.len()];
    let mut seq_start = 0;
    for (d, doc) in docs.iter().enumerate() {
        let n_tokens = doc.shape.n_tokens;
        for first in (0..n_tokens).step_by(chunk) {
            let n_rows = chunk.min(n_tokens - first);
            let first_token = (seq_start + first) as u32;
            for (layer, &(_, _, docs)) in layers.iter_mut().zip(stack) {
                let rows = &docs[d].q[first * row_elems..(first + n_rows) * row_elems];
                // NaN-filled, so that an element the kernels leave unwritten fails.
                gpu.queue.write_buffer(
                    &layer.out,
                    0,
                    bytemuck::cast_slice(&vec![f32::NAN; chunk * row_elems]),
                );
                gpu.queue
                    .write_buffer(&layer.q, 0, bytemuck::cast_slice(rows));
                layer
                    .pass
                    .set_rows(
                        gpu,
                        &mut arena,
                        first_token,
                        n_rows as u32,
                        seq_start as u32,
                    )
                    .unwrap();
            }
            arena.upload(gpu);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            {
                let mut compute = encoder.begin_compute_pass(&Default::default());
                for layer in &layers {
                    for dispatch in layer.pass.dispatches() {
                        dispatch.record(&mut compute);
                    }
                }
            }
            gpu.queue.submit([encoder.finish()]);
            for (got, layer) in got.iter_mut().zip(&layers) {
                got.extend(read_f32(gpu, &layer.out, n_rows * row_elems).await);
            }
        }
        seq_start += n_tokens;
    }
    got
}

/// Layers that exercise every part: each conv alone, both with both mixes (the released
/// configuration's shape), mixes alone, and norm with each gate and the depth factor.
fn layers(n_heads: u32) -> Vec<(&'static str, MtaLayer)> {
    let conv = |q, k| Some(Conv { q, k });
    let base = MtaLayer::IDENTITY;
    vec![
        (
            "pre conv 2x3",
            MtaLayer {
                pre_conv: conv(2, 3),
                ..base
            },
        ),
        (
            "post conv 3x5",
            MtaLayer {
                post_conv: conv(3, 5),
                ..base
            },
        ),
        (
            "both convs 6x11, both mixes over all heads, gated norm",
            MtaLayer {
                pre_conv: conv(6, 11),
                post_conv: conv(6, 11),
                pre_mix: true,
                post_mix: true,
                mix_size: n_heads,
                norm: true,
                gate: Gate::Scalar,
                ..base
            },
        ),
        (
            "pre mix in pairs, vector gate, depth factor",
            MtaLayer {
                pre_mix: true,
                mix_size: 2,
                norm: true,
                gate: Gate::Vector,
                depth_factor: depth_factor(3),
                ..base
            },
        ),
        (
            "post conv 1x1, post mix of single heads, norm",
            MtaLayer {
                post_conv: conv(1, 1),
                post_mix: true,
                mix_size: 1,
                norm: true,
                ..base
            },
        ),
    ]
}

cpu_test!(worked_example);
/// mta.md §10 to 6 decimals, and its standard-attention outputs with identity kernels.
fn worked_example() {
    let t_len = 4;
    let lower = |rows: [&[f32]; 4]| {
        let mut map = vec![0.0; 16];
        for (i, row) in rows.iter().enumerate() {
            map[i * 4..i * 4 + row.len()].copy_from_slice(row);
        }
        map
    };
    let logits = vec![
        lower([
            &[0.2],
            &[0.5, -0.3],
            &[1.0, 0.1, 0.4],
            &[-0.2, 0.7, 0.3, 0.9],
        ]),
        lower([
            &[0.0],
            &[0.3, 0.6],
            &[-0.5, 0.2, 0.8],
            &[0.4, -0.1, 0.6, 0.2],
        ]),
    ];
    let layer = MtaLayer {
        pre_conv: Some(Conv { q: 2, k: 3 }),
        post_mix: true,
        mix_size: 2,
        ..MtaLayer::IDENTITY
    };
    let weights = MtaWeights {
        pre_conv: vec![0.5, -1.0, 0.25, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        // w[p][o]: new head 0 = A_0, new head 1 = 0.5 A_0 + 0.5 A_1.
        post_mix: vec![1.0, 0.5, 0.0, 0.5],
        ..MtaWeights::default()
    };
    weights.validate(&layer, 2, 2).unwrap();
    let shape = CpuShape {
        n_tokens: t_len,
        n_heads: 2,
        n_kv_heads: 2,
        head_dim: 2,
    };
    // Values interleaved per token: [T, heads, 2].
    let v0 = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]];
    let v1 = [[0.5, 0.5], [-1.0, 2.0], [0.0, 0.0], [1.0, 3.0]];
    let v: Vec<f32> = (0..4).flat_map(|t| [v0[t], v1[t]].concat()).collect();
    let probs = mta_probs_cpu(&layer, &weights, t_len, &logits);
    let head1 = [
        1.0, 0.0, 0.0, 0.0, 0.506088, 0.493912, 0.0, 0.0, 0.228496, 0.374265, 0.397239, 0.0,
        0.162035, 0.302542, 0.252312, 0.283111,
    ];
    assert_close(
        "worked example: mixed head 1",
        &probs[1],
        &head1,
        TOL_EXAMPLE,
    );
    let out = mta_output_cpu(&layer, &weights, shape, &probs, &v);
    let o0 = [
        [1.0, 0.0],
        [0.586618, 0.413382],
        [0.552793, 0.692639],
        [0.902947, 0.266740],
    ];
    let o1 = [
        [0.5, 0.5],
        [-0.240869, 1.240869],
        [-0.260017, 0.862778],
        [0.061586, 1.535435],
    ];
    let want: Vec<f32> = (0..4).flat_map(|t| [o0[t], o1[t]].concat()).collect();
    assert_close("worked example: outputs", &out, &want, TOL_EXAMPLE);

    let identity = MtaLayer {
        pre_conv: Some(Conv { q: 2, k: 3 }),
        post_mix: true,
        mix_size: 2,
        ..MtaLayer::IDENTITY
    };
    let id_weights = MtaWeights::identity(&identity, 2, 2);
    let probs = mta_probs_cpu(&identity, &id_weights, t_len, &logits);
    let out = mta_output_cpu(&identity, &id_weights, shape, &probs, &v);
    let s0 = [
        [1.0, 0.0],
        [0.689974, 0.310026],
        [0.792077, 0.488591],
        [1.067126, 0.136106],
    ];
    let s1 = [
        [0.5, 0.5],
        [-0.361664, 1.361664],
        [-0.226506, 0.677461],
        [0.195302, 1.143306],
    ];
    let want: Vec<f32> = (0..4).flat_map(|t| [s0[t], s1[t]].concat()).collect();
    assert_close(
        "worked example: identity = standard",
        &out,
        &want,
        TOL_EXAMPLE,
    );
}

cpu_test!(cpu_boundaries);
/// The reference's own boundaries (mta.md §11.1, .6, .10): identity kernels of any size are
/// standard attention; a 1x1 kernel [[α]] scales the logits by α; the depth factor's schedule.
fn cpu_boundaries() {
    let mut rng = rng(81);
    let shape = CpuShape {
        n_tokens: 13,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let inputs = Inputs::random(&mut rng, shape);
    let standard = inputs.standard(1.0);
    for (name, layer) in layers(4) {
        let layer = MtaLayer {
            norm: false,
            gate: Gate::None,
            depth_factor: 1.0,
            ..layer
        };
        let weights = MtaWeights::identity(&layer, 4, 8);
        assert_close(
            &format!("identity {name}"),
            &inputs.cpu(&layer, &weights),
            &standard,
            TOL_MTA,
        );
    }
    let alpha = 1.7;
    let layer = MtaLayer {
        pre_conv: Some(Conv { q: 1, k: 1 }),
        ..MtaLayer::IDENTITY
    };
    let weights = MtaWeights {
        pre_conv: vec![alpha; 4],
        ..MtaWeights::default()
    };
    assert_close(
        "1x1 kernel [[1.7]]",
        &inputs.cpu(&layer, &weights),
        &inputs.standard(alpha),
        TOL_MTA,
    );
    assert!((depth_factor(0) - 0.8).abs() < 1e-7);
    assert!((depth_factor(40) - 0.2).abs() < 1e-5);
    assert!(depth_factor(1) > depth_factor(2));
}

gpu_test!(mta_matches_cpu);
/// Every layer of [`layers`] on GQA and plain heads, head_dim 64 / 96 / 128, a document of 33
/// tokens: one pass, chunks of 1, 3, c_q - 1 = 5 and 17 rows, each against the reference.
async fn mta_matches_cpu(gpu: &Gpu) {
    let mut rng = rng(82);
    let shapes: &[(usize, usize, usize, usize)] = if BROWSER {
        &[(4, 2, 64, 19)]
    } else {
        &[(4, 2, 64, 33), (6, 6, 96, 33), (2, 1, 128, 20)]
    };
    for &(n_heads, n_kv_heads, head_dim, n_tokens) in shapes {
        let shape = CpuShape {
            n_tokens,
            n_heads,
            n_kv_heads,
            head_dim,
        };
        for (name, layer) in layers(n_heads as u32) {
            if layer.mix_size as usize > n_heads || n_heads % layer.mix_size as usize != 0 {
                continue;
            }
            let inputs = Inputs::random(&mut rng, shape);
            let weights = random_weights(&mut rng, &layer, n_heads, head_dim);
            let want = inputs.cpu(&layer, &weights);
            let chunks: &[usize] = if BROWSER {
                &[n_tokens, 5]
            } else {
                &[n_tokens, 1, 3, 5, 17]
            };
            for &chunk in chunks {
                let got = run_gpu(gpu, &layer, &weights, &[&inputs], chunk).await;
                let label = format!("{name}, {n_heads}/{n_kv_heads} heads of {head_dim}, {n_tokens} tokens in chunks of {chunk}");
                assert_close(&label, &got, &want, TOL_MTA);
            }
        }
    }
}

/// The layer of [`layers`] with every part on (both 6x11 convolutions, both mixes, gated norm)
/// over 4 query heads sharing 2 kv heads of `head_dim`, with random inputs and weights.
fn full_layer(
    seed: u64,
    n_tokens: usize,
    head_dim: usize,
) -> (&'static str, MtaLayer, Inputs, MtaWeights) {
    let mut rng = rng(seed);
    let shape = CpuShape {
        n_tokens,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim,
    };
    let (name, layer) = layers(4).swap_remove(2);
    let inputs = Inputs::random(&mut rng, shape);
    let weights = random_weights(&mut rng, &layer, 4, head_dim);
    (name, layer, inputs, weights)
}

gpu_test!(mta_long_document_in_tiles);
/// A document of 257 tokens (mta.md §11.9) in the session's tiles of 64 query rows, the last
/// one a single row: each tile's halo crosses the tile edge into the ring, and the keys are
/// no multiple of the workgroup size.
async fn mta_long_document_in_tiles(gpu: &Gpu) {
    let n_tokens = if BROWSER { 70 } else { 257 };
    let (name, layer, inputs, weights) = full_layer(86, n_tokens, 64);
    let got = run_gpu(gpu, &layer, &weights, &[&inputs], 64).await;
    let label = format!("{name}, {n_tokens} tokens in tiles of 64");
    assert_close(&label, &got, &inputs.cpu(&layer, &weights), TOL_MTA);
}

gpu_test!(mta_decode_equals_prefill);
/// Token-by-token decode (one row per dispatch, halo rows from the rings) equals single-pass
/// prefill for every length T = 1..40, including T < c_q and T < (c_k - 1) / 2 (mta.md §11.4).
async fn mta_decode_equals_prefill(gpu: &Gpu) {
    let n_tokens = if BROWSER { 12 } else { 40 };
    let (_, layer, inputs, weights) = full_layer(83, n_tokens, 16);
    // Causal: the first T rows of a T-token document are those of the longer one, so decoding
    // the 40 tokens once checks every length.
    let decoded = run_gpu(gpu, &layer, &weights, &[&inputs], 1).await;
    let prefilled = run_gpu(gpu, &layer, &weights, &[&inputs], n_tokens).await;
    assert_close("decode vs prefill", &decoded, &prefilled, TOL_MTA);
    assert_close(
        "decode vs cpu",
        &decoded,
        &inputs.cpu(&layer, &weights),
        TOL_MTA,
    );
}

gpu_test!(mta_layers_share_maps);
/// Three layers of different convolutions on one set of maps, as a model's layers share them:
/// each layer's halo rows survive the other layers' chunks (its own rings), in one pass, in
/// chunks of 4 and token by token, each against its own reference.
async fn mta_layers_share_maps(gpu: &Gpu) {
    let mut rng = rng(85);
    let shape = CpuShape {
        n_tokens: if BROWSER { 9 } else { 23 },
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
    };
    let all = layers(4);
    let picked: Vec<MtaLayer> = [2, 0, 1].iter().map(|&i| all[i].1).collect();
    let weights: Vec<MtaWeights> = picked
        .iter()
        .map(|layer| random_weights(&mut rng, layer, 4, 16))
        .collect();
    let inputs: Vec<Inputs> = picked
        .iter()
        .map(|_| Inputs::random(&mut rng, shape))
        .collect();
    let docs: Vec<[&Inputs; 1]> = inputs.iter().map(|i| [i]).collect();
    let stack: Vec<(&MtaLayer, &MtaWeights, &[&Inputs])> = picked
        .iter()
        .zip(&weights)
        .zip(&docs)
        .map(|((layer, weights), docs)| (layer, weights, &docs[..]))
        .collect();
    for chunk in [shape.n_tokens, 4, 1] {
        let got = run_gpu_stack(gpu, &stack, chunk).await;
        for (l, got) in got.iter().enumerate() {
            let want = inputs[l].cpu(&picked[l], &weights[l]);
            assert_close(
                &format!("layer {l}, chunks of {chunk}"),
                got,
                &want,
                TOL_MTA,
            );
        }
    }
}

gpu_test!(mta_causal_gqa_packed);
/// Causality (a change to later tokens leaves earlier rows exactly as they were), GQA against
/// materialised repeated kv heads, and two packed documents against each run alone.
async fn mta_causal_gqa_packed(gpu: &Gpu) {
    let mut rng = rng(84);
    let (_, layer) = layers(4).swap_remove(2);
    let shape = CpuShape {
        n_tokens: 21,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
    };
    let inputs = Inputs::random(&mut rng, shape);
    let weights = random_weights(&mut rng, &layer, 4, 16);
    let base = run_gpu(gpu, &layer, &weights, &[&inputs], 7).await;

    let cut = 9;
    let row_elems = 4 * 16;
    let kv_elems = 2 * 16;
    let mut changed = Inputs {
        q: inputs.q.clone(),
        k: inputs.k.clone(),
        v: inputs.v.clone(),
        shape,
    };
    for x in changed.q[(cut + 1) * row_elems..].iter_mut() {
        *x = -*x * 2.0;
    }
    for x in changed.k[(cut + 1) * kv_elems..].iter_mut() {
        *x += 0.7;
    }
    for x in changed.v[(cut + 1) * kv_elems..].iter_mut() {
        *x -= 0.3;
    }
    let perturbed = run_gpu(gpu, &layer, &weights, &[&changed], 7).await;
    let exact = Tol { abs: 0.0, rel: 0.0 };
    let upto = (cut + 1) * row_elems;
    assert_close(
        "rows up to the change",
        &perturbed[..upto],
        &base[..upto],
        exact,
    );
    assert!(
        perturbed[upto..] != base[upto..],
        "later rows must see the change"
    );

    // Each kv head copied for its two query heads: same outputs as GQA.
    let repeat = |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(16)
            .flat_map(|head| [head, head].concat())
            .collect()
    };
    let materialised = Inputs {
        shape: CpuShape {
            n_kv_heads: 4,
            ..shape
        },
        q: changed.q.clone(),
        k: repeat(&changed.k),
        v: repeat(&changed.v),
    };
    let repeated = run_gpu(gpu, &layer, &weights, &[&materialised], 7).await;
    assert_close("GQA vs repeated kv heads", &repeated, &perturbed, TOL_MTA);

    let other = Inputs::random(
        &mut rng,
        CpuShape {
            n_tokens: 11,
            ..shape
        },
    );
    let packed = run_gpu(gpu, &layer, &weights, &[&inputs, &other], 4).await;
    let alone: Vec<f32> = [inputs.cpu(&layer, &weights), other.cpu(&layer, &weights)].concat();
    assert_close("two packed documents", &packed, &alone, TOL_MTA);
}

gpu_test!(mta_bad_input);
/// Settings the spec leaves undefined, weights of the wrong shape and chunks that do not fit
/// the pass: each a typed error before any dispatch.
async fn mta_bad_input(gpu: &Gpu) {
    let conv = |q, k| Some(Conv { q, k });
    for (layer, want) in [
        (
            MtaLayer {
                pre_conv: conv(2, 4),
                ..MtaLayer::IDENTITY
            },
            "c_k odd",
        ),
        (
            MtaLayer {
                post_conv: conv(0, 3),
                ..MtaLayer::IDENTITY
            },
            "c_q must be at least 1",
        ),
        (
            MtaLayer {
                pre_mix: true,
                mix_size: 3,
                ..MtaLayer::IDENTITY
            },
            "does not divide the 4 query heads",
        ),
    ] {
        let e = layer.validate(4).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    let layer = MtaLayer {
        pre_conv: conv(2, 3),
        ..MtaLayer::IDENTITY
    };
    let mut weights = MtaWeights::identity(&layer, 4, 16);
    weights.pre_conv.pop();
    let e = weights.validate(&layer, 4, 16).unwrap_err();
    assert!(
        matches!(
            e,
            MtaError::WeightShape {
                what: "pre_conv",
                got: 23,
                expected: 24
            }
        ),
        "{e}"
    );

    let weights = MtaWeights::identity(&layer, 4, 16);
    let storage = |bytes| gpu.storage("buffer", bytes).unwrap();
    let (q, k_cache, v_cache, rope, out) = (
        storage(8 * 64 * 4),
        storage(32 * 32 * 4),
        storage(32 * 32 * 4),
        storage(32 * 16 * 4),
        storage(8 * 64 * 4),
    );
    let buffers = MtaBuffers {
        q: &q,
        k_cache: &k_cache,
        v_cache: &v_cache,
        rope: &rope,
        out: &out,
    };
    let mta = Mta::new(gpu).unwrap();
    let mut arena = UniformArena::new(gpu, "mta params", 8).unwrap();
    let shape = MtaShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        key_cap: 32,
        max_rows: 8,
    };
    let too_wide = MtaShape {
        key_cap: 33,
        ..shape
    };
    let maps = MtaMaps::new(gpu, too_wide).unwrap();
    let e = MtaPass::new(gpu, &mta, &mut arena, &layer, &weights, &maps, &buffers)
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            MtaError::BufferSize {
                what: "k_cache",
                ..
            }
        ),
        "{e}"
    );
    let odd_dim = MtaShape {
        head_dim: 15,
        ..shape
    };
    let e = MtaMaps::new(gpu, odd_dim).err().unwrap();
    assert!(matches!(e, MtaError::HeadDim { .. }), "{e}");
    let maps = MtaMaps::new(gpu, shape).unwrap();
    let mut pass = MtaPass::new(gpu, &mta, &mut arena, &layer, &weights, &maps, &buffers).unwrap();
    for (first, n_rows, seq_start) in [(0, 9, 0), (28, 5, 0), (3, 2, 4)] {
        let e = pass
            .set_rows(gpu, &mut arena, first, n_rows, seq_start)
            .unwrap_err();
        assert!(matches!(e, MtaError::Rows { .. }), "{e}");
    }
    pass.set_rows(gpu, &mut arena, 24, 8, 0).unwrap();
}
