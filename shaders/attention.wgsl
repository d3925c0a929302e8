// attention: out[r, h] = Σ_s softmax_s(scale · <R(q_pos) q[r, h], R(k_pos) k_cache[s, g]>) v_cache[s, g],
// g = h / (n_heads / n_kv_heads), over the slots s < n_slots whose token u = slot_token[s] is visible to the
// row's token t = first_token + r: the sinks u < n_sink plus the last `window` tokens up to t; and, when
// `block` > 0 (Star Attention's phase 1), only if u < anchor or u is in t's block (u / block == t / block).
// Also lse[r, h] = log Σ_s exp(score_s), the log-sum-exp of the visible scores (NEG_BIG if none), so that
// attentions over disjoint key sets can be merged exactly (attention_merge.wgsl).
// One workgroup per (row, head). Thread j walks slots j, j + WG_SIZE, … with its own online-softmax state
// (running max, sum, accumulator) and no barrier; the WG_SIZE states are merged once at the end. Keys are
// cached raw and rotated here at their cache position, with cos/sin from the `rope` table.
// With a block mask the slots must hold tokens in ascending order (empty slots last), as a dense cache
// filled in text order does: then the anchor's and t's block's slots are two ranges found by binary
// search, and only those are walked, so a row costs O(anchor + block), not O(n_slots).
// Flags: none. Overrides: WG_SIZE, MAX_HALF_DIM (bound on head_dim / 2), ACC_ELEMS (= WG_SIZE * MAX_HALF_DIM).
// Spec: sink-window.md §3 (visibility, cache positions) and §4 option A (raw keys rotated at attention time);
// star.md §3 (the single-pass phase-1 mask) and §4 (partial attention and its LSE).

#include "common/rope.wgsl"

override WG_SIZE: u32 = 32u;
override MAX_HALF_DIM: u32 = 64u;
override ACC_ELEMS: u32 = 2048u;

// Finite stand-in for -inf (WGSL has no infinity literal): exp(NEG_BIG - x) underflows to 0 for any
// real score x, so a state that has seen no key contributes nothing when merged.
const NEG_BIG: f32 = -3.0e38;

struct Params {
    n_rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    n_slots: u32,
    first_token: u32,
    n_sink: u32,
    window: u32,
    scale: f32,
    block: u32,
    anchor: u32,
    _pad0: u32,
}

// Vectors are read as adjacent pairs, the unit RoPE rotates (head_dim is even, checked on the host).
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<vec2<f32>>;         // [n_rows, n_heads, head_dim / 2], raw
@group(0) @binding(2) var<storage, read> k_cache: array<vec2<f32>>;   // [capacity, n_kv_heads, head_dim / 2], raw
@group(0) @binding(3) var<storage, read> v_cache: array<vec2<f32>>;   // [capacity, n_kv_heads, head_dim / 2]
@group(0) @binding(4) var<storage, read> slot_token: array<u32>;      // [capacity], 0xffffffff where no token
@group(0) @binding(5) var<storage, read> rope: array<vec2<f32>>;      // [n_pos, head_dim / 2] of (cos θ, sin θ)
@group(0) @binding(6) var<storage, read_write> out: array<vec2<f32>>; // [n_rows, n_heads, head_dim / 2]
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;       // [n_rows, n_heads]

// This head's query rotated to q_pos; every thread reads all of it.
var<workgroup> q_rot: array<vec2<f32>, MAX_HALF_DIM>;
// Thread j's accumulator for pair i is acc[i * WG_SIZE + j]: neighbouring threads touch neighbouring
// words (no bank conflicts on GPUs), and the merge reads one pair's column contiguously.
var<workgroup> acc: array<vec2<f32>, ACC_ELEMS>;
var<workgroup> max_part: array<f32, WG_SIZE>;
var<workgroup> sum_part: array<f32, WG_SIZE>;

// The first slot in 0..n_slots whose token is >= `token` (n_slots if none), for ascending slot_token.
fn first_slot_from(token: u32) -> u32 {
    var lo = 0u;
    var hi = params.n_slots;
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if slot_token[mid] < token {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row_head = wid.x + wid.y * n_wg.x;
    // Indices past the end only arise from a 2-D grid; the whole workgroup leaves together, so the
    // barriers below stay uniform.
    if row_head >= params.n_rows * params.n_heads {
        return;
    }
    let head = row_head % params.n_heads;
    let kv_head = head / (params.n_heads / params.n_kv_heads);
    let half = params.head_dim / 2u;
    let n_sink = params.n_sink;
    let window = params.window;
    let t = params.first_token + row_head / params.n_heads;
    // lo(t) = max(n_sink, t + 1 - window) and q_pos(t) = min(t, n_sink + window - 1), written so that
    // nothing underflows (window >= 1 and n_sink + window < 2^32 are checked on the host).
    let lo = max(n_sink, t - min(t, window - 1u));
    let q_pos = min(t, n_sink + (window - 1u));

    let q_base = row_head * half;
    for (var i = lid; i < half; i += WG_SIZE) {
        q_rot[i] = rope_rotate(q[q_base + i], rope[q_pos * half + i]);
    }
    // q_rot is read by every thread below.
    workgroupBarrier();

    var running_max = NEG_BIG;
    var running_sum = 0.0;
    for (var i = 0u; i < half; i++) {
        acc[i * WG_SIZE + lid] = vec2<f32>(0.0);
    }
    // The slots walked: 0..n_first, then from_second..to_second. Without a block mask that is every
    // slot; with one, the anchor's tokens (those before t's block only: inside it they are t's own
    // block) and t's block up to t, which excludes the future tokens of a chunk too.
    var n_first = params.n_slots;
    var from_second = 0u;
    var to_second = 0u;
    if params.block > 0u {
        let block_start = t - t % params.block;
        n_first = first_slot_from(min(params.anchor, block_start));
        from_second = first_slot_from(block_start);
        // t + 1 does not overflow: first_token + n_rows < 2^32 is checked on the host.
        to_second = first_slot_from(t + 1u);
    }
    let n_walk = n_first + (to_second - from_second);
    for (var i = lid; i < n_walk; i += WG_SIZE) {
        let s = select(from_second + (i - n_first), i, i < n_first);
        let u = slot_token[s];
        // Not visible: an empty slot (0xffffffff is above every token: first_token + n_rows < 2^32 is
        // checked on the host), a future token, or a non-sink older than the window. For u <= t,
        // `t - u >= window` is the spec's `u < t - window + 1` without underflow.
        if u > t || (u >= n_sink && t - u >= window) {
            continue;
        }
        // k_pos(u|t): sinks keep their token index, window keys are packed right after the sinks.
        let k_pos = select(n_sink + (u - lo), u, u < n_sink);
        let kv_base = (s * params.n_kv_heads + kv_head) * half;
        let rope_base = k_pos * half;
        var qk = 0.0;
        for (var i = 0u; i < half; i++) {
            qk += dot(q_rot[i], rope_rotate(k_cache[kv_base + i], rope[rope_base + i]));
        }
        let score = qk * params.scale;
        let new_max = max(running_max, score);
        // Rescales what was summed under the old max, so every exp stays <= 1.
        let correction = exp(running_max - new_max);
        let p = exp(score - new_max);
        running_sum = running_sum * correction + p;
        for (var i = 0u; i < half; i++) {
            let a = i * WG_SIZE + lid;
            acc[a] = acc[a] * correction + p * v_cache[kv_base + i];
        }
        running_max = new_max;
    }

    // Merge: bring every thread's state to the common max, then sum the columns.
    max_part[lid] = running_max;
    workgroupBarrier();
    var max_all = NEG_BIG;
    for (var j = 0u; j < WG_SIZE; j++) {
        max_all = max(max_all, max_part[j]);
    }
    let weight = exp(running_max - max_all);
    sum_part[lid] = running_sum * weight;
    for (var i = 0u; i < half; i++) {
        acc[i * WG_SIZE + lid] *= weight;
    }
    // sum_part and every accumulator column are read by other threads below.
    workgroupBarrier();
    var sum_all = 0.0;
    for (var j = 0u; j < WG_SIZE; j++) {
        sum_all += sum_part[j];
    }
    // A row that sees no key has sum_all = 0 and gets zeros, not 0/0, and the empty LSE.
    let inv_sum = select(0.0, 1.0 / sum_all, sum_all > 0.0);
    if lid == 0u {
        lse[row_head] = select(NEG_BIG, max_all + log(sum_all), sum_all > 0.0);
    }
    for (var i = lid; i < half; i += WG_SIZE) {
        var total = vec2<f32>(0.0);
        for (var j = 0u; j < WG_SIZE; j++) {
            total += acc[i * WG_SIZE + j];
        }
        out[q_base + i] = total * inv_sum;
    }
}
