// kv_write: k_cache[slots[r], i] = k_new[r, i] and v_cache[slots[r], i] = v_new[r, i] for i < row_elems.
// One thread per (row, element); K and V in one dispatch. A slot past the cache is skipped (the host
// policy never produces one; skipping keeps a bad slot from overwriting another row).
// Flags: none. Overrides: WG_SIZE. Spec: sink-window.md §4 option A (keys are cached raw, attention rotates them).

override WG_SIZE: u32 = 64u;

struct Params {
    n_rows: u32,
    row_elems: u32,
    capacity: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> slots: array<u32>;            // [n_rows]
@group(0) @binding(2) var<storage, read> k_new: array<f32>;            // [n_rows, row_elems], row_elems = n_kv_heads * head_dim
@group(0) @binding(3) var<storage, read> v_new: array<f32>;            // [n_rows, row_elems]
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;    // [capacity, row_elems]
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;    // [capacity, row_elems]

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let index = (wid.x + wid.y * n_wg.x) * WG_SIZE + lid;
    if index >= params.n_rows * params.row_elems {
        return;
    }
    let row = index / params.row_elems;
    let slot = slots[row];
    if slot >= params.capacity {
        return;
    }
    let dst = slot * params.row_elems + index % params.row_elems;
    k_cache[dst] = k_new[index];
    v_cache[dst] = v_new[index];
}
