// quant: decodes weight matrices in `weight`, a binding the including shader declares as
// `array<WeightWord>`, as `matmul::upload_weight` lays them out: row `o` of a matrix of rows of
// n_in weights at byte `o * row_stride(n_in)` (`row_at`). Float formats keep the ggml bytes
// (WeightWord = u32, zero-padded to whole words). Quantized formats are repacked so that a block's
// codes are one or two aligned 16-byte loads (WeightWord = vec4<u32>): each row holds its blocks'
// codes (qs, 16 or 32 bytes each, in block order), then their scales (Q4_1: one word of f16 d and
// f16 m per block; Q4_0, Q8_0: f16 d, two blocks to a word), zero-padded to 16 bytes. On CPU drivers
// a load whose address differs between invocations is a gather paid per load, so a vec4 load of 16
// bytes costs about what a word does (the stream kernel: 3.3 against 1.8 GB/s on lavapipe), and the
// ggml blocks (18, 20, 34 bytes) are not 16-byte aligned.
// Two ways to read a row: a chunk of CHUNK_ELEMS = 32 consecutive weights at a time
// (`chunk_at` once, then `group_at` for each of its 4 groups of 8; F16/BF16 rows must start
// 4-byte aligned, which matmul's n_in % 4 == 0 ensures), or one weight at any position
// (`weight_at`). A group holds weights for x[32c + lo_offset(g) ..+ 4] in `lo` and for
// x[32c + hi_offset(g) ..+ 4] in `hi`: Q4 blocks keep weights j and j + 16 in one byte, so a
// Q4 group is not 8 consecutive weights.
// A matmul's inner loop needs no weights, only codes: `codes_at` gives a group's codes before the
// block's scale (weight = d * code + m), and `chunk_sum` adds d * Σ code·x + m * Σ x for the chunk,
// the scale applied once per block rather than to each of its 32 weights (as ggml's own dot
// products do); the float formats' codes are their weights.
// Each word of a block is loaded once. No load reaches past the word holding a row's last byte.
// Flags: exactly one of F32, F16, BF16, Q4_0, Q4_1, Q8_0 (F16 and BF16 also set HALF, Q4_0 and
// Q4_1 set Q4, the quantized formats PACKED). Spec: ggml block layouts (notes/model.md §4).

const CHUNK_ELEMS: u32 = 32u;

struct Group {
    lo: vec4<f32>,
    hi: vec4<f32>,
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

fn chunk_at(row: Row, c: u32) -> Chunk {
    return Chunk((row.byte >> 2u) + c * 32u);
}

fn group_at(ch: Chunk, g: u32) -> Group {
    let i = ch.word + 8u * g;
    let lo = vec4<u32>(weight[i], weight[i + 1u], weight[i + 2u], weight[i + 3u]);
    let hi = vec4<u32>(weight[i + 4u], weight[i + 5u], weight[i + 6u], weight[i + 7u]);
    return Group(bitcast<vec4<f32>>(lo), bitcast<vec4<f32>>(hi));
}

fn weight_at(row: Row, i: u32) -> f32 {
    return bitcast<f32>(weight[(row.byte >> 2u) + i]);
}
#endif

// ---- Float formats (not PACKED): a chunk's codes are its weights.
#if PACKED
#else
fn codes_at(ch: Chunk, g: u32) -> Group {
    return group_at(ch, g);
}

fn chunk_sum(acc: vec4<f32>, ch: Chunk, codes_x: vec4<f32>, x_sum: vec4<f32>) -> vec4<f32> {
    return acc + codes_x;
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

fn chunk_at(row: Row, c: u32) -> Chunk {
    return Chunk((row.byte >> 2u) + c * 16u);
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

fn weight_at(row: Row, i: u32) -> f32 {
    let b = row.byte + 2u * i;
    return half_value((weight[b >> 2u] >> ((b & 2u) * 8u)) & 0xffffu);
}
#endif

// ---- The quantized formats (flag PACKED): a row's codes as vec4s, then its scales.
#if PACKED
alias WeightWord = vec4<u32>;
const WEIGHT_WORD_BYTES: u32 = 16u;

// Where a row's codes (a vec4 index) and its scales (a word index) start.
struct Row {
    qs: u32,
    scales: u32,
}

fn word_at(w: u32) -> u32 {
    return weight[w >> 2u][w & 3u];
}

// Bytes of one row of n_in weights (n_in a multiple of BLOCK_ELEMS, checked on the host): its
// codes, its scales, padding to 16 bytes.
fn row_stride(n_in: u32) -> u32 {
    let n_blocks = n_in / BLOCK_ELEMS;
    let scale_words = (n_blocks + BLOCKS_PER_SCALE_WORD - 1u) / BLOCKS_PER_SCALE_WORD;
    return (n_blocks * QS_VEC4S * 16u + scale_words * 4u + 15u) / 16u * 16u;
}

fn row_at(o: u32, n_in: u32) -> Row {
    let start = o * row_stride(n_in);
    return Row(start / 16u, (start + n_in / BLOCK_ELEMS * QS_VEC4S * 16u) / 4u);
}

// Byte k of block c's codes.
fn qs_byte(row: Row, c: u32, k: u32) -> u32 {
    return (word_at((row.qs + c * QS_VEC4S) * 4u + k / 4u) >> ((k % 4u) * 8u)) & 0xffu;
}

// Block c's f16 d (Q4_0, Q8_0: two blocks to a scale word).
fn scale_d(row: Row, c: u32) -> f32 {
    return f16_to_f32((word_at(row.scales + c / 2u) >> ((c % 2u) * 16u)) & 0xffffu);
}
#else
alias WeightWord = u32;
const WEIGHT_WORD_BYTES: u32 = 4u;

// Where a row starts, in bytes.
struct Row {
    byte: u32,
}

fn row_stride(n_in: u32) -> u32 {
    return n_in * BLOCK_BYTES;
}

fn row_at(o: u32, n_in: u32) -> Row {
    return Row(o * row_stride(n_in));
}
#endif

// Rows of n_in weights the bound buffer holds.
fn weight_rows(n_in: u32) -> u32 {
    return arrayLength(&weight) * WEIGHT_WORD_BYTES / row_stride(n_in);
}

// ---- Q8_0: 34 bytes = f16 d, int8 qs[32]; w[i] = d * qs[i].
#if Q8_0
const BLOCK_ELEMS: u32 = 32u;
const QS_VEC4S: u32 = 2u;
const BLOCKS_PER_SCALE_WORD: u32 = 2u;
const GROUP_STRIDE: u32 = 8u;
const HI_SKIP: u32 = 4u;

struct Chunk {
    q_lo: vec4<u32>, // qs[0..16] as 4 words
    q_hi: vec4<u32>, // qs[16..32]
    d: f32,
}

fn chunk_at(row: Row, c: u32) -> Chunk {
    let q = row.qs + 2u * c;
    return Chunk(weight[q], weight[q + 1u], scale_d(row, c));
}

fn codes_at(ch: Chunk, g: u32) -> Group {
    var a: vec2<u32>;
    switch g {
        case 0u: { a = ch.q_lo.xy; }
        case 1u: { a = ch.q_lo.zw; }
        case 2u: { a = ch.q_hi.xy; }
        default: { a = ch.q_hi.zw; }
    }
    return Group(signed_bytes(a.x), signed_bytes(a.y));
}

fn group_at(ch: Chunk, g: u32) -> Group {
    let codes = codes_at(ch, g);
    return Group(ch.d * codes.lo, ch.d * codes.hi);
}

fn chunk_sum(acc: vec4<f32>, ch: Chunk, codes_x: vec4<f32>, x_sum: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(ch.d), codes_x, acc);
}

fn weight_at(row: Row, i: u32) -> f32 {
    let c = i / 32u;
    let q = bitcast<i32>(qs_byte(row, c, i % 32u) << 24u) >> 24u;
    return scale_d(row, c) * f32(q);
}
#endif

// ---- Q4_0: 18 bytes = f16 d, qs[16]; w = d * (nibble - 8), computed as d * nibble + (-8 d).
#if Q4_0
const BLOCK_ELEMS: u32 = 32u;
const QS_VEC4S: u32 = 1u;
const BLOCKS_PER_SCALE_WORD: u32 = 2u;
const GROUP_STRIDE: u32 = 4u;
const HI_SKIP: u32 = 16u;

struct Chunk {
    q: vec4<u32>, // qs[0..16] as 4 words
    d: f32,
    m: f32,
}

fn chunk_at(row: Row, c: u32) -> Chunk {
    let d = scale_d(row, c);
    return Chunk(weight[row.qs + c], d, -8.0 * d);
}

fn weight_at(row: Row, i: u32) -> f32 {
    let c = i / 32u;
    let j = i % 32u;
    let q = (qs_byte(row, c, j % 16u) >> (4u * (j / 16u))) & 15u;
    return scale_d(row, c) * (f32(q) - 8.0);
}
#endif

// ---- Q4_1: 20 bytes = f16 d, f16 m, qs[16]; w = d * nibble + m. The scale word is d | m << 16.
#if Q4_1
const BLOCK_ELEMS: u32 = 32u;
const QS_VEC4S: u32 = 1u;
const BLOCKS_PER_SCALE_WORD: u32 = 1u;
const GROUP_STRIDE: u32 = 4u;
const HI_SKIP: u32 = 16u;

struct Chunk {
    q: vec4<u32>, // qs[0..16] as 4 words
    d: f32,
    m: f32,
}

fn chunk_at(row: Row, c: u32) -> Chunk {
    let dm = word_at(row.scales + c);
    return Chunk(weight[row.qs + c], f16_to_f32(dm & 0xffffu), f16_to_f32(dm >> 16u));
}

fn weight_at(row: Row, i: u32) -> f32 {
    let c = i / 32u;
    let j = i % 32u;
    let q = (qs_byte(row, c, j % 16u) >> (4u * (j / 16u))) & 15u;
    let dm = word_at(row.scales + c);
    return f16_to_f32(dm & 0xffffu) * f32(q) + f16_to_f32(dm >> 16u);
}
#endif

// ---- Q4_0 and Q4_1: a chunk's codes are its nibbles, its weights d * nibble + m.
#if Q4
fn codes_at(ch: Chunk, g: u32) -> Group {
    let q = ch.q[g];
    return Group(nibbles_lo(q), nibbles_hi(q));
}

fn group_at(ch: Chunk, g: u32) -> Group {
    let codes = codes_at(ch, g);
    let d = vec4<f32>(ch.d);
    let m = vec4<f32>(ch.m);
    return Group(fma(d, codes.lo, m), fma(d, codes.hi, m));
}

fn chunk_sum(acc: vec4<f32>, ch: Chunk, codes_x: vec4<f32>, x_sum: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(ch.d), codes_x, fma(vec4<f32>(ch.m), x_sum, acc));
}
#endif
