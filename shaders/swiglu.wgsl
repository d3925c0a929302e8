// swiglu: out[i] = silu(gate[i]) * up[i], silu(z) = z / (1 + exp(-z)), over n_elems values.
// One thread per element. `gate_up` holds gate and up side by side per row
// ([n_rows, 2 * hidden_dim]: gate in the first half), so one matmul can produce both.
// Flags: none. Overrides: WG_SIZE. Spec: none (standard Llama SwiGLU FFN).

override WG_SIZE: u32 = 64u;

struct Params {
    n_rows: u32,
    hidden_dim: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> gate_up: array<f32>;    // [n_rows, 2 * hidden_dim]
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // [n_rows, hidden_dim]

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) n_wg: vec3<u32>) {
    let i = gid.x + gid.y * n_wg.x * WG_SIZE;
    if i >= params.n_rows * params.hidden_dim {
        return;
    }
    let row = i / params.hidden_dim;
    let col = i % params.hidden_dim;
    let gate = gate_up[row * 2u * params.hidden_dim + col];
    let up = gate_up[row * 2u * params.hidden_dim + params.hidden_dim + col];
    // exp(-z) overflows to +inf for z < -88, which correctly gives silu(z) = -0.
    out[i] = gate / (1.0 + exp(-gate)) * up;
}
