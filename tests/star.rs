//! Star Attention (star.md) through the whole GPU forward pass of tiny random models: one block
//! is dense attention; the single-pass masked phase 1 equals the reference's per-block form
//! (each block encoded after the anchor alone, the anchor's cache dropped after); the query
//! and the generated tokens take the positions after the context and only the query's side
//! of the cache grows; several devices (opened side by side on one adapter) give the tokens of
//! one, exchanging only partial attentions and their log-sum-exps.

mod common;

use std::sync::Arc;

use common::{gpu, Tiny};
use sinkstar::attention::star::{StarError, StarOptions};
use sinkstar::attention::AttentionPolicy;
use sinkstar::generate::SamplingParams;
use sinkstar::gpu::{Gpu, GpuOptions};
use sinkstar::model::gguf::Gguf;
use sinkstar::model::{GpuModel, Session, SessionOptions, StarSession};
use sinkstar::Error;

/// The tiny model of these tests on the shared device.
fn model() -> (Arc<GpuModel>, Tiny) {
    let (mut models, tiny) = models_on([gpu()]);
    (models.remove(0), tiny)
}

fn text(n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 197 + 11) % vocab as u32)
        .collect()
}

/// A dense session with chunks of 7 tokens, so that chunks straddle blocks.
fn dense(model: &Arc<GpuModel>, capacity: usize) -> Session {
    Session::new(
        model.clone(),
        &SessionOptions {
            policy: AttentionPolicy::Dense { capacity },
            max_chunk: 7,
            positions: None,
        },
    )
    .unwrap()
}

/// Every layer's keys and values of text token `token`, found through the slot table.
fn kv_of(session: &Session, n_layers: usize, kv_dim: usize, token: u32) -> Vec<f32> {
    let mut out = Vec::new();
    for layer in 0..n_layers {
        let (k, v, slot_token) = session.read_kv(layer).unwrap();
        let slot = slot_token
            .iter()
            .position(|&u| u == token)
            .unwrap_or_else(|| panic!("token {token} is not in the cache"));
        out.extend_from_slice(&k[slot * kv_dim..(slot + 1) * kv_dim]);
        out.extend_from_slice(&v[slot * kv_dim..(slot + 1) * kv_dim]);
    }
    out
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: {g} vs {w}"
        );
    }
}

#[test]
fn one_block_is_dense() {
    // star.md §7.1: b >= Lc, any anchor: the same cache, query logits and greedy tokens.
    let (model, tiny) = model();
    let context = text(40, tiny.vocab_size);
    let query = text(5, tiny.vocab_size);
    let greedy = SamplingParams::greedy();
    let mut want = dense(&model, 64);
    want.feed(&context).unwrap();
    let want_first = want.feed_and_sample(&query, &greedy).unwrap();
    let want_logits = want.logits().unwrap();
    let want_next: Vec<u32> = (0..4).map(|_| want.decode(&greedy).unwrap()).collect();
    for (block, anchor) in [(40, 0), (40, 40), (1000, 7)] {
        let star = StarOptions { block, anchor };
        let mut got = dense(&model, 64);
        got.feed_star(&context, &star).unwrap();
        let what = format!("block {block} anchor {anchor}");
        for token in 0..40 {
            assert_close(
                &format!("{what} kv of token {token}"),
                &kv_of(&got, tiny.n_layers, 32, token),
                &kv_of(&want, tiny.n_layers, 32, token),
                0.0,
            );
        }
        assert_eq!(got.feed_and_sample(&query, &greedy).unwrap(), want_first);
        assert_close(&what, &got.logits().unwrap(), &want_logits, 0.0);
        let next: Vec<u32> = (0..4).map(|_| got.decode(&greedy).unwrap()).collect();
        assert_eq!(next, want_next, "{what}");
    }
}

#[test]
fn masked_phase_one_equals_per_block_form() {
    // star.md §7.4: 91 tokens in blocks of 30 (a last block of one token), anchors of 1, b/2
    // and b. The reference form encodes block i >= 2 as its own sequence after the anchor, at
    // the original positions, and keeps only the block's cache.
    let (model, tiny) = model();
    let (n_context, block) = (91, 30);
    let context = text(n_context, tiny.vocab_size);
    for anchor in [1, block / 2, block] {
        let star = StarOptions { block, anchor };
        let mut masked = dense(&model, 128);
        masked.feed_star(&context, &star).unwrap();
        for range in star.blocks(n_context) {
            let mut alone = dense(&model, 128);
            if range.start > 0 {
                alone.feed(&context[..anchor]).unwrap();
                alone.skip_to(range.start).unwrap();
            }
            alone.feed(&context[range.clone()]).unwrap();
            for token in range.clone() {
                let what = format!("anchor {anchor}, block {range:?}, token {token}");
                assert_close(
                    &what,
                    &kv_of(&masked, tiny.n_layers, 32, token as u32),
                    &kv_of(&alone, tiny.n_layers, 32, token as u32),
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn without_anchor_each_block_is_alone() {
    // star.md §7.9: a = 0 equals independent causal prefills of each block (at its own
    // positions) — and differs from a = b, so the anchor is really seen.
    let (model, tiny) = model();
    let context = text(50, tiny.vocab_size);
    let star = StarOptions {
        block: 20,
        anchor: 0,
    };
    let mut masked = dense(&model, 64);
    masked.feed_star(&context, &star).unwrap();
    let mut anchored = dense(&model, 64);
    anchored
        .feed_star(
            &context,
            &StarOptions {
                block: 20,
                anchor: 20,
            },
        )
        .unwrap();
    for range in star.blocks(50) {
        let mut alone = dense(&model, 64);
        alone.skip_to(range.start).unwrap();
        alone.feed(&context[range.clone()]).unwrap();
        for token in range.clone() {
            let got = kv_of(&masked, tiny.n_layers, 32, token as u32);
            let what = format!("token {token}");
            assert_close(
                &what,
                &got,
                &kv_of(&alone, tiny.n_layers, 32, token as u32),
                1e-5,
            );
            if range.start > 0 {
                let with_anchor = kv_of(&anchored, tiny.n_layers, 32, token as u32);
                let change = got
                    .iter()
                    .zip(&with_anchor)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(change > 1e-3, "{what}: the anchor changed nothing");
            }
        }
    }
}

#[test]
fn query_and_reply_follow_the_context_and_leave_it_untouched() {
    // star.md §7.5 and §7.6: the query starts at Lc, generated tokens follow one by one, and
    // after generation the context's cache is byte-identical to its phase-1 state.
    let (model, tiny) = model();
    let context = text(70, tiny.vocab_size);
    let query = text(5, tiny.vocab_size);
    let star = StarOptions {
        block: 16,
        anchor: 16,
    };
    let mut s = dense(&model, 96);
    s.feed_star(&context, &star).unwrap();
    assert_eq!(s.n_seen(), 70);
    let before: Vec<_> = (0..tiny.n_layers).map(|l| s.read_kv(l).unwrap()).collect();
    let greedy = SamplingParams::greedy();
    s.feed_and_sample(&query, &greedy).unwrap();
    for _ in 0..6 {
        s.decode(&greedy).unwrap();
    }
    // 5 query tokens and 6 fed replies (the 7th sampled token is still pending).
    assert_eq!(s.n_seen(), 81);
    for (layer, (k0, v0, slots0)) in before.iter().enumerate() {
        let (k, v, slots) = s.read_kv(layer).unwrap();
        let n = 70 * 32;
        assert_eq!(&k[..n], &k0[..n], "layer {layer} keys of the context");
        assert_eq!(&v[..n], &v0[..n], "layer {layer} values of the context");
        assert_eq!(&slots[..70], &slots0[..70]);
        let tail: Vec<u32> = (70..81).collect();
        assert_eq!(
            &slots[70..81],
            &tail[..],
            "query and reply at positions 70..81"
        );
    }
}

#[test]
fn bad_star_input_is_refused() {
    let (model, tiny) = model();
    let context = text(10, tiny.vocab_size);
    let mut s = dense(&model, 32);
    let long_anchor = StarOptions {
        block: 4,
        anchor: 5,
    };
    assert!(matches!(
        s.feed_star(&context, &long_anchor),
        Err(Error::Star(StarError::AnchorTooLong {
            anchor: 5,
            block: 4
        }))
    ));
    let zero = StarOptions {
        block: 0,
        anchor: 0,
    };
    assert!(matches!(
        s.feed_star(&context, &zero),
        Err(Error::Star(StarError::ZeroBlock))
    ));
    // Phase 1 needs a dense cache.
    let sink = AttentionPolicy::Sink {
        n_sink: 4,
        window: 60,
    };
    let options = SessionOptions {
        policy: sink,
        max_chunk: 7,
        positions: None,
    };
    let mut ring = Session::new(model.clone(), &options).unwrap();
    let err = ring
        .feed_star(&context, &StarOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("dense"), "{err}");
    // A context longer than the cache: a typed error, nothing fed.
    let err = s
        .feed_star(&text(40, tiny.vocab_size), &StarOptions::default())
        .unwrap_err();
    assert_eq!(err.code(), "context-full", "{err}");
    assert_eq!(s.n_seen(), 0);
    // Skipping back is refused.
    s.feed_star(&context, &StarOptions::default()).unwrap();
    assert!(s.skip_to(3).is_err());
}

/// The tiny model loaded on `n` devices: the shared one and `n - 1` opened on their own
/// (lavapipe gives every request a device of its own, which is how the multi-device path runs
/// without several GPUs).
fn models_on_devices(n: usize) -> (Vec<Arc<GpuModel>>, Tiny) {
    models_on((0..n).map(|i| if i == 0 { gpu() } else { own_gpu() }))
}

/// A device no other test allocates on (the shared one's counters move while they run).
fn own_gpu() -> Arc<Gpu> {
    Arc::new(Gpu::new_blocking(&GpuOptions::default()).unwrap())
}

/// The tiny model of these tests loaded on each of `gpus`.
fn models_on(gpus: impl IntoIterator<Item = Arc<Gpu>>) -> (Vec<Arc<GpuModel>>, Tiny) {
    // Two layers: the second reads the first's output, so a wrong mask in layer one shows up
    // in layer two's keys and values too.
    let tiny = Tiny {
        n_layers: 2,
        seed: 31,
        ..Tiny::default()
    };
    let gguf = Gguf::from_bytes(tiny.gguf()).unwrap();
    let models = gpus
        .into_iter()
        .map(|gpu| Arc::new(GpuModel::load(gpu, &gguf).unwrap()))
        .collect();
    (models, tiny)
}

/// Encodes `context`, asks `query` and generates `n_new` greedy tokens, then a follow-up
/// turn (fed after the pending token) and `n_new` more; returns the tokens and the logits
/// after the query.
fn run_star(
    session: &mut StarSession,
    context: &[u32],
    query: &[u32],
    n_new: usize,
) -> (Vec<u32>, Vec<f32>) {
    let greedy = SamplingParams::greedy();
    session.encode(context, &mut |_, _| {}).unwrap();
    let mut tokens = vec![session.feed_and_sample(query, &greedy).unwrap()];
    let logits = session.logits().unwrap();
    for _ in 1..n_new {
        tokens.push(session.decode(&greedy).unwrap());
    }
    tokens.push(session.feed_and_sample(&query[..9], &greedy).unwrap());
    for _ in 1..n_new {
        tokens.push(session.decode(&greedy).unwrap());
    }
    (tokens, logits)
}

#[test]
fn several_devices_give_the_tokens_of_one() {
    // star.md §5 and §7.2/7.8 end to end: 2 and 3 devices (blocks 2+2, and 2+1+1), and 3
    // devices for 2 blocks (an idle query shard); a 12-token query (two exchange steps of at
    // most 7 rows) and a follow-up of 9 after the pending token (7 + 3): the same greedy
    // tokens as one device, logits within float tolerance (the merge sums in another order).
    let (models, tiny) = models_on_devices(3);
    let star = StarOptions {
        block: 30,
        anchor: 15,
    };
    for n_context in [91, 45] {
        let context = text(n_context, tiny.vocab_size);
        let query = text(12, tiny.vocab_size);
        let mut one = StarSession::new(&models[..1], star, n_context, 48, 7).unwrap();
        let (want, want_logits) = run_star(&mut one, &context, &query, 8);
        for n_devices in [2, 3] {
            let mut many = StarSession::new(&models[..n_devices], star, n_context, 48, 7).unwrap();
            let (got, logits) = run_star(&mut many, &context, &query, 8);
            let what = format!("{n_context} tokens on {n_devices} devices");
            assert_close(&what, &logits, &want_logits, 1e-4);
            assert_eq!(got, want, "{what}");
            // Everything but the last sampled token is in the cache.
            assert_eq!(many.n_seen(), n_context + 12 + 8 + 9 + 7, "{what}");
        }
    }
}

#[test]
fn only_the_query_shard_grows_and_query_rows_see_every_shard() {
    // star.md §7.6 and §7.7: after the reply, the context shards' caches are byte-identical
    // to their phase-1 state and the query shard holds its part + query + reply; the first
    // query row saw every shard's keys (its layer-1 keys equal the one-device run's, which a
    // mask hiding other shards' last keys from early query rows would break).
    let (models, tiny) = models_on_devices(2);
    let star = StarOptions {
        block: 20,
        anchor: 20,
    };
    let context = text(70, tiny.vocab_size);
    let query = text(5, tiny.vocab_size);
    let greedy = SamplingParams::greedy();
    let mut two = StarSession::new(&models, star, 70, 16, 7).unwrap();
    two.encode(&context, &mut |_, _| {}).unwrap();
    let shard0: Vec<_> = (0..tiny.n_layers)
        .map(|l| two.shards()[0].read_kv(l).unwrap())
        .collect();
    two.feed_and_sample(&query, &greedy).unwrap();
    for _ in 0..4 {
        two.decode(&greedy).unwrap();
    }
    for (layer, before) in shard0.iter().enumerate() {
        assert_eq!(
            &two.shards()[0].read_kv(layer).unwrap(),
            before,
            "layer {layer}"
        );
    }
    assert_eq!(two.range(0), 0..40);
    assert_eq!(two.range(1), 40..70);
    // Shard 1: 30 context tokens (the borrowed anchor dropped) + 5 query + 4 fed replies.
    assert_eq!(two.shards()[1].n_filled(), 30 + 5 + 4);
    let mut one = StarSession::new(&models[..1], star, 70, 16, 7).unwrap();
    one.encode(&context, &mut |_, _| {}).unwrap();
    one.feed_and_sample(&query, &greedy).unwrap();
    for token in 70..75 {
        assert_close(
            &format!("query token {token}"),
            &kv_of(&two.shards()[1], tiny.n_layers, 32, token),
            &kv_of(&one.shards()[0], tiny.n_layers, 32, token),
            1e-4,
        );
    }
}

#[test]
fn documents_past_the_trained_context_run_and_past_the_device_are_refused() {
    // The tiny model was trained on 512 positions: a 600-token context is out of distribution
    // (the CLI warns) but runs; one whose caches cannot exist on the device is a typed error
    // before anything is allocated (on devices of its own, whose counters only it moves).
    let (models, tiny) = models_on((0..2).map(|_| own_gpu()));
    let star = StarOptions {
        block: 100,
        anchor: 100,
    };
    let context = text(600, tiny.vocab_size);
    let mut long = StarSession::new(&models, star, 600, 8, 64).unwrap();
    long.encode(&context, &mut |_, _| {}).unwrap();
    let greedy = SamplingParams::greedy();
    long.feed_and_sample(&text(3, tiny.vocab_size), &greedy)
        .unwrap();
    assert!(long.logits().unwrap().iter().all(|x| x.is_finite()));
    drop(long);
    let held: Vec<u64> = models.iter().map(|m| m.gpu().allocated_bytes()).collect();
    let err = match StarSession::new(&models, star, 2_000_000_000, 8, 64) {
        Ok(_) => panic!("a 2-billion-token context fits nowhere"),
        Err(e) => e,
    };
    assert_eq!(err.code(), "gpu-limit", "{err}");
    let after: Vec<u64> = models.iter().map(|m| m.gpu().allocated_bytes()).collect();
    assert_eq!(after, held, "nothing allocated");
}
