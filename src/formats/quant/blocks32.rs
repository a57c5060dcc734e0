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
//! with x multiplied by the f32 reciprocal of d. Q8_0 rounds x / d half away from zero.
//!
//! candle's ports of these five (`candle_core::quantized::k_quants`) perform the same operations
//! in the same order as ggml's reference code and give identical bytes (checked against ggml in
//! tests/gguf_quant.rs), so four are used as they are; this module only lays their blocks out as
//! bytes. Q8_0, the type whose quantizer is nearly all of a run's work, has its own loop here:
//! candle's calls the C library's `roundf` per value, while compiled for AVX2 or AVX-512 the same
//! rounding (half away from zero) is a vector instruction sequence (numbers in docs/DESIGN.md).
use crate::isa::{isa, Isa};
use candle_core::quantized::k_quants::{
    BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, GgmlType as CandleBlock,
};

const QK: usize = 32;

/// Quantize whole blocks of `x` with candle's block type `T` into `out` (their bytes).
fn with_candle<T: CandleBlock>(x: &[f32], out: &mut [u8]) {
    let n = x.len() / T::BLCK_SIZE;
    let size = std::mem::size_of::<T>();
    assert_eq!(out.len(), n * size, "output holds whole blocks");
    let mut blocks = vec![T::zeros(); n];
    T::from_float(&x[..n * T::BLCK_SIZE], &mut blocks);
    // SAFETY: candle's blocks are `repr(C)` structs of u8 arrays and f16 fields with no padding
    // (candle asserts each size against ggml's), so their memory is exactly ggml's block bytes on
    // a little-endian machine; the slice covers the `n` initialized blocks and nothing more.
    let bytes = unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), n * size) };
    out.copy_from_slice(bytes);
}

pub(super) fn q4_0(x: &[f32], out: &mut [u8]) {
    with_candle::<BlockQ4_0>(x, out)
}

pub(super) fn q4_1(x: &[f32], out: &mut [u8]) {
    with_candle::<BlockQ4_1>(x, out)
}

pub(super) fn q5_0(x: &[f32], out: &mut [u8]) {
    with_candle::<BlockQ5_0>(x, out)
}

pub(super) fn q5_1(x: &[f32], out: &mut [u8]) {
    with_candle::<BlockQ5_1>(x, out)
}

pub(super) fn q8_0(x: &[f32], out: &mut [u8]) {
    assert_eq!(out.len(), x.len() / QK * 34, "output holds whole blocks");
    match isa() {
        // SAFETY: `isa` reports AVX-512F / AVX2 only where the CPU has them.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { q8_0_avx512(x, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { q8_0_avx2(x, out) },
        _ => q8_0_blocks(x, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn q8_0_avx512(x: &[f32], out: &mut [u8]) {
    q8_0_blocks(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn q8_0_avx2(x: &[f32], out: &mut [u8]) {
    q8_0_blocks(x, out)
}

/// ggml's Q8_0: d = max |x| / 127 (stored as f16), codes round(x * (1 / d)) half away from zero.
#[inline(always)]
fn q8_0_blocks(x: &[f32], out: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK).zip(out.chunks_exact_mut(34)) {
        let mut amax = 0f32;
        for &v in x {
            amax = amax.max(v.abs());
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y[..2].copy_from_slice(&super::f16_bytes(d));
        for (q, &v) in y[2..].iter_mut().zip(x) {
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
        assert_eq!(out[2], 8 << 4);
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
        assert_eq!(out[8], 0);
        assert_eq!(out[9], 1 | (1 << 4));
    }
}
