// project_head: one head's share of the output projection, written as that head's part of the residual
// stream: Σ_i W_o[o, head head_dim + i] head_out[i] for every output o, from the head's head_dim / 32
// chunks of each row of W_o [OUT_DIM, n_heads head_dim] (ggml blocks, common/quant.wgsl), one thread
// per output, stored in `residual` at row (1 + head) n_rows + r: after the step's rows, which it leaves
// alone. The FFN's matmuls sum those parts into the stream (matmul.wgsl's X_PARTS, OUT_PARTS), so the
// projection and its residual add take no dispatch of their own.
// Shared by the two kernels that finish a decoded head: attention.wgsl's row form (its walk in one part)
// and attention_merge.wgsl (the parts of a split walk merged).
// The includer declares the bindings `weight` (array<WeightWord>: W_o) and `residual` (array<f32>:
// [(1 + n_heads) n_rows, OUT_DIM]), the overrides WG_SIZE (its threads) and UNITS (head_dim / 4), and sets
// one weight format's flag; it fills `head_out` with the head's output and a barrier before the call.

#include "common/quant.wgsl"

// The model's width: W_o's rows.
override OUT_DIM: u32 = 576u;
var<workgroup> head_out: array<vec4<f32>, UNITS>;

fn project_head(r: u32, head: u32, n_rows: u32, n_heads: u32, head_dim: u32, lid: u32) {
    let n_chunks = head_dim / CHUNK_ELEMS;
    let first_chunk = head * n_chunks;
    let part = ((1u + head) * n_rows + r) * OUT_DIM;
    for (var o = lid; o < OUT_DIM; o += WG_SIZE) {
        let row = row_at(o, n_heads * head_dim);
        var sum = vec4<f32>();
        for (var c = 0u; c < n_chunks; c++) {
            let chunk = chunk_at(row, first_chunk + c);
            for (var g = 0u; g < 4u; g++) {
                let w = group_at(chunk, g);
                let lo = head_out[(c * CHUNK_ELEMS + lo_offset(g)) / 4u];
                let hi = head_out[(c * CHUNK_ELEMS + hi_offset(g)) / 4u];
                sum = fma(w.lo, lo, fma(w.hi, hi, sum));
            }
        }
        residual[part + o] = dot(sum, vec4<f32>(1.0));
    }
}
