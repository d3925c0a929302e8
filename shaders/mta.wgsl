// mta: Multi-Token Attention (mta.md §4) over a dense KV cache (slot j holds token j), in stages that pass
// f32 attention maps between them. A map holds, per query head, rows of `key_cap` columns for the rows of one
// chunk (a prefill tile of up to max_rows queries, or the one row of a decode step): the row of token t is at
// t mod rows (`map_at`), so the T x T map is never materialised and one set of maps serves every layer. What
// must outlive a chunk is a conv layer's c_q - 1 rows before the next one: KEEP copies them into that layer's
// halo ring, the row ring of mta.md §7, and MIX reads rows before the chunk from there, so decode and chunked
// prefill never recompute an earlier row. A row t only ever holds keys seq_start..=t; every other entry reads
// as zero (Mask_0), which is also how the conv's padding, the future keys of earlier rows and another packed
// document (tokens before seq_start, mta.md §2) stay out of it.
//   LOGITS:  map_out[h, t, j] = scale · <R(t) q[t, h], R(j) k[j, g]>, g = h's kv head (GQA), for j <= t;
//            computed as <R(t - j) q, k> (a rotation's inverse is its transpose), one rotation per pair.
//   MIX:     map_out[o, t, j] = Σ_p w[g][p, o] · Conv_θp(map_in_p)[t, j] over the heads p of o's group g
//            (mta.md §2 key-query convolution, centred key taps, causal query taps, rows before the chunk
//            from `halo`; §3 head mixing), for j <= t. Run before the softmax on the logits (pre) and after
//            it on the probabilities (post); either part is off by `conv_q = 0` or `mix_size = 0`. One
//            thread per (row, group, key).
//   KEEP:    halo[h, t, j] = map_in[h, t, j] for the last min(n_rows, halo_rows) rows t of the chunk, after
//            the MIX that read the old halo (the rows it overwrites are older than any the next chunk reads).
//   SOFTMAX: map_out[h, t, j] = softmax_j(map_in[h, t, seq_start..=t]), max-subtracted, in f32 (the -inf
//            mask of mta.md §4 is that only j <= t take part). One thread per (row, head).
//   OUTPUT:  out[t, h] = Σ_j map_in[h, t, j] v[j, g] (probabilities as given: post-softmax rows are not
//            renormalised), then, per switches, the head's RMS group norm with γ, the sigmoid gate (scalar
//            σ(<w, y> + β) or per channel σ(W y + b)) and the depth factor (mta.md §5). One thread per
//            (row, head), owning the whole head vector.
// No workgroup memory and no barrier in any stage (lavapipe's weak spot, platform.md); perf is issue 9's.
// Flags: LOGITS, MIX, KEEP, SOFTMAX, OUTPUT (one per stage; each declares only its own bindings).
// Overrides: WG_SIZE. Spec: mta.md §2-§5 (operations), §7 (decode with the row ring), §8 (halo).

override WG_SIZE: u32 = 64u;

// Finite stand-in for -inf (WGSL has no infinity literal).
const NEG_BIG: f32 = -3.0e38;

struct Params {
    n_rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    // Row r is token first_token + r; the keys are tokens 0..first_token + n_rows.
    first_token: u32,
    // Tokens before seq_start belong to another (packed) document: never read, positions count from here.
    seq_start: u32,
    // Columns of every map row.
    key_cap: u32,
    // Rows per head of the map read (map_in), of the map written (map_out) and of the halo ring.
    in_rows: u32,
    out_rows: u32,
    halo_rows: u32,
    // MIX: key-query kernel of conv_q x conv_k taps per head at weights[conv_offset..]; 0 taps: no conv.
    conv_q: u32,
    conv_k: u32,
    conv_offset: u32,
    // MIX: groups of mix_size consecutive heads mixed by weights[mix_offset..] ([group][in][out]); 0: none.
    mix_size: u32,
    mix_offset: u32,
    // OUTPUT: bit 0 group norm (γ at norm_offset), bit 1 scalar gate, bit 2 vector gate (at gate_offset).
    switches: u32,
    norm_offset: u32,
    gate_offset: u32,
    scale: f32,
    depth_factor: f32,
    eps: f32,
}

const NORM: u32 = 1u;
const GATE_SCALAR: u32 = 2u;
const GATE_VECTOR: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;

// Index of (head, token t, key j) in a map of `rows` rows per head.
fn map_at(head: u32, t: u32, rows: u32, j: u32) -> u32 {
    return (head * rows + t % rows) * params.key_cap + j;
}

// The flat invocation index of a 1-D or 2-D grid (gpu::grid).
fn flat_index(gid: vec3<u32>, n_wg: vec3<u32>) -> u32 {
    return gid.x + gid.y * n_wg.x * WG_SIZE;
}

#if LOGITS
#include "common/rope.wgsl"

@group(0) @binding(1) var<storage, read> q: array<vec2<f32>>;           // [n_rows, n_heads, head_dim], raw
@group(0) @binding(2) var<storage, read> k_cache: array<vec2<f32>>;     // [capacity, n_kv_heads, head_dim], raw
@group(0) @binding(3) var<storage, read> rope: array<vec2<f32>>;        // [n_pos, head_dim / 2] of (cos θ, sin θ)
@group(0) @binding(4) var<storage, read_write> map_out: array<f32>;     // [n_heads, out_rows, key_cap]

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) n_wg: vec3<u32>) {
    let n_keys = params.first_token + params.n_rows;
    let i = flat_index(gid, n_wg);
    if i >= params.n_rows * params.n_heads * n_keys {
        return;
    }
    let j = i % n_keys;
    let head = (i / n_keys) % params.n_heads;
    let r = i / n_keys / params.n_heads;
    let t = params.first_token + r;
    if j > t || j < params.seq_start {
        return;
    }
    let kv_head = head / (params.n_heads / params.n_kv_heads);
    let half = params.head_dim / 2u;
    let q_base = (r * params.n_heads + head) * half;
    let k_base = (j * params.n_kv_heads + kv_head) * half;
    let rope_base = (t - j) * half;
    var qk = 0.0;
    for (var p = 0u; p < half; p++) {
        qk += dot(rope_rotate(q[q_base + p], rope[rope_base + p]), k_cache[k_base + p]);
    }
    map_out[map_at(head, t, params.out_rows, j)] = qk * params.scale;
}
#endif

#if MIX
@group(0) @binding(1) var<storage, read> weights: array<f32>;           // the layer's MTA weights
@group(0) @binding(2) var<storage, read> map_in: array<f32>;            // [n_heads, in_rows, key_cap]
@group(0) @binding(3) var<storage, read_write> map_out: array<f32>;     // [n_heads, out_rows, key_cap]
@group(0) @binding(4) var<storage, read> halo: array<f32>;              // [n_heads, halo_rows, key_cap]

// Most heads in one mixing group (checked on the host).
const MAX_MIX: u32 = 32u;

// The convolved map at [head, row, col] where row `row` holds it (seq_start <= col <= row), else 0: rows of
// the chunk from map_in, earlier ones from the halo ring. Signed: the conv's taps reach before the first row
// and key.
fn tap(head: u32, row: i32, col: i32) -> f32 {
    let start = i32(params.seq_start);
    if row < start || col < start || col > row {
        return 0.0;
    }
    if row < i32(params.first_token) {
        return halo[map_at(head, u32(row), params.halo_rows, u32(col))];
    }
    return map_in[map_at(head, u32(row), params.in_rows, u32(col))];
}

// Conv_θ(map_in)[t, j] of mta.md §2 for `head`: tap (a, b) reads row t - (conv_q - 1) + a, key
// j - (conv_k - 1) / 2 + b (a cross-correlation: θ[conv_q - 1, (conv_k - 1) / 2] weighs [t, j] itself).
fn conv_at(head: u32, t: u32, j: u32) -> f32 {
    if params.conv_q == 0u {
        return map_in[map_at(head, t, params.in_rows, j)];
    }
    let theta = params.conv_offset + head * params.conv_q * params.conv_k;
    let row0 = i32(t) - i32(params.conv_q - 1u);
    let col0 = i32(j) - i32((params.conv_k - 1u) / 2u);
    var sum = 0.0;
    for (var a = 0u; a < params.conv_q; a++) {
        for (var b = 0u; b < params.conv_k; b++) {
            sum += weights[theta + a * params.conv_k + b] * tap(head, row0 + i32(a), col0 + i32(b));
        }
    }
    return sum;
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) n_wg: vec3<u32>) {
    let n_keys = params.first_token + params.n_rows;
    let group_size = max(params.mix_size, 1u);
    let n_groups = params.n_heads / group_size;
    let i = flat_index(gid, n_wg);
    if i >= params.n_rows * n_groups * n_keys {
        return;
    }
    let j = i % n_keys;
    let group = (i / n_keys) % n_groups;
    let t = params.first_token + i / n_keys / n_groups;
    if j > t || j < params.seq_start {
        return;
    }
    let first_head = group * group_size;
    var conv: array<f32, MAX_MIX>;
    for (var p = 0u; p < group_size; p++) {
        conv[p] = conv_at(first_head + p, t, j);
    }
    for (var o = 0u; o < group_size; o++) {
        var mixed = conv[o];
        if params.mix_size > 0u {
            let w = params.mix_offset + group * group_size * group_size + o;
            mixed = 0.0;
            for (var p = 0u; p < group_size; p++) {
                mixed += weights[w + p * group_size] * conv[p];
            }
        }
        map_out[map_at(first_head + o, t, params.out_rows, j)] = mixed;
    }
}
#endif

#if KEEP
@group(0) @binding(1) var<storage, read> map_in: array<f32>;            // [n_heads, in_rows, key_cap]
@group(0) @binding(2) var<storage, read_write> halo: array<f32>;        // [n_heads, halo_rows, key_cap]

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) n_wg: vec3<u32>) {
    let n_keys = params.first_token + params.n_rows;
    let kept = min(params.n_rows, params.halo_rows);
    let i = flat_index(gid, n_wg);
    if i >= kept * params.n_heads * n_keys {
        return;
    }
    let j = i % n_keys;
    let head = (i / n_keys) % params.n_heads;
    let t = n_keys - kept + i / n_keys / params.n_heads;
    halo[map_at(head, t, params.halo_rows, j)] = map_in[map_at(head, t, params.in_rows, j)];
}
#endif

#if SOFTMAX
@group(0) @binding(1) var<storage, read> map_in: array<f32>;            // [n_heads, in_rows, key_cap]
@group(0) @binding(2) var<storage, read_write> map_out: array<f32>;     // [n_heads, out_rows, key_cap]

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) n_wg: vec3<u32>) {
    let i = flat_index(gid, n_wg);
    if i >= params.n_rows * params.n_heads {
        return;
    }
    let head = i % params.n_heads;
    let t = params.first_token + i / params.n_heads;
    let row_in = map_at(head, t, params.in_rows, 0u);
    let row_out = map_at(head, t, params.out_rows, 0u);
    var row_max = NEG_BIG;
    for (var j = params.seq_start; j <= t; j++) {
        row_max = max(row_max, map_in[row_in + j]);
    }
    var sum = 0.0;
    for (var j = params.seq_start; j <= t; j++) {
        sum += exp(map_in[row_in + j] - row_max);
    }
    // sum >= 1: the maximum contributes exp(0).
    for (var j = params.seq_start; j <= t; j++) {
        map_out[row_out + j] = exp(map_in[row_in + j] - row_max) / sum;
    }
}
#endif

#if OUTPUT
@group(0) @binding(1) var<storage, read> weights: array<f32>;           // the layer's MTA weights
@group(0) @binding(2) var<storage, read> map_in: array<f32>;            // [n_heads, in_rows, key_cap]
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;           // [capacity, n_kv_heads, head_dim]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;         // [n_rows, n_heads, head_dim]

// Widest head served (checked on the host): the private vectors have a constant size.
const MAX_HEAD_DIM: u32 = 128u;

fn sigmoid(z: f32) -> f32 {
    // exp(-z) overflows to +inf for z < -88, which correctly gives 0.
    return 1.0 / (1.0 + exp(-z));
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) n_wg: vec3<u32>) {
    let i = flat_index(gid, n_wg);
    if i >= params.n_rows * params.n_heads {
        return;
    }
    let head = i % params.n_heads;
    let r = i / params.n_heads;
    let t = params.first_token + r;
    let hd = params.head_dim;
    let kv_head = head / (params.n_heads / params.n_kv_heads);
    var y: array<f32, MAX_HEAD_DIM>;
    for (var d = 0u; d < hd; d++) {
        y[d] = 0.0;
    }
    let row = map_at(head, t, params.in_rows, 0u);
    for (var j = params.seq_start; j <= t; j++) {
        let p = map_in[row + j];
        let v_base = (j * params.n_kv_heads + kv_head) * hd;
        for (var d = 0u; d < hd; d++) {
            y[d] += p * v_cache[v_base + d];
        }
    }
    if (params.switches & NORM) != 0u {
        var squares = 0.0;
        for (var d = 0u; d < hd; d++) {
            squares += y[d] * y[d];
        }
        let inv_rms = inverseSqrt(squares / f32(hd) + params.eps);
        for (var d = 0u; d < hd; d++) {
            y[d] *= inv_rms * weights[params.norm_offset + d];
        }
    }
    if (params.switches & GATE_SCALAR) != 0u {
        // weights[gate_offset..]: w [head_dim], then β.
        var z = weights[params.gate_offset + hd];
        for (var d = 0u; d < hd; d++) {
            z += weights[params.gate_offset + d] * y[d];
        }
        let gate = sigmoid(z);
        for (var d = 0u; d < hd; d++) {
            y[d] *= gate;
        }
    }
    if (params.switches & GATE_VECTOR) != 0u {
        // weights[gate_offset..]: W [head_dim out][head_dim in], then b [head_dim]. Every gate reads the
        // ungated vector, so the gates go to a second array first.
        var gates: array<f32, MAX_HEAD_DIM>;
        for (var o = 0u; o < hd; o++) {
            var z = weights[params.gate_offset + hd * hd + o];
            for (var d = 0u; d < hd; d++) {
                z += weights[params.gate_offset + o * hd + d] * y[d];
            }
            gates[o] = sigmoid(z);
        }
        for (var d = 0u; d < hd; d++) {
            y[d] *= gates[d];
        }
    }
    let out_base = (r * params.n_heads + head) * hd;
    for (var d = 0u; d < hd; d++) {
        out[out_base + d] = y[d] * params.depth_factor;
    }
}
#endif
