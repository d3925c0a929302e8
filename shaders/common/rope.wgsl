// rope: rotates one adjacent pair (x[2i], x[2i+1]) by θ_i(pos) = pos · base^(−2i / head_dim), given
// the table entry cs = (cos θ, sin θ). Interleaved pairs on GGUF rows (model.md §5, llama.cpp ROPE_TYPE_NORM).
// The table comes from kernels::attention::rope_table (angles in f64 on the CPU): shaders never evaluate trig.

fn rope_rotate(x: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(x.x * cs.x - x.y * cs.y, x.x * cs.y + x.y * cs.x);
}

// Two adjacent pairs at once, cs holding both pairs' (cos θ, sin θ).
fn rope_rotate2(x: vec4<f32>, cs: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(rope_rotate(x.xy, cs.xy), rope_rotate(x.zw, cs.zw));
}
