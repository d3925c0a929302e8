//! The sampler on the GPU against `sample_cpu`: exact token ids on logits with clear margins,
//! kept sets for top-k and top-p, and several steps chained through the token buffer and the
//! history ring with a single readback.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::index::sample as distinct_ids;
use rand::Rng;
use sinkstar::gpu::{Gpu, UniformArena};
use sinkstar::kernels::sample::{
    kept_cpu, random_unit, sample_cpu, work_bytes, HistoryRing, Params, Sample, SampleError,
    SamplingParams,
};

use crate::{random_vec, read_u32, rng, run, BROWSER};

/// Runs one dispatch per entry of `steps`, in order and in one submission, over shared
/// `logits [vocab_size]`, `history [history_len]` and a token buffer `[n_tokens]` that starts
/// as `tokens`; reads the token buffer and the ring back once at the end.
async fn run_steps(
    gpu: &Gpu,
    logits: &[f32],
    history: &[u32],
    tokens: &[u32],
    steps: &[Params],
) -> (Vec<u32>, Vec<u32>) {
    let kernel = Sample::new(gpu).unwrap();
    let mut arena = UniformArena::new(gpu, "sample params", steps.len() as u32).unwrap();
    let slots: Vec<_> = steps
        .iter()
        .map(|params| {
            let slot = arena.slot().unwrap();
            arena.set(slot, params).unwrap();
            slot
        })
        .collect();
    arena.upload(gpu);
    let logits_buf = gpu
        .storage_with("logits", bytemuck::cast_slice(logits))
        .unwrap();
    let history_buf = gpu
        .storage_with("history", bytemuck::cast_slice(history))
        .unwrap();
    let work = gpu
        .storage("work", work_bytes(logits.len() as u32))
        .unwrap();
    let tokens_buf = gpu
        .storage_with("tokens", bytemuck::cast_slice(tokens))
        .unwrap();
    let dispatches: Vec<_> = slots
        .iter()
        .map(|&slot| {
            kernel
                .dispatch(
                    gpu,
                    arena.binding(slot),
                    &logits_buf,
                    &history_buf,
                    &work,
                    &tokens_buf,
                )
                .unwrap()
        })
        .collect();
    run(gpu, &dispatches.iter().collect::<Vec<_>>());
    let tokens = read_u32(gpu, &tokens_buf, tokens.len()).await;
    let history = if history.is_empty() {
        Vec::new()
    } else {
        read_u32(gpu, &history_buf, history.len()).await
    };
    (tokens, history)
}

/// Params for `n_steps` draws with no history, step `i` writing `out[i]`.
fn draws(settings: &SamplingParams, vocab_size: usize, n_steps: usize) -> Vec<Params> {
    let ring = HistoryRing::new(0);
    (0..n_steps as u32)
        .map(|i| settings.params(vocab_size as u32, &ring, i, i).unwrap())
        .collect()
}

/// Runs `steps` on the GPU with no history and returns the tokens, checking each against
/// `sample_cpu`.
async fn gpu_draws_match_cpu(gpu: &Gpu, what: &str, logits: &[f32], steps: &[Params]) -> Vec<u32> {
    let (got, _) = run_steps(gpu, logits, &[], &vec![u32::MAX; steps.len()], steps).await;
    for (i, (params, &token)) in steps.iter().zip(&got).enumerate() {
        let want = sample_cpu(logits, &[], params);
        assert_eq!(token, want, "{what}: step {i}, params {params:?}");
    }
    got
}

/// The lowest id of the largest value, written out plainly.
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// `vocab_size` logits far below every live token: exp of their distance from the max is 0
/// in f32 at the temperatures used, but they are distinct, so top-k thresholds can land there.
fn background(rng: &mut StdRng, vocab_size: usize) -> Vec<f32> {
    (0..vocab_size)
        .map(|_| rng.random_range(-1000.0..-900.0))
        .collect()
}

/// Distinct random ids for `n` live tokens.
fn live_ids(rng: &mut StdRng, vocab_size: usize, n: usize) -> Vec<usize> {
    distinct_ids(rng, vocab_size, n).into_vec()
}

gpu_test!(sample_greedy_picks_argmax);
async fn sample_greedy_picks_argmax(gpu: &Gpu) {
    let mut rng = rng(21);
    let settings = SamplingParams {
        // Ignored at temperature 0.
        top_k: 3,
        top_p: 0.5,
        ..SamplingParams::greedy()
    };
    for vocab_size in [1, 2, 1000, 49152] {
        let random = random_vec(&mut rng, vocab_size, 10.0);
        // The max copied to a second id: the lower of the two must win.
        let mut tie = random.clone();
        let max_at = argmax(&tie) as usize;
        let other = rng.random_range(0..vocab_size);
        tie[other] = tie[max_at];
        let flat = vec![0.25; vocab_size];
        let negative: Vec<f32> = random.iter().map(|v| -v.abs() - 1.0).collect();
        for (case, logits) in [
            ("random", random),
            ("tie", tie),
            ("flat", flat),
            ("negative", negative),
        ] {
            let what = format!("greedy {case} vocab {vocab_size}");
            let steps = draws(&settings, vocab_size, 1);
            let got = gpu_draws_match_cpu(gpu, &what, &logits, &steps).await;
            assert_eq!(got[0], argmax(&logits), "{what}");
        }
    }
}

/// (case, logit of a, logit of b, ring contents, n_history, history_head, winning id).
type PenaltyCase = (&'static str, f32, f32, [u32; 4], u32, u32, usize);

gpu_test!(sample_repetition_penalty_moves_small_margins_only);
async fn sample_repetition_penalty_moves_small_margins_only(gpu: &Gpu) {
    let mut rng = rng(22);
    let vocab_size = 1000;
    let [a, b] = [10, 500];
    let settings = SamplingParams {
        repetition_penalty: 1.3,
        ..SamplingParams::greedy()
    };
    // a is the token in the ring unless the case says otherwise; 1000 and 4000 are ids past
    // the vocabulary, which the penalty ignores.
    let a_id = a as u32;
    let cases: [PenaltyCase; 9] = [
        // 2.0 / 1.3 = 1.54 < 1.9.
        ("positive, small margin", 2.0, 1.9, [a_id, 7, 8, 9], 4, 0, b),
        // 5.0 / 1.3 = 3.85 > 1.9.
        ("positive, large margin", 5.0, 1.9, [a_id, 7, 8, 9], 4, 0, a),
        // -1.0 * 1.3 = -1.3 < -1.1.
        (
            "negative, small margin",
            -1.0,
            -1.1,
            [a_id, 7, 8, 9],
            4,
            0,
            b,
        ),
        // -1.3 > -3.0.
        (
            "negative, large margin",
            -1.0,
            -3.0,
            [a_id, 7, 8, 9],
            4,
            0,
            a,
        ),
        // Penalized once (1.54 > 1.4), not three times (0.91).
        (
            "repeated token",
            2.0,
            1.4,
            [a_id, a_id, 1000, a_id],
            4,
            0,
            a,
        ),
        // A window of 2 ending before slot 1 holds slots 3 and 0; slots 1 and 2 are stale.
        ("stale slot", 2.0, 1.9, [7, 4000, a_id, 9], 2, 1, a),
        ("stale head slot", 2.0, 1.9, [7, a_id, 8, 9], 2, 1, a),
        ("newest slot", 2.0, 1.9, [a_id, 8, 7, 9], 2, 1, b),
        ("oldest slot, wrapped", 2.0, 1.9, [7, 8, 9, a_id], 2, 1, b),
    ];
    for (case, logit_a, logit_b, ring, n_history, head, winner) in cases {
        let what = format!("penalty {case}");
        let mut logits: Vec<f32> = (0..vocab_size)
            .map(|_| rng.random_range(-10.0..-8.0))
            .collect();
        logits[a] = logit_a;
        logits[b] = logit_b;
        let mut params = settings
            .params(vocab_size as u32, &HistoryRing::new(4), 0, 0)
            .unwrap();
        params.n_history = n_history;
        params.history_head = head;
        let (got, ring_after) = run_steps(gpu, &logits, &ring, &[u32::MAX], &[params]).await;
        assert_eq!(got[0], winner as u32, "{what}");
        assert_eq!(
            sample_cpu(&logits, &ring, &params),
            winner as u32,
            "{what}: cpu"
        );
        let mut want_ring = ring;
        want_ring[head as usize] = winner as u32;
        assert_eq!(
            ring_after, want_ring,
            "{what}: the token is appended at the head"
        );
    }
}

gpu_test!(sample_top_k_one_is_greedy);
async fn sample_top_k_one_is_greedy(gpu: &Gpu) {
    let mut rng = rng(23);
    for vocab_size in [1, 2, 1000, 49152] {
        let logits = random_vec(&mut rng, vocab_size, 10.0);
        let steps: Vec<Params> = [0.1, 0.7, 1.0, 3.0, 50.0]
            .into_iter()
            .flat_map(|temperature| [1.0, 0.5].map(|top_p| (temperature, top_p)))
            .enumerate()
            .map(|(i, (temperature, top_p))| {
                let settings = SamplingParams {
                    temperature,
                    top_k: 1,
                    top_p,
                    seed: rng.random(),
                    ..SamplingParams::default()
                };
                settings
                    .params(vocab_size as u32, &HistoryRing::new(0), i as u32, i as u32)
                    .unwrap()
            })
            .collect();
        let got =
            gpu_draws_match_cpu(gpu, &format!("top_k 1 vocab {vocab_size}"), &logits, &steps).await;
        assert!(
            got.iter().all(|&t| t == argmax(&logits)),
            "top_k 1 vocab {vocab_size}: {got:?}, argmax {}",
            argmax(&logits)
        );
    }
}

/// Panics unless every prefix of the kept tokens (largest first) holds a share of the mass at
/// least `margin` away from `top_p`, so that rounding cannot move the top-p threshold.
fn assert_top_p_margin(logits: &[f32], params: &Params, margin: f64) {
    if params.top_p >= 1.0 {
        return;
    }
    let mut z: Vec<f64> = kept_cpu(
        logits,
        &[],
        &Params {
            top_p: 1.0,
            ..*params
        },
    )
    .iter()
    .map(|&i| f64::from(logits[i as usize]) / f64::from(params.temperature))
    .collect();
    z.sort_by(|x, y| y.total_cmp(x));
    let weights: Vec<f64> = z.iter().map(|v| (v - z[0]).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut mass = 0.0;
    for w in weights {
        mass += w / total;
        assert!(
            (mass - f64::from(params.top_p)).abs() > margin,
            "top_p {} is within {margin} of a prefix mass {mass}",
            params.top_p
        );
    }
}

gpu_test!(sample_gpu_matches_cpu_over_seeds_and_steps);
async fn sample_gpu_matches_cpu_over_seeds_and_steps(gpu: &Gpu) {
    let mut rng = rng(24);
    // (temperature, top_k, top_p, repetition_penalty): 8 settings x 25 draws = 200 pairs of
    // (seed, step), each drawn at random.
    let settings = [
        (1.0, 0, 1.0, 1.0),
        (0.8, 40, 0.95, 1.0),
        (1.5, 5, 1.0, 1.0),
        (1.0, 0, 0.8, 1.0),
        (0.5, 10, 0.6, 1.3),
        (2.0, 100, 0.9, 1.2),
        (1.0, 3, 1.0, 1.0),
        (3.0, 0, 0.97, 0.8),
    ];
    for vocab_size in [1000, 49152] {
        // 24 live tokens 0.35 apart, so neighbouring probabilities differ by at least 12%.
        let mut logits = background(&mut rng, vocab_size);
        let live = live_ids(&mut rng, vocab_size, 24);
        for (rank, &id) in live.iter().enumerate() {
            logits[id] = 4.0 - 0.35 * rank as f32;
        }
        for (temperature, top_k, top_p, repetition_penalty) in settings {
            let what = format!(
                "vocab {vocab_size} temperature {temperature} top_k {top_k} top_p {top_p} \
                 penalty {repetition_penalty}"
            );
            let sampling = SamplingParams {
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                penalty_last_n: 8,
                seed: 0,
            };
            // The ring starts with three live tokens (a prompt) and takes every draw, so the
            // penalty changes from step to step; the CPU mirrors it with the same ring.
            let mut ring = sampling.ring();
            let mut history = vec![0; 8];
            for &id in &live[..3] {
                ring.push(&mut history, id as u32);
            }
            let history_before = history.clone();
            let mut steps = Vec::new();
            let mut want = Vec::new();
            for i in 0..25 {
                let mut params = sampling
                    .params(vocab_size as u32, &ring, rng.random(), i)
                    .unwrap();
                params.seed = rng.random();
                assert_top_p_margin(&logits, &params, 1e-3);
                let token = sample_cpu(&logits, &history, &params);
                ring.push(&mut history, token);
                steps.push(params);
                want.push(token);
            }
            let (got, history_after) =
                run_steps(gpu, &logits, &history_before, &[u32::MAX; 25], &steps).await;
            assert_eq!(got, want, "{what}");
            assert_eq!(history_after, history, "{what}: ring");
            // Every setting leaves several tokens likely enough to show up in 25 draws.
            let distinct: BTreeSet<u32> = got.iter().copied().collect();
            assert!(distinct.len() > 1, "{what}: only {distinct:?} drawn");
        }
    }
}

gpu_test!(sample_top_k_and_top_p_keep_the_expected_sets);
async fn sample_top_k_and_top_p_keep_the_expected_sets(gpu: &Gpu) {
    let mut rng = rng(25);
    let probs = [0.4, 0.25, 0.2, 0.1, 0.05];
    // (top_k, top_p, ranks kept): cumulative masses are 0.4, 0.65, 0.85, 0.95, 1.
    let cases: [(u32, f32, &[usize]); 7] = [
        (0, 0.3, &[0]),
        (0, 0.5, &[0, 1]),
        (0, 0.7, &[0, 1, 2]),
        (0, 0.9, &[0, 1, 2, 3]),
        (0, 0.99, &[0, 1, 2, 3, 4]),
        (2, 0.9, &[0, 1]),
        (3, 1.0, &[0, 1, 2]),
    ];
    // Every kept token must show up. The rarest (p = 0.05) is missed in 300 draws with
    // probability 2e-7, in the browser's 100 with 0.6% (SwiftShader takes ~36 ms a draw at
    // 49152 logits); the draws are seeded, so a pass is no accident of the run.
    let n_steps = if BROWSER { 100 } else { 300 };
    for (vocab_size, minus_inf) in [(1000, true), (49152, false)] {
        let mut logits = if minus_inf {
            vec![f32::NEG_INFINITY; vocab_size]
        } else {
            background(&mut rng, vocab_size)
        };
        let live = live_ids(&mut rng, vocab_size, probs.len());
        for (&id, p) in live.iter().zip(probs) {
            logits[id] = f32::ln(p);
        }
        for (top_k, top_p, ranks) in cases {
            let what = format!("vocab {vocab_size} top_k {top_k} top_p {top_p}");
            let want: BTreeSet<u32> = ranks.iter().map(|&r| live[r] as u32).collect();
            let settings = SamplingParams {
                temperature: 1.0,
                top_k,
                top_p,
                seed: rng.random(),
                ..SamplingParams::default()
            };
            let steps = draws(&settings, vocab_size, n_steps);
            let kept: BTreeSet<u32> = kept_cpu(&logits, &[], &steps[0]).into_iter().collect();
            assert_eq!(kept, want, "{what}: cpu kept set");
            let (got, _) = run_steps(gpu, &logits, &[], &vec![u32::MAX; n_steps], &steps).await;
            let picked: BTreeSet<u32> = got.into_iter().collect();
            assert_eq!(picked, want, "{what}: tokens picked in {n_steps} steps");
        }
    }

    // Ties at the k-th largest are kept: top_k 2 keeps the three tokens tied for second.
    let vocab_size = 1000;
    let mut logits = background(&mut rng, vocab_size);
    let live = live_ids(&mut rng, vocab_size, 4);
    for (&id, logit) in live.iter().zip([1.0, 0.0, 0.0, 0.0]) {
        logits[id] = logit;
    }
    let settings = SamplingParams {
        temperature: 1.0,
        top_k: 2,
        top_p: 1.0,
        ..SamplingParams::default()
    };
    let steps = draws(&settings, vocab_size, n_steps);
    let want: BTreeSet<u32> = live.iter().map(|&id| id as u32).collect();
    let kept: BTreeSet<u32> = kept_cpu(&logits, &[], &steps[0]).into_iter().collect();
    assert_eq!(kept, want, "top_k tie: cpu kept set");
    let (got, _) = run_steps(gpu, &logits, &[], &vec![u32::MAX; n_steps], &steps).await;
    assert_eq!(
        got.into_iter().collect::<BTreeSet<u32>>(),
        want,
        "top_k tie"
    );
}

gpu_test!(sample_frequencies_follow_probabilities);
async fn sample_frequencies_follow_probabilities(gpu: &Gpu) {
    let mut rng = rng(26);
    let vocab_size = 1000;
    let probs: [f64; 3] = [0.5, 0.3, 0.2];
    let mut logits = vec![f32::NEG_INFINITY; vocab_size];
    let live = live_ids(&mut rng, vocab_size, probs.len());
    for (&id, p) in live.iter().zip(probs) {
        logits[id] = p.ln() as f32;
    }
    let settings = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 1234,
        ..SamplingParams::default()
    };
    let n_steps = 2000;
    let got = gpu_draws_match_cpu(
        gpu,
        "frequencies",
        &logits,
        &draws(&settings, vocab_size, n_steps),
    )
    .await;
    for (&id, p) in live.iter().zip(probs) {
        let freq = got.iter().filter(|&&t| t == id as u32).count() as f64 / n_steps as f64;
        // Deterministic given the seed; 0.05 is over 4 standard deviations at 2000 draws.
        assert!(
            (freq - p).abs() < 0.05,
            "token {id}: frequency {freq}, probability {p}"
        );
    }
}

gpu_test!(sample_draw_reproduces_the_hash);
async fn sample_draw_reproduces_the_hash(gpu: &Gpu) {
    // 1024 equal logits: every running sum is an exact integer, so the GPU must pick
    // floor(u * 1024), the hash's top 10 bits.
    let mut rng = rng(27);
    let logits = vec![0.0; 1024];
    let steps: Vec<Params> = (0..100)
        .map(|i| {
            let settings = SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                seed: rng.random(),
                ..SamplingParams::default()
            };
            settings
                .params(1024, &HistoryRing::new(0), rng.random(), i)
                .unwrap()
        })
        .collect();
    let got = gpu_draws_match_cpu(gpu, "hash", &logits, &steps).await;
    for (params, token) in steps.iter().zip(got) {
        let u = random_unit(params.seed, params.step);
        assert_eq!(
            token,
            (u * 1024.0) as u32,
            "seed {} step {}",
            params.seed,
            params.step
        );
    }
}

gpu_test!(sample_steps_chain_through_the_token_buffer);
async fn sample_steps_chain_through_the_token_buffer(gpu: &Gpu) {
    // A decode loop without readback: the prompt sits in the token buffer and the ring, each
    // step writes tokens[n_prompt + i] and appends to the ring, and the host only advances its
    // HistoryRing. Greedy with a strong penalty over the last 3 tokens cycles through the top.
    let vocab_size = 100;
    let logits: Vec<f32> = (0..vocab_size).map(|i| 1.0 + i as f32 * 0.01).collect();
    let prompt = [5, 7, 99, 98, 3];
    let n_steps = 12;
    let sampling = SamplingParams {
        repetition_penalty: 1.5,
        penalty_last_n: 3,
        ..SamplingParams::greedy()
    };
    let mut ring = sampling.ring();
    let mut history = vec![0; 3];
    for &token in &prompt {
        ring.push(&mut history, token);
    }
    let history_before = history.clone();
    let mut tokens = prompt.to_vec();
    tokens.resize(prompt.len() + n_steps, u32::MAX);
    let mut steps = Vec::new();
    let mut want = prompt.to_vec();
    for i in 0..n_steps as u32 {
        let params = sampling
            .params(vocab_size as u32, &ring, i, prompt.len() as u32 + i)
            .unwrap();
        let token = sample_cpu(&logits, &history, &params);
        ring.push(&mut history, token);
        steps.push(params);
        want.push(token);
    }
    let (got, history_after) = run_steps(gpu, &logits, &history_before, &tokens, &steps).await;
    assert_eq!(got, want);
    assert_eq!(history_after, history);
    // 99 and 98, the two largest, open in the window, so the first pick is 97; each pick then
    // holds its token off for the next two steps.
    assert_eq!(&want[prompt.len()..prompt.len() + 4], &[97, 99, 98, 96]);
}

cpu_test!(sample_params_validation);
fn sample_params_validation() {
    assert_eq!(SamplingParams::default().validate(), Ok(()));
    assert_eq!(SamplingParams::greedy().validate(), Ok(()));
    let base = SamplingParams::default();
    let bad = [
        (
            SamplingParams {
                temperature: -0.5,
                ..base
            },
            SampleError::Temperature { value: -0.5 },
            "temperature must be finite and >= 0 (0 = greedy), got -0.5",
        ),
        (
            SamplingParams {
                temperature: f32::INFINITY,
                ..base
            },
            SampleError::Temperature {
                value: f32::INFINITY,
            },
            "got inf",
        ),
        (
            SamplingParams { top_p: 0.0, ..base },
            SampleError::TopP { value: 0.0 },
            "top_p must be in (0, 1] (1 = off), got 0",
        ),
        (
            SamplingParams { top_p: 1.5, ..base },
            SampleError::TopP { value: 1.5 },
            "got 1.5",
        ),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..base
            },
            SampleError::RepetitionPenalty { value: 0.0 },
            "repetition_penalty must be finite and > 0 (1 = off), got 0",
        ),
        (
            SamplingParams {
                repetition_penalty: -1.0,
                ..base
            },
            SampleError::RepetitionPenalty { value: -1.0 },
            "got -1",
        ),
    ];
    for (settings, error, message) in bad {
        let got = settings.validate().unwrap_err();
        assert_eq!(got, error);
        assert!(got.to_string().contains(message), "{got}");
        assert_eq!(settings.params(10, &settings.ring(), 0, 0), Err(error));
    }
    // NaN compares unequal to itself, so match on the variant.
    for settings in [
        SamplingParams {
            temperature: f32::NAN,
            ..base
        },
        SamplingParams {
            top_p: f32::NAN,
            ..base
        },
        SamplingParams {
            repetition_penalty: f32::NAN,
            ..base
        },
    ] {
        let got = settings.validate().unwrap_err();
        assert!(got.to_string().ends_with("got NaN"), "{got}");
    }
    assert_eq!(
        base.params(0, &base.ring(), 0, 0),
        Err(SampleError::EmptyVocab)
    );
}

cpu_test!(sample_history_ring_wraps);
fn sample_history_ring_wraps() {
    let mut ring = HistoryRing::new(3);
    let mut history = vec![0; 3];
    for token in [10, 11, 12, 13, 14] {
        ring.push(&mut history, token);
    }
    assert_eq!(history, [13, 14, 12]);
    assert_eq!((ring.head(), ring.n_valid(), ring.capacity()), (2, 3, 3));
    // A ring of capacity 0 takes nothing and never moves.
    let mut empty = HistoryRing::new(0);
    empty.push(&mut [], 1);
    assert_eq!((empty.head(), empty.n_valid()), (0, 0));
}
