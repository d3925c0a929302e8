//! The whole GPU forward pass against the CPU reference (`forward_cpu`) on tiny random Llama
//! models of every weight format: chunked prefill, then token-by-token decode.

mod common;

use std::sync::Arc;

use common::{gpu, Tiny};
use sinkstar::attention::AttentionPolicy;
use sinkstar::generate::SamplingParams;
use sinkstar::gpu::{Gpu, GpuOptions};
use sinkstar::kernels::matmul::MatmulKind;
use sinkstar::model::forward_cpu::{CpuKvCache, CpuModel};
use sinkstar::model::gguf::{GgmlType, Gguf};
use sinkstar::model::{GpuModel, Part, Session, SessionOptions};

/// Both sides decode the same blocks and compute in f32; what differs is summation order
/// (tiled/parallel sums vs sequential) through 2 layers, on logits of magnitude ~1-10.
const LOGIT_ABS: f32 = 2e-3;
const LOGIT_REL: f32 = 1e-3;

fn assert_values_close(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(g.is_finite(), "{what}: logit {i} is {g}");
        let err = (g - c).abs();
        if err > worst {
            (worst, at) = (err, i);
        }
        assert!(
            err <= LOGIT_ABS + LOGIT_REL * c.abs(),
            "{what}: logit {i} gpu {g} cpu {c} (error {err})"
        );
    }
    eprintln!("{what}: max abs error {worst:.2e} at {at}");
}

fn check(tiny: &Tiny, prompt_len: usize, max_chunk: usize, n_decode: usize) -> Session {
    check_on(gpu(), tiny, prompt_len, max_chunk, n_decode, 64)
}

/// Prefill of `prompt_len` tokens in chunks of `max_chunk`, then `n_decode` greedy steps, in
/// a dense cache of `capacity` slots, against the CPU reference; returns the session.
fn check_on(
    gpu: Arc<Gpu>,
    tiny: &Tiny,
    prompt_len: usize,
    max_chunk: usize,
    n_decode: usize,
    capacity: usize,
) -> Session {
    let gguf = Gguf::from_bytes(tiny.gguf()).unwrap();
    let cpu = CpuModel::from_gguf(&gguf).unwrap();
    let model = Arc::new(GpuModel::load(gpu, &gguf).unwrap());
    let mut session = Session::new(
        model,
        &SessionOptions {
            policy: AttentionPolicy::Dense { capacity },
            max_chunk,
            positions: None,
        },
    )
    .unwrap();
    let vocab = tiny.vocab_size;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 37 + 5) % vocab as u32)
        .collect();
    let mut cache = CpuKvCache::default();
    let cpu_logits = cpu.forward(&prompt, &mut cache).unwrap();
    let label = format!(
        "{:?}/{:?} tied={}",
        tiny.format, tiny.embed_format, tiny.tied
    );
    session.feed(&prompt).unwrap();
    let last = &cpu_logits[(prompt_len - 1) * vocab..];
    assert_values_close(
        &format!("{label} prefill"),
        &session.logits().unwrap(),
        last,
    );
    // Greedy decode: the GPU samples (argmax on the GPU), the CPU follows the same tokens.
    let mut token = session.feed_and_sample(&[], &SamplingParams::greedy());
    assert!(token.is_err(), "an empty feed is an error");
    token = session.feed_and_sample(&[3], &SamplingParams::greedy());
    let mut cpu_last = cpu.forward(&[3], &mut cache).unwrap();
    for step in 0..n_decode {
        let t = token.unwrap();
        let want = argmax(&cpu_last);
        assert_eq!(
            t, want,
            "{label} step {step}: gpu sampled {t}, cpu argmax {want}"
        );
        token = session.decode(&SamplingParams::greedy());
        cpu_last = cpu.forward(&[t], &mut cache).unwrap();
        assert_values_close(
            &format!("{label} decode {step}"),
            &session.logits().unwrap(),
            &cpu_last,
        );
    }
    session
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn every_weight_format_matches_the_cpu_reference() {
    for format in [
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ] {
        let tiny = Tiny {
            format,
            embed_format: format,
            ..Tiny::default()
        };
        check(&tiny, 13, 5, 4);
    }
}

#[test]
fn subgroup_decode_matches_the_cpu_reference() {
    // The form GPUs decode with, forced on lavapipe (which has subgroups of 8 but runs the vec
    // form faster, so `auto` does not choose it there).
    let gpu = Gpu::new_blocking(&GpuOptions {
        subgroup_matvec: Some(true),
        ..GpuOptions::default()
    })
    .unwrap();
    assert_eq!(MatmulKind::decode(&gpu), MatmulKind::Subgroup);
    assert_eq!(MatmulKind::decode(&common::gpu()), MatmulKind::Vec);
    let gpu = Arc::new(gpu);
    for format in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16] {
        let tiny = Tiny {
            format,
            embed_format: format,
            ..Tiny::default()
        };
        check_on(gpu.clone(), &tiny, 13, 5, 4, 64);
    }
}

#[test]
fn shared_prefill_matches_the_cpu_reference() {
    // The prefill form GPUs run (tiles staged in workgroup memory), forced on lavapipe, where
    // `auto` keeps the register-only tiles; prompts of 1, 2 and 3 chunks, the last one short.
    let gpu = Gpu::new_blocking(&GpuOptions {
        shared_prefill: Some(true),
        ..GpuOptions::default()
    })
    .unwrap();
    assert!(matches!(MatmulKind::prefill(&gpu), MatmulKind::Shared(_)));
    assert_eq!(MatmulKind::prefill(&common::gpu()), MatmulKind::Tile);
    let gpu = Arc::new(gpu);
    for (format, prompt_len) in [
        (GgmlType::Q4_1, 13),
        (GgmlType::Q8_0, 40),
        (GgmlType::F16, 70),
    ] {
        let tiny = Tiny {
            format,
            embed_format: format,
            ..Tiny::default()
        };
        check_on(gpu.clone(), &tiny, prompt_len, 32, 2, 128);
    }
}

#[test]
fn split_decode_attention_matches_the_cpu_reference() {
    // A device told to keep 64 workgroups busy, and a cache long enough for parts of
    // MIN_PART_SLOTS: each decoded row's heads walk 701..705 slots in 2 parts, merged by one
    // more dispatch per layer.
    let device = |decode_workgroups| {
        let options = GpuOptions {
            decode_workgroups: Some(decode_workgroups),
            ..GpuOptions::default()
        };
        Arc::new(Gpu::new_blocking(&options).unwrap())
    };
    let tiny = Tiny {
        context_len: 1024,
        seed: 5,
        ..Tiny::default()
    };
    let split = check_on(device(64), &tiny, 700, 64, 4, 1024);
    let whole = check_on(device(1), &tiny, 700, 64, 4, 1024);
    assert_eq!(
        split.step_dispatches(),
        whole.step_dispatches() + tiny.n_layers,
        "one merge per layer"
    );
    // Heads of 32, which project in attention: the merge then also computes each head's share
    // of the output projection, so a split layer takes 5 dispatches, one more than unsplit.
    let projecting = Tiny {
        dim: 96,
        n_heads: 3,
        n_kv_heads: 1,
        ..tiny.clone()
    };
    let split = check_on(device(64), &projecting, 700, 64, 4, 1024);
    let whole = check_on(device(1), &projecting, 700, 64, 4, 1024);
    assert!(split.projects_in_attention());
    assert_eq!(whole.step_dispatches(), 1 + 4 * tiny.n_layers + 2);
    assert_eq!(split.step_dispatches(), 1 + 5 * tiny.n_layers + 2);
    // The merges' two pipelines (pairs, projecting) are built only where a walk can split: not
    // on the same device with a cache too short for two parts.
    let pipelines = |session: &Session| session.model().gpu().n_pipelines();
    let short = check_on(device(64), &projecting, 200, 64, 4, 256);
    assert_eq!(pipelines(&whole), pipelines(&short));
    assert_eq!(pipelines(&split), pipelines(&whole) + 2);
}

#[test]
fn decode_with_the_output_projection_in_attention_matches_the_cpu_reference() {
    // Heads of 32 (one whole chunk of W_o's row per head), 3 query heads per kv head as in the
    // default model: decode computes each head's share of the output projection in attention,
    // and the FFN's matmuls sum the parts into the stream (vec and subgroup matvecs).
    let tiny = |format| Tiny {
        dim: 96,
        n_heads: 3,
        n_kv_heads: 1,
        format,
        embed_format: format,
        seed: 11,
        ..Tiny::default()
    };
    let per_layer = |session: &Session, per_layer: usize| {
        assert_eq!(
            session.step_dispatches(),
            1 + per_layer * Tiny::default().n_layers + 2
        );
    };
    for format in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::BF16] {
        let session = check(&tiny(format), 13, 5, 4);
        assert!(session.projects_in_attention());
        per_layer(&session, 4);
        if format == GgmlType::Q4_1 {
            // The profile leaves out the part the step no longer runs.
            let parts: Vec<Part> = session
                .profile_decode(1)
                .unwrap()
                .iter()
                .map(|(part, _)| *part)
                .collect();
            let ran: Vec<Part> = Part::ALL
                .into_iter()
                .filter(|p| *p != Part::Output)
                .collect();
            assert_eq!(parts, ran);
        }
    }
    let device = |options| Arc::new(Gpu::new_blocking(&options).unwrap());
    let subgroup = device(GpuOptions {
        subgroup_matvec: Some(true),
        ..GpuOptions::default()
    });
    let session = check_on(subgroup, &tiny(GgmlType::Q4_0), 13, 5, 4, 64);
    assert!(session.projects_in_attention());
    // Told not to: the projection is a matmul of its own again, a fifth dispatch.
    let separate = device(GpuOptions {
        fuse_output_projection: Some(false),
        ..GpuOptions::default()
    });
    let session = check_on(separate, &tiny(GgmlType::Q4_1), 13, 5, 4, 64);
    assert!(!session.projects_in_attention());
    per_layer(&session, 5);
}

#[test]
fn untied_head_and_mixed_formats() {
    let tiny = Tiny {
        format: GgmlType::Q4_1,
        embed_format: GgmlType::F16,
        tied: false,
        seed: 9,
        ..Tiny::default()
    };
    check(&tiny, 7, 64, 3);
}

#[test]
fn gqa_ratios_and_single_token_prompt() {
    for (n_heads, n_kv_heads) in [(4, 4), (4, 1), (2, 1)] {
        let tiny = Tiny {
            n_heads,
            n_kv_heads,
            dim: 64,
            seed: 3,
            ..Tiny::default()
        };
        check(&tiny, 1, 4, 3);
    }
}

#[test]
fn layer_by_layer_residuals_match_the_cpu_reference() {
    let tiny = Tiny {
        n_layers: 3,
        ..Tiny::default()
    };
    let gguf = Gguf::from_bytes(tiny.gguf()).unwrap();
    let cpu = CpuModel::from_gguf(&gguf).unwrap();
    let mut cpu_layers = Vec::new();
    let tokens = [4, 8, 15, 16, 23, 42];
    cpu.forward_traced(&tokens, &mut CpuKvCache::default(), &mut |_, x| {
        cpu_layers.push(x.to_vec())
    })
    .unwrap();
    let model = Arc::new(GpuModel::load(gpu(), &gguf).unwrap());
    let options = SessionOptions {
        policy: AttentionPolicy::Dense { capacity: 64 },
        ..SessionOptions::default()
    };
    let mut session = Session::new(model, &options).unwrap();
    for (layer, want) in cpu_layers.iter().enumerate() {
        let got = session.residual_after(&tokens, layer + 1).unwrap();
        assert_values_close(&format!("residual after layer {layer}"), &got, want);
        assert_eq!(
            session.n_seen(),
            0,
            "residual_after leaves the cache as it was"
        );
    }
}

#[test]
fn a_decode_step_is_one_submission_of_counted_dispatches_and_profiles_by_part() {
    let tiny = Tiny::default();
    let gguf = Gguf::from_bytes(tiny.gguf()).unwrap();
    let model = Arc::new(GpuModel::load(gpu(), &gguf).unwrap());
    let options = SessionOptions {
        policy: AttentionPolicy::Dense { capacity: 64 },
        ..SessionOptions::default()
    };
    let fresh = Session::new(model.clone(), &options).unwrap();
    let e = fresh.profile_decode(1).unwrap_err();
    assert!(e.to_string().contains("nothing to decode"), "{e}");

    let mut session = Session::new(model, &options).unwrap();
    let greedy = SamplingParams::greedy();
    session.feed_and_sample(&[1, 2, 3], &greedy).unwrap();
    let submitted = session.n_submissions();
    session.decode(&greedy).unwrap();
    assert_eq!(session.n_submissions(), submitted + 1);
    // Embed; per layer the norm with q/k/v and the cache write in one matmul, attention, the
    // output projection with its residual (its own matmul: heads of 16 are not whole 32-value
    // chunks of W_o, which attention's fused projection reads), the norm with gate/up and
    // SwiGLU, down with its residual; then the final norm with the head, and the sampler.
    assert_eq!(session.step_dispatches(), 1 + 5 * tiny.n_layers + 2);
    let profile = session.profile_decode(1).unwrap();
    let parts: Vec<Part> = profile.iter().map(|(part, _)| *part).collect();
    assert_eq!(parts, Part::ALL);
    assert!(profile.iter().all(|(_, secs)| *secs > 0.0), "{profile:?}");
}
