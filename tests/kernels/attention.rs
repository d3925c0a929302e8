use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use sinkstar::gpu::{Gpu, GpuError};
use sinkstar::kernels::attention::{
    attention_cpu, decode_parts, project_heads_cpu, rope_cpu, rope_table, Attention,
    AttentionError, Buffers, Params, Projection, ProjectionBuffers, Variant, EMPTY_LSE, EMPTY_SLOT,
    MAX_PARTS, MIN_PART_SLOTS, ROW_MERGE_BYTES, ROW_THREADS, TILE_ROWS,
};
use sinkstar::kernels::matmul::{upload_weight, WeightFormat};
use sinkstar::model::quant::quantize;

use crate::{
    arena_with, assert_close, random_vec, read_f32, rng, run, Tol, BROWSER, TOL_REDUCTION,
};

/// Dot products over up to 128 dims and softmax sums over up to 300 keys in f32, summed in
/// another order than the CPU reference.
const TOL_ATTENTION: Tol = TOL_REDUCTION;

/// Moving every token by the same distance keeps each (query, key) angle difference but rounds
/// other cos/sin table entries to f32 (~6e-8 each); the scores move by ~1e-7.
const TOL_SHIFT: Tol = TOL_REDUCTION;

/// One rotation of unit vectors: only the f32 rounding of cos and sin.
const TOL_ROPE: Tol = Tol {
    abs: 1e-7,
    rel: 1e-6,
};

/// A score over up to 128 products of values below 1 (sum up to ~10), each factor carrying
/// the f32 rounding of two rotations.
const TOL_RELATIVE: Tol = Tol {
    abs: 2e-5,
    rel: 1e-5,
};

/// A row without keys gets zeros written, not computed.
const TOL_EXACT: Tol = Tol { abs: 0.0, rel: 0.0 };

/// RoPE base of the default model.
const BASE: f64 = 100_000.0;

/// Head shapes: single head, the default model's 9/3 grouping, one kv head for four queries
/// (ratio 4), plain multi-head; with every head_dim the variants must serve.
const HEADS: [(usize, usize); 4] = [(1, 1), (9, 3), (4, 1), (8, 8)];
const HEAD_DIMS: [usize; 3] = [64, 80, 128];

/// One attention call: shapes, positions and which token each slot holds.
#[derive(Clone)]
struct Case {
    name: String,
    n_rows: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    first_token: u32,
    n_sink: u32,
    window: u32,
    /// Star Attention's block mask (0: none) and anchor.
    block: u32,
    anchor: u32,
    n_slots: usize,
    /// `[capacity]`, may be longer than `n_slots`.
    slot_token: Vec<u32>,
}

/// q `[n_rows, n_heads, head_dim]`, k and v caches `[capacity, n_kv_heads, head_dim]`.
#[derive(Clone)]
struct Inputs {
    q: Vec<f32>,
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

impl Case {
    fn params(&self) -> Params {
        Params {
            n_rows: self.n_rows as u32,
            n_heads: self.n_heads as u32,
            n_kv_heads: self.n_kv_heads as u32,
            head_dim: self.head_dim as u32,
            n_slots: self.n_slots as u32,
            first_token: self.first_token,
            n_sink: self.n_sink,
            window: self.window,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            block: self.block,
            anchor: self.anchor,
            n_parts: 1,
        }
    }

    fn kv_row_elems(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Queries scaled up so that softmaxes are far from uniform; every slot gets values, empty
    /// ones too, so a kernel that reads one shows up.
    fn random_inputs(&self, rng: &mut StdRng) -> Inputs {
        let n_cache = self.slot_token.len() * self.kv_row_elems();
        Inputs {
            q: random_vec(rng, self.n_rows * self.n_heads * self.head_dim, 3.0),
            k_cache: random_vec(rng, n_cache, 1.0),
            v_cache: random_vec(rng, n_cache, 1.0),
        }
    }

    /// The rows both forms read.
    fn rope(&self) -> Vec<f32> {
        rope_table(BASE, self.head_dim, self.params().n_pos_tile() as usize)
    }

    async fn run_gpu(&self, gpu: &Gpu, inputs: &Inputs) -> Vec<f32> {
        self.run_gpu_with_lse(gpu, inputs).await.0
    }

    /// The row form's output `[n_rows, n_heads, head_dim]` and LSEs `[n_rows, n_heads]` with
    /// the GPUs' threads, for the test's own checks; the tiled form and the row form with the
    /// CPU adapters' threads run the same case and are checked here against the CPU reference,
    /// so every case of every test covers both forms and both widths of the row form.
    async fn run_gpu_with_lse(&self, gpu: &Gpu, inputs: &Inputs) -> (Vec<f32>, Vec<f32>) {
        let (want, want_lse) = self.run_cpu_with_lse(inputs);
        let [narrow, wide] = ROW_THREADS.map(|threads| self.row_variant(threads));
        for variant in [self.tile_variant(), narrow] {
            let (got, got_lse) = self.run_variant(gpu, inputs, variant).await;
            let label = format!("{} {}", variant.label(), self.name);
            assert_close(&label, &got, &want, TOL_ATTENTION);
            assert_close(&format!("{label} lse"), &got_lse, &want_lse, TOL_ATTENTION);
        }
        self.run_variant(gpu, inputs, wide).await
    }

    fn row_variant(&self, threads: u32) -> Variant {
        Variant::row_for(self.head_dim as u32, threads).unwrap()
    }

    fn tile_variant(&self) -> Variant {
        Variant::tile_for(
            self.head_dim as u32,
            self.n_heads as u32,
            self.n_kv_heads as u32,
        )
        .unwrap()
    }

    /// One variant's output and LSEs.
    async fn run_variant(
        &self,
        gpu: &Gpu,
        inputs: &Inputs,
        variant: Variant,
    ) -> (Vec<f32>, Vec<f32>) {
        self.run_parts(gpu, inputs, variant, 1).await
    }

    /// One variant's outputs `[n_parts, n_rows, n_heads, head_dim]` and LSEs `[n_parts, n_rows,
    /// n_heads]`, each row's keys split into `n_parts`.
    async fn run_parts(
        &self,
        gpu: &Gpu,
        inputs: &Inputs,
        variant: Variant,
        n_parts: u32,
    ) -> (Vec<f32>, Vec<f32>) {
        let (out, lse, _) = self.run_bound(gpu, inputs, variant, n_parts, None).await;
        (out, lse)
    }

    /// A variant with the fused output projection, given W_o's blocks: its output, LSEs and
    /// the residual buffer `[(1 + n_heads) n_rows, dim]`, whose first `n_rows` rows hold
    /// [`UNTOUCHED`] before.
    async fn run_projecting(
        &self,
        gpu: &Gpu,
        inputs: &Inputs,
        variant: Variant,
        weight: &[u8],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (out, lse, residual) = self.run_bound(gpu, inputs, variant, 1, Some(weight)).await;
        (out, lse, residual.expect("a projecting run"))
    }

    async fn run_bound(
        &self,
        gpu: &Gpu,
        inputs: &Inputs,
        variant: Variant,
        n_parts: u32,
        projection: Option<&[u8]>,
    ) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
        let params = Params {
            n_parts,
            ..self.params()
        };
        let kernel = Attention::with_variant(gpu, variant).unwrap();
        let (arena, slot) = arena_with(gpu, &params);
        let storage = |what, data: &[u8]| gpu.storage_with(what, data).unwrap();
        let q = storage("q", bytemuck::cast_slice(&inputs.q));
        let k_cache = storage("k_cache", bytemuck::cast_slice(&inputs.k_cache));
        let v_cache = storage("v_cache", bytemuck::cast_slice(&inputs.v_cache));
        let slot_token = storage("slot_token", bytemuck::cast_slice(&self.slot_token));
        let rope = storage("rope", bytemuck::cast_slice(&self.rope()));
        let n_out = n_parts as usize * self.n_rows * self.n_heads * self.head_dim;
        // NaN-filled, so that an element the kernel leaves unwritten fails.
        let out = storage("out", bytemuck::cast_slice(&vec![f32::NAN; n_out]));
        let n_lse = n_parts as usize * self.n_rows * self.n_heads;
        let lse = storage("lse", bytemuck::cast_slice(&vec![f32::NAN; n_lse]));
        let buffers = Buffers {
            q: &q,
            k_cache: &k_cache,
            v_cache: &v_cache,
            slot_token: &slot_token,
            rope: &rope,
            out: &out,
            lse: &lse,
        };
        let (dispatch, residual) = match (variant.projection(), projection) {
            (Some(output), Some(weight)) => {
                let q_dim = self.n_heads * self.head_dim;
                let weight = upload_weight(gpu, "wo", output.format, q_dim, weight).unwrap();
                // The step's rows hold a value no kernel computes, the parts NaN.
                let n_stream = self.n_rows * output.dim as usize;
                let mut held = vec![UNTOUCHED; n_stream];
                held.resize((1 + self.n_heads) * n_stream, f32::NAN);
                let residual = storage("residual", bytemuck::cast_slice(&held));
                let projection = ProjectionBuffers {
                    weight: &weight,
                    residual: &residual,
                };
                let dispatch = kernel
                    .dispatch_projecting(gpu, arena.binding(slot), &params, &buffers, &projection)
                    .unwrap();
                (dispatch, Some((residual, held.len())))
            }
            _ => {
                let dispatch = kernel
                    .dispatch(gpu, arena.binding(slot), &params, &buffers)
                    .unwrap();
                (dispatch, None)
            }
        };
        run(gpu, &[&dispatch]);
        let residual = match residual {
            Some((buffer, len)) => Some(read_f32(gpu, &buffer, len).await),
            None => None,
        };
        (
            read_f32(gpu, &out, n_out).await,
            read_f32(gpu, &lse, n_lse).await,
            residual,
        )
    }

    fn run_cpu(&self, inputs: &Inputs) -> Vec<f32> {
        self.run_cpu_with_lse(inputs).0
    }

    fn run_cpu_with_lse(&self, inputs: &Inputs) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0.0; self.n_rows * self.n_heads * self.head_dim];
        let lse = attention_cpu(
            &self.params(),
            &inputs.q,
            &inputs.k_cache,
            &inputs.v_cache,
            &self.slot_token,
            &self.rope(),
            &mut out,
        );
        (out, lse)
    }

    fn label(&self) -> String {
        let variant = self.row_variant(ROW_THREADS[1]);
        format!("{} {}", variant.label(), self.name)
    }

    /// Output and LSE against the CPU reference.
    async fn check_against_cpu(&self, gpu: &Gpu, rng: &mut StdRng) {
        let inputs = self.random_inputs(rng);
        let (got, got_lse) = self.run_gpu_with_lse(gpu, &inputs).await;
        let (want, want_lse) = self.run_cpu_with_lse(&inputs);
        assert_close(&self.label(), &got, &want, TOL_ATTENTION);
        let label = format!("{} lse", self.label());
        assert_close(&label, &got_lse, &want_lse, TOL_ATTENTION);
    }
}

/// Dense causal attention over tokens `0..n_tokens` spread over the slots in a shuffled order,
/// the rows being the last `n_rows` tokens (a prefill chunk after a prefix). Three spare slots
/// past `n_slots` hold token 0, visible to every row: a kernel that scans past `n_slots` differs.
fn dense_case(
    rng: &mut StdRng,
    n_rows: usize,
    heads: (usize, usize),
    head_dim: usize,
    n_tokens: usize,
) -> Case {
    let mut slot_token: Vec<u32> = (0..n_tokens as u32).collect();
    slot_token.shuffle(rng);
    slot_token.extend([0; 3]);
    Case {
        name: format!(
            "dense rows {n_rows} heads {}/{} head_dim {head_dim} slots {n_tokens}",
            heads.0, heads.1
        ),
        n_rows,
        n_heads: heads.0,
        n_kv_heads: heads.1,
        head_dim,
        first_token: (n_tokens - n_rows) as u32,
        // Every token is a sink: q_pos = t and k_pos = u, plain dense attention.
        n_sink: slot_token.len() as u32,
        window: 1,
        block: 0,
        anchor: 0,
        n_slots: n_tokens,
        slot_token,
    }
}

/// What a ring holds after tokens `0..=last_token` were written in order: sinks in slots
/// `0..n_sink`, the rest cycling through `ring_len` slots after them (never-written slots empty).
fn ring_slot_token(n_sink: u32, ring_len: u32, last_token: u32) -> Vec<u32> {
    let mut slot_token = vec![EMPTY_SLOT; (n_sink + ring_len) as usize];
    for u in 0..=last_token {
        let slot = if u < n_sink {
            u
        } else {
            n_sink + (u - n_sink) % ring_len
        };
        slot_token[slot as usize] = u;
    }
    slot_token
}

/// A chunk of `n_rows` queries ending at `last_token` against a sink-window ring sized as
/// sink-window.md §6 asks (`window + n_rows - 1` ring slots), every slot scanned.
fn ring_case(
    heads: (usize, usize),
    head_dim: usize,
    n_sink: u32,
    window: u32,
    n_rows: u32,
    last_token: u32,
) -> Case {
    let slot_token = ring_slot_token(n_sink, window + n_rows - 1, last_token);
    Case {
        name: format!(
            "ring sink {n_sink} window {window} rows {n_rows} last token {last_token} heads {}/{} head_dim {head_dim}",
            heads.0, heads.1
        ),
        n_rows: n_rows as usize,
        n_heads: heads.0,
        n_kv_heads: heads.1,
        head_dim,
        first_token: last_token + 1 - n_rows,
        n_sink,
        window,
        block: 0,
        anchor: 0,
        n_slots: slot_token.len(),
        slot_token,
    }
}

/// Every (n_sink, window, chunk) with chunks ending at the first tokens (fewer tokens than
/// sinks), just after the first eviction, after the ring wrapped three times, and far on.
/// The browser keeps no sink and more sinks than the first chunk's tokens, a window of one
/// and a wide one, and chunks shorter and longer than the window.
fn ring_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut shapes = HEADS
        .iter()
        .flat_map(|&h| HEAD_DIMS.map(|d| (h, d)))
        .cycle();
    let (sink_counts, windows): (&[u32], &[u32]) = if BROWSER {
        (&[0, 4], &[1, 33])
    } else {
        (&[0, 1, 4], &[1, 2, 33])
    };
    for &n_sink in sink_counts {
        for &window in windows {
            let row_counts = if BROWSER {
                vec![3, window + 5]
            } else {
                vec![1, 3, window + 5]
            };
            for n_rows in row_counts {
                let ring_len = window + n_rows - 1;
                let mut ends = vec![
                    n_rows - 1,
                    n_sink + window + n_rows,
                    n_sink + 3 * ring_len + 1,
                    n_sink + 200 + n_rows,
                ];
                ends.sort();
                ends.dedup();
                for last_token in ends {
                    let (heads, head_dim) = shapes.next().expect("cycle never ends");
                    cases.push(ring_case(
                        heads, head_dim, n_sink, window, n_rows, last_token,
                    ));
                }
            }
        }
    }
    cases
}

/// sink-window.md §10.3: rebuild the visible tokens in text order, give them positions
/// `0..n` by index, and run plain causal attention on that short sequence (the query sits at
/// its own index). Independent of the spec's position formulas; needs every visible token in
/// the cache, which a ring of `window + n_rows - 1` slots guarantees.
fn repack_oracle(case: &Case, inputs: &Inputs) -> Vec<f32> {
    let hd = case.head_dim;
    let group = case.n_heads / case.n_kv_heads;
    let (n_sink, window) = (case.n_sink, case.window);
    let n_pos = (n_sink + window) as usize;
    let table = rope_table(BASE, hd, n_pos);
    let mut out = vec![0.0; case.n_rows * case.n_heads * hd];
    for r in 0..case.n_rows {
        let t = case.first_token + r as u32;
        let mut keys: Vec<(u32, usize)> = case.slot_token[..case.n_slots]
            .iter()
            .enumerate()
            .filter(|&(_, &u)| u != EMPTY_SLOT && u <= t && (u < n_sink || t - u < window))
            .map(|(slot, &u)| (u, slot))
            .collect();
        keys.sort();
        let q_pos = keys
            .iter()
            .position(|&(u, _)| u == t)
            .expect("the query's own token is cached");
        for h in 0..case.n_heads {
            let at = (r * case.n_heads + h) * hd;
            let mut q = inputs.q[at..at + hd].to_vec();
            rope_cpu(&mut q, q_pos, &table);
            let kv_row = |slot: usize| (slot * case.n_kv_heads + h / group) * hd;
            let scores: Vec<f64> = keys
                .iter()
                .enumerate()
                .map(|(pos, &(_, slot))| {
                    let mut k = inputs.k_cache[kv_row(slot)..kv_row(slot) + hd].to_vec();
                    rope_cpu(&mut k, pos, &table);
                    let qk: f64 = q.iter().zip(&k).map(|(a, b)| f64::from(a * b)).sum();
                    qk / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for (&(_, slot), w) in keys.iter().zip(&weights) {
                let v = &inputs.v_cache[kv_row(slot)..kv_row(slot) + hd];
                for (o, x) in out[at..at + hd].iter_mut().zip(v) {
                    *o += (w / sum * f64::from(*x)) as f32;
                }
            }
        }
    }
    out
}

gpu_test!(attention_row_form_reads_pairs_where_quads_do_not_fit);
async fn attention_row_form_reads_pairs_where_quads_do_not_fit(gpu: &Gpu) {
    // Heads of an odd number of pairs (6, 10 values) take the row form's pair path; the tiled
    // form (quads only) refuses them, so only the row form is compared here.
    let mut rng = rng(22);
    for head_dim in [6, 10] {
        assert!(Variant::tile_for(head_dim as u32, 9, 3).is_err());
        for (n_tokens, n_rows) in [(1, 1), (100, 1), (300, 5)] {
            let case = dense_case(&mut rng, n_rows, (9, 3), head_dim, n_tokens);
            let inputs = case.random_inputs(&mut rng);
            let (want, want_lse) = case.run_cpu_with_lse(&inputs);
            for threads in ROW_THREADS {
                let row = case.row_variant(threads);
                let (got, got_lse) = case.run_variant(gpu, &inputs, row).await;
                let label = format!("{} {}", row.label(), case.name);
                assert_close(&label, &got, &want, TOL_ATTENTION);
                assert_close(&format!("{label} lse"), &got_lse, &want_lse, TOL_ATTENTION);
            }
        }
    }
}

gpu_test!(attention_dense_matches_cpu);
async fn attention_dense_matches_cpu(gpu: &Gpu) {
    let mut rng = rng(21);
    let mut cases = Vec::new();
    for heads in HEADS {
        for head_dim in HEAD_DIMS {
            for n_tokens in [1, 7, 100, 300] {
                for n_rows in [1, 5, 33].into_iter().filter(|&n| n <= n_tokens) {
                    cases.push((heads, head_dim, n_tokens, n_rows));
                }
            }
        }
    }
    // The browser runs every 11th case: 11 is coprime to the 9 (tokens, rows) pairs of each
    // (heads, head_dim), so its 10 cases cover every head shape, head_dim and pair.
    let stride = if BROWSER { 11 } else { 1 };
    for (heads, head_dim, n_tokens, n_rows) in cases.into_iter().step_by(stride) {
        dense_case(&mut rng, n_rows, heads, head_dim, n_tokens)
            .check_against_cpu(gpu, &mut rng)
            .await;
    }
}

gpu_test!(attention_ring_matches_cpu_and_repacked_dense);
async fn attention_ring_matches_cpu_and_repacked_dense(gpu: &Gpu) {
    let mut rng = rng(22);
    for case in ring_cases() {
        let inputs = case.random_inputs(&mut rng);
        let got = case.run_gpu(gpu, &inputs).await;
        assert_close(&case.label(), &got, &case.run_cpu(&inputs), TOL_ATTENTION);
        let repacked = repack_oracle(&case, &inputs);
        assert_close(
            &format!("{} vs repacked", case.label()),
            &got,
            &repacked,
            TOL_ATTENTION,
        );
    }
}

gpu_test!(attention_window_of_one_returns_own_value);
/// sink-window.md §10.5: with no sinks and a window of one, each row sees only itself, so its
/// output is its own value row.
async fn attention_window_of_one_returns_own_value(gpu: &Gpu) {
    let mut rng = rng(23);
    for (n_rows, last_token) in [(1, 0), (1, 17), (3, 40)] {
        let case = ring_case((9, 3), 64, 0, 1, n_rows, last_token);
        let inputs = case.random_inputs(&mut rng);
        let got = case.run_gpu(gpu, &inputs).await;
        let hd = case.head_dim;
        let mut want = Vec::new();
        for r in 0..case.n_rows {
            let t = case.first_token + r as u32;
            let slot = case.slot_token.iter().position(|&u| u == t).unwrap();
            for h in 0..case.n_heads {
                let at = (slot * case.n_kv_heads + h / 3) * hd;
                want.extend_from_slice(&inputs.v_cache[at..at + hd]);
            }
        }
        assert_close(&case.label(), &got, &want, TOL_ATTENTION);
    }
}

gpu_test!(attention_row_without_visible_keys_is_zero);
async fn attention_row_without_visible_keys_is_zero(gpu: &Gpu) {
    let mut rng = rng(24);
    // Rows are tokens 3 and 4; the cache holds only empty slots and later tokens.
    let mut case = dense_case(&mut rng, 2, (4, 1), 64, 5);
    case.name = "no visible key".into();
    case.slot_token = vec![EMPTY_SLOT, 9, EMPTY_SLOT, 5, 6];
    case.n_slots = 5;
    let inputs = case.random_inputs(&mut rng);
    let got = case.run_gpu(gpu, &inputs).await;
    let zeros = vec![0.0; got.len()];
    assert_close(&case.label(), &got, &zeros, TOL_EXACT);
    assert_close(&case.label(), &case.run_cpu(&inputs), &zeros, TOL_EXACT);
    let (_, lse) = case.run_gpu_with_lse(gpu, &inputs).await;
    let empty = vec![EMPTY_LSE; lse.len()];
    assert_close(&format!("{} lse", case.label()), &lse, &empty, TOL_EXACT);
    assert_close(
        "cpu lse",
        &case.run_cpu_with_lse(&inputs).1,
        &empty,
        TOL_EXACT,
    );
}

gpu_test!(attention_ignores_which_slot_holds_a_token);
/// The slot a token sits in is storage, not meaning: moving (token, key, value) triples to
/// other slots leaves the output unchanged.
async fn attention_ignores_which_slot_holds_a_token(gpu: &Gpu) {
    let mut rng = rng(25);
    let case = ring_case((9, 3), 64, 4, 33, 3, 150);
    let inputs = case.random_inputs(&mut rng);
    let before = case.run_gpu(gpu, &inputs).await;
    let capacity = case.slot_token.len();
    let mut perm: Vec<usize> = (0..capacity).collect();
    perm.shuffle(&mut rng);
    let row = case.kv_row_elems();
    let mut moved_case = case.clone();
    let mut moved = inputs.clone();
    for (from, &to) in perm.iter().enumerate() {
        moved_case.slot_token[to] = case.slot_token[from];
        moved.k_cache[to * row..(to + 1) * row]
            .copy_from_slice(&inputs.k_cache[from * row..(from + 1) * row]);
        moved.v_cache[to * row..(to + 1) * row]
            .copy_from_slice(&inputs.v_cache[from * row..(from + 1) * row]);
    }
    let after = moved_case.run_gpu(gpu, &moved).await;
    assert_close(
        &format!("{} slots permuted", case.label()),
        &after,
        &before,
        TOL_ATTENTION,
    );
}

gpu_test!(attention_uses_token_positions);
/// Token indices are positions: giving two visible keys each other's token index (their data
/// stays put) rotates them differently, so the output changes, and the reference agrees.
async fn attention_uses_token_positions(gpu: &Gpu) {
    let mut rng = rng(26);
    let case = dense_case(&mut rng, 1, (9, 3), 64, 7);
    let inputs = case.random_inputs(&mut rng);
    let before = case.run_gpu(gpu, &inputs).await;
    let mut relabeled = case.clone();
    let a = case.slot_token.iter().position(|&u| u == 0).unwrap();
    let b = case.slot_token.iter().position(|&u| u == 5).unwrap();
    relabeled.slot_token.swap(a, b);
    let after = relabeled.run_gpu(gpu, &inputs).await;
    let change = before
        .iter()
        .zip(&after)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    // 100x the tolerance: a kernel that ignored positions would change nothing.
    assert!(
        change > 1e-3,
        "swapping tokens 0 and 5 changed the output by only {change}"
    );
    assert_close(
        &relabeled.label(),
        &after,
        &relabeled.run_cpu(&inputs),
        TOL_ATTENTION,
    );
}

gpu_test!(attention_is_shift_invariant);
/// RoPE depends on relative positions only: moving the query and every key by the same
/// distance leaves the output unchanged (checked on the GPU, through the table).
async fn attention_is_shift_invariant(gpu: &Gpu) {
    let mut rng = rng(27);
    let case = dense_case(&mut rng, 5, (4, 1), 80, 100);
    let inputs = case.random_inputs(&mut rng);
    let before = case.run_gpu(gpu, &inputs).await;
    for shift in [1, 100, 5000] {
        let mut shifted = case.clone();
        shifted.name = format!("{} shifted by {shift}", case.name);
        shifted.first_token += shift;
        for u in &mut shifted.slot_token {
            *u += shift;
        }
        // Still dense: every token below n_sink.
        shifted.n_sink = 1 << 20;
        assert_close(
            &shifted.label(),
            &shifted.run_gpu(gpu, &inputs).await,
            &before,
            TOL_SHIFT,
        );
    }
}

gpu_test!(attention_wide_window_is_dense);
/// sink-window.md §3: when the window never overflows, positions are text positions, so
/// (all sinks), (no sink, wide window) and (4 sinks, wide window) are the same dense attention.
async fn attention_wide_window_is_dense(gpu: &Gpu) {
    let mut rng = rng(28);
    let dense = dense_case(&mut rng, 5, (9, 3), 64, 40);
    let inputs = dense.random_inputs(&mut rng);
    let want = dense.run_gpu(gpu, &inputs).await;
    for (n_sink, window) in [(0, 40), (4, 36), (4, 1000)] {
        let mut case = dense.clone();
        case.name = format!("dense as sink {n_sink} window {window}");
        (case.n_sink, case.window) = (n_sink, window);
        assert_close(
            &case.label(),
            &case.run_gpu(gpu, &inputs).await,
            &want,
            TOL_ATTENTION,
        );
    }
}

cpu_test!(rope_rotates_adjacent_pairs);
/// The convention of model.md §5, checked against angles computed here in f64: pair i is
/// (x[2i], x[2i+1]) and turns by pos · base^(−2i/head_dim).
fn rope_rotates_adjacent_pairs() {
    let head_dim = 64;
    let table = rope_table(BASE, head_dim, 1001);
    for pos in [0, 1, 7, 1000] {
        for i in [0, 1, 13, 31] {
            let theta = pos as f64 * BASE.powf(-2.0 * i as f64 / head_dim as f64);
            let (cos, sin) = (theta.cos() as f32, theta.sin() as f32);
            let mut x = vec![0.0; head_dim];
            x[2 * i] = 1.0;
            rope_cpu(&mut x, pos, &table);
            let mut want = vec![0.0; head_dim];
            (want[2 * i], want[2 * i + 1]) = (cos, sin);
            assert_close(&format!("rope e{} at {pos}", 2 * i), &x, &want, TOL_ROPE);
            let mut x = vec![0.0; head_dim];
            x[2 * i + 1] = 1.0;
            rope_cpu(&mut x, pos, &table);
            (want[2 * i], want[2 * i + 1]) = (-sin, cos);
            assert_close(
                &format!("rope e{} at {pos}", 2 * i + 1),
                &x,
                &want,
                TOL_ROPE,
            );
        }
    }
}

cpu_test!(rope_depends_on_distance_only);
/// <R(p + d) q, R(p) k> is the same for every p: the score depends on the distance d only.
fn rope_depends_on_distance_only() {
    let mut rng = rng(29);
    for head_dim in HEAD_DIMS {
        let table = rope_table(BASE, head_dim, 9000);
        let q = random_vec(&mut rng, head_dim, 1.0);
        let k = random_vec(&mut rng, head_dim, 1.0);
        let score = |q_pos, k_pos| {
            let (mut q, mut k) = (q.clone(), k.clone());
            rope_cpu(&mut q, q_pos, &table);
            rope_cpu(&mut k, k_pos, &table);
            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>()
        };
        for distance in [0, 1, 5, 100, 4000] {
            let want = [score(distance, 0)];
            for p in [1, 2, 17, 300, 2048, 4999] {
                let got = [score(p + distance, p)];
                let name = format!("head_dim {head_dim} distance {distance} at {p}");
                assert_close(&name, &got, &want, TOL_RELATIVE);
            }
        }
    }
}

gpu_test!(attention_rejects_bad_shapes);
async fn attention_rejects_bad_shapes(gpu: &Gpu) {
    for head_dim in [0, 63, 130] {
        assert!(matches!(
            Attention::row(gpu, head_dim),
            Err(AttentionError::HeadDim { .. })
        ));
    }
    // More threads than a workgroup may have (a head of one pair leaves the merge room for 2,048).
    let invocations = gpu.limits.max_compute_invocations_per_workgroup;
    let too_wide = Variant::row_for(2, invocations + 1).unwrap();
    assert_eq!(too_wide.wg_size(), invocations + 1);
    let e = Attention::with_variant(gpu, too_wide)
        .err()
        .expect("too many threads");
    assert!(
        matches!(
            e,
            AttentionError::Gpu(GpuError::Limit {
                limit_name: "max_compute_invocations_per_workgroup",
                ..
            })
        ),
        "{e:?}"
    );
    assert!(matches!(
        Variant::tile_for(64, 34, 2),
        Err(AttentionError::GroupSize { group: 17, .. })
    ));
    for head_dim in [0, 62, 132] {
        assert!(matches!(
            Variant::tile_for(head_dim, 9, 3),
            Err(AttentionError::HeadDim { .. })
        ));
    }
    let mut rng = rng(30);
    let case = dense_case(&mut rng, 2, (9, 3), 64, 10);
    let params = case.params();
    let bad_groups = Params {
        n_kv_heads: 2,
        ..params
    };
    assert!(matches!(
        bad_groups.validate(64),
        Err(AttentionError::HeadGroups { .. })
    ));
    for (n_sink, window) in [(4, 0), (u32::MAX, 1)] {
        let bad = Params {
            n_sink,
            window,
            ..params
        };
        assert!(matches!(
            bad.validate(64),
            Err(AttentionError::SinkWindow { .. })
        ));
    }
    let long_anchor = Params {
        block: 8,
        anchor: 9,
        ..params
    };
    assert!(matches!(
        long_anchor.validate(64),
        Err(AttentionError::Anchor {
            anchor: 9,
            block: 8
        })
    ));
    // A rope table one position short of what the rows need.
    let kernel = Attention::row(gpu, 64).unwrap();
    let (arena, slot) = arena_with(gpu, &params);
    let n_pos = params.n_pos() as u64;
    let rope = gpu.storage("rope", (n_pos - 1) * 64 * 4).unwrap();
    let big = gpu.storage("big", 4 * 10 * 9 * 64).unwrap();
    let buffers = Buffers {
        q: &big,
        k_cache: &big,
        v_cache: &big,
        slot_token: &big,
        rope: &rope,
        out: &big,
        lse: &big,
    };
    let err = kernel
        .dispatch(gpu, arena.binding(slot), &params, &buffers)
        .err()
        .expect("rope is too small");
    assert!(
        matches!(err, AttentionError::BufferSize { what: "rope", .. }),
        "{err}"
    );
    // The tiled form of another GQA grouping, and a table without its window frame's rows.
    let tile = Attention::tile(gpu, 64, 8, 4).unwrap();
    let err = tile
        .dispatch(gpu, arena.binding(slot), &params, &buffers)
        .err()
        .expect("group 2 kernel for group 3 heads");
    assert!(
        matches!(err, AttentionError::VariantShape { n_heads: 9, .. }),
        "{err}"
    );
    // No parts, a split of the tiled form, and outputs too small for the parts.
    let rope = gpu.storage("rope", n_pos * 64 * 4).unwrap();
    let buffers = Buffers {
        rope: &rope,
        ..buffers
    };
    let tile = Attention::tile(gpu, 64, 9, 3).unwrap();
    for (kernel, n_parts) in [(&kernel, 0), (&tile, 2)] {
        let split = Params { n_parts, ..params };
        let err = kernel
            .dispatch(gpu, arena.binding(slot), &split, &buffers)
            .err()
            .expect("no such split");
        assert!(
            matches!(err, AttentionError::Parts { n_parts: p, .. } if p == n_parts),
            "{err}"
        );
    }
    // `big` holds 5 parts of the 2 rows' outputs.
    let split = Params {
        n_parts: 6,
        ..params
    };
    let err = kernel
        .dispatch(gpu, arena.binding(slot), &split, &buffers)
        .err()
        .expect("out holds 5 parts");
    assert!(
        matches!(err, AttentionError::BufferSize { what: "out", .. }),
        "{err}"
    );
    // The fused output projection: heads of whole chunks only, one part, W_o of its shape, a
    // residual buffer with room for every head's part, and its buffers given.
    let q8_0 = WeightFormat::Q8_0;
    let output = Projection {
        format: q8_0,
        dim: 40,
    };
    let err = Attention::row_projecting(gpu, 48, output)
        .err()
        .expect("48 is no multiple of 32");
    assert!(
        matches!(err, AttentionError::ProjectionHeadDim { head_dim: 48 }),
        "{err}"
    );
    let projecting = Attention::row_projecting(gpu, 64, output).unwrap();
    let row_bytes = q8_0.row_bytes(9 * 64).unwrap();
    let weight = upload_weight(gpu, "wo", q8_0, 9 * 64, &vec![0; row_bytes * 40]).unwrap();
    let short = upload_weight(gpu, "wo", q8_0, 9 * 64, &vec![0; row_bytes * 39]).unwrap();
    let stream_bytes = (1 + 9) * 2 * 40 * 4;
    let residual = gpu.storage("residual", stream_bytes).unwrap();
    let cut = gpu.storage("residual", stream_bytes - 4).unwrap();
    let with = |weight, residual| ProjectionBuffers { weight, residual };
    projecting
        .dispatch_projecting(
            gpu,
            arena.binding(slot),
            &params,
            &buffers,
            &with(&weight, &residual),
        )
        .unwrap();
    for (n_parts, weight, residual, what) in [
        (2, &weight, &residual, None),
        (1, &short, &residual, Some("weight")),
        (1, &weight, &cut, Some("residual")),
    ] {
        let err = projecting
            .dispatch_projecting(
                gpu,
                arena.binding(slot),
                &Params { n_parts, ..params },
                &buffers,
                &with(weight, residual),
            )
            .err()
            .expect("a projection that cannot run");
        match what {
            None => assert!(
                matches!(err, AttentionError::Parts { n_parts: 2, .. }),
                "{err}"
            ),
            Some(buffer) => assert!(
                matches!(err, AttentionError::BufferSize { what, .. } if what == buffer),
                "{err}"
            ),
        }
    }
    let err = projecting
        .dispatch(gpu, arena.binding(slot), &params, &buffers)
        .err()
        .expect("the projection's buffers are missing");
    assert!(
        matches!(
            err,
            AttentionError::Gpu(sinkstar::gpu::GpuError::BindingCount { .. })
        ),
        "{err}"
    );
    let ring = Params {
        n_rows: 2,
        first_token: 100,
        n_sink: 4,
        window: 8,
        ..params
    };
    assert_eq!(ring.n_pos(), 12);
    assert_eq!(ring.n_pos_tile(), 8 + TILE_ROWS - 1);
    let (arena, slot) = arena_with(gpu, &ring);
    let rope = gpu.storage("rope", 12 * 64 * 4).unwrap();
    let buffers = Buffers {
        rope: &rope,
        ..buffers
    };
    let tile = Attention::tile(gpu, 64, 9, 3).unwrap();
    let err = tile
        .dispatch(gpu, arena.binding(slot), &ring, &buffers)
        .err()
        .expect("rope is too small for the window frame");
    assert!(
        matches!(err, AttentionError::BufferSize { what: "rope", .. }),
        "{err}"
    );
}

/// Star Attention's phase 1 (star.md §3): tokens `0..n_tokens` in a dense cache filled in text
/// order (ascending, as the block mask requires) with three empty slots after them, scanned
/// too; the rows are the last `n_rows` tokens.
fn star_case(
    n_rows: usize,
    heads: (usize, usize),
    head_dim: usize,
    n_tokens: usize,
    block: u32,
    anchor: u32,
) -> Case {
    let mut slot_token: Vec<u32> = (0..n_tokens as u32).collect();
    slot_token.extend([EMPTY_SLOT; 3]);
    Case {
        name: format!(
            "star block {block} anchor {anchor} rows {n_rows} tokens {n_tokens} heads {}/{} \
             head_dim {head_dim}",
            heads.0, heads.1
        ),
        n_rows,
        n_heads: heads.0,
        n_kv_heads: heads.1,
        head_dim,
        first_token: (n_tokens - n_rows) as u32,
        n_sink: slot_token.len() as u32,
        window: 1,
        block,
        anchor,
        n_slots: slot_token.len(),
        slot_token,
    }
}

gpu_test!(attention_star_mask_matches_cpu);
/// star.md §7.8: blocks of 1, 13 and 70 tokens (not workgroup multiples), anchors of 0, 1,
/// half and a whole block, contexts not a multiple of the block, rows straddling blocks, GQA
/// ratios 1, 3, 4 and 8.
async fn attention_star_mask_matches_cpu(gpu: &Gpu) {
    let mut rng = rng(31);
    let mut shapes = HEADS
        .iter()
        .chain(&[(8, 1)])
        .flat_map(|&h| HEAD_DIMS.map(|d| (h, d)))
        .cycle();
    let mut cases = Vec::new();
    for (block, anchor) in [
        (1, 0),
        (1, 1),
        (13, 0),
        (13, 1),
        (13, 6),
        (13, 13),
        (70, 35),
    ] {
        for n_tokens in [1, 7, 100, 300] {
            for n_rows in [1, 5, 33].into_iter().filter(|&n| n <= n_tokens) {
                let (heads, head_dim) = shapes.next().expect("cycle never ends");
                cases.push(star_case(n_rows, heads, head_dim, n_tokens, block, anchor));
            }
        }
    }
    let stride = if BROWSER { 7 } else { 1 };
    for case in cases.into_iter().step_by(stride) {
        case.check_against_cpu(gpu, &mut rng).await;
    }
}

gpu_test!(attention_star_mask_equals_per_block_form);
/// star.md §3 and §7.4 for one layer: the masked single pass equals, block by block, plain
/// causal attention over the sequence `[anchor ; block]` alone (the reference's per-block
/// form), with the same keys and values at the original positions; a context of 91 tokens in
/// blocks of 30 ends in a block of one token.
async fn attention_star_mask_equals_per_block_form(gpu: &Gpu) {
    let mut rng = rng(32);
    let (n_tokens, block) = (91usize, 30u32);
    for anchor in [1, block / 2, block] {
        let masked = star_case(n_tokens, (9, 3), 64, n_tokens, block, anchor);
        let inputs = masked.random_inputs(&mut rng);
        let got = masked.run_gpu(gpu, &inputs).await;
        let row = masked.kv_row_elems();
        let q_row = masked.n_heads * masked.head_dim;
        for start in (0..n_tokens).step_by(block as usize) {
            let end = (start + block as usize).min(n_tokens);
            // The anchor, unless it is this block's own start, then the block.
            let keys: Vec<usize> = (0..(anchor as usize).min(start))
                .chain(start..end)
                .collect();
            let mut per_block = star_case(end - start, (9, 3), 64, keys.len(), 0, 0);
            per_block.name = format!("block {start}..{end} with anchor {anchor} alone");
            per_block.first_token = start as u32;
            per_block.slot_token = keys.iter().map(|&u| u as u32).collect();
            per_block.n_slots = keys.len();
            per_block.n_sink = n_tokens as u32;
            let sub = Inputs {
                q: inputs.q[start * q_row..end * q_row].to_vec(),
                k_cache: keys
                    .iter()
                    .flat_map(|&u| inputs.k_cache[u * row..(u + 1) * row].to_vec())
                    .collect(),
                v_cache: keys
                    .iter()
                    .flat_map(|&u| inputs.v_cache[u * row..(u + 1) * row].to_vec())
                    .collect(),
            };
            let want = per_block.run_gpu(gpu, &sub).await;
            assert_close(
                &per_block.label(),
                &got[start * q_row..end * q_row],
                &want,
                TOL_ATTENTION,
            );
        }
    }
}

gpu_test!(attention_star_one_block_is_dense);
/// star.md §7.1 for one layer: a block at least as long as the context is dense attention,
/// whatever the anchor.
async fn attention_star_one_block_is_dense(gpu: &Gpu) {
    let mut rng = rng(33);
    let dense = star_case(40, (4, 1), 80, 40, 0, 0);
    let inputs = dense.random_inputs(&mut rng);
    let want = dense.run_gpu(gpu, &inputs).await;
    for (block, anchor) in [(40, 0), (40, 40), (1000, 7)] {
        let mut case = dense.clone();
        (case.block, case.anchor) = (block, anchor);
        case.name = format!("dense as star block {block} anchor {anchor}");
        assert_close(
            &case.label(),
            &case.run_gpu(gpu, &inputs).await,
            &want,
            TOL_EXACT,
        );
    }
}

gpu_test!(attention_partitions_merge_to_dense);
/// star.md §7.2, 7.3 and 7.7: phase 2 over any partition of the cache — 1, 2, 3 and 7 parts,
/// uneven, one of them empty, slots dealt at random — merged by their LSEs equals attention
/// over the whole cache; the 5 query rows are the last tokens, so every context key is
/// visible to the first of them whatever part holds it.
async fn attention_partitions_merge_to_dense(gpu: &Gpu) {
    let mut rng = rng(34);
    for (n_parts, heads, head_dim, n_tokens) in [
        (1, (9, 3), 64, 37),
        (2, (4, 1), 128, 100),
        (3, (9, 3), 64, 100),
        (7, (8, 1), 80, 300),
    ] {
        let whole = star_case(5, heads, head_dim, n_tokens, 0, 0);
        let inputs = whole.random_inputs(&mut rng);
        let (want, want_lse) = whole.run_gpu_with_lse(gpu, &inputs).await;
        // Part of each slot: uneven shares at random; with 3 parts the middle one gets nothing.
        let part_of: Vec<usize> = (0..whole.slot_token.len())
            .map(|_| {
                let p = rng.random_range(0..n_parts * n_parts) % n_parts;
                if n_parts == 3 && p == 1 {
                    2
                } else {
                    p
                }
            })
            .collect();
        let (mut parts, mut parts_lse) = (Vec::new(), Vec::new());
        for p in 0..n_parts {
            let mut part = whole.clone();
            part.name = format!("{} part {p} of {n_parts}", whole.name);
            for (u, &owner) in part.slot_token.iter_mut().zip(&part_of) {
                if owner != p {
                    *u = EMPTY_SLOT;
                }
            }
            let (out, lse) = part.run_gpu_with_lse(gpu, &inputs).await;
            parts.extend(out);
            parts_lse.extend(lse);
        }
        let (n_rows, n_heads) = (whole.n_rows, whole.n_heads);
        let (got, got_lse) = crate::attention_merge::merge_gpu(
            gpu, n_parts, n_rows, n_heads, head_dim, &parts, &parts_lse,
        )
        .await;
        let label = format!("{} merged from {n_parts} parts", whole.label());
        assert_close(&label, &got, &want, TOL_ATTENTION);
        assert_close(&format!("{label} lse"), &got_lse, &want_lse, TOL_ATTENTION);
    }
}

gpu_test!(attention_split_rows_merge_to_whole);
/// Flash-decoding: the row form (both thread counts) with each row's walk cut into 2, 3, 7 and
/// 40 parts (more parts than some rows have keys, so trailing parts are empty), merged by
/// attention_merge, equals the CPU reference over every key: dense, a wrapped sink ring, and a
/// Star mask whose walk skips the slots between the anchor and the row's block.
async fn attention_split_rows_merge_to_whole(gpu: &Gpu) {
    let mut rng = rng(35);
    let cases = [
        dense_case(&mut rng, 1, (9, 3), 64, 300),
        dense_case(&mut rng, 2, (4, 1), 80, 37),
        ring_case((9, 3), 64, 4, 33, 1, 4 + 3 * 33 + 7),
        ring_case((8, 8), 6, 0, 2, 1, 50),
        star_case(3, (4, 1), 128, 150, 40, 13),
    ];
    for case in cases {
        let inputs = case.random_inputs(&mut rng);
        let (want, want_lse) = case.run_cpu_with_lse(&inputs);
        for (threads, n_parts) in ROW_THREADS
            .into_iter()
            .flat_map(|threads| [2, 3, 7, 40].map(|n_parts| (threads, n_parts)))
        {
            let row = case.row_variant(threads);
            let (parts, parts_lse) = case.run_parts(gpu, &inputs, row, n_parts).await;
            let (got, got_lse) = crate::attention_merge::merge_gpu(
                gpu,
                n_parts as usize,
                case.n_rows,
                case.n_heads,
                case.head_dim,
                &parts,
                &parts_lse,
            )
            .await;
            let label = format!("{} {} split into {n_parts}", row.label(), case.name);
            assert_close(&label, &got, &want, TOL_ATTENTION);
            assert_close(&format!("{label} lse"), &got_lse, &want_lse, TOL_ATTENTION);
        }
    }
}

/// A value no kernel computes: the residual rows the projection must leave alone hold it.
pub(crate) const UNTOUCHED: f32 = 7.25;

/// Each head's share of W_o·a: sums of head_dim products of weights in [-1, 1] and outputs
/// below 1 (up to ~8), in another order than the CPU reference.
pub(crate) const TOL_PROJECTION: Tol = Tol {
    abs: 1e-5,
    rel: 1e-4,
};

gpu_test!(attention_projects_each_head_into_its_part);
/// The row form with the fused output projection, in every weight format: the attention output
/// and LSEs it writes as without, each head's share of W_o·a in its part of the residual buffer
/// (after the step's rows, which stay as they were) against `project_heads_cpu`; heads of one
/// and two chunks, dense and a wrapped sink ring, one and two rows, widths below and past one
/// workgroup, with both thread counts.
async fn attention_projects_each_head_into_its_part(gpu: &Gpu) {
    let mut rng = rng(41);
    let mut cases: Vec<(WeightFormat, Case, u32)> = WeightFormat::ALL
        .into_iter()
        .map(|format| (format, dense_case(&mut rng, 1, (4, 2), 32, 45), 40))
        .collect();
    cases.push((
        WeightFormat::Q4_1,
        ring_case((9, 3), 64, 4, 33, 2, 4 + 3 * 33 + 7),
        100,
    ));
    cases.push((
        WeightFormat::Q8_0,
        dense_case(&mut rng, 2, (4, 1), 64, 37),
        72,
    ));
    let cases = cases
        .into_iter()
        .flat_map(|case| ROW_THREADS.map(|threads| (case.clone(), threads)));
    for ((format, case, dim), threads) in cases {
        let output = Projection { format, dim };
        let variant = Variant::row_projecting(case.head_dim as u32, threads, output).unwrap();
        let inputs = case.random_inputs(&mut rng);
        let q_dim = case.n_heads * case.head_dim;
        let w = random_vec(&mut rng, dim as usize * q_dim, 1.0);
        let weight = quantize(format.ggml_type(), &w);
        let (got, got_lse, residual) = case.run_projecting(gpu, &inputs, variant, &weight).await;
        let (want, want_lse) = case.run_cpu_with_lse(&inputs);
        let label = format!("{} {}", variant.label(), case.name);
        assert_close(&label, &got, &want, TOL_ATTENTION);
        assert_close(&format!("{label} lse"), &got_lse, &want_lse, TOL_ATTENTION);
        let n_stream = case.n_rows * dim as usize;
        let untouched = vec![UNTOUCHED; n_stream];
        assert_close(
            &format!("{label} stream rows"),
            &residual[..n_stream],
            &untouched,
            TOL_EXACT,
        );
        // The parts of the kernel's own output: the projection is checked on its own.
        let parts = project_heads_cpu(output, &weight, &case.params(), &got).unwrap();
        assert_close(
            &format!("{label} parts"),
            &residual[n_stream..],
            &parts,
            TOL_PROJECTION,
        );
    }
}

cpu_test!(row_threads_are_capped_by_the_merge);
/// The row form takes the threads asked for unless its merge's accumulators (threads × head_dim
/// f32) would pass ROW_MERGE_BYTES: 64 threads for 64-wide heads, 32 for 128-wide ones.
fn row_threads_are_capped_by_the_merge() {
    for (head_dim, threads, want) in [(64, 16, 16), (64, 64, 64), (64, 1000, 64), (128, 64, 32)] {
        let variant = Variant::row_for(head_dim, threads).unwrap();
        assert_eq!(
            variant.wg_size(),
            want,
            "head_dim {head_dim}, {threads} threads"
        );
        assert!(variant.wg_size() * head_dim * 4 <= ROW_MERGE_BYTES);
    }
}

cpu_test!(decode_parts_split_only_long_caches_on_wide_devices);
/// A row is split only when the device has room for more workgroups than rows × heads and
/// every part keeps at least MIN_PART_SLOTS slots, and never into more than MAX_PARTS.
fn decode_parts_split_only_long_caches_on_wide_devices() {
    // (slots, rows x heads, device workgroups) -> parts
    for (n_slots, n_vecs, target, want) in [
        (100_000, 9, 1, 1),
        (100_000, 9, 9, 1),
        (100_000, 9, 10, 2),
        (100_000, 9, 256, 29),
        (100_000, 1, 10_000, MAX_PARTS),
        (2_111, 9, 256, 2_111 / MIN_PART_SLOTS),
        (MIN_PART_SLOTS * 2 - 1, 9, 256, 1),
        (MIN_PART_SLOTS * 2, 9, 256, 2),
        (0, 9, 256, 1),
        (100, 0, 256, 1),
    ] {
        assert_eq!(
            decode_parts(n_slots, n_vecs, target),
            want,
            "{n_slots} slots, {n_vecs} vectors, {target} workgroups"
        );
    }
}
