//! The sink-window and window policies (StreamingLLM) through the whole GPU forward pass, on
//! tiny random models: equal to dense while nothing is evicted, equal to the CPU "re-pack"
//! oracle (sinks + last window re-listed at positions 0..n, spec §10.3) at every step after,
//! through many wraps of the ring, and constant in memory over 20,000 tokens.

mod common;

use std::sync::Arc;

use common::{gpu, Tiny};
use sinkstar::attention::AttentionPolicy;
use sinkstar::generate::SamplingParams;
use sinkstar::gpu::{Gpu, GpuOptions};
use sinkstar::model::forward_cpu::{CpuKvCache, CpuModel};
use sinkstar::model::gguf::Gguf;
use sinkstar::model::{GpuModel, Session, SessionOptions};

/// f32 on both sides, same blocks decoded: summation order only (see tests/forward.rs).
const ABS: f32 = 2e-3;
const REL: f32 = 1e-3;

fn assert_close(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            (g - c).abs() <= ABS + REL * c.abs(),
            "{what}: logit {i} gpu {g} cpu {c}"
        );
    }
}

fn tiny() -> (Gguf, Tiny) {
    let tiny = Tiny {
        n_layers: 2,
        seed: 21,
        ..Tiny::default()
    };
    (Gguf::from_bytes(tiny.gguf()).unwrap(), tiny)
}

fn text(n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 131 + 17) % vocab as u32)
        .collect()
}

fn session(model: &Arc<GpuModel>, policy: AttentionPolicy, max_chunk: usize) -> Session {
    Session::new(
        model.clone(),
        &SessionOptions {
            policy,
            max_chunk,
            positions: None,
        },
    )
    .unwrap()
}

#[test]
fn sink_with_room_for_everything_equals_dense() {
    let (gguf, tiny) = tiny();
    let model = Arc::new(GpuModel::load(gpu(), &gguf).unwrap());
    let tokens = text(40, tiny.vocab_size);
    let mut dense = session(&model, AttentionPolicy::Dense { capacity: 64 }, 7);
    let mut sink = session(
        &model,
        AttentionPolicy::Sink {
            n_sink: 4,
            window: 36,
        },
        7,
    );
    // A chunked prefill, then token by token.
    dense.feed(&tokens[..23]).unwrap();
    sink.feed(&tokens[..23]).unwrap();
    assert_close("prefill", &sink.logits().unwrap(), &dense.logits().unwrap());
    for (i, &t) in tokens[23..].iter().enumerate() {
        dense.feed(&[t]).unwrap();
        sink.feed(&[t]).unwrap();
        assert_close(
            &format!("token {}", 23 + i),
            &sink.logits().unwrap(),
            &dense.logits().unwrap(),
        );
    }
}

/// Feeds `n_tokens` in chunks cycling through `chunks` and compares the logits after every
/// chunk with the CPU oracle fed token by token.
fn check_ring(policy: AttentionPolicy, max_chunk: usize, chunks: &[usize], n_tokens: usize) {
    let (gguf, tiny) = tiny();
    let cpu = CpuModel::from_gguf(&gguf).unwrap();
    let model = Arc::new(GpuModel::load(gpu(), &gguf).unwrap());
    let (n_sink, window) = policy.ring().unwrap();
    let mut oracle = CpuKvCache::sink_window(n_sink, window);
    let mut s = session(&model, policy, max_chunk);
    let tokens = text(n_tokens, tiny.vocab_size);
    let mut fed = 0;
    for &size in chunks.iter().cycle() {
        if fed == n_tokens {
            break;
        }
        let chunk = &tokens[fed..(fed + size).min(n_tokens)];
        s.feed(chunk).unwrap();
        let mut want = Vec::new();
        for &t in chunk {
            want = cpu.forward(&[t], &mut oracle).unwrap();
        }
        fed += chunk.len();
        let what = format!("{policy:?} chunk {max_chunk} after {fed} tokens");
        assert_close(&what, &s.logits().unwrap(), &want);
    }
}

#[test]
fn ring_matches_the_repack_oracle_through_many_wraps() {
    // Chunks of one (decode), mixed and full chunks; the ring after the sinks holds
    // window + max_chunk - 1 slots, so 60 tokens wrap it several times, exactly at the
    // boundary too; with 4 sinks the first steps see fewer tokens than sinks.
    check_ring(
        AttentionPolicy::Sink {
            n_sink: 4,
            window: 7,
        },
        1,
        &[1],
        60,
    );
    check_ring(
        AttentionPolicy::Sink {
            n_sink: 4,
            window: 7,
        },
        5,
        &[3, 5, 1, 2],
        60,
    );
    check_ring(
        AttentionPolicy::Sink {
            n_sink: 1,
            window: 4,
        },
        3,
        &[3],
        45,
    );
    check_ring(
        AttentionPolicy::Sink {
            n_sink: 2,
            window: 9,
        },
        12,
        &[12, 7],
        70,
    );
    // Window of one without sinks: every token attends to itself only.
    check_ring(AttentionPolicy::Window { window: 1 }, 1, &[1], 20);
    check_ring(AttentionPolicy::Window { window: 6 }, 4, &[4, 1], 40);
}

#[test]
fn twenty_thousand_tokens_in_constant_memory() {
    let (gguf, tiny) = tiny();
    // A device of its own: the other tests of this binary allocate on the shared one
    // concurrently, which would move its counters.
    let gpu = Arc::new(Gpu::new_blocking(&GpuOptions::default()).expect("a GPU adapter"));
    let model = Arc::new(GpuModel::load(gpu.clone(), &gguf).unwrap());
    // 4 + 252 = 256 slots of attention.
    let mut s = session(
        &model,
        AttentionPolicy::Sink {
            n_sink: 4,
            window: 252,
        },
        16,
    );
    let greedy = SamplingParams::greedy();
    s.feed_and_sample(&text(10, tiny.vocab_size), &greedy)
        .unwrap();
    let (bytes, buffers) = (gpu.allocated_bytes(), gpu.n_buffers());
    for step in 0..20_000 {
        s.decode(&greedy).unwrap();
        if step % 100 == 0 || step == 19_999 {
            let logits = s.logits().unwrap();
            assert!(
                logits.iter().all(|v| v.is_finite()),
                "step {step}: non-finite logits"
            );
            assert_eq!(
                gpu.allocated_bytes(),
                bytes,
                "step {step}: GPU bytes changed"
            );
            assert_eq!(gpu.n_buffers(), buffers, "step {step}: GPU buffers changed");
        }
    }
    assert_eq!(s.n_seen(), 20_010);
    assert!(s.n_filled() <= s.capacity());
}

#[test]
fn caches_smaller_than_a_chunk() {
    let (gguf, tiny) = tiny();
    let cpu = CpuModel::from_gguf(&gguf).unwrap();
    let model = Arc::new(GpuModel::load(gpu(), &gguf).unwrap());
    let tokens = text(5, tiny.vocab_size);
    let mut dense = session(&model, AttentionPolicy::Dense { capacity: 5 }, 16);
    dense.feed(&tokens).unwrap();
    let want = cpu.forward(&tokens, &mut CpuKvCache::default()).unwrap();
    assert_close(
        "dense of 5 slots",
        &dense.logits().unwrap(),
        &want[4 * tiny.vocab_size..],
    );
    check_ring(AttentionPolicy::Window { window: 2 }, 16, &[16], 40);
}

#[test]
fn feed_logits_scores_every_token_like_token_by_token() {
    let (gguf, tiny) = tiny();
    let cpu = CpuModel::from_gguf(&gguf).unwrap();
    let model = Arc::new(GpuModel::load(gpu(), &gguf).unwrap());
    let vocab = tiny.vocab_size;
    let tokens = text(37, vocab);
    for (policy, mut oracle) in [
        (
            AttentionPolicy::Dense { capacity: 64 },
            CpuKvCache::default(),
        ),
        (
            AttentionPolicy::Sink {
                n_sink: 2,
                window: 6,
            },
            CpuKvCache::sink_window(2, 6),
        ),
    ] {
        let mut s = session(&model, policy, 5);
        let got = s.feed_logits(&tokens).unwrap();
        let want = cpu.forward(&tokens, &mut oracle).unwrap();
        for row in 0..tokens.len() {
            let r = row * vocab..(row + 1) * vocab;
            assert_close(&format!("{policy:?} row {row}"), &got[r.clone()], &want[r]);
        }
    }
    // Recompute: each token scored by a fresh pass over its last 6 tokens.
    let mut s = session(&model, AttentionPolicy::Recompute { window: 6 }, 5);
    let got = s.feed_logits(&tokens[..12]).unwrap();
    for row in 0..12usize {
        let window = &tokens[row.saturating_sub(5)..=row];
        let want = cpu.forward(window, &mut CpuKvCache::default()).unwrap();
        let last = &want[(window.len() - 1) * vocab..];
        assert_close(
            &format!("recompute row {row}"),
            &got[row * vocab..(row + 1) * vocab],
            last,
        );
    }
}
