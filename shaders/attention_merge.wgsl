// attention_merge: combines n_parts partial attentions of the same query vectors over disjoint key sets,
// given each part's output A_p and log-sum-exp LSE_p (attention.wgsl writes both), into the attention over
// all their keys:  LSE = M + log Σ_p exp(LSE_p - M) with M = max_p LSE_p,  out = Σ_p exp(LSE_p - LSE) A_p.
// Every exp is of a non-positive number, so nothing overflows whatever the logits; a part that saw no key
// (LSE_p = NEG_BIG) gets weight exp(NEG_BIG - LSE) = 0, a no-op; if no part saw a key the output is zeros
// and the LSE NEG_BIG. Parts are summed in index order, so every device merging the same parts agrees.
// The n_parts LSEs of a vector are re-read for each of its units (n_parts is a handful: devices or KV
// chunks). Two forms:
//   pairs: one thread per output pair (vector, pair of components), any even head_dim.
//   OUTPUT (a decoded row's split walk): one workgroup per vector (row, head), its threads merging the
//     head's quads, then multiplying the head by its columns of the output projection W_o and writing its
//     part of the residual stream, as attention.wgsl's unsplit row form does (common/project_head.wgsl):
//     a split decode then takes one dispatch more than an unsplit one, not two.
// Flags: OUTPUT, with one weight format's flag. Overrides: WG_SIZE; OUTPUT's UNITS (head_dim / 4), OUT_DIM.
// Spec: star.md §4 (merge over partitions, overflow-safe, empty no-op).

override WG_SIZE: u32 = 64u;

// Finite stand-in for -inf, the same as attention.wgsl's.
const NEG_BIG: f32 = -3.0e38;

struct Params {
    n_parts: u32,
    // Query vectors per part: n_rows x n_heads.
    n_rows: u32,
    n_heads: u32,
    head_dim: u32,
}

#if OUTPUT
// head_dim is a multiple of 32 (whole chunks of W_o's rows), so a head is read as quads.
alias unit = vec4<f32>;
const UNIT_LEN: u32 = 4u;
// head_dim / 4.
override UNITS: u32 = 16u;
#include "common/project_head.wgsl"
#else
alias unit = vec2<f32>;
const UNIT_LEN: u32 = 2u;
#endif

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> parts: array<unit>;         // [n_parts, n_vecs, head_dim]
@group(0) @binding(2) var<storage, read> parts_lse: array<f32>;      // [n_parts, n_vecs]
@group(0) @binding(3) var<storage, read_write> out: array<unit>;     // [n_vecs, head_dim]
@group(0) @binding(4) var<storage, read_write> out_lse: array<f32>;  // [n_vecs]
#if OUTPUT
@group(0) @binding(5) var<storage, read> weight: array<WeightWord>;  // W_o: OUT_DIM rows of n_heads head_dim
@group(0) @binding(6) var<storage, read_write> residual: array<f32>; // [(1 + n_heads) n_rows, OUT_DIM]
#endif

struct Merged {
    value: unit,
    lse: f32,
}

// Unit i of vector `vec` merged over the parts, and the vector's merged LSE.
fn merge_unit(vec: u32, i: u32) -> Merged {
    let n_vecs = params.n_rows * params.n_heads;
    let n_units = params.head_dim / UNIT_LEN;
    var max_lse = NEG_BIG;
    for (var p = 0u; p < params.n_parts; p++) {
        max_lse = max(max_lse, parts_lse[p * n_vecs + vec]);
    }
    // Half of NEG_BIG: no real LSE comes near it (scores are finite f32 dot products).
    if max_lse <= 0.5 * NEG_BIG {
        return Merged(unit(0.0), NEG_BIG);
    }
    var sum = 0.0;
    for (var p = 0u; p < params.n_parts; p++) {
        sum += exp(parts_lse[p * n_vecs + vec] - max_lse);
    }
    let merged_lse = max_lse + log(sum);
    var total = unit(0.0);
    for (var p = 0u; p < params.n_parts; p++) {
        let part_weight = exp(parts_lse[p * n_vecs + vec] - merged_lse);
        total += part_weight * parts[(p * n_vecs + vec) * n_units + i];
    }
    return Merged(total, merged_lse);
}

#if OUTPUT
@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let vec = wid.x + wid.y * n_wg.x;
    // Indices past the end only arise from a 2-D grid; the whole workgroup leaves together, so the
    // barrier below stays uniform.
    if vec >= params.n_rows * params.n_heads {
        return;
    }
    for (var i = lid; i < UNITS; i += WG_SIZE) {
        let merged = merge_unit(vec, i);
        out[vec * UNITS + i] = merged.value;
        head_out[i] = merged.value;
        if i == 0u {
            out_lse[vec] = merged.lse;
        }
    }
    // Every thread reads the whole head.
    workgroupBarrier();
    project_head(vec / params.n_heads, vec % params.n_heads, params.n_rows, params.n_heads, params.head_dim, lid);
}
#else
@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) n_wg: vec3<u32>) {
    let i = gid.x + gid.y * n_wg.x * WG_SIZE;
    let half = params.head_dim / 2u;
    if i >= params.n_rows * params.n_heads * half {
        return;
    }
    let vec = i / half;
    let merged = merge_unit(vec, i % half);
    out[i] = merged.value;
    if i % half == 0u {
        out_lse[vec] = merged.lse;
    }
}
#endif
