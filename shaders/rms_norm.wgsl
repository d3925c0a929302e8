// rms_norm: out[r, i] = weight[i] * x[first_row + r, i] / sqrt(mean_j x[first_row + r, j]^2 + eps)
// `first_row` lets the final norm read only the last token's row of a prefill chunk.
// One workgroup per row; threads stride over the row, then tree-reduce the squares in `partial`.
// Flags: none. Overrides: WG_SIZE (a power of two). Spec: none (standard Llama RMSNorm).

override WG_SIZE: u32 = 64u;

struct Params {
    n_rows: u32,
    dim: u32,
    eps: f32,
    first_row: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // [first_row + n_rows, dim]
@group(0) @binding(2) var<storage, read> weight: array<f32>;   // [dim]
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // [n_rows, dim]

var<workgroup> partial: array<f32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + wid.y * n_wg.x;
    // Rows past the end only arise from a 2-D grid; the whole workgroup leaves together, so the
    // barriers below stay uniform.
    if row >= params.n_rows {
        return;
    }
    let base = (params.first_row + row) * params.dim;
    var sum = 0.0;
    for (var i = lid; i < params.dim; i += WG_SIZE) {
        let v = x[base + i];
        sum += v * v;
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var stride = WG_SIZE / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(partial[0] / f32(params.dim) + params.eps);
    for (var i = lid; i < params.dim; i += WG_SIZE) {
        out[row * params.dim + i] = weight[i] * (x[base + i] * scale);
    }
}
