//! The 32-value block types. Each block stores f16 scale(s) and 4-, 5- or 8-bit codes:
//!
//! | type | bytes | layout |
//! |---|---|---|
//! | Q4_0 | 18 | d, 16 B: value j in the low nibble of byte j, value j+16 in its high nibble |
//! | Q4_1 | 20 | d, m (the block minimum), nibbles as Q4_0 |
//! | Q5_0 | 22 | d, 4 B fifth bits (bit j of a little-endian u32 for value j), nibbles |
//! | Q5_1 | 24 | d, m, fifth bits, nibbles |
//! | Q8_0 | 34 | d, 32 signed bytes |
//!
//! The symmetric types take d from the value of largest magnitude with its sign (Q4_0:
//! d = max / -8, so that value maps to code 0); codes are `trunc(x / d + offset + 0.5)` clamped,
//! computed as ggml does, with x multiplied by the f32 reciprocal of d.
use super::{f16_bytes, GgmlType};

const QK: usize = 32;

/// (value of largest magnitude, keeping its sign) of a block; the first one wins ties.
fn signed_max(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Float to code as C's `(int8_t)` conversion does for in-range values: truncate toward zero.
#[inline]
fn trunc_i8(v: f32) -> u8 {
    (v as i8).max(0) as u8
}

fn blocks<'a>(
    x: &'a [f32],
    out: &'a mut [u8],
    t: GgmlType,
) -> impl Iterator<Item = (&'a [f32], &'a mut [u8])> {
    let size = t.row_bytes(QK as u64).expect("32-value type") as usize;
    x.chunks_exact(QK).zip(out.chunks_exact_mut(size))
}

pub fn q4_0(x: &[f32], out: &mut [u8]) {
    for (b, y) in blocks(x, out, GgmlType::Q4_0) {
        let d = signed_max(b) / -8.0;
        let id = inverse(d);
        y[..2].copy_from_slice(&f16_bytes(d));
        for j in 0..QK / 2 {
            let lo = trunc_i8(b[j] * id + 8.5).min(15);
            let hi = trunc_i8(b[j + QK / 2] * id + 8.5).min(15);
            y[2 + j] = lo | (hi << 4);
        }
    }
}

pub fn q4_1(x: &[f32], out: &mut [u8]) {
    for (b, y) in blocks(x, out, GgmlType::Q4_1) {
        let (min, max) = min_max(b);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        y[..2].copy_from_slice(&f16_bytes(d));
        y[2..4].copy_from_slice(&f16_bytes(min));
        for j in 0..QK / 2 {
            let lo = trunc_i8((b[j] - min) * id + 0.5).min(15);
            let hi = trunc_i8((b[j + QK / 2] - min) * id + 0.5).min(15);
            y[4 + j] = lo | (hi << 4);
        }
    }
}

/// Nibbles and fifth bits of 5-bit codes, as Q5_0 and Q5_1 store them.
fn pack5(codes: &[u8; QK], qh: &mut [u8], qs: &mut [u8]) {
    let mut bits = 0u32;
    for j in 0..QK / 2 {
        let (a, b) = (codes[j], codes[j + QK / 2]);
        qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
        bits |= u32::from((a & 0x10) >> 4) << j;
        bits |= u32::from((b & 0x10) >> 4) << (j + QK / 2);
    }
    qh.copy_from_slice(&bits.to_le_bytes());
}

pub fn q5_0(x: &[f32], out: &mut [u8]) {
    for (b, y) in blocks(x, out, GgmlType::Q5_0) {
        let d = signed_max(b) / -16.0;
        let id = inverse(d);
        y[..2].copy_from_slice(&f16_bytes(d));
        let mut codes = [0u8; QK];
        for (c, &v) in codes.iter_mut().zip(b) {
            *c = trunc_i8(v * id + 16.5).min(31);
        }
        let (qh, qs) = y[2..].split_at_mut(4);
        pack5(&codes, qh, qs);
    }
}

pub fn q5_1(x: &[f32], out: &mut [u8]) {
    for (b, y) in blocks(x, out, GgmlType::Q5_1) {
        let (min, max) = min_max(b);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        y[..2].copy_from_slice(&f16_bytes(d));
        y[2..4].copy_from_slice(&f16_bytes(min));
        let mut codes = [0u8; QK];
        for (c, &v) in codes.iter_mut().zip(b) {
            // ggml converts to uint8_t here without a clamp; in-range values truncate the same.
            *c = ((v - min) * id + 0.5) as u8;
        }
        let (qh, qs) = y[4..].split_at_mut(4);
        pack5(&codes, qh, qs);
    }
}

pub fn q8_0(x: &[f32], out: &mut [u8]) {
    for (b, y) in blocks(x, out, GgmlType::Q8_0) {
        let amax = b.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = inverse(d);
        y[..2].copy_from_slice(&f16_bytes(d));
        for (q, &v) in y[2..].iter_mut().zip(b) {
            // f32::round rounds half away from zero, as C's roundf.
            *q = (v * id).round() as i8 as u8;
        }
    }
}

/// Quantize whole Q8_0 blocks of `src`, appending to `out`.
pub fn quantize_q8_0(src: &[f32], out: &mut Vec<u8>) {
    debug_assert!(src.len().is_multiple_of(QK));
    let at = out.len();
    out.resize(at + src.len() / QK * 34, 0);
    q8_0(src, &mut out[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_maps_the_signed_maximum_to_code_zero() {
        let mut x = [0f32; 32];
        x[0] = -8.0;
        x[1] = 4.0;
        x[17] = 8.0 / 7.0 * 7.0;
        let mut out = [0u8; 18];
        q4_0(&x, &mut out);
        // d = -8 / -8 = 1, so code = trunc(x + 8.5): -8 -> 0, 4 -> 12, 0 -> 8, 8 -> 16 -> 15.
        assert_eq!(super::super::f16_value(&out[..2]), 1.0);
        assert_eq!(out[2], 0 | (8 << 4));
        assert_eq!(out[3] & 0xF, 12);
        assert_eq!(out[3] >> 4, 15);
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero() {
        // max 127 -> d = 1: 0.5 -> 1, -2.5 -> -3, 1.49 -> 1.
        let mut block = vec![0f32; 32];
        block[0] = 127.0;
        block[1] = 0.5;
        block[2] = -2.5;
        block[3] = 1.49;
        let mut out = Vec::new();
        quantize_q8_0(&block, &mut out);
        assert_eq!(out.len(), 34);
        assert_eq!(super::super::f16_value(&out[..2]), 1.0);
        assert_eq!(&out[2..6], &[127u8, 1, (-3i8) as u8, 1]);
        // An all-zero block has d = 0 and zero quants.
        out.clear();
        quantize_q8_0(&[0.0; 32], &mut out);
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn q5_1_puts_the_fifth_bit_in_qh() {
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let mut out = [0u8; 24];
        q5_1(&x, &mut out);
        // min 0, d = 1: codes equal the values; values 16..31 have the fifth bit.
        let qh = u32::from_le_bytes(out[4..8].try_into().unwrap());
        assert_eq!(qh, 0xFFFF_0000);
        assert_eq!(out[8], 0 | (0 << 4));
        assert_eq!(out[9], 1 | (1 << 4));
    }
}
