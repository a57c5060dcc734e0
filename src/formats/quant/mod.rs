//! ggml's block quantizers, bit for bit: f32 rows in, the bytes of `block_*` structs out.
//!
//! - `blocks32`: the 32-value types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//! - `kquants`: the 256-value super-block types Q2_K .. Q6_K and the helpers they share.
//! - `search`: the k-quant sub-block scale searches over many sub-blocks at once, one per SIMD
//!   lane (AVX-512 or AVX2, picked at run time by [`crate::isa`]), bit-identical to the scalar
//!   port in `kquants`, which is the portable path.
//! - `lanes`: the f32 vector types `search` runs on.
//!
//! These are ports of ggml's reference quantizers (the ones llama-quantize runs when no importance
//! matrix is given). ggml builds them without architecture flags, so each is a fixed sequence of
//! IEEE single-precision operations; the ports keep every operation and its order (no fused
//! multiply-add, which Rust never introduces on its own), so their output is identical.
//! Block sizes and byte layouts come from [`GgmlType`]'s table, which readers of quantized files
//! share.
mod blocks32;
mod kquants;
mod lanes;
mod search;

use crate::formats::gguf::GgmlType;
use crate::formats::DType;
use rayon::prelude::*;

pub use blocks32::quantize_q8_0;

/// Values per k-quant super-block.
const QK_K: usize = 256;

/// Every type [`quantize_rows`] writes.
pub const TYPES: [GgmlType; 10] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Whether [`quantize_rows`] can write `t`.
pub fn can_quantize(t: GgmlType) -> bool {
    quantizer(t).is_some()
}

type RowFn = fn(&[f32], &mut [u8]);

fn quantizer(t: GgmlType) -> Option<RowFn> {
    Some(match t {
        GgmlType::Q4_0 => blocks32::q4_0,
        GgmlType::Q4_1 => blocks32::q4_1,
        GgmlType::Q5_0 => blocks32::q5_0,
        GgmlType::Q5_1 => blocks32::q5_1,
        GgmlType::Q8_0 => blocks32::q8_0,
        GgmlType::Q2_K => kquants::q2_k,
        GgmlType::Q3_K => kquants::q3_k,
        GgmlType::Q4_K => kquants::q4_k,
        GgmlType::Q5_K => kquants::q5_k,
        GgmlType::Q6_K => kquants::q6_k,
        _ => return None,
    })
}

/// Quantize `src` (whole rows of `n_per_row` values, a multiple of `t`'s block size) into `dst`
/// (exactly the rows' byte size), rows spread over the rayon pool. Panics on a type
/// [`can_quantize`] refuses or on sizes that do not fit: callers plan both.
pub fn quantize_rows(t: GgmlType, src: &[f32], n_per_row: usize, dst: &mut [u8]) {
    let f = quantizer(t).unwrap_or_else(|| panic!("no quantizer for {}", t.name()));
    let row_bytes = t
        .row_bytes(n_per_row as u64)
        .expect("rows are whole blocks") as usize;
    assert_eq!(src.len() / n_per_row * row_bytes, dst.len());
    // Tasks of about 64 KiB of input: enough to amortize scheduling, small enough to balance.
    let rows_per_task = (16384 / n_per_row).max(1);
    dst.par_chunks_mut(rows_per_task * row_bytes)
        .zip(src.par_chunks(rows_per_task * n_per_row))
        .for_each(|(out, vals)| f(vals, out));
}

/// [`quantize_rows`] for rows stored as little-endian `dtype` values (f32, f16 or bf16, all exact
/// in f32), decoded task by task on the pool. Panics on another dtype: callers plan it.
pub fn quantize_raw_rows(t: GgmlType, dtype: DType, src: &[u8], n_per_row: usize, dst: &mut [u8]) {
    let f = quantizer(t).unwrap_or_else(|| panic!("no quantizer for {}", t.name()));
    let row_bytes = t
        .row_bytes(n_per_row as u64)
        .expect("rows are whole blocks") as usize;
    let es = dtype.size();
    assert_eq!(src.len() / (n_per_row * es) * row_bytes, dst.len());
    let rows_per_task = (16384 / n_per_row).max(1);
    dst.par_chunks_mut(rows_per_task * row_bytes)
        .zip(src.par_chunks(rows_per_task * n_per_row * es))
        .for_each_init(Vec::new, |vals, (out, raw)| {
            decode(dtype, raw, vals);
            f(vals, out)
        });
}

/// `raw` (little-endian f32, f16 or bf16 values) as f32 into `vals`. One loop per type, so that
/// each compiles to a vector loop.
fn decode(dtype: DType, raw: &[u8], vals: &mut Vec<f32>) {
    vals.clear();
    vals.resize(raw.len() / dtype.size(), 0.0);
    match dtype {
        DType::F32 => {
            for (v, b) in vals.iter_mut().zip(raw.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::BF16 => {
            for (v, b) in vals.iter_mut().zip(raw.chunks_exact(2)) {
                *v = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        DType::F16 => {
            for (v, b) in vals.iter_mut().zip(raw.chunks_exact(2)) {
                *v = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        other => panic!("cannot quantize {other} values"),
    }
}

/// ggml's `nearest_int`: round to nearest, ties to even, by adding 1.5 * 2^23 and reading the
/// mantissa (valid for |x| < 2^22, which every caller guarantees).
#[inline]
fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// f32 -> f16 bits, round to nearest even (ggml's `GGML_FP32_TO_FP16`).
#[inline]
fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// The f32 value of an f16 just written (ggml re-reads the stored scale).
#[inline]
fn f16_value(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(3.49), 3);
        assert_eq!(nearest_int(-7.6), -8);
    }

    #[test]
    fn every_type_fills_its_blocks() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for t in TYPES {
            let n = t.row_bytes(256).unwrap() as usize;
            let mut out = vec![0u8; 2 * n];
            quantize_rows(t, &x, 256, &mut out);
            // Rows are quantized independently: the second row alone gives the same bytes.
            let mut one = vec![0u8; n];
            quantize_rows(t, &x[256..], 256, &mut one);
            assert_eq!(&out[n..], &one[..], "{}", t.name());
            assert!(out.iter().any(|&b| b != 0), "{}", t.name());
        }
    }
}
