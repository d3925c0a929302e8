// embed: out[r, i] = W[tokens[r], i], row tokens[r] of a [vocab_size, dim] table decoded by
// common/quant.wgsl (the table can be the Q8_0 `token_embd.weight` that the
// tied LM head also reads through matmul).
// One invocation per output value. Ids are checked on the host; here an id whose row does not
// lie inside the bound table gives a row of zeros and reads nothing: zeros stand out, where a
// clamped id would pass for a real embedding. The bound comes from the buffer itself
// (arrayLength), so no params field can get it wrong; an id just past vocab_size may still
// land in the zero padding, which reads as zeros too.
// Flags: one of F32, F16, BF16, Q4_0, Q4_1, Q8_0. Overrides: WG_SIZE. Spec: none.

#include "common/quant.wgsl"

override WG_SIZE: u32 = 64u;

struct Params {
    n_rows: u32,
    dim: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weight: array<WeightWord>; // vocab_size rows of row_stride(dim) bytes
@group(0) @binding(2) var<storage, read> tokens: array<u32>;    // [n_rows]
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // [n_rows, dim]

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) n_wg: vec3<u32>) {
    let e = gid.x + gid.y * n_wg.x * WG_SIZE;
    if e >= params.n_rows * params.dim {
        return;
    }
    let token = tokens[e / params.dim];
    var value = 0.0;
    if token < weight_rows(params.dim) {
        value = weight_at(row_at(token, params.dim), e % params.dim);
    }
    out[e] = value;
}
