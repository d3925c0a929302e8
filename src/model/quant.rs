//! CPU decoding of ggml blocks (F32, F16, BF16, Q8_0, Q4_0, Q4_1), and the matching
//! round-to-nearest encoders that tests use to build random quantized weights.
//!
//! These decoders are the reference the WGSL block decoders (`shaders/common/`) are checked
//! against, so they follow ggml's `dequantize_row_*` exactly. Layouts, all little-endian,
//! 32 values per quant block (notes/model.md §4):
//!
//! ```text
//! q8_0  34 bytes: f16 d, i8 qs[32]          w[i] = d * qs[i]
//! q4_0  18 bytes: f16 d, u8 qs[16]          w[j] = d * (lo(qs[j]) - 8), w[j+16] = d * (hi(qs[j]) - 8)
//! q4_1  20 bytes: f16 d, f16 m, u8 qs[16]   w[j] = d * lo(qs[j]) + m,   w[j+16] = d * hi(qs[j]) + m
//! ```
//!
//! Byte `qs[j]` holds value `j` in its low nibble and value `j + 16` in its high nibble.
//! What this module leaves out: K-quants, and any GPU work.

use half::{bf16, f16};

use super::gguf::{GgmlType, Gguf, GgufError, TensorInfo};

/// Values per quant block, the same for every quant type sinkstar reads.
const QK: usize = 32;

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Decodes `out.len()` values of `ggml_type` from `bytes`, which must hold exactly that many.
pub fn dequantize(ggml_type: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    let n_elems = out.len();
    let expected_bytes = ggml_type
        .row_bytes(n_elems)
        .ok_or(GgufError::NotBlockMultiple {
            ggml_type,
            n_elems,
            block_elems: ggml_type.block_elems(),
        })?;
    if bytes.len() != expected_bytes {
        return Err(GgufError::QuantByteCount {
            ggml_type,
            n_elems,
            expected_bytes,
            n_bytes: bytes.len(),
        });
    }
    let block_bytes = ggml_type.block_bytes();
    let blocks = bytes.chunks_exact(block_bytes);
    match ggml_type {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(blocks) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(blocks) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(blocks) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(blocks) {
                let d = f16_at(b, 0);
                for (w, &q) in o.iter_mut().zip(&b[2..]) {
                    *w = d * f32::from(q as i8);
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(blocks) {
                let d = f16_at(b, 0);
                let (lo, hi) = o.split_at_mut(QK / 2);
                for (j, &q) in b[2..].iter().enumerate() {
                    lo[j] = d * f32::from(i16::from(q & 0xF) - 8);
                    hi[j] = d * f32::from(i16::from(q >> 4) - 8);
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(blocks) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let (lo, hi) = o.split_at_mut(QK / 2);
                for (j, &q) in b[4..].iter().enumerate() {
                    lo[j] = d * f32::from(q & 0xF) + m;
                    hi[j] = d * f32::from(q >> 4) + m;
                }
            }
        }
    }
    Ok(())
}

/// Decodes row `row` of a matrix whose rows are `row_elems` values of `ggml_type`, stored
/// back to back in `data` (a whole tensor's bytes).
pub fn dequantize_row(
    ggml_type: GgmlType,
    data: &[u8],
    row_elems: usize,
    row: usize,
) -> Result<Vec<f32>, GgufError> {
    let row_bytes = ggml_type
        .row_bytes(row_elems)
        .ok_or(GgufError::NotBlockMultiple {
            ggml_type,
            n_elems: row_elems,
            block_elems: ggml_type.block_elems(),
        })?;
    if row_bytes == 0 {
        return Ok(Vec::new());
    }
    let n_rows = data.len() / row_bytes;
    let bytes = row
        .checked_mul(row_bytes)
        .and_then(|start| data.get(start..start.checked_add(row_bytes)?))
        .ok_or(GgufError::RowOutOfRange { row, n_rows })?;
    let mut out = vec![0.0; row_elems];
    dequantize(ggml_type, bytes, &mut out)?;
    Ok(out)
}

/// Decodes a whole tensor of `gguf` to f32, in ggml order (row after row).
pub fn dequantize_tensor(gguf: &Gguf, info: &TensorInfo) -> Result<Vec<f32>, GgufError> {
    let n_elems = usize::try_from(info.n_elems()).map_err(|_| GgufError::AbsurdSize {
        what: format!("f32 copy of tensor `{}`", info.name),
        bytes: info.n_elems().saturating_mul(4),
        limit: usize::MAX as u64,
    })?;
    let mut out = vec![0.0; n_elems];
    dequantize(info.ggml_type, gguf.tensor_data(info), &mut out)?;
    Ok(out)
}

/// Encodes `x` as `ggml_type` with ggml's reference (round-to-nearest) quantizers, for
/// tests that need quantized weights. A trailing partial block is padded with zeros, so the
/// result always holds `x.len().div_ceil(block_elems)` whole blocks.
pub fn quantize(ggml_type: GgmlType, x: &[f32]) -> Vec<u8> {
    let block_elems = ggml_type.block_elems();
    let n_blocks = x.len().div_ceil(block_elems);
    let mut out = Vec::with_capacity(n_blocks * ggml_type.block_bytes());
    let mut block = [0.0f32; QK];
    for chunk in x.chunks(block_elems) {
        let block = &mut block[..block_elems];
        block.fill(0.0);
        block[..chunk.len()].copy_from_slice(chunk);
        match ggml_type {
            GgmlType::F32 => out.extend_from_slice(&block[0].to_le_bytes()),
            GgmlType::F16 => out.extend_from_slice(&f16::from_f32(block[0]).to_le_bytes()),
            GgmlType::BF16 => out.extend_from_slice(&bf16::from_f32(block[0]).to_le_bytes()),
            GgmlType::Q8_0 => quantize_q8_0_block(block, &mut out),
            GgmlType::Q4_0 => quantize_q4_0_block(block, &mut out),
            GgmlType::Q4_1 => quantize_q4_1_block(block, &mut out),
        }
    }
    out
}

/// ggml `quantize_row_q8_0_ref`: d = amax / 127, q = round(x / d).
fn quantize_q8_0_block(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    // ggml divides by the f32 scale, not by its f16 rounding.
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    for &v in x {
        out.push(((v * id).round() as i8) as u8);
    }
}

/// ggml `quantize_row_q4_0_ref`: d = (the value of largest magnitude) / -8, so that value
/// gets code 0 exactly; the opposite extreme would need code 16 and is clamped to 15.
fn quantize_q4_0_block(x: &[f32], out: &mut Vec<u8>) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    // `as i8` truncates like C's (int8_t) cast; the argument is >= 0.5, so it floors.
    let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        out.push(code(x[j]) | (code(x[j + QK / 2]) << 4));
    }
}

/// ggml `quantize_row_q4_1_ref`: d = (max - min) / 15, m = min, q = round((x - min) / d).
fn quantize_q4_1_block(x: &[f32], out: &mut Vec<u8>) {
    let min = x.iter().fold(f32::MAX, |a, &v| a.min(v));
    let max = x.iter().fold(-f32::MAX, |a, &v| a.max(v));
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    let code = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        out.push(code(x[j]) | (code(x[j + QK / 2]) << 4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// First block of `blk.0.attn_q.weight` in SmolLM2-135M-Instruct.Q4_1.gguf: d, m and the
    /// first two `qs` bytes as in notes/model.md; the other 14 bytes are zeroed here.
    fn attn_q_block() -> [u8; 20] {
        let mut block = [0u8; 20];
        block[..6].copy_from_slice(&[0x0f, 0x30, 0xd8, 0xb9, 0x45, 0x87]);
        block
    }

    #[test]
    fn q4_1_known_block() {
        let mut w = [0.0f32; 32];
        dequantize(GgmlType::Q4_1, &attn_q_block(), &mut w).unwrap();
        let d = f16::from_bits(0x300f).to_f32();
        let m = f16::from_bits(0xb9d8).to_f32();
        assert!(
            (d - 0.1268).abs() < 1e-4 && (m + 0.7305).abs() < 1e-4,
            "d {d} m {m}"
        );
        assert!((w[0] + 0.0963).abs() < 1e-4, "w[0] = {}", w[0]);
        assert!((w[16] + 0.2231).abs() < 1e-4, "w[16] = {}", w[16]);
        assert_eq!(w[0], d * 5.0 + m);
        assert_eq!(w[16], d * 4.0 + m);
        assert_eq!(w[1], d * 7.0 + m);
        assert_eq!(w[17], d * 8.0 + m);
        assert_eq!(w[2], m);
    }

    #[test]
    fn q8_0_known_block() {
        let mut block = vec![0x00, 0x38]; // d = 0.5
        block.extend((0..32).map(|i| ((i as i8) * 4 - 64) as u8));
        let mut w = [0.0f32; 32];
        dequantize(GgmlType::Q8_0, &block, &mut w).unwrap();
        for (i, v) in w.iter().enumerate() {
            assert_eq!(*v, 0.5 * (i as f32 * 4.0 - 64.0));
        }
    }

    #[test]
    fn q4_0_known_block() {
        let mut block = vec![0x00, 0x40]; // d = 2.0
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut w = [0.0f32; 32];
        dequantize(GgmlType::Q4_0, &block, &mut w).unwrap();
        for j in 0..16 {
            assert_eq!(w[j], 2.0 * (j as f32 - 8.0));
            assert_eq!(w[j + 16], 2.0 * (7.0 - j as f32));
        }
    }

    #[test]
    fn float_types_known_bytes() {
        let mut w = [0.0f32; 2];
        dequantize(GgmlType::F16, &[0x00, 0x3c, 0x00, 0xc0], &mut w).unwrap();
        assert_eq!(w, [1.0, -2.0]);
        dequantize(GgmlType::BF16, &[0x80, 0x3f, 0x49, 0x40], &mut w).unwrap();
        assert_eq!(w, [1.0, 3.140625]);
        let bytes: Vec<u8> = [1.5f32, -0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        dequantize(GgmlType::F32, &bytes, &mut w).unwrap();
        assert_eq!(w, [1.5, -0.25]);
    }

    #[test]
    fn q4_0_follows_ggml_sign_convention() {
        // The largest magnitude is negative, so d > 0 and -1 gets code 0; +1 would need 16.
        let mut x = [0.0f32; 32];
        x[0] = -1.0;
        x[1] = 1.0;
        x[2] = 0.5;
        let bytes = quantize(GgmlType::Q4_0, &x);
        assert_eq!(f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), 0.125);
        assert_eq!(bytes[2] & 0xF, 0);
        assert_eq!(bytes[3] & 0xF, 15);
        assert_eq!(bytes[4] & 0xF, 12);
        let mut w = [0.0f32; 32];
        dequantize(GgmlType::Q4_0, &bytes, &mut w).unwrap();
        assert_eq!(&w[..3], &[-1.0, 0.875, 0.5]);
    }

    #[test]
    fn sizes_are_checked() {
        let mut w = [0.0f32; 33];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0u8; 34], &mut w),
            Err(GgufError::NotBlockMultiple { .. })
        ));
        let mut w = [0.0f32; 32];
        let e = dequantize(GgmlType::Q4_1, &[0u8; 18], &mut w).unwrap_err();
        assert!(
            matches!(
                e,
                GgufError::QuantByteCount {
                    expected_bytes: 20,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            dequantize_row(GgmlType::Q4_1, &[0u8; 40], 32, 2),
            Err(GgufError::RowOutOfRange { row: 2, n_rows: 2 })
        ));
        assert_eq!(
            dequantize_row(GgmlType::Q4_1, &[0u8; 40], 32, 1)
                .unwrap()
                .len(),
            32
        );
    }

    #[test]
    fn quantize_pads_partial_blocks() {
        assert_eq!(quantize(GgmlType::Q4_1, &[1.0; 33]).len(), 40);
        assert_eq!(quantize(GgmlType::F16, &[1.0; 3]).len(), 6);
    }

    fn random_blocks(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                // Vary the scale per block so small and large scales are both exercised.
                let scale = [1e-3, 0.1, 1.0, 30.0][(i / QK) % 4];
                rng.random_range(-1.0f32..1.0) * scale
            })
            .collect()
    }

    /// Worst error of each element after a round trip, from the block's own scale.
    fn assert_round_trip(ggml_type: GgmlType, bound: impl Fn(&[f32], usize) -> f32) {
        let x = random_blocks(7, 32 * 41);
        let bytes = quantize(ggml_type, &x);
        let mut y = vec![0.0f32; x.len()];
        dequantize(ggml_type, &bytes, &mut y).unwrap();
        for (b, (xs, ys)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
            for i in 0..QK {
                let err = (xs[i] - ys[i]).abs();
                let limit = bound(xs, i);
                assert!(
                    err <= limit,
                    "{ggml_type} block {b} elem {i}: {} -> {} (error {err} > {limit})",
                    xs[i],
                    ys[i]
                );
            }
        }
    }

    #[test]
    fn round_trip_errors_are_bounded() {
        let amax = |xs: &[f32]| xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let min = |xs: &[f32]| xs.iter().fold(f32::MAX, |a, &v| a.min(v));
        let max = |xs: &[f32]| xs.iter().fold(-f32::MAX, |a, &v| a.max(v));
        // What storing a scale as f16 costs (large for the tiny, subnormal scales).
        let f16_err = |v: f32| (v - f16::from_f32(v).to_f32()).abs();
        // Half a step, plus the f16 rounding of d applied to up to 127 steps.
        assert_round_trip(GgmlType::Q8_0, |xs, _| {
            let d = amax(xs) / 127.0;
            0.5 * d + 127.0 * f16_err(d) + 1e-9
        });
        // Half a step, except on the clamped side of the range (code 16 -> 15): a whole step.
        assert_round_trip(GgmlType::Q4_0, |xs, _| {
            let d = amax(xs) / 8.0;
            d + 8.0 * f16_err(d) + 1e-9
        });
        // Half a step, plus the f16 roundings of d (up to 15 steps) and of m.
        assert_round_trip(GgmlType::Q4_1, |xs, _| {
            let d = (max(xs) - min(xs)) / 15.0;
            0.5 * d + 15.0 * f16_err(d) + f16_err(min(xs)) + 1e-9
        });
        assert_round_trip(GgmlType::F16, |xs, i| f16_err(xs[i]));
        assert_round_trip(GgmlType::BF16, |xs, i| xs[i].abs() / 256.0);
        assert_round_trip(GgmlType::F32, |_, _| 0.0);
    }
}
