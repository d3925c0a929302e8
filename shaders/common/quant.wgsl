// quant: decodes ggml weight blocks kept as their raw little-endian bytes in `weight`, an
// `array<u32>` binding that the including shader declares ([n_out, row_bytes / 4], zero-padded
// to whole words). Row `o` of a weight matrix starts at byte `o * row_bytes(n_in)`.
// Two ways to read a row: a chunk of CHUNK_ELEMS = 32 consecutive weights at a time
// (`chunk_at` once, then `group_at` for each of its 4 groups of 8; F16/BF16 rows must start
// 4-byte aligned, which matmul's n_in % 4 == 0 ensures), or one weight at any position
// (`weight_at`). A group holds weights for x[32c + lo_offset(g) ..+ 4] in `lo` and for
// x[32c + hi_offset(g) ..+ 4] in `hi`: Q4 blocks keep weights j and j + 16 in one byte, so a
// Q4 group is not 8 consecutive weights.
// Each word of a block is loaded once: on CPU drivers a load whose address differs between
// invocations costs a dozen instructions per invocation, more than the arithmetic that decodes
// it. No load reaches past the word holding a block's last byte.
// Flags: exactly one of F32, F16, BF16, Q4_0, Q4_1, Q8_0 (F16 and BF16 also set HALF). Spec: ggml
// block layouts (notes/model.md §4).

const CHUNK_ELEMS: u32 = 32u;

struct Group {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The 32 bits starting 2 bytes into word `a` (its high half, then the low half of `b`). Q8_0
// (34-byte) and Q4_0 (18-byte) blocks are only 2-byte aligned; their words are loaded aligned
// and recombined with this.
fn straddle(a: u32, b: u32) -> u32 {
    return (a >> 16u) | (b << 16u);
}

// An f16 (the low 16 bits of `h`) as f32, by integer ops: naga only accepts unpack2x16float
// with an extra capability, and the validation test asks for none. Normal numbers rebias the
// exponent (15 -> 127); exponent 31 is inf/NaN; exponent 0 (zero, subnormal) is computed in
// float arithmetic, so that no f32 denormal (which GPUs may flush to zero) is ever formed.
fn f16_to_f32(h: u32) -> f32 {
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    var bits = select(((e + 112u) << 23u) | (m << 13u), 0x7f800000u | (m << 13u), e == 31u);
    bits = select(bits, bitcast<u32>(f32(m) * 5.9604645e-8), e == 0u);
    return bitcast<f32>(bits | ((h & 0x8000u) << 16u));
}

// The f16 at an even byte offset, as f32.
fn half_at(byte: u32) -> f32 {
    return f16_to_f32((weight[byte >> 2u] >> ((byte & 2u) * 8u)) & 0xffffu);
}

fn byte_at(byte: u32) -> u32 {
    return (weight[byte >> 2u] >> ((byte & 3u) * 8u)) & 0xffu;
}

// The 4 low nibbles, then the 4 high nibbles, of a word of Q4 codes, as floats 0..15.
fn nibbles_lo(q: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
}

fn nibbles_hi(q: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(q) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u));
}

// The 4 bytes of a word as signed int8 values, in memory order: shift each byte to the top,
// then shift back arithmetically to sign-extend it.
fn signed_bytes(q: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Offsets in a chunk of the x values that a group's `lo` and `hi` multiply. Each format sets
// GROUP_STRIDE and HI_SKIP: 8 and 4 where a group is 8 consecutive weights, 4 and 16 for Q4.
fn lo_offset(g: u32) -> u32 {
    return GROUP_STRIDE * g;
}

fn hi_offset(g: u32) -> u32 {
    return GROUP_STRIDE * g + HI_SKIP;
}

// ---- F32: 4 bytes per weight, always aligned.
#if F32
const BLOCK_ELEMS: u32 = 1u;
const BLOCK_BYTES: u32 = 4u;
const GROUP_STRIDE: u32 = 8u;
const HI_SKIP: u32 = 4u;

struct Chunk {
    word: u32,
}

fn chunk_at(row_byte: u32, c: u32) -> Chunk {
    return Chunk((row_byte >> 2u) + c * 32u);
}

fn group_at(ch: Chunk, g: u32) -> Group {
    let i = ch.word + 8u * g;
    let lo = vec4<u32>(weight[i], weight[i + 1u], weight[i + 2u], weight[i + 3u]);
    let hi = vec4<u32>(weight[i + 4u], weight[i + 5u], weight[i + 6u], weight[i + 7u]);
    return Group(bitcast<vec4<f32>>(lo), bitcast<vec4<f32>>(hi));
}

fn weight_at(row_byte: u32, i: u32) -> f32 {
    return bitcast<f32>(weight[(row_byte >> 2u) + i]);
}
#endif

// ---- F16 and BF16 (flag HALF): 2 bytes per weight; they differ only in how 16 bits become
// an f32 (`weight_at` also reads rows of odd length, 2-byte aligned).
#if HALF
const BLOCK_ELEMS: u32 = 1u;
const BLOCK_BYTES: u32 = 2u;
const GROUP_STRIDE: u32 = 8u;
const HI_SKIP: u32 = 4u;

struct Chunk {
    word: u32,
}

fn chunk_at(row_byte: u32, c: u32) -> Chunk {
    return Chunk((row_byte >> 2u) + c * 16u);
}

#if F16
fn half_value(bits: u32) -> f32 {
    return f16_to_f32(bits);
}
#else
// bf16 is the top half of an f32.
fn half_value(bits: u32) -> f32 {
    return bitcast<f32>(bits << 16u);
}
#endif

// The two values of a word, low half first.
fn half_pair(w: u32) -> vec2<f32> {
    return vec2<f32>(half_value(w & 0xffffu), half_value(w >> 16u));
}

fn group_at(ch: Chunk, g: u32) -> Group {
    let i = ch.word + 4u * g;
    let lo = vec4<f32>(half_pair(weight[i]), half_pair(weight[i + 1u]));
    let hi = vec4<f32>(half_pair(weight[i + 2u]), half_pair(weight[i + 3u]));
    return Group(lo, hi);
}

fn weight_at(row_byte: u32, i: u32) -> f32 {
    let b = row_byte + 2u * i;
    return half_value((weight[b >> 2u] >> ((b & 2u) * 8u)) & 0xffffu);
}
#endif

// ---- Q8_0: 34 bytes = f16 d, int8 qs[32]; w[i] = d * qs[i]. A block starting at byte p spans
// words p / 4 .. p / 4 + 8 whether p is 4-byte aligned or not: the chunk loads those 9 once.
#if Q8_0
const BLOCK_ELEMS: u32 = 32u;
const BLOCK_BYTES: u32 = 34u;
const GROUP_STRIDE: u32 = 8u;
const HI_SKIP: u32 = 4u;

struct Chunk {
    q_lo: vec4<u32>, // qs[0..16] as 4 words
    q_hi: vec4<u32>, // qs[16..32]
    d: f32,
}

fn chunk_at(row_byte: u32, c: u32) -> Chunk {
    let p = row_byte + c * BLOCK_BYTES;
    let j = p >> 2u;
    let u = array<u32, 9>(
        weight[j], weight[j + 1u], weight[j + 2u], weight[j + 3u], weight[j + 4u],
        weight[j + 5u], weight[j + 6u], weight[j + 7u], weight[j + 8u],
    );
    // p % 4 == 0: d is the low half of u[0] and each qs word straddles two loaded words;
    // p % 4 == 2: d is the high half and the qs words are u[1..9].
    let s = (p & 2u) == 0u;
    let q_lo = select(
        vec4<u32>(u[1], u[2], u[3], u[4]),
        vec4<u32>(straddle(u[0], u[1]), straddle(u[1], u[2]), straddle(u[2], u[3]), straddle(u[3], u[4])),
        s,
    );
    let q_hi = select(
        vec4<u32>(u[5], u[6], u[7], u[8]),
        vec4<u32>(straddle(u[4], u[5]), straddle(u[5], u[6]), straddle(u[6], u[7]), straddle(u[7], u[8])),
        s,
    );
    let d = f16_to_f32(select(u[0] >> 16u, u[0] & 0xffffu, s));
    return Chunk(q_lo, q_hi, d);
}

fn group_at(ch: Chunk, g: u32) -> Group {
    var a: vec2<u32>;
    switch g {
        case 0u: { a = ch.q_lo.xy; }
        case 1u: { a = ch.q_lo.zw; }
        case 2u: { a = ch.q_hi.xy; }
        default: { a = ch.q_hi.zw; }
    }
    return Group(ch.d * signed_bytes(a.x), ch.d * signed_bytes(a.y));
}

fn weight_at(row_byte: u32, i: u32) -> f32 {
    let b = row_byte + (i / 32u) * BLOCK_BYTES;
    let q = bitcast<i32>(byte_at(b + 2u + i % 32u) << 24u) >> 24u;
    return half_at(b) * f32(q);
}
#endif

// ---- Q4_0: 18 bytes = f16 d, qs[16]; w = d * (nibble - 8), computed as d * nibble + (-8 d). A
// block starting at byte p spans words p / 4 .. p / 4 + 4: the chunk loads those 5 once.
#if Q4_0
const BLOCK_ELEMS: u32 = 32u;
const BLOCK_BYTES: u32 = 18u;
const GROUP_STRIDE: u32 = 4u;
const HI_SKIP: u32 = 16u;

struct Chunk {
    q: vec4<u32>, // qs[0..16] as 4 words
    d: f32,
    m: f32,
}

fn chunk_at(row_byte: u32, c: u32) -> Chunk {
    let p = row_byte + c * BLOCK_BYTES;
    let j = p >> 2u;
    let u = array<u32, 5>(weight[j], weight[j + 1u], weight[j + 2u], weight[j + 3u], weight[j + 4u]);
    // As for Q8_0: p % 4 == 0 puts d in the low half of u[0] and makes the qs words straddle.
    let s = (p & 2u) == 0u;
    let q = select(
        vec4<u32>(u[1], u[2], u[3], u[4]),
        vec4<u32>(straddle(u[0], u[1]), straddle(u[1], u[2]), straddle(u[2], u[3]), straddle(u[3], u[4])),
        s,
    );
    let d = f16_to_f32(select(u[0] >> 16u, u[0] & 0xffffu, s));
    return Chunk(q, d, -8.0 * d);
}

fn group_at(ch: Chunk, g: u32) -> Group {
    let q = ch.q[g];
    let d = vec4<f32>(ch.d);
    let m = vec4<f32>(ch.m);
    return Group(fma(d, nibbles_lo(q), m), fma(d, nibbles_hi(q), m));
}

fn weight_at(row_byte: u32, i: u32) -> f32 {
    let b = row_byte + (i / 32u) * BLOCK_BYTES;
    let j = i % 32u;
    let q = (byte_at(b + 2u + j % 16u) >> (4u * (j / 16u))) & 15u;
    return half_at(b) * (f32(q) - 8.0);
}
#endif

// ---- Q4_1: 20 bytes = f16 d, f16 m, qs[16]; w = d * nibble + m. Always 4-byte aligned.
#if Q4_1
const BLOCK_ELEMS: u32 = 32u;
const BLOCK_BYTES: u32 = 20u;
const GROUP_STRIDE: u32 = 4u;
const HI_SKIP: u32 = 16u;

struct Chunk {
    qs_word: u32,
    d: f32,
    m: f32,
}

fn chunk_at(row_byte: u32, c: u32) -> Chunk {
    let i = (row_byte >> 2u) + c * 5u;
    let dm = weight[i];
    return Chunk(i + 1u, f16_to_f32(dm & 0xffffu), f16_to_f32(dm >> 16u));
}

fn group_at(ch: Chunk, g: u32) -> Group {
    let q = weight[ch.qs_word + g];
    let d = vec4<f32>(ch.d);
    let m = vec4<f32>(ch.m);
    return Group(fma(d, nibbles_lo(q), m), fma(d, nibbles_hi(q), m));
}

fn weight_at(row_byte: u32, i: u32) -> f32 {
    let b = row_byte + (i / 32u) * BLOCK_BYTES;
    let j = i % 32u;
    let q = (byte_at(b + 4u + j % 16u) >> (4u * (j / 16u))) & 15u;
    let dm = weight[b >> 2u];
    return f16_to_f32(dm & 0xffffu) * f32(q) + f16_to_f32(dm >> 16u);
}
#endif

// Bytes of one row of n_in weights (n_in a multiple of BLOCK_ELEMS, checked on the host).
fn row_bytes(n_in: u32) -> u32 {
    return n_in / BLOCK_ELEMS * BLOCK_BYTES;
}
