// stream: the device's streaming read bandwidth, the yardstick of the benchmark (a decode step reads every
// weight once, so its bytes per second are measured against this). Invocation i reads data[i], data[i + n],
// data[i + 2n], ... (n = n_threads: neighbouring invocations read neighbouring vec4s, as a coalesced matvec
// does) and writes the wrapping sum of what it read to out[i], so that no load can be optimised away and a
// test can check that every element was read exactly once.
// With WORDS the same 16 bytes are read as four u32 loads, as the quantized kernels read weight blocks
// (common/quant.wgsl: blocks of 18, 20 and 34 bytes are not 16-byte aligned): where a device pays per load
// rather than per byte (a CPU driver gathers each load whose address differs between invocations), that
// is the most a kernel reading words can stream.
// Flags: WORDS. Overrides: WG_SIZE. Spec: none.

override WG_SIZE: u32 = 64u;

struct Params {
    n_vec4s: u32,
    n_threads: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;    // [n_threads]
#if WORDS
@group(0) @binding(1) var<storage, read> data: array<u32>;         // [4 n_vec4s]

fn load(e: u32) -> vec4<u32> {
    return vec4<u32>(data[4u * e], data[4u * e + 1u], data[4u * e + 2u], data[4u * e + 3u]);
}
#else
@group(0) @binding(1) var<storage, read> data: array<vec4<u32>>;   // [n_vec4s]

fn load(e: u32) -> vec4<u32> {
    return data[e];
}
#endif

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) n_wg: vec3<u32>) {
    let i = gid.x + gid.y * n_wg.x * WG_SIZE;
    if i >= params.n_threads {
        return;
    }
    var sum = vec4<u32>(0u);
    for (var e = i; e < params.n_vec4s; e += params.n_threads) {
        sum += load(e);
    }
    out[i] = sum.x + sum.y + sum.z + sum.w;
}
