// sample: one token id from `logits`, written to out[out_index] and appended to the history ring,
// so the next decode step reads it on the GPU and nothing has to come back to the host.
// Definition (sample_cpu in src/kernels/sample.rs follows it step by step). Values compare in
// f32 total order (order_key below; -0 < +0); logits must be finite or -inf.
//  1. Repetition penalty (llama.cpp's classic form), once per distinct token t among the
//     n_history newest ring entries history[(history_head + history_len - n_history + j) %
//     history_len], j < n_history (ids >= vocab_size are ignored):
//     l[t] > 0 ? l[t] / repetition_penalty : l[t] * repetition_penalty.
//  2. temperature == 0: the argmax of the penalized logits, ties to the lowest id. Done.
//  3. z = l / temperature.
//  4. 0 < top_k < vocab_size: t_k = the top_k-th largest z counted with multiplicity; keep z >= t_k
//     (ties at t_k are kept, so more than top_k tokens may survive). Otherwise keep every token.
//  5. top_p < 1: e_i = exp(z_i - max z), S = the sum of e over the kept; t_p = the largest v for
//     which the e of the kept tokens with z >= v sum to at least top_p * S; keep z >= t_p.
//  6. u = random_unit(seed, step) in [0, 1) (a PCG hash, so a pure function of seed and step);
//     K = the sum of e over the kept. Pick the first id, in token-id order, at which the running
//     sum of kept e exceeds u * K; if rounding leaves none, the last id with a positive kept e;
//     if K is not > 0 (all logits -inf), the argmax.
// Unlike llama.cpp, which applies the temperature last, it divides before top-k and top-p
// (llama2.c's and Hugging Face's order), so top_p is a mass of the tempered distribution.
// One workgroup for the whole vocabulary. `work` gets the penalized, tempered z; thresholds are
// found by bisection on order keys, one full pass plus a tree reduction per step, with no sort;
// the draw splits the ids into one contiguous chunk per thread so a scan of the chunk sums
// keeps token-id order.
// Flags: none. Overrides: WG_SIZE (a power of two, 2 to 256). Spec: none.

override WG_SIZE: u32 = 256u;

struct Params {
    vocab_size: u32,
    temperature: f32,
    top_k: u32,
    top_p: f32,
    repetition_penalty: f32,
    history_len: u32,
    n_history: u32,
    history_head: u32,
    seed: u32,
    step: u32,
    out_index: u32,
    _pad: u32,
}

// The winner of an argmax: largest order key, then lowest id.
struct Best {
    key: u32,
    index: u32,
}

// Where the draw lands: the thread whose chunk holds it, the kept mass before that chunk, and
// u * K. owner == WG_SIZE means there is no positive kept mass.
struct Draw {
    owner: u32,
    base: f32,
    point: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;        // [vocab_size]
@group(0) @binding(2) var<storage, read_write> history: array<u32>; // [history_len] ring of token ids
@group(0) @binding(3) var<storage, read_write> work: array<f32>;    // [vocab_size] z: penalized, tempered
@group(0) @binding(4) var<storage, read_write> out: array<u32>;     // [n_tokens] token ids

var<workgroup> partial_u: array<u32, WG_SIZE>;
var<workgroup> partial_i: array<u32, WG_SIZE>;
var<workgroup> partial_f: array<f32, WG_SIZE>;
// Results of the reductions, kept apart from `partial_*` so that the next reduction may start
// writing its partials while slower threads still read the previous result.
var<workgroup> total_u: u32;
var<workgroup> total_f: f32;
var<workgroup> total_best: Best;
var<workgroup> draw: Draw;

// PCG's RXS-M-XS output permutation of a LCG step: a bijection on u32, so distinct steps of one
// seed never share a number. Rust twin: pcg_hash.
fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// 24 random bits scaled by 2^-24: exact in f32, so the CPU twin random_unit gets the same value.
fn random_unit(seed: u32, step: u32) -> f32 {
    return f32(pcg_hash(pcg_hash(seed) ^ step) >> 8u) * (1.0 / 16777216.0);
}

// Maps f32 to u32 so that unsigned order is the f32 total order: negatives have all bits flipped
// (a larger magnitude is smaller), non-negatives get the sign bit set.
fn order_key(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}

fn key_value(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u));
}

fn sum_u32(lid: u32, v: u32) -> u32 {
    partial_u[lid] = v;
    workgroupBarrier();
    for (var stride = WG_SIZE / 2u; stride > 1u; stride /= 2u) {
        if lid < stride {
            partial_u[lid] += partial_u[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        total_u = partial_u[0] + partial_u[1];
    }
    return workgroupUniformLoad(&total_u);
}

fn sum_f32(lid: u32, v: f32) -> f32 {
    partial_f[lid] = v;
    workgroupBarrier();
    for (var stride = WG_SIZE / 2u; stride > 1u; stride /= 2u) {
        if lid < stride {
            partial_f[lid] += partial_f[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        total_f = partial_f[0] + partial_f[1];
    }
    return workgroupUniformLoad(&total_f);
}

fn beats(key: u32, index: u32, other_key: u32, other_index: u32) -> bool {
    return key > other_key || (key == other_key && index < other_index);
}

fn argmax(lid: u32, key: u32, index: u32) -> Best {
    partial_u[lid] = key;
    partial_i[lid] = index;
    workgroupBarrier();
    for (var stride = WG_SIZE / 2u; stride > 1u; stride /= 2u) {
        if lid < stride && beats(partial_u[lid + stride], partial_i[lid + stride], partial_u[lid], partial_i[lid]) {
            partial_u[lid] = partial_u[lid + stride];
            partial_i[lid] = partial_i[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        let second = beats(partial_u[1], partial_i[1], partial_u[0], partial_i[0]);
        total_best = Best(partial_u[u32(second)], partial_i[u32(second)]);
    }
    return workgroupUniformLoad(&total_best);
}

// How many z have an order key >= threshold.
fn count_at_least(lid: u32, threshold: u32) -> u32 {
    var count = 0u;
    for (var i = lid; i < params.vocab_size; i += WG_SIZE) {
        count += u32(order_key(work[i]) >= threshold);
    }
    return sum_u32(lid, count);
}

// The sum of exp(z - max_z) over the z with an order key >= threshold.
fn mass_at_least(lid: u32, threshold: u32, max_z: f32) -> f32 {
    var mass = 0.0;
    for (var i = lid; i < params.vocab_size; i += WG_SIZE) {
        let z = work[i];
        if order_key(z) >= threshold {
            mass += exp(z - max_z);
        }
    }
    return sum_f32(lid, mass);
}

// Runs on one thread.
fn emit(token: u32) {
    out[params.out_index] = token;
    if params.history_len > 0u {
        history[params.history_head % params.history_len] = token;
    }
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(local_invocation_index) lid: u32) {
    let n = params.vocab_size;
    let temperature = params.temperature;
    let greedy = temperature == 0.0;
    for (var i = lid; i < n; i += WG_SIZE) {
        let l = logits[i];
        work[i] = select(l / temperature, l, greedy);
    }
    // The penalty overwrites entries the copy above wrote, maybe on another thread.
    storageBarrier();
    let penalty = params.repetition_penalty;
    if penalty != 1.0 {
        let len = params.history_len;
        let n_history = min(params.n_history, len);
        let first = params.history_head % max(len, 1u) + len - n_history;
        for (var j = lid; j < n_history; j += WG_SIZE) {
            let token = history[(first + j) % len];
            if token < n {
                // Computed from `logits`, not `work`: a token repeated in the window writes the
                // same value from every thread, so it is penalized once.
                let l = logits[token];
                let p = select(l * penalty, l / penalty, l > 0.0);
                work[token] = select(p / temperature, p, greedy);
            }
        }
        storageBarrier();
    }

    // Each thread visits ids in increasing order, so `>` keeps the lowest id of a tie.
    var best_key = 0u;
    var best_index = 0xffffffffu;
    for (var i = lid; i < n; i += WG_SIZE) {
        let key = order_key(work[i]);
        if key > best_key {
            best_key = key;
            best_index = i;
        }
    }
    let best = argmax(lid, best_key, best_index);
    if greedy {
        if lid == 0u {
            emit(best.index);
        }
        return;
    }
    let max_z = key_value(best.key);

    // Kept tokens are those with order key >= `lo`; key 0 keeps everything.
    var lo = 0u;
    let top_k = params.top_k;
    if top_k > 0u && top_k < n {
        // Invariant: count(key >= lo) >= top_k > count(key >= hi); ends with lo = the key of
        // the top_k-th largest z.
        var hi = best.key + 1u;
        while hi - lo > 1u {
            let mid = lo + (hi - lo) / 2u;
            if count_at_least(lid, mid) >= top_k {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    if params.top_p < 1.0 {
        // The computed mass only shrinks as the threshold rises (fewer non-negative terms in
        // the same order), so the bisection is exact for it: lo ends as the largest key whose
        // mass still reaches the goal.
        let goal = params.top_p * mass_at_least(lid, lo, max_z);
        var hi = best.key + 1u;
        while hi - lo > 1u {
            let mid = lo + (hi - lo) / 2u;
            if mass_at_least(lid, mid, max_z) >= goal {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }

    // The draw: thread `lid` owns ids [start, end); chunk sums are scanned in order by one
    // thread, so the running sums it compares never decrease.
    let chunk = (n + WG_SIZE - 1u) / WG_SIZE;
    let start = min(lid * chunk, n);
    let end = min(start + chunk, n);
    var chunk_mass = 0.0;
    for (var i = start; i < end; i++) {
        let z = work[i];
        if order_key(z) >= lo {
            chunk_mass += exp(z - max_z);
        }
    }
    partial_f[lid] = chunk_mass;
    workgroupBarrier();
    if lid == 0u {
        var total = 0.0;
        for (var t = 0u; t < WG_SIZE; t++) {
            total += partial_f[t];
        }
        let point = random_unit(params.seed, params.step) * total;
        var found = Draw(WG_SIZE, 0.0, point);
        // Fails for a NaN total too (an infinite max z).
        if total > 0.0 {
            // The first chunk whose end passes the point, else the last one with mass.
            var before = 0.0;
            var passed = false;
            for (var t = 0u; t < WG_SIZE; t++) {
                let after = before + partial_f[t];
                if partial_f[t] > 0.0 && !passed {
                    found = Draw(t, before, point);
                    passed = after > point;
                }
                before = after;
            }
        }
        draw = found;
    }
    workgroupBarrier();
    let d = draw;
    if d.owner == WG_SIZE {
        if lid == 0u {
            emit(best.index);
        }
    } else if lid == d.owner {
        var running = d.base;
        var token = start;
        for (var i = start; i < end; i++) {
            let z = work[i];
            if order_key(z) >= lo {
                let e = exp(z - max_z);
                if e > 0.0 {
                    running += e;
                    token = i;
                    if running > d.point {
                        break;
                    }
                }
            }
        }
        emit(token);
    }
}
