// attention_merge: combines n_parts partial attentions of the same query vectors over disjoint key sets,
// given each part's output A_p and log-sum-exp LSE_p (attention.wgsl writes both), into the attention over
// all their keys:  LSE = M + log Σ_p exp(LSE_p - M) with M = max_p LSE_p,  out = Σ_p exp(LSE_p - LSE) A_p.
// Every exp is of a non-positive number, so nothing overflows whatever the logits; a part that saw no key
// (LSE_p = NEG_BIG) gets weight exp(NEG_BIG - LSE) = 0, a no-op; if no part saw a key the output is zeros
// and the LSE NEG_BIG. Parts are summed in index order, so every device merging the same parts agrees.
// One thread per output pair (vector, pair of components); the n_parts LSEs of a vector are re-read by each
// of its threads (n_parts is a handful: devices or KV chunks).
// Flags: none. Overrides: WG_SIZE. Spec: star.md §4 (merge over partitions, overflow-safe, empty no-op).

override WG_SIZE: u32 = 64u;

// Finite stand-in for -inf, the same as attention.wgsl's.
const NEG_BIG: f32 = -3.0e38;

struct Params {
    n_parts: u32,
    // Query vectors (rows x heads) per part.
    n_vecs: u32,
    // Pairs of components per vector: head_dim / 2.
    half: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> parts: array<vec2<f32>>;     // [n_parts, n_vecs, half]
@group(0) @binding(2) var<storage, read> parts_lse: array<f32>;       // [n_parts, n_vecs]
@group(0) @binding(3) var<storage, read_write> out: array<vec2<f32>>; // [n_vecs, half]
@group(0) @binding(4) var<storage, read_write> out_lse: array<f32>;   // [n_vecs]

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) n_wg: vec3<u32>) {
    let i = gid.x + gid.y * n_wg.x * WG_SIZE;
    if i >= params.n_vecs * params.half {
        return;
    }
    let vec = i / params.half;
    var max_lse = NEG_BIG;
    for (var p = 0u; p < params.n_parts; p++) {
        max_lse = max(max_lse, parts_lse[p * params.n_vecs + vec]);
    }
    // Half of NEG_BIG: no real LSE comes near it (scores are finite f32 dot products).
    if max_lse <= 0.5 * NEG_BIG {
        out[i] = vec2<f32>(0.0);
        if i % params.half == 0u {
            out_lse[vec] = NEG_BIG;
        }
        return;
    }
    var sum = 0.0;
    for (var p = 0u; p < params.n_parts; p++) {
        sum += exp(parts_lse[p * params.n_vecs + vec] - max_lse);
    }
    let merged_lse = max_lse + log(sum);
    var total = vec2<f32>(0.0);
    for (var p = 0u; p < params.n_parts; p++) {
        let weight = exp(parts_lse[p * params.n_vecs + vec] - merged_lse);
        total += weight * parts[p * params.n_vecs * params.half + i];
    }
    out[i] = total;
    if i % params.half == 0u {
        out_lse[vec] = merged_lse;
    }
}
