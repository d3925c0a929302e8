// attention: out[r, h] = Σ_s softmax_s(scale · <R(q_pos) q[r, h], R(k_pos) k_cache[s, g]>) v_cache[s, g],
// g = h / (n_heads / n_kv_heads), over the slots s < n_slots whose token u = slot_token[s] is visible to the
// row's token t = first_token + r: the sinks u < n_sink plus the last `window` tokens up to t; and, when
// `block` > 0 (Star Attention's phase 1), only if u < anchor or u is in t's block (u / block == t / block).
// Also lse[r, h] = log Σ_s exp(score_s), the log-sum-exp of the visible scores (NEG_BIG if none), so that
// attentions over disjoint key sets can be merged exactly (attention_merge.wgsl).
// Keys are cached raw and rotated here, with cos/sin from the `rope` table. With a block mask the slots
// must hold tokens in ascending order (empty slots last), as a dense cache filled in text order does: then
// the anchor's and the rows' block's slots are two ranges found by binary search, and only those are
// walked, so a row costs O(anchor + block), not O(n_slots).
// Two forms:
//   row (decode: one or a few rows): one workgroup per (part, row, head). The row's walk is cut into
//     n_parts even, contiguous shares (flash-decoding's split over the cache: a long cache keeps a
//     GPU's many cores busy though a decoded row has only a few heads); with n_parts > 1 each part
//     writes its partial output and LSE at [part, row, head] for attention_merge.wgsl to combine.
//     Thread j walks its part's slots j, j + WG_SIZE, … with its own online-softmax state (running
//     max, sum, accumulator, in private memory) and no barrier; the WG_SIZE states are merged once at
//     the end. Each key is rotated at its cache position k_pos(u|t).
//   TILE (prefill): one workgroup per (TILE_ROWS rows, kv head), each thread owning ROWS_PER_THREAD rows
//     of one head of the group; no workgroup memory and no barrier. Every thread walks the same slots in
//     the same order, so a key, its rotation and its value are loaded at one address for the whole
//     workgroup and serve ROWS_PER_THREAD queries (lavapipe pays a storage load per invocation, even at
//     a shared address: this halves the row form's time at 2048 slots there), and each thread keeps its
//     queries and accumulators to itself. A key is rotated once for all rows by using that a RoPE score
//     depends only on q_pos - k_pos: for a window key that is t - u whatever the row (for the full window
//     and before it), so the key turns by u - base and the query by t - base, base = lo(first row of the
//     tile) <= every visible window key; sinks keep their own frame (key at u, query at q_pos(t)). The
//     table then needs window + TILE_ROWS - 1 rows for the window frame (Params::n_pos_tile on the host).
//   OUTPUT (row form, decode, one part): after its head's output the workgroup also multiplies it by
//     that head's head_dim columns of the output projection W_o (head_dim a multiple of 32) and writes
//     the head's share of W_o·a as its part of the residual stream (common/project_head.wgsl).
// Flags: TILE (with QUAD), or the row form with QUAD where head_dim is a multiple of 4; OUTPUT (with QUAD)
// and one weight format's flag. Overrides, row: WG_SIZE, UNITS (head_dim / 4 with QUAD, else / 2),
// ACC_ELEMS (= WG_SIZE * UNITS), OUTPUT's OUT_DIM; TILE: GROUP (query heads per kv head), QUADS
// (head_dim / 4), ROWS_PER_THREAD, TILE_ROWS, WG_SIZE (= TILE_ROWS / ROWS_PER_THREAD * GROUP).
// Spec: sink-window.md §3 (visibility, cache positions) and §4 option A (raw keys rotated at attention time);
// star.md §3 (the single-pass phase-1 mask) and §4 (partial attention and its LSE).

#include "common/rope.wgsl"
#if OUTPUT
#include "common/project_head.wgsl"
#endif

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
    // Row form: shares of each row's walk (>= 1); the tiled form takes 1.
    n_parts: u32,
}

#if QUAD
// Vectors are read four values at a time: two adjacent pairs, the unit RoPE rotates (head_dim is a multiple
// of 4: always for the tiled form, checked on the host); a quad holds (cos, sin) of two pairs in `rope`.
alias vec = vec4<f32>;

fn rotate(x: vec, cs: vec) -> vec {
    return rope_rotate2(x, cs);
}
#else
// Vectors are read as adjacent pairs, the unit RoPE rotates (head_dim is even, checked on the host).
alias vec = vec2<f32>;

fn rotate(x: vec, cs: vec) -> vec {
    return rope_rotate(x, cs);
}
#endif
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<vec>;               // [n_rows, n_heads, head_dim], raw
@group(0) @binding(2) var<storage, read> k_cache: array<vec>;         // [capacity, n_kv_heads, head_dim], raw
@group(0) @binding(3) var<storage, read> v_cache: array<vec>;         // [capacity, n_kv_heads, head_dim]
@group(0) @binding(4) var<storage, read> slot_token: array<u32>;      // [capacity], 0xffffffff where no token
@group(0) @binding(5) var<storage, read> rope: array<vec>;            // [n_pos, head_dim / 2] of (cos θ, sin θ)
@group(0) @binding(6) var<storage, read_write> out: array<vec>;       // [n_parts, n_rows, n_heads, head_dim]
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;       // [n_parts, n_rows, n_heads]
#if OUTPUT
@group(0) @binding(8) var<storage, read> weight: array<WeightWord>;   // W_o: OUT_DIM rows of n_heads head_dim
@group(0) @binding(9) var<storage, read_write> residual: array<f32>;  // [(1 + n_heads) n_rows, OUT_DIM]
#endif

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

// The slots rows t_first..=t_last walk: 0..n_first, then from_second..to_second. Without a block mask that
// is every slot; with one, the anchor's tokens (those before t_first's block only: from there on they are
// in the walked blocks) and the blocks from t_first's up to t_last, which excludes the future tokens of a
// chunk too. For one row that is exactly the row's visible set under the mask.
struct Walk {
    n_first: u32,
    from_second: u32,
    n_walk: u32,
}

fn walk_for(t_first: u32, t_last: u32) -> Walk {
    var walk = Walk(params.n_slots, 0u, params.n_slots);
    if params.block > 0u {
        let block_start = t_first - t_first % params.block;
        walk.n_first = first_slot_from(min(params.anchor, block_start));
        walk.from_second = first_slot_from(block_start);
        // t_last + 1 does not overflow: first_token + n_rows < 2^32 is checked on the host.
        walk.n_walk = walk.n_first + (first_slot_from(t_last + 1u) - walk.from_second);
    }
    return walk;
}

// The i-th slot walked, i < walk.n_walk.
fn walk_slot(walk: Walk, i: u32) -> u32 {
    return select(walk.from_second + (i - walk.n_first), i, i < walk.n_first);
}

// Whether token t sees token u under the window (not an empty slot: 0xffffffff is above every token,
// first_token + n_rows < 2^32 being checked on the host; not a future token; not a non-sink older than the
// window: for u <= t, `t - u < window` is the spec's `u >= t - window + 1` without underflow).
fn in_window(u: u32, t: u32) -> bool {
    return u <= t && (u < params.n_sink || t - u < params.window);
}

// lo(t) = max(n_sink, t + 1 - window), the oldest non-sink token t sees, written so that nothing
// underflows (window >= 1 and n_sink + window < 2^32 are checked on the host).
fn window_start(t: u32) -> u32 {
    return max(params.n_sink, t - min(t, params.window - 1u));
}

// q_pos(t) = min(t, n_sink + window - 1): a row's position inside the cache.
fn query_pos(t: u32) -> u32 {
    return min(t, params.n_sink + (params.window - 1u));
}

#if TILE
override GROUP: u32 = 1u;
// head_dim / 4, fixed per pipeline so that the loops over a head have a constant trip count.
override QUADS: u32 = 16u;
// Rows each thread owns (one head): every key and value loaded serves that many queries.
override ROWS_PER_THREAD: u32 = 4u;
override TILE_ROWS: u32 = 32u;
// (TILE_ROWS / ROWS_PER_THREAD) * GROUP.
override WG_SIZE: u32 = 24u;

// Private arrays need a constant size: up to 4 rows of the widest head served (head_dim <= 128).
// Element [j * MAX_QUADS + i] is quad i of the thread's j-th row.
const MAX_QUADS: u32 = 32u;
const MAX_ROWS_PER_THREAD: u32 = 4u;
const MAX_ROW_QUADS: u32 = 128u; // MAX_ROWS_PER_THREAD * MAX_QUADS
// The thread's queries in the sinks' frame (at q_pos(t)) and in the window frame (at t - base).
var<private> q_sink: array<vec4<f32>, MAX_ROW_QUADS>;
var<private> q_window: array<vec4<f32>, MAX_ROW_QUADS>;
var<private> acc: array<vec4<f32>, MAX_ROW_QUADS>;
var<private> qk: array<f32, MAX_ROWS_PER_THREAD>;
var<private> running_max: array<f32, MAX_ROWS_PER_THREAD>;
var<private> running_sum: array<f32, MAX_ROWS_PER_THREAD>;

// Star Attention's phase-1 mask for one (row, key): a tile's walk may cross into the next block.
fn in_star_mask(u: u32, t: u32) -> bool {
    return params.block == 0u || u < params.anchor || u / params.block == t / params.block;
}

// qk[j] = <query row j, the key at kv_base turned by the rope row at rope_base>: the key is turned
// once, for the frame it is in, and dotted with each row's query in that frame. (Branching between the
// two frames' arrays rather than selecting per element halves the private loads.)
fn score_key(query: ptr<private, array<vec4<f32>, MAX_ROW_QUADS>>, kv_base: u32, rope_base: u32) {
    for (var j = 0u; j < ROWS_PER_THREAD; j++) {
        qk[j] = 0.0;
    }
    for (var i = 0u; i < QUADS; i++) {
        let k = rope_rotate2(k_cache[kv_base + i], rope[rope_base + i]);
        for (var j = 0u; j < ROWS_PER_THREAD; j++) {
            qk[j] += dot((*query)[j * MAX_QUADS + i], k);
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tile_kv = wid.x + wid.y * n_wg.x;
    let n_tiles = (params.n_rows + TILE_ROWS - 1u) / TILE_ROWS;
    // Indices past the end only arise from a 2-D grid.
    if tile_kv >= n_tiles * params.n_kv_heads {
        return;
    }
    let kv_head = tile_kv % params.n_kv_heads;
    let r_first = (tile_kv / params.n_kv_heads) * TILE_ROWS;
    let r_last = min(r_first + TILE_ROWS, params.n_rows) - 1u;
    let t_first = params.first_token + r_first;
    let t_last = params.first_token + r_last;
    let head = kv_head * GROUP + lid % GROUP;
    // This thread's rows: r_first + lid / GROUP * ROWS_PER_THREAD + j. Those past the last row (a short
    // last tile) follow row r_last's query and write nothing, so that every thread runs the same loop.
    let r_own = r_first + (lid / GROUP) * ROWS_PER_THREAD;
    // Every window key a row of the tile sees is at least lo(t_first) (lo grows with t); rows below it
    // (only before the first window key) see no window key, and their window-frame query is never used.
    let base = window_start(t_first);
    for (var j = 0u; j < ROWS_PER_THREAD; j++) {
        let t = params.first_token + min(r_own + j, r_last);
        let q_base = (min(r_own + j, r_last) * params.n_heads + head) * QUADS;
        let sink_rope = query_pos(t) * QUADS;
        let window_rope = (t - min(t, base)) * QUADS;
        for (var i = 0u; i < QUADS; i++) {
            let x = q[q_base + i];
            q_sink[j * MAX_QUADS + i] = rope_rotate2(x, rope[sink_rope + i]);
            q_window[j * MAX_QUADS + i] = rope_rotate2(x, rope[window_rope + i]);
            acc[j * MAX_QUADS + i] = vec4<f32>(0.0);
        }
        running_max[j] = NEG_BIG;
        running_sum[j] = 0.0;
    }

    let walk = walk_for(t_first, t_last);
    for (var n = 0u; n < walk.n_walk; n++) {
        let s = walk_slot(walk, n);
        let u = slot_token[s];
        let is_sink = u < params.n_sink;
        // Keys no row of the tile sees (empty, in every row's future, older than every row's window):
        // the same for all threads.
        if u > t_last || (!is_sink && u < base) {
            continue;
        }
        let kv_base = (s * params.n_kv_heads + kv_head) * QUADS;
        let rope_base = select(u - base, u, is_sink) * QUADS;
        if is_sink {
            score_key(&q_sink, kv_base, rope_base);
        } else {
            score_key(&q_window, kv_base, rope_base);
        }
        var p: array<f32, MAX_ROWS_PER_THREAD>;
        for (var j = 0u; j < ROWS_PER_THREAD; j++) {
            let t = params.first_token + min(r_own + j, r_last);
            let visible = in_window(u, t) && in_star_mask(u, t);
            let score = select(NEG_BIG, qk[j] * params.scale, visible);
            // Rescales what was summed under the old max, so every exp stays <= 1; after the first keys
            // a new maximum is rare, and so is this branch.
            if score > running_max[j] {
                let correction = exp(running_max[j] - score);
                running_sum[j] *= correction;
                for (var i = 0u; i < QUADS; i++) {
                    acc[j * MAX_QUADS + i] *= correction;
                }
                running_max[j] = score;
            }
            p[j] = select(0.0, exp(score - running_max[j]), visible);
            running_sum[j] += p[j];
        }
        for (var i = 0u; i < QUADS; i++) {
            let v = v_cache[kv_base + i];
            for (var j = 0u; j < ROWS_PER_THREAD; j++) {
                acc[j * MAX_QUADS + i] += p[j] * v;
            }
        }
    }

    for (var j = 0u; j < ROWS_PER_THREAD; j++) {
        let r = r_own + j;
        if r <= r_last {
            let row_head = r * params.n_heads + head;
            // A row that sees no key has running_sum = 0 and gets zeros, not 0/0, and the empty LSE.
            let sum = running_sum[j];
            let inv_sum = select(0.0, 1.0 / sum, sum > 0.0);
            lse[row_head] = select(NEG_BIG, running_max[j] + log(sum), sum > 0.0);
            for (var i = 0u; i < QUADS; i++) {
                out[row_head * QUADS + i] = acc[j * MAX_QUADS + i] * inv_sum;
            }
        }
    }
}
#else
override WG_SIZE: u32 = 64u;
// Vectors per head (head_dim / 4 with QUAD, else head_dim / 2), fixed per pipeline so that the
// loops over a head have a constant trip count: a thread's query and accumulator can then stay in
// its own private memory rather than in workgroup memory at thread-dependent addresses. With
// quads, a rescale only when the running max grows, and private state, decode at 2,111 slots
// (the default sink ring, full) went from 125-128 to 111-118 ms per token on lavapipe.
override UNITS: u32 = 16u;
// UNITS * WG_SIZE.
override ACC_ELEMS: u32 = 1024u;

// head_dim <= 128.
const MAX_UNITS: u32 = 64u;
// This head's query rotated to q_pos (each thread rotates it itself: one head, no barrier), and
// the thread's own accumulator.
var<private> q_rot: array<vec, MAX_UNITS>;
var<private> acc: array<vec, MAX_UNITS>;
// The merge: thread j's accumulator for vector i is merged[i * WG_SIZE + j], so that neighbouring
// threads write neighbouring words (no bank conflicts on GPUs) and one vector's column is contiguous.
var<workgroup> merged: array<vec, ACC_ELEMS>;
var<workgroup> max_part: array<f32, WG_SIZE>;
var<workgroup> sum_part: array<f32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n_vecs = params.n_rows * params.n_heads;
    let flat = wid.x + wid.y * n_wg.x;
    // Indices past the end only arise from a 2-D grid; the whole workgroup leaves together, so the
    // barriers below stay uniform.
    if flat >= n_vecs * params.n_parts {
        return;
    }
    let row_head = flat % n_vecs;
    let part = flat / n_vecs;
    let head = row_head % params.n_heads;
    let kv_head = head / (params.n_heads / params.n_kv_heads);
    let t = params.first_token + row_head / params.n_heads;
    let lo = window_start(t);
    let q_pos = query_pos(t);

    let q_base = row_head * UNITS;
    for (var i = 0u; i < UNITS; i++) {
        q_rot[i] = rotate(q[q_base + i], rope[q_pos * UNITS + i]);
        acc[i] = vec(0.0);
    }
    var running_max = NEG_BIG;
    var running_sum = 0.0;
    let walk = walk_for(t, t);
    // This part's share of the walk: parts differ by at most one slot (trailing ones may be empty).
    let part_len = (walk.n_walk + params.n_parts - 1u) / params.n_parts;
    let part_end = min((part + 1u) * part_len, walk.n_walk);
    for (var n = part * part_len + lid; n < part_end; n += WG_SIZE) {
        let s = walk_slot(walk, n);
        let u = slot_token[s];
        if !in_window(u, t) {
            continue;
        }
        // k_pos(u|t): sinks keep their token index, window keys are packed right after the sinks.
        let k_pos = select(params.n_sink + (u - lo), u, u < params.n_sink);
        let kv_base = (s * params.n_kv_heads + kv_head) * UNITS;
        let rope_base = k_pos * UNITS;
        var qk = 0.0;
        for (var i = 0u; i < UNITS; i++) {
            qk += dot(q_rot[i], rotate(k_cache[kv_base + i], rope[rope_base + i]));
        }
        let score = qk * params.scale;
        // Rescales what was summed under the old max, so every exp stays <= 1; after the first keys
        // a new maximum is rare, and so is this branch.
        if score > running_max {
            let correction = exp(running_max - score);
            running_sum *= correction;
            for (var i = 0u; i < UNITS; i++) {
                acc[i] *= correction;
            }
            running_max = score;
        }
        let p = exp(score - running_max);
        running_sum += p;
        for (var i = 0u; i < UNITS; i++) {
            acc[i] = fma(vec(p), v_cache[kv_base + i], acc[i]);
        }
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
    for (var i = 0u; i < UNITS; i++) {
        merged[i * WG_SIZE + lid] = acc[i] * weight;
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
        lse[flat] = select(NEG_BIG, max_all + log(sum_all), sum_all > 0.0);
    }
    for (var i = lid; i < UNITS; i += WG_SIZE) {
        var total = vec(0.0);
        for (var j = 0u; j < WG_SIZE; j++) {
            total += merged[i * WG_SIZE + j];
        }
        out[flat * UNITS + i] = total * inv_sum;
#if OUTPUT
        head_out[i] = total * inv_sum;
#endif
    }
#if OUTPUT
    // Every thread reads the whole head.
    workgroupBarrier();
    project_head(row_head / params.n_heads, head, params.n_rows, params.n_heads, params.head_dim, lid);
#endif
}

#endif
