//! The AVX-512 VNNI kernels: 512-bit vectors hold an output's 16 lanes (see the parent doc), so
//! each instruction covers 64 values: two Q8_0 blocks, two Q4_K sub-blocks, two Q6_K chunks.
//!
//! Q8_0 is signed x signed and `vpdpbusd` multiplies unsigned by signed bytes, so the activations
//! are offset to `x + 128` (an xor) and the accumulator starts at `-128 Σw` per lane, computed once
//! per weight block: one `vpdpbusd` per (weight, activation) pair. The k-quants' weight quants are
//! unsigned: `vpmaddubsw` gives exact 16-bit pair sums (at most 2 * 63 * 127) and `vpdpwssd`
//! applies the sub-block scales and accumulates.
// A tile's loops index several arrays (row pointers, scales, accumulators) by one counter.
#![allow(clippy::needless_range_loop)]
use super::avx2::{f16, hsum2, prefetch, q4k_fold, q4k_mins, q8k_rows, reduce8};
use super::{Geom, Kind, Q4K_BYTES, Q6K_BYTES, Q8K_QS, Q8K_SUMS, Q8_0_BYTES};
use std::arch::x86_64::*;

/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C must be present; `g` addresses `r` whole weight rows
/// and `tn` whole activation rows of `kind`; `out` holds `(r - 1) * os + tn` elements.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile(kind: Kind, tn: usize, r: usize, g: &Geom, out: &mut [f32], os: usize) {
    macro_rules! go {
        ($($t:literal, $r:literal);*) => {
            match (tn, r) {
                $(($t, $r) => {
                    let res = match kind {
                        Kind::Q8_0 => q8_0::<$t, $r>(g),
                        Kind::Q4K => q4k::<$t, $r>(g),
                        Kind::Q6K => q6k::<$t, $r>(g),
                    };
                    super::store(&res, out, os);
                })*
                _ => unreachable!("tile {tn} x {r}"),
            }
        };
    }
    go!(1,1; 2,1; 3,1; 4,1; 1,4; 2,4; 3,4; 4,4)
}

/// Q8_0 decode: `out.len()` weight rows against one activation row, one after the other in one
/// call.
///
/// # Safety
/// As for [`tile`], with `out.len()` Q8_0 weight rows at `g` and one activation row.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q8_0_rows(g: &Geom, out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = q8_0::<1, 1>(&g.row(j))[0][0];
    }
}

#[inline(always)]
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

#[inline(always)]
unsafe fn load512(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p.cast())
}

dpwssd!(dpwssd, __m512i, zmm_reg, "avx512f,avx512vnni");

/// Two 256-bit halves as one vector.
#[inline(always)]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

#[inline(always)]
unsafe fn finish<const T: usize, const R: usize>(acc: [[__m512; R]; T]) -> [[f32; R]; T] {
    let mut out = [[0f32; R]; T];
    for (o, a) in out.iter_mut().zip(&acc) {
        for (o, v) in o.iter_mut().zip(a) {
            let lo = _mm512_castps512_ps256(*v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*v)));
            *o = reduce8(_mm256_add_ps(lo, hi));
        }
    }
    out
}

/// The quants of the Q8_0 block at `p` and of the next one when `pair` (else zeros).
#[inline(always)]
unsafe fn q8_0_quants(p: *const u8, pair: bool) -> __m512i {
    let hi = if pair {
        load256(p.add(Q8_0_BYTES + 2))
    } else {
        _mm256_setzero_si256()
    };
    join(load256(p.add(2)), hi)
}

/// The scales of the Q8_0 block at `p` and of the next one when `pair` (else 0), as [d0 x 8, d1 x 8].
#[inline(always)]
unsafe fn q8_0_scales(p: *const u8, pair: bool) -> __m512 {
    let bits = |p: *const u8| p.cast::<u16>().read_unaligned() as i16;
    let hi = if pair { bits(p.add(Q8_0_BYTES)) } else { 0 };
    let both = _mm_cvtph_ps(_mm_insert_epi16::<1>(
        _mm_cvtsi32_si128(bits(p) as i32),
        hi as i32,
    ));
    let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(both))
}

/// Q8_0 x Q8_0, two blocks per step (a last odd block goes to half 0 alone).
#[inline(always)]
unsafe fn q8_0<const T: usize, const R: usize>(g: &Geom) -> [[f32; R]; T] {
    let mut acc = [[_mm512_setzero_ps(); R]; T];
    let (bias, zero) = (_mm512_set1_epi8(-128), _mm512_setzero_si512());
    let mut b = 0;
    while b < g.nb {
        let pair = b + 1 < g.nb;
        // Lanes of half 1 stay untouched for a lone block.
        let mask: __mmask16 = if pair { 0xffff } else { 0x00ff };
        let (mut wq, mut neg, mut dw) = ([zero; R], [zero; R], [_mm512_setzero_ps(); R]);
        for r in 0..R {
            let wp = g.w.add(r * g.ws + b * Q8_0_BYTES);
            prefetch::<R>(g, wp, 2 * Q8_0_BYTES);
            wq[r] = q8_0_quants(wp, pair);
            neg[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, wq[r]));
            dw[r] = q8_0_scales(wp, pair);
        }
        for (t, row) in acc.iter_mut().enumerate() {
            let xp = g.x.add(t * g.xs + b * Q8_0_BYTES);
            let xu = _mm512_xor_si512(q8_0_quants(xp, pair), bias);
            let dx = q8_0_scales(xp, pair);
            for r in 0..R {
                let s = _mm512_mul_ps(dw[r], dx);
                let i = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(neg[r], xu, wq[r]));
                row[r] = _mm512_mask3_fmadd_ps(i, s, row[r], mask);
            }
        }
        b += 2;
    }
    finish(acc)
}

/// A `vpermw` index vector: 16-bit lanes `8q..8q+7` take element `idx[q]`.
#[inline(always)]
unsafe fn quarters(idx: [i16; 4]) -> __m512i {
    let q = |i: i16| _mm_set1_epi16(i);
    let lo = _mm256_setr_m128i(q(idx[0]), q(idx[1]));
    let hi = _mm256_setr_m128i(q(idx[2]), q(idx[3]));
    join(lo, hi)
}

/// Q4_K x Q8_K: each 32 bytes of nibbles become one vector of sub-blocks 2j and 2j+1, dotted with
/// 64 contiguous activations of every row; with the mins, summed to the block's two integers.
#[inline(always)]
unsafe fn q4k<const T: usize, const R: usize>(g: &Geom) -> [[f32; R]; T] {
    let mut acc = [[_mm_setzero_ps(); R]; T];
    let nib = _mm512_set1_epi8(0x0f);
    // vpshufb controls: 16-bit lanes of half 0 take scale byte 2j, those of half 1 byte 2j + 1.
    let pick: [__m512i; 4] = std::array::from_fn(|j| {
        let (a, c) = (2 * j as i16, 2 * j as i16 + 1);
        join(
            _mm256_set1_epi16(a | -0x8000),
            _mm256_set1_epi16(c | -0x8000),
        )
    });
    for b in 0..g.nb {
        let (xb, dx) = q8k_rows::<T>(g, b);
        let bsums: [__m256i; T] = std::array::from_fn(|t| load256(xb[t].add(Q8K_SUMS)));
        for r in 0..R {
            let wb = g.w.add(r * g.ws + b * Q4K_BYTES);
            prefetch::<R>(g, wb, Q4K_BYTES);
            let (sc, mn) = super::q4k_scales(&*wb.add(4).cast::<[u8; 12]>());
            let sc8 = _mm512_set1_epi64(sc as i64);
            let mn2 = q4k_mins(mn);
            let mut isum = [_mm512_setzero_si512(); T];
            for j in 0..4 {
                // The 32 bytes in both halves, half 1 shifted to their high nibbles.
                let q = _mm512_broadcast_i64x4(load256(wb.add(16 + 32 * j)));
                let q = _mm512_and_si512(_mm512_mask_srli_epi16(q, 0xffff_0000, q, 4), nib);
                let s = _mm512_shuffle_epi8(sc8, pick[j]);
                for (t, acc_i) in isum.iter_mut().enumerate() {
                    let x = load512(xb[t].add(Q8K_QS + 64 * j));
                    *acc_i = dpwssd(*acc_i, _mm512_maddubs_epi16(q, x), s);
                }
            }
            for t in 0..T {
                let main = _mm256_add_epi32(
                    _mm512_castsi512_si256(isum[t]),
                    _mm512_extracti64x4_epi64::<1>(isum[t]),
                );
                let im = hsum2(main, _mm256_madd_epi16(bsums[t], mn2));
                acc[t][r] = q4k_fold(acc[t][r], im, wb, dx[t]);
            }
        }
    }
    acc.map(|row| row.map(|a| _mm_cvtss_f32(a)))
}

/// Q6_K x Q8_K: per 128 values, the 64 bytes of low bits hold chunks 0|1 (low nibbles) and 2|3
/// (high nibbles), each pair one vector with its top bits from `qh`; the -32 offset is taken off
/// half 0 once per block with the activations' sums of 16.
#[inline(always)]
unsafe fn q6k<const T: usize, const R: usize>(g: &Geom) -> [[f32; R]; T] {
    let mut acc = [[_mm512_setzero_ps(); R]; T];
    let (nib, top) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
    for b in 0..g.nb {
        let (xb, dx) = q8k_rows::<T>(g, b);
        for r in 0..R {
            let wb = g.w.add(r * g.ws + b * super::Q6K_BYTES);
            prefetch::<R>(g, wb, Q6K_BYTES);
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(192).cast()));
            let scz = _mm512_castsi256_si512(sc16);
            let mut isum = [_mm512_setzero_si512(); T];
            for n in 0..2 {
                let ql = load512(wb.add(64 * n));
                let h = load256(wb.add(128 + 32 * n));
                // Bits 2c, 2c+1 of qh for chunk c: 0|1 from [h, h >> 2], 2|3 from that >> 4.
                let hz = join(h, _mm256_srli_epi16::<2>(h));
                let qa = _mm512_or_si512(
                    _mm512_and_si512(ql, nib),
                    _mm512_and_si512(_mm512_slli_epi16::<4>(hz), top),
                );
                let qb = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), nib),
                    _mm512_and_si512(hz, top),
                );
                let f = 8 * n as i16;
                let sa = _mm512_permutexvar_epi16(quarters([f, f + 1, f + 2, f + 3]), scz);
                let sb = _mm512_permutexvar_epi16(quarters([f + 4, f + 5, f + 6, f + 7]), scz);
                for (t, acc_i) in isum.iter_mut().enumerate() {
                    let x = xb[t].add(Q8K_QS + 128 * n);
                    *acc_i = dpwssd(*acc_i, _mm512_maddubs_epi16(qa, load512(x)), sa);
                    let p = _mm512_maddubs_epi16(qb, load512(x.add(64)));
                    *acc_i = dpwssd(*acc_i, p, sb);
                }
            }
            let d = f16(wb.add(208));
            for t in 0..T {
                let offset = _mm256_madd_epi16(load256(xb[t].add(Q8K_SUMS)), sc16);
                let off = _mm512_castsi256_si512(_mm256_slli_epi32::<5>(offset));
                let i = _mm512_mask_sub_epi32(isum[t], 0x00ff, isum[t], off);
                acc[t][r] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(d * dx[t]), acc[t][r]);
            }
        }
    }
    finish(acc)
}
