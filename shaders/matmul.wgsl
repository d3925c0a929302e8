// matmul: out[r, o] = sum_i x[r, i] * W[o, i]; with ACCUMULATE, out[r, o] += the same sum (a
// fused residual add). W is [n_out, n_in] as the raw ggml blocks of the GGUF, decoded here by
// common/quant.wgsl and never expanded in memory.
// Each invocation computes a TILE_ROWS x TILE_COLS block of out in registers: it decodes 8
// weights of each of its TILE_COLS rows of W at a time and uses them for all its TILE_ROWS rows
// of x. The invocations of a workgroup take neighbouring columns (o, o + WG_SIZE, ...) and the
// same rows, so every x load is the same for the whole workgroup. No barriers and no workgroup
// memory: CPU drivers (lavapipe, SwiftShader) run those 5-10x slower.
// VEC is the decode-time shape (TILE_ROWS = 1, a few rows in all): x sits in a uniform buffer,
// which lavapipe reads faster than a storage buffer.
// Flags: one of F32, F16, BF16, Q4_0, Q4_1, Q8_0; VEC; ACCUMULATE.
// Overrides: WG_SIZE, TILE_ROWS (<= MAX_TILE_ROWS), TILE_COLS (<= MAX_TILE_COLS). Spec: none.

#include "common/quant.wgsl"

override WG_SIZE: u32 = 16u;
override TILE_ROWS: u32 = 1u;
override TILE_COLS: u32 = 1u;

// Bounds of the register arrays; the override loops only touch their first TILE_* entries.
const MAX_TILE_ROWS: u32 = 8u;
const MAX_TILE_COLS: u32 = 4u;

struct Params {
    n_rows: u32,
    n_in: u32,
    n_out: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weight: array<u32>;    // [n_out, row_bytes(n_in) / 4] + 1 spare word
#if VEC
// 64 KiB, the smallest max_uniform_buffer_binding_size WebGPU allows.
const X_VEC4S: u32 = 4096u;
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, X_VEC4S>; // [n_rows, n_in], n_rows * n_in <= 4 * X_VEC4S
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;         // [n_rows, n_in]
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // [n_rows, n_out]

#if VEC
fn x_at(e: u32) -> f32 {
    return x[e >> 2u][e & 3u];
}

// x[e .. e + 4]. Unaligned only for float weights with n_in % 4 != 0; `e` is the same for the
// whole workgroup, so the branch never diverges.
fn x4_at(e: u32) -> vec4<f32> {
    if (e & 3u) == 0u {
        return x[e >> 2u];
    }
    return vec4<f32>(x_at(e), x_at(e + 1u), x_at(e + 2u), x_at(e + 3u));
}
#else
fn x_at(e: u32) -> f32 {
    return x[e];
}

fn x4_at(e: u32) -> vec4<f32> {
    return vec4<f32>(x[e], x[e + 1u], x[e + 2u], x[e + 3u]);
}
#endif

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) n_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n_rows = params.n_rows;
    let n_in = params.n_in;
    let n_out = params.n_out;
    // Workgroups are laid out column group first, then row tile; a 2-D grid spills into y.
    let cols_per_wg = WG_SIZE * TILE_COLS;
    let n_col_groups = (n_out + cols_per_wg - 1u) / cols_per_wg;
    let flat = wid.x + wid.y * n_wg.x;
    let r0 = flat / n_col_groups * TILE_ROWS;
    if r0 >= n_rows {
        return;
    }
    let o0 = flat % n_col_groups * cols_per_wg + lid;

    // Columns past n_out read the last row of W and rows past n_rows the last row of x, so
    // every load stays in bounds; their results are not written.
    let row_len = row_bytes(n_in);
    var row_byte: array<u32, MAX_TILE_COLS>;
    for (var c = 0u; c < TILE_COLS; c++) {
        row_byte[c] = min(o0 + c * WG_SIZE, n_out - 1u) * row_len;
    }
    var x_row: array<u32, MAX_TILE_ROWS>;
    for (var r = 0u; r < TILE_ROWS; r++) {
        x_row[r] = min(r0 + r, n_rows - 1u) * n_in;
    }

    var acc: array<f32, MAX_TILE_ROWS * MAX_TILE_COLS>; // [TILE_ROWS, MAX_TILE_COLS]
    let n_chunks = n_in / CHUNK_ELEMS;
    for (var k = 0u; k < n_chunks; k++) {
        var chunk: array<Chunk, MAX_TILE_COLS>;
        for (var c = 0u; c < TILE_COLS; c++) {
            chunk[c] = chunk_at(row_byte[c], k);
        }
        for (var g = 0u; g < 4u; g++) {
            var w: array<Group, MAX_TILE_COLS>;
            for (var c = 0u; c < TILE_COLS; c++) {
                w[c] = group_at(chunk[c], g);
            }
            for (var r = 0u; r < TILE_ROWS; r++) {
                let e = x_row[r] + k * CHUNK_ELEMS;
                let x_lo = x4_at(e + lo_offset(g));
                let x_hi = x4_at(e + hi_offset(g));
                for (var c = 0u; c < TILE_COLS; c++) {
                    acc[r * MAX_TILE_COLS + c] += dot(w[c].lo, x_lo) + dot(w[c].hi, x_hi);
                }
            }
        }
    }
    // Float formats only (their block is one weight): the weights after the last whole chunk.
    for (var i = n_chunks * CHUNK_ELEMS; i < n_in; i++) {
        for (var c = 0u; c < TILE_COLS; c++) {
            let w = weight_at(row_byte[c], i);
            for (var r = 0u; r < TILE_ROWS; r++) {
                acc[r * MAX_TILE_COLS + c] += w * x_at(x_row[r] + i);
            }
        }
    }

    for (var r = 0u; r < TILE_ROWS; r++) {
        for (var c = 0u; c < TILE_COLS; c++) {
            let o = o0 + c * WG_SIZE;
            if r0 + r < n_rows && o < n_out {
                let at = (r0 + r) * n_out + o;
#if ACCUMULATE
                out[at] += acc[r * MAX_TILE_COLS + c];
#else
                out[at] = acc[r * MAX_TILE_COLS + c];
#endif
            }
        }
    }
}
