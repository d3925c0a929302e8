// matmul: out[r, o] = sum_i x[first_row + r, i] * W[o, i]; with ACCUMULATE, out[r, o] += that
// sum (a fused residual add); with SWIGLU, W stacks the gate and up projections ([2 n_out, n_in])
// and out[r, o] = silu(gate) * up of the sums of rows o and n_out + o (the FFN's SwiGLU fused into
// its first projection); with SPLIT, W stacks the q, k and v projections: column o goes to `out`
// for o < split, else to row slots[r] of k_cache or v_cache (kv = (n_out - split) / 2 columns
// each; a slot at or past `capacity` is not written): q, k, v and the cache write in one dispatch.
// With NORM, x is RMS-normalised first (the norm before attention, the FFN or the head, fused):
// out uses gamma[i] * x[r, i] / rms(x[r]). The 1 / rms factor commutes with the sum, so each
// invocation multiplies x by gamma as it loads it and scales its sums at the end; it computes the
// row's sum of squares itself (a second pass over x: redundant across invocations, but cheaper
// than a dispatch and a round trip through memory).
// With X_PARTS (before NORM: the FFN's norm in decode) x is the residual stream held as the
// buffer's first_row + n_rows rows plus n_parts parts of as many rows after them, summed as x is
// loaded: the heads' shares of the output projection, which attention.wgsl writes there (its
// OUTPUT form), so the projection and its residual add need no dispatch of their own. With
// OUT_PARTS (after ACCUMULATE: the down projection) out is held the same way, and
// out[r, o] += sum + the parts' [r, o]: the same parts' residual add, where the stream is written.
// W is [n_out, n_in] in the ggml blocks of the GGUF, laid out by matmul::upload_weight, decoded here by
// common/quant.wgsl and never expanded in memory.
// No barriers, no workgroup memory (but the vec form's one staging of a normalised row, and the
// shared form): CPU drivers run those 5-10x slower in loops. The invocations of a
// workgroup take neighbouring output columns of the same rows, so x is read at the same address
// by all of them. On lavapipe the cost is in loads (a storage load costs a dozen instructions
// per invocation, a uniform load at a shared address almost nothing), so each invocation keeps
// a block of outputs in registers, hand-unrolled into named vec4s: private arrays indexed in
// loops end up in memory there (measured 1.5-3x slower).
//   vec (decode: one or a few rows; CPU drivers): x in a uniform buffer; an invocation computes 4
//     columns of one row (o, o + WG_SIZE, o + 2 WG_SIZE, o + 3 WG_SIZE; SWIGLU: the gate and up
//     rows of outputs o and o + WG_SIZE). With NORM (STAGE_X) the workgroup first stages its row
//     times gamma, and the row's squares, in workgroup memory, behind one barrier: each
//     invocation would otherwise read the row (and with X_PARTS its parts) and gamma itself.
//   subgroup (decode on GPUs with subgroup operations): x in a storage buffer (a GPU's uniform
//     cache serialises lanes that read different addresses); a subgroup computes 4 columns of one
//     row, its lanes taking the row's chunks in turn, so that neighbouring lanes read neighbouring
//     blocks of one weight row, and one subgroupAdd per column meets their sums (and, with NORM,
//     the row's squares).
//   Both matvec forms sum a block's products on its codes and scale the sum once
//   (common/quant.wgsl's chunk_sum) rather than decode each weight: for Q4 blocks the 32
//   multiply-adds of d * code + m per block and row become 8.
//   tile (prefill): x in a storage buffer; an invocation computes 4 rows x 8 columns, so a
//     decoded weight serves 4 rows and an x value 8 columns (SWIGLU: the gate and up rows of 4
//     outputs).
// n_in is a multiple of 32 for quant formats and of 4 for float ones (checked on the host).
// Flags: one of F32, F16, BF16, Q4_0, Q4_1, Q8_0; MATVEC with UNIFORM_X (vec) or SUBGROUP (subgroup),
// neither for tile; one of ACCUMULATE (optionally with OUT_PARTS), SWIGLU, SPLIT; NORM (optionally
// with X_PARTS).
// Overrides: WG_SIZE. Spec: none (sink-window.md §4 option A for the cache: keys go in raw).

#include "common/quant.wgsl"

override WG_SIZE: u32 = 16u;

struct Params {
    n_rows: u32,
    n_in: u32,
    n_out: u32,
    // SPLIT: the columns that go to `out` (q); 0 otherwise.
    split: u32,
    // The row of x that row 0 of out comes from (the LM head reads a chunk's last row only).
    first_row: u32,
    // SPLIT: rows of k_cache and v_cache.
    capacity: u32,
    // NORM: RMSNorm's epsilon.
    eps: f32,
    // X_PARTS, OUT_PARTS: the parts held after the stream's rows.
    n_parts: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weight: array<WeightWord>; // n_out rows of row_stride(n_in) bytes
#if UNIFORM_X
// 64 KiB, the smallest max_uniform_buffer_binding_size WebGPU allows.
const X_VEC4S: u32 = 4096u;
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, X_VEC4S>; // [first_row + n_rows, n_in / 4] <= X_VEC4S
#else
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;   // [first_row + n_rows, n_in / 4]
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // [n_rows, n_out] (SPLIT: [n_rows, split])
#if SPLIT
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>; // [capacity, kv]
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>; // [capacity, kv]
@group(0) @binding(6) var<storage, read> slots: array<u32>;         // [n_rows]
#endif
// NORM's weight comes after every other binding: 4, or 7 after SPLIT's.
#if NORM
#if SPLIT
@group(0) @binding(7) var<storage, read> gamma: array<vec4<f32>>; // [n_in / 4]
#else
@group(0) @binding(4) var<storage, read> gamma: array<vec4<f32>>; // [n_in / 4]
#endif
#endif

// x[e .. e + 4] for a flat index e (a multiple of 4); with X_PARTS, plus the parts' values there.
fn x4_at(e: u32) -> vec4<f32> {
#if X_PARTS
    var sum = x[e >> 2u];
    let stride = (params.first_row + params.n_rows) * params.n_in;
    for (var p = 1u; p <= params.n_parts; p++) {
        sum += x[(e + p * stride) >> 2u];
    }
    return sum;
#else
    return x[e >> 2u];
#endif
}

// What multiplies x[r, i .. i + 4] elementwise: RMSNorm's weight with NORM, else 1 (folded away).
fn gamma4(i: u32) -> vec4<f32> {
#if NORM
    return gamma[i >> 2u];
#else
    return vec4<f32>(1.0);
#endif
}

#if NORM
// The sum of squares of x[x_row + 4 i .. + 4] over i = first, first + step, ... < n_in / 4.
fn squares(x_row: u32, first: u32, step: u32) -> f32 {
    var acc = vec4<f32>();
    for (var i = 4u * first; i < params.n_in; i += 4u * step) {
        let v = x4_at(x_row + i);
        acc = fma(v, v, acc);
    }
    return dot(acc, vec4<f32>(1.0));
}

// 1 / rms of a row whose squares sum to `sum`.
fn norm_scale(sum: f32) -> f32 {
    return inverseSqrt(sum / f32(params.n_in) + params.eps);
}
#endif

// What scales the sums of the row of x starting at flat index x_row: 1 / rms(x_row) with NORM,
// else 1.
fn row_scale(x_row: u32) -> f32 {
#if NORM
    return norm_scale(squares(x_row, 0u, 1u));
#else
    return 1.0;
#endif
}

// Weights i .. i + 4 of a row, one at a time: the float formats' tail after the last chunk.
fn weights4_at(row: Row, i: u32) -> vec4<f32> {
    return vec4<f32>(weight_at(row, i), weight_at(row, i + 1u), weight_at(row, i + 2u), weight_at(row, i + 3u));
}

fn store(r: u32, o: u32, value: f32) {
    if r < params.n_rows && o < params.n_out {
#if SPLIT
        let q = params.split;
        let kv = (params.n_out - q) / 2u;
        if o < q {
            out[r * q + o] = value;
        } else {
            let slot = slots[r];
            if slot < params.capacity {
                let c = o - q;
                if c < kv {
                    k_cache[slot * kv + c] = value;
                } else {
                    v_cache[slot * kv + c - kv] = value;
                }
            }
        }
#else
        let at = r * params.n_out + o;
#if OUT_PARTS
        var sum = value;
        let stride = params.n_rows * params.n_out;
        for (var p = 1u; p <= params.n_parts; p++) {
            sum += out[at + p * stride];
        }
        out[at] += sum;
#else
#if ACCUMULATE
        out[at] += value;
#else
        out[at] = value;
#endif
#endif
#endif
    }
}

// Where row o of W starts. Columns past n_out read the last row instead, so every load
// stays in bounds; `store` drops their results.
fn w_row(o: u32) -> Row {
    return row_at(min(o, params.n_out - 1u), params.n_in);
}

// Output columns one invocation stores per row: its 4 (vec) or 8 (tile) weight rows, halved by
// SWIGLU, whose weight rows come in (gate, up) pairs.
#if SWIGLU
const OUT_SHARE: u32 = 2u;

// Where the up row of output o starts (n_out rows after its gate row).
fn up_row(o: u32) -> Row {
    return row_at(min(o, params.n_out - 1u) + params.n_out, params.n_in);
}

// silu(gate) * up; exp(-gate) overflows to +inf for gate < -88, which correctly gives -0.
fn swiglu(gate: f32, up: f32) -> f32 {
    return gate / (1.0 + exp(-gate)) * up;
}
#else
const OUT_SHARE: u32 = 1u;
#endif

// The first row and first output of the workgroup's block of `rows` rows and `cols` outputs:
// workgroups are laid out column group first, then row block; a 2-D grid spills into y.
fn block_origin(wid: vec3<u32>, n_wg: vec3<u32>, rows: u32, cols: u32) -> vec2<u32> {
    let n_col_groups = (params.n_out + cols - 1u) / cols;
    let flat = wid.x + wid.y * n_wg.x;
    return vec2<u32>(flat / n_col_groups * rows, flat % n_col_groups * cols);
}

#if MATVEC
#if STAGE_X
// The workgroup's row of x times gamma (not yet 1 / rms), with X_PARTS its parts summed,
// computed once by the whole workgroup rather than by each invocation, and the invocations'
// shares of its sum of squares. Rows wider than 4 STAGED_VEC4S values are not staged: every
// invocation reads them as the other forms do (the declared size is reserved whatever the row).
const STAGED_VEC4S: u32 = 512u;
var<workgroup> x_staged: array<vec4<f32>, STAGED_VEC4S>;
var<workgroup> squares_part: array<f32, WG_SIZE>;

// Whether rows of x are staged: the same for the whole dispatch (n_in is uniform), so the
// barrier in `stage_x` stays in uniform control flow.
fn staged() -> bool {
    return params.n_in <= 4u * STAGED_VEC4S;
}

// Stages the row of x at flat index x_row; returns its 1 / rms. Every invocation must call it.
fn stage_x(x_row: u32, lid: u32) -> f32 {
    var sq = 0.0;
    for (var q = lid; q < params.n_in / 4u; q += WG_SIZE) {
        let v = x4_at(x_row + 4u * q);
        sq += dot(v, v);
        x_staged[q] = v * gamma4(4u * q);
    }
    squares_part[lid] = sq;
    workgroupBarrier();
    var sum = 0.0;
    for (var j = 0u; j < WG_SIZE; j++) {
        sum += squares_part[j];
    }
    return norm_scale(sum);
}
#endif

// x[x_row + i ..+ 4] times gamma: what weights i ..+ 4 multiply.
fn x_in(x_row: u32, i: u32) -> vec4<f32> {
#if STAGE_X
    if staged() {
        return x_staged[i >> 2u];
    }
#endif
    return x4_at(x_row + i) * gamma4(i);
}

// acc + the 8 products of one group, kept as 4 partial sums.
fn mac(acc: vec4<f32>, w: Group, x_lo: vec4<f32>, x_hi: vec4<f32>) -> vec4<f32> {
    return fma(w.lo, x_lo, fma(w.hi, x_hi, acc));
}

// Partial sums (4 per row, to be added up) of 4 weight rows against the row of x at flat index
// x_row.
struct Sums {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
}

// The sums of weight rows w0..w3 over chunks first, first + step, ... of the row (and, for the
// float formats, the same stride of the 4-value steps after the last whole chunk): one
// invocation takes all of it (0, 1) or one lane of a subgroup its share (lane, subgroup size).
fn sums(w0: Row, w1: Row, w2: Row, w3: Row, x_row: u32, first: u32, step: u32) -> Sums {
    let n_in = params.n_in;
    var a0 = vec4<f32>();
    var a1 = vec4<f32>();
    var a2 = vec4<f32>();
    var a3 = vec4<f32>();
    let n_chunks = n_in / CHUNK_ELEMS;
    for (var k = first; k < n_chunks; k += step) {
        let c0 = chunk_at(w0, k);
        let c1 = chunk_at(w1, k);
        let c2 = chunk_at(w2, k);
        let c3 = chunk_at(w3, k);
        // The chunk's codes times x, and x's sum, for chunk_sum to scale once.
        var p0 = vec4<f32>();
        var p1 = vec4<f32>();
        var p2 = vec4<f32>();
        var p3 = vec4<f32>();
        var x_sum = vec4<f32>();
        for (var g = 0u; g < 4u; g++) {
            let lo = k * CHUNK_ELEMS + lo_offset(g);
            let hi = k * CHUNK_ELEMS + hi_offset(g);
            let x_lo = x_in(x_row, lo);
            let x_hi = x_in(x_row, hi);
            x_sum += x_lo + x_hi;
            p0 = mac(p0, codes_at(c0, g), x_lo, x_hi);
            p1 = mac(p1, codes_at(c1, g), x_lo, x_hi);
            p2 = mac(p2, codes_at(c2, g), x_lo, x_hi);
            p3 = mac(p3, codes_at(c3, g), x_lo, x_hi);
        }
        a0 = chunk_sum(a0, c0, p0, x_sum);
        a1 = chunk_sum(a1, c1, p1, x_sum);
        a2 = chunk_sum(a2, c2, p2, x_sum);
        a3 = chunk_sum(a3, c3, p3, x_sum);
    }
    // Float formats only (their block is one weight): the weights after the last whole chunk.
    for (var i = n_chunks * CHUNK_ELEMS + 4u * first; i < n_in; i += 4u * step) {
        let xi = x_in(x_row, i);
        a0 = fma(weights4_at(w0, i), xi, a0);
        a1 = fma(weights4_at(w1, i), xi, a1);
        a2 = fma(weights4_at(w2, i), xi, a2);
        a3 = fma(weights4_at(w3, i), xi, a3);
    }
    return Sums(a0, a1, a2, a3);
}

#if SUBGROUP
// Weight rows per workgroup: 8 quads of 4 rows, one quad per subgroup at a time.
const WG_ROWS: u32 = 32u;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) n_subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    let origin = block_origin(wid, n_wg, 1u, WG_ROWS / OUT_SHARE);
    let r = origin.x;
    if r >= params.n_rows {
        return;
    }
    let o_first = origin.y;
    let x_row = (params.first_row + r) * params.n_in;
#if NORM
    let scale = norm_scale(subgroupAdd(squares(x_row, lane, lanes)));
#else
    let scale = 1.0;
#endif
    // Any subgroup size works: the quads go round the subgroups, the chunks round the lanes.
    for (var quad = subgroup; quad < WG_ROWS / 4u; quad += n_subgroups) {
#if SWIGLU
        let o = o_first + 2u * quad;
        let s = sums(w_row(o), w_row(o + 1u), up_row(o), up_row(o + 1u), x_row, lane, lanes);
#else
        let o = o_first + 4u * quad;
        let s = sums(w_row(o), w_row(o + 1u), w_row(o + 2u), w_row(o + 3u), x_row, lane, lanes);
#endif
        let ones = vec4<f32>(1.0);
        let y0 = subgroupAdd(dot(s.a0, ones)) * scale;
        let y1 = subgroupAdd(dot(s.a1, ones)) * scale;
        let y2 = subgroupAdd(dot(s.a2, ones)) * scale;
        let y3 = subgroupAdd(dot(s.a3, ones)) * scale;
        if lane == 0u {
#if SWIGLU
            store(r, o, swiglu(y0, y2));
            store(r, o + 1u, swiglu(y1, y3));
#else
            store(r, o, y0);
            store(r, o + 1u, y1);
            store(r, o + 2u, y2);
            store(r, o + 3u, y3);
#endif
        }
    }
}
#else
@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let origin = block_origin(wid, n_wg, 1u, 4u / OUT_SHARE * WG_SIZE);
    let r = origin.x;
    if r >= params.n_rows {
        return;
    }
    let o = origin.y + lid;
    let x_row = (params.first_row + r) * params.n_in;
#if STAGE_X
    var x_scale: f32;
    if staged() {
        x_scale = stage_x(x_row, lid);
    } else {
        x_scale = row_scale(x_row);
    }
#else
    let x_scale = row_scale(x_row);
#endif
#if SWIGLU
    let s = sums(w_row(o), w_row(o + WG_SIZE), up_row(o), up_row(o + WG_SIZE), x_row, 0u, 1u);
#else
    let s = sums(w_row(o), w_row(o + WG_SIZE), w_row(o + 2u * WG_SIZE), w_row(o + 3u * WG_SIZE), x_row, 0u, 1u);
#endif
    // dot(a, scale): the sum of a's partial sums, times the row's scale.
    let scale = vec4<f32>(x_scale);
#if SWIGLU
    store(r, o, swiglu(dot(s.a0, scale), dot(s.a2, scale)));
    store(r, o + WG_SIZE, swiglu(dot(s.a1, scale), dot(s.a3, scale)));
#else
    store(r, o, dot(s.a0, scale));
    store(r, o + WG_SIZE, dot(s.a1, scale));
    store(r, o + 2u * WG_SIZE, dot(s.a2, scale));
    store(r, o + 3u * WG_SIZE, dot(s.a3, scale));
#endif
}
#endif
#else
// acc + one group of a column's weights times 4 rows of x: the columns of x_lo and x_hi are the
// rows, so component j of the result is row j's dot product.
fn mac(acc: vec4<f32>, w: Group, x_lo: mat4x4<f32>, x_hi: mat4x4<f32>) -> vec4<f32> {
    return acc + w.lo * x_lo + w.hi * x_hi;
}

// The flat index of row r of x (the step's row, after first_row). Rows past n_rows read the
// last row instead, so that a tile's loads stay in bounds; `store` drops their results.
fn x_row_at(r: u32) -> u32 {
    return (params.first_row + min(r, params.n_rows - 1u)) * params.n_in;
}

fn x_rows(x0: u32, x1: u32, x2: u32, x3: u32, i: u32) -> mat4x4<f32> {
    let g = gamma4(i);
    return mat4x4<f32>(x4_at(x0 + i) * g, x4_at(x1 + i) * g, x4_at(x2 + i) * g, x4_at(x3 + i) * g);
}

#if SWIGLU
fn swiglu4(gate: vec4<f32>, up: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(swiglu(gate.x, up.x), swiglu(gate.y, up.y), swiglu(gate.z, up.z), swiglu(gate.w, up.w));
}
#endif

fn store_rows(r0: u32, o: u32, acc: vec4<f32>) {
    store(r0, o, acc.x);
    store(r0 + 1u, o, acc.y);
    store(r0 + 2u, o, acc.z);
    store(r0 + 3u, o, acc.w);
}

#if SHARED
// Rows of x and weight rows per workgroup (multiples of 4; WG_SIZE = TILE_M * TILE_N / 16),
// chosen per adapter on the host.
override TILE_M: u32 = 64u;
override TILE_N: u32 = 64u;
// One chunk (32 values, 8 vec4s) of each of the tile's rows of x and of its weight rows, stored
// vec4 index first, so that neighbouring invocations (neighbouring weight rows) read
// neighbouring words: xs[q * TILE_M + m] is x[r0 + m, 32 k + 4 q ..+ 4] (times gamma), and
// ws[(2 g + h) * TILE_N + j] half h (lo, hi) of group g of weight row j's chunk.
var<workgroup> xs: array<vec4<f32>, TILE_M * 8u>;
var<workgroup> ws: array<vec4<f32>, TILE_N * 8u>;

// The weight row behind column j of the tile whose first output is o0: output o0 + j, or with
// SWIGLU the gate rows of outputs o0 .. o0 + TILE_N / 2 and then their up rows.
fn tile_row(o0: u32, j: u32) -> Row {
#if SWIGLU
    let half = TILE_N / 2u;
    if j < half {
        return w_row(o0 + j);
    }
    return up_row(o0 + j - half);
#else
    return w_row(o0 + j);
#endif
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n_rows = params.n_rows;
    let n_in = params.n_in;
    let origin = block_origin(wid, n_wg, TILE_M, TILE_N / OUT_SHARE);
    let tile_r0 = origin.x;
    // The whole workgroup leaves together, so the barriers below stay uniform.
    if tile_r0 >= n_rows {
        return;
    }
    let o0 = origin.y;
    // This invocation: rows tile_r0 + 4 tm ..+ 4 and tile columns tn + c TILE_N / 4 (c < 4;
    // with SWIGLU columns c and c + 2 are one output's gate and up).
    let tn = lid % (TILE_N / 4u);
    let tm = lid / (TILE_N / 4u);
    let r0 = tile_r0 + 4u * tm;
    let quarter = TILE_N / 4u;
    var a0 = vec4<f32>();
    var a1 = vec4<f32>();
    var a2 = vec4<f32>();
    var a3 = vec4<f32>();
    let n_chunks = n_in / CHUNK_ELEMS;
    for (var k = 0u; k < n_chunks; k++) {
        // The tile's chunk of x.
        for (var e = lid; e < TILE_M * 8u; e += WG_SIZE) {
            let m = e / 8u;
            let q = e % 8u;
            let i = k * CHUNK_ELEMS + 4u * q;
            xs[q * TILE_M + m] = x4_at(x_row_at(tile_r0 + m) + i) * gamma4(i);
        }
        // Its weights, decoded once for all TILE_M rows: one group of one row per step.
        for (var e = lid; e < TILE_N * 4u; e += WG_SIZE) {
            let j = e / 4u;
            let g = e % 4u;
            let w = group_at(chunk_at(tile_row(o0, j), k), g);
            ws[2u * g * TILE_N + j] = w.lo;
            ws[(2u * g + 1u) * TILE_N + j] = w.hi;
        }
        workgroupBarrier();
        for (var g = 0u; g < 4u; g++) {
            let lo = lo_offset(g) / 4u * TILE_M + 4u * tm;
            let hi = hi_offset(g) / 4u * TILE_M + 4u * tm;
            let x_lo = mat4x4<f32>(xs[lo], xs[lo + 1u], xs[lo + 2u], xs[lo + 3u]);
            let x_hi = mat4x4<f32>(xs[hi], xs[hi + 1u], xs[hi + 2u], xs[hi + 3u]);
            let w_lo = 2u * g * TILE_N + tn;
            let w_hi = w_lo + TILE_N;
            a0 = mac(a0, Group(ws[w_lo], ws[w_hi]), x_lo, x_hi);
            a1 = mac(a1, Group(ws[w_lo + quarter], ws[w_hi + quarter]), x_lo, x_hi);
            a2 = mac(a2, Group(ws[w_lo + 2u * quarter], ws[w_hi + 2u * quarter]), x_lo, x_hi);
            a3 = mac(a3, Group(ws[w_lo + 3u * quarter], ws[w_hi + 3u * quarter]), x_lo, x_hi);
        }
        // The next chunk overwrites both tiles.
        workgroupBarrier();
    }
    let x0 = x_row_at(r0);
    let x1 = x_row_at(r0 + 1u);
    let x2 = x_row_at(r0 + 2u);
    let x3 = x_row_at(r0 + 3u);
    let w0 = tile_row(o0, tn);
    let w1 = tile_row(o0, tn + quarter);
    let w2 = tile_row(o0, tn + 2u * quarter);
    let w3 = tile_row(o0, tn + 3u * quarter);
    // Float formats only (their block is one weight): the weights after the last whole chunk,
    // straight from memory.
    for (var i = n_chunks * CHUNK_ELEMS; i < n_in; i += 4u) {
        let xi = x_rows(x0, x1, x2, x3, i);
        a0 += weights4_at(w0, i) * xi;
        a1 += weights4_at(w1, i) * xi;
        a2 += weights4_at(w2, i) * xi;
        a3 += weights4_at(w3, i) * xi;
    }
    // Component j of each accumulator is row r0 + j.
    let scale = vec4<f32>(row_scale(x0), row_scale(x1), row_scale(x2), row_scale(x3));
#if SWIGLU
    store_rows(r0, o0 + tn, swiglu4(a0 * scale, a2 * scale));
    store_rows(r0, o0 + tn + quarter, swiglu4(a1 * scale, a3 * scale));
#else
    store_rows(r0, o0 + tn, a0 * scale);
    store_rows(r0, o0 + tn + quarter, a1 * scale);
    store_rows(r0, o0 + tn + 2u * quarter, a2 * scale);
    store_rows(r0, o0 + tn + 3u * quarter, a3 * scale);
#endif
}
#else

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n_rows = params.n_rows;
    let n_in = params.n_in;
    let origin = block_origin(wid, n_wg, 4u, 8u / OUT_SHARE * WG_SIZE);
    let r0 = origin.x;
    if r0 >= n_rows {
        return;
    }
    let o = origin.y + lid;
    let w0 = w_row(o);
    let w1 = w_row(o + WG_SIZE);
    let w2 = w_row(o + 2u * WG_SIZE);
    let w3 = w_row(o + 3u * WG_SIZE);
#if SWIGLU
    let w4 = up_row(o);
    let w5 = up_row(o + WG_SIZE);
    let w6 = up_row(o + 2u * WG_SIZE);
    let w7 = up_row(o + 3u * WG_SIZE);
#else
    let w4 = w_row(o + 4u * WG_SIZE);
    let w5 = w_row(o + 5u * WG_SIZE);
    let w6 = w_row(o + 6u * WG_SIZE);
    let w7 = w_row(o + 7u * WG_SIZE);
#endif
    let x0 = x_row_at(r0);
    let x1 = x_row_at(r0 + 1u);
    let x2 = x_row_at(r0 + 2u);
    let x3 = x_row_at(r0 + 3u);
    // a<c>[j] = out[r0 + j, o + c * WG_SIZE].
    var a0 = vec4<f32>();
    var a1 = vec4<f32>();
    var a2 = vec4<f32>();
    var a3 = vec4<f32>();
    var a4 = vec4<f32>();
    var a5 = vec4<f32>();
    var a6 = vec4<f32>();
    var a7 = vec4<f32>();
    let n_chunks = n_in / CHUNK_ELEMS;
    for (var k = 0u; k < n_chunks; k++) {
        let c0 = chunk_at(w0, k);
        let c1 = chunk_at(w1, k);
        let c2 = chunk_at(w2, k);
        let c3 = chunk_at(w3, k);
        let c4 = chunk_at(w4, k);
        let c5 = chunk_at(w5, k);
        let c6 = chunk_at(w6, k);
        let c7 = chunk_at(w7, k);
        // Weights, not codes: a chunk_sum per column would hold 8 more vec4s in registers, which
        // slowed prefill on lavapipe (128 tokens at 42-45 against 47-48 tok/s).
        for (var g = 0u; g < 4u; g++) {
            let x_lo = x_rows(x0, x1, x2, x3, k * CHUNK_ELEMS + lo_offset(g));
            let x_hi = x_rows(x0, x1, x2, x3, k * CHUNK_ELEMS + hi_offset(g));
            a0 = mac(a0, group_at(c0, g), x_lo, x_hi);
            a1 = mac(a1, group_at(c1, g), x_lo, x_hi);
            a2 = mac(a2, group_at(c2, g), x_lo, x_hi);
            a3 = mac(a3, group_at(c3, g), x_lo, x_hi);
            a4 = mac(a4, group_at(c4, g), x_lo, x_hi);
            a5 = mac(a5, group_at(c5, g), x_lo, x_hi);
            a6 = mac(a6, group_at(c6, g), x_lo, x_hi);
            a7 = mac(a7, group_at(c7, g), x_lo, x_hi);
        }
    }
    // Float formats only (their block is one weight): the weights after the last whole chunk.
    for (var i = n_chunks * CHUNK_ELEMS; i < n_in; i += 4u) {
        let xi = x_rows(x0, x1, x2, x3, i);
        a0 += weights4_at(w0, i) * xi;
        a1 += weights4_at(w1, i) * xi;
        a2 += weights4_at(w2, i) * xi;
        a3 += weights4_at(w3, i) * xi;
        a4 += weights4_at(w4, i) * xi;
        a5 += weights4_at(w5, i) * xi;
        a6 += weights4_at(w6, i) * xi;
        a7 += weights4_at(w7, i) * xi;
    }
    // Component j of each accumulator is row r0 + j.
    let scale = vec4<f32>(row_scale(x0), row_scale(x1), row_scale(x2), row_scale(x3));
    a0 *= scale;
    a1 *= scale;
    a2 *= scale;
    a3 *= scale;
    a4 *= scale;
    a5 *= scale;
    a6 *= scale;
    a7 *= scale;
#if SWIGLU
    store_rows(r0, o, swiglu4(a0, a4));
    store_rows(r0, o + WG_SIZE, swiglu4(a1, a5));
    store_rows(r0, o + 2u * WG_SIZE, swiglu4(a2, a6));
    store_rows(r0, o + 3u * WG_SIZE, swiglu4(a3, a7));
#else
    store_rows(r0, o, a0);
    store_rows(r0, o + WG_SIZE, a1);
    store_rows(r0, o + 2u * WG_SIZE, a2);
    store_rows(r0, o + 3u * WG_SIZE, a3);
    store_rows(r0, o + 4u * WG_SIZE, a4);
    store_rows(r0, o + 5u * WG_SIZE, a5);
    store_rows(r0, o + 6u * WG_SIZE, a6);
    store_rows(r0, o + 7u * WG_SIZE, a7);
#endif
}
#endif
#endif
