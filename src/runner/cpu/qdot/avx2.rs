//! The AVX2 kernels (256-bit vectors, 16 registers): each output's 16 lanes (see the parent doc)
//! are two 8-lane halves. AVX2 has no signed x signed byte product, so Q8_0 moves the weight's sign
//! onto the activation (`|w|`, `sign(x, w)`) and multiplies with `vpmaddubsw` + `vpmaddwd`; the
//! k-quants' weight quants are unsigned already, so `vpmaddubsw` gives exact 16-bit pair sums (at
//! most 2 * 63 * 127) and `vpmaddwd` applies the sub-block scales.
// A tile's loops index several arrays (row pointers, scales, accumulators) by one counter.
#![allow(clippy::needless_range_loop)]
use super::{Geom, Kind, Q4K_BYTES, Q6K_BYTES, Q8K_BYTES, Q8K_QS, Q8K_SUMS, Q8_0_BYTES};
use std::arch::x86_64::*;

/// Per i32 lane, the sum of the 4 byte products w * x (both signed); `abs` is `|w|`.
#[inline(always)]
unsafe fn dot_i8(abs: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(abs, _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// `acc` plus, per i32 lane, the sum of the 2 products of 16-bit lanes `p * s`: with `VNNI` one
/// `vpdpwssd` (AVX-512 VL + VNNI on 256-bit vectors), else `vpmaddwd` + `vpaddd`. The same
/// integers; the k-quant decode rows take the first where the machine has it (1-thread decode of
/// the Q4_K_M file +1.7%, AMD EPYC Zen 4).
#[inline(always)]
unsafe fn madd_acc<const VNNI: bool>(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        dpwssd(acc, p, s)
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    }
}

dpwssd!(dpwssd, __m256i, ymm_reg, "avx2");

/// # Safety
/// AVX2, FMA and F16C must be present; `g` addresses `r` whole weight rows and `tn` whole
/// activation rows of `kind`; `out` holds `(r - 1) * os + tn` elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile(kind: Kind, tn: usize, r: usize, g: &Geom, out: &mut [f32], os: usize) {
    macro_rules! go {
        ($($t:literal, $r:literal);* ;; $($t4:literal, $r4:literal);*) => {
            match (tn, r) {
                $(($t, $r) => {
                    let res = match kind {
                        Kind::Q8_0 => q8_0::<$t, $r>(g),
                        Kind::Q4K => q4k::<$t, $r>(g),
                        Kind::Q6K => q6k::<$t, $r, false>(g),
                    };
                    super::store(&res, out, os);
                })*
                $(($t4, $r4) if kind == Kind::Q4K => {
                    super::store(&q4k::<$t4, $r4>(g), out, os);
                })*
                _ => unreachable!("tile {tn} x {r}"),
            }
        };
    }
    go!(1,1; 2,1; 1,4; 2,4 ;; 3,1; 4,1; 3,4; 4,4)
}

/// Decode: `out.len()` weight rows against one activation row, one after the other in one call
/// (a call per row cost more than the loop). `VNNI`: see [`madd_acc`].
///
/// # Safety
/// As for [`tile`], with `out.len()` weight rows at `g` and one activation row; with `VNNI`,
/// AVX-512 VL and VNNI must be present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows<const VNNI: bool>(kind: Kind, g: &Geom, out: &mut [f32]) {
    macro_rules! each {
        ($row:ident => $e:expr) => {
            for (j, o) in out.iter_mut().enumerate() {
                let $row = &g.row(j);
                *o = $e;
            }
        };
    }
    match kind {
        Kind::Q8_0 => each!(row => q8_0::<1, 1>(row)[0][0]),
        Kind::Q4K => each!(row => q4k_row::<VNNI>(row)),
        Kind::Q6K => each!(row => q6k::<1, 1, VNNI>(row)[0][0]),
    }
}

#[inline(always)]
pub(super) unsafe fn f16(p: *const u8) -> f32 {
    let bits = p.cast::<u16>().read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Asks for the same block `R` rows further on (the next tile's rows, which follow this tile's in
/// memory): prefill tiles go 2-3% faster with it. Single rows (decode, one stream per matrix) are
/// left to the hardware prefetcher: asking one row ahead there cost 5-7% of a decode (AMD EPYC
/// Zen 4, 1 and 2 threads, Q4_K_M and Q8_0 files).
#[inline(always)]
pub(super) unsafe fn prefetch<const R: usize>(g: &Geom, block: *const u8, bytes: usize) {
    if R == 1 {
        return;
    }
    let ahead = block.wrapping_add(R * g.ws);
    let mut off = 0;
    while off < bytes {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off).cast());
        off += 64;
    }
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

/// `fma(v as f32, scale, acc)` per lane.
#[inline(always)]
unsafe fn fold(acc: __m256, v: __m256i, scale: f32) -> __m256 {
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(scale), acc)
}

/// The parent's fixed reduction of 8 lanes: ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)).
#[inline(always)]
pub(super) unsafe fn reduce8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// (Loops, not closures: a closure is compiled without the caller's target features, and the
/// intrinsics inside it were left as calls.)
#[inline(always)]
unsafe fn finish<const T: usize, const R: usize>(acc: [[[__m256; 2]; R]; T]) -> [[f32; R]; T] {
    let mut out = [[0f32; R]; T];
    for (o, a) in out.iter_mut().zip(&acc) {
        for (o, [lo, hi]) in o.iter_mut().zip(a) {
            *o = reduce8(_mm256_add_ps(*lo, *hi));
        }
    }
    out
}

/// Q8_0 x Q8_0: per block, every weight row's quants are prepared once and dotted with each
/// activation row; block `b` goes to half `b % 2`.
#[inline(always)]
unsafe fn q8_0<const T: usize, const R: usize>(g: &Geom) -> [[f32; R]; T] {
    let mut acc = [[[_mm256_setzero_ps(); 2]; R]; T];
    for b in 0..g.nb {
        let wp: [*const u8; R] = std::array::from_fn(|r| g.w.add(r * g.ws + b * Q8_0_BYTES));
        let (mut wv, mut abs, mut dw) = (
            [_mm256_setzero_si256(); R],
            [_mm256_setzero_si256(); R],
            [0f32; R],
        );
        for r in 0..R {
            prefetch::<R>(g, wp[r], Q8_0_BYTES);
            wv[r] = load(wp[r].add(2));
            abs[r] = _mm256_abs_epi8(wv[r]);
            dw[r] = f16(wp[r]);
        }
        for (t, row) in acc.iter_mut().enumerate() {
            let xp = g.x.add(t * g.xs + b * Q8_0_BYTES);
            let (xv, dx) = (load(xp.add(2)), f16(xp));
            for r in 0..R {
                let h = &mut row[r][b % 2];
                *h = fold(*h, dot_i8(abs[r], wv[r], xv), dw[r] * dx);
            }
        }
    }
    finish(acc)
}

/// A `vpshufb` pattern that repeats 16-bit element `lo` in the low 128-bit lane and `hi` in the
/// high one.
#[inline(always)]
unsafe fn pick16(lo: usize, hi: usize) -> __m256i {
    let p = |k: usize| (((2 * k + 1) << 8) | (2 * k)) as i16;
    _mm256_setr_m128i(_mm_set1_epi16(p(lo)), _mm_set1_epi16(p(hi)))
}

/// Per activation row of a Q8_K tile: the address of block `b` and its d.
#[inline(always)]
pub(super) unsafe fn q8k_rows<const T: usize>(g: &Geom, b: usize) -> ([*const u8; T], [f32; T]) {
    let xb: [*const u8; T] = std::array::from_fn(|t| g.x.add(t * g.xs + b * Q8K_BYTES));
    let dx = xb.map(|p| p.cast::<f32>().read_unaligned());
    (xb, dx)
}

/// Q4_K x Q8_K: per block and weight row the block's integer vectors ([`q4k_block`]) for every
/// activation row, summed to its two integers and folded.
#[inline(always)]
unsafe fn q4k<const T: usize, const R: usize>(g: &Geom) -> [[f32; R]; T] {
    let mut acc = [[_mm_setzero_ps(); R]; T];
    for b in 0..g.nb {
        let (xb, dx) = q8k_rows::<T>(g, b);
        for r in 0..R {
            let wb = g.w.add(r * g.ws + b * Q4K_BYTES);
            prefetch::<R>(g, wb, Q4K_BYTES);
            let v = q4k_block::<T, false>(wb, &xb);
            for t in 0..T {
                let [main, mins] = v[t];
                acc[t][r] = q4k_fold(acc[t][r], hsum2(main, mins), wb, dx[t]);
            }
        }
    }
    acc.map(|row| row.map(|a| _mm_cvtss_f32(a)))
}

/// One Q4_K weight block at `wb` against the Q8_K blocks at `xb`: each 32 bytes of nibbles become
/// the quants of sub-blocks 2j and 2j+1, dotted with every activation row with their scales, and
/// the mins by the activations' sums of 16. Per activation row two vectors whose lane sums are the
/// block's `I` and `M` (see the parent doc).
#[inline(always)]
unsafe fn q4k_block<const T: usize, const VNNI: bool>(
    wb: *const u8,
    xb: &[*const u8; T],
) -> [[__m256i; 2]; T] {
    let nib = _mm256_set1_epi8(0x0f);
    let (sc, mn) = super::q4k_scales(&*wb.add(4).cast::<[u8; 12]>());
    let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
    let mn2 = q4k_mins(mn);
    // Even and odd sub-blocks in two sums (two shorter dependency chains).
    let mut isum = [[_mm256_setzero_si256(); 2]; T];
    for j in 0..4 {
        let q = load(wb.add(16 + 32 * j));
        let lo = _mm256_and_si256(q, nib);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), nib);
        let slo = _mm256_shuffle_epi8(sc16, pick16(2 * j, 2 * j));
        let shi = _mm256_shuffle_epi8(sc16, pick16(2 * j + 1, 2 * j + 1));
        for (t, [s0, s1]) in isum.iter_mut().enumerate() {
            let x = xb[t].add(Q8K_QS + 64 * j);
            *s0 = madd_acc::<VNNI>(*s0, _mm256_maddubs_epi16(lo, load(x)), slo);
            *s1 = madd_acc::<VNNI>(*s1, _mm256_maddubs_epi16(hi, load(x.add(32))), shi);
        }
    }
    let mut out = [[_mm256_setzero_si256(); 2]; T];
    for t in 0..T {
        let mins = _mm256_madd_epi16(load(xb[t].add(Q8K_SUMS)), mn2);
        out[t] = [_mm256_add_epi32(isum[t][0], isum[t][1]), mins];
    }
    out
}

/// Q4_K decode (one weight row, one activation row): blocks in pairs, whose four integers come out
/// of one horizontal-add tree and whose four f16 scales out of one conversion, then the two blocks'
/// float steps in block order, the operations of [`q4k_fold`] (decode of the Q4_K_M file +3% at one
/// thread, +1.5% at two, against a fold per block).
#[inline(always)]
unsafe fn q4k_row<const VNNI: bool>(g: &Geom) -> f32 {
    // Block `b`'s weights and activations, and the activations' scale.
    let w = |b: usize| g.w.wrapping_add(b * Q4K_BYTES);
    let x = |b: usize| g.x.wrapping_add(b * Q8K_BYTES);
    let dx = |b: usize| x(b).cast::<f32>().read_unaligned();
    let mut acc = _mm_setzero_ps();
    let mut b = 0;
    while b + 2 <= g.nb {
        let [[m0, n0]] = q4k_block::<1, VNNI>(w(b), &[x(b)]);
        let [[m1, n1]] = q4k_block::<1, VNNI>(w(b + 1), &[x(b + 1)]);
        // [I0, M0, I1, M1], exact.
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(m0, n0), _mm256_hadd_epi32(m1, n1));
        let f = _mm_cvtepi32_ps(_mm_add_epi32(
            _mm256_castsi256_si128(h),
            _mm256_extracti128_si256::<1>(h),
        ));
        // [d0, dmin0, d1, dmin1] x [dx0, dx0, dx1, dx1].
        let dd = |b: usize| w(b).cast::<i32>().read_unaligned();
        let ds = _mm_cvtph_ps(_mm_insert_epi32::<1>(_mm_cvtsi32_si128(dd(b)), dd(b + 1)));
        let s = _mm_mul_ps(ds, _mm_setr_ps(dx(b), dx(b), dx(b + 1), dx(b + 1)));
        acc = _mm_fmadd_ss(f, s, acc);
        acc = _mm_fnmadd_ss(_mm_movehdup_ps(f), _mm_movehdup_ps(s), acc);
        let (f, s) = (_mm_movehl_ps(f, f), _mm_movehl_ps(s, s));
        acc = _mm_fmadd_ss(f, s, acc);
        acc = _mm_fnmadd_ss(_mm_movehdup_ps(f), _mm_movehdup_ps(s), acc);
        b += 2;
    }
    if b < g.nb {
        let [[m, n]] = q4k_block::<1, VNNI>(w(b), &[x(b)]);
        acc = q4k_fold(acc, hsum2(m, n), w(b), dx(b));
    }
    _mm_cvtss_f32(acc)
}

/// The sums of the 8 i32 lanes of `a` and of `b` (exact in any order), in lanes 0 and 1.
#[inline(always)]
pub(super) unsafe fn hsum2(a: __m256i, b: __m256i) -> __m128i {
    let h = _mm256_hadd_epi32(a, b);
    let h = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    _mm_hadd_epi32(h, h)
}

/// [`super::q4k_fold`] in registers: `acc` in lane 0, the block's (I, M) in lanes 0 and 1 of
/// `im`, its f16 (d, dmin) at `wb`. `fnmadd(M, dmin * dx, acc)` is `fma(M, -(dmin * dx), acc)`.
#[inline(always)]
pub(super) unsafe fn q4k_fold(acc: __m128, im: __m128i, wb: *const u8, dx: f32) -> __m128 {
    let f = _mm_cvtepi32_ps(im);
    let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(wb.cast::<i32>().read_unaligned()));
    let s = _mm_mul_ps(dd, _mm_set1_ps(dx));
    let acc = _mm_fmadd_ss(f, s, acc);
    _mm_fnmadd_ss(_mm_movehdup_ps(f), _mm_movehdup_ps(s), acc)
}

/// Q4_K's 8 mins (one per byte of `mn`) as 16-bit pairs `(m_l, m_l)`: one `vpmaddwd` with a Q8_K
/// block's 16 sums of 16 gives `m_l * (s_2l + s_2l+1)` in lane `l`.
#[inline(always)]
pub(super) unsafe fn q4k_mins(mn: u64) -> __m256i {
    let m = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mn as i64));
    _mm256_or_si256(m, _mm256_slli_epi32::<16>(m))
}

/// Q6_K's top two bits of chunk `c` (bits 2c, 2c+1 of each `qh` byte) moved to bits 4 and 5.
#[inline(always)]
unsafe fn q6k_high(h: __m256i, c: usize) -> __m256i {
    let v = match c {
        0 => _mm256_slli_epi16::<4>(h),
        1 => _mm256_slli_epi16::<2>(h),
        2 => h,
        _ => _mm256_srli_epi16::<2>(h),
    };
    _mm256_and_si256(v, _mm256_set1_epi8(0x30))
}

/// Q6_K x Q8_K: per block and weight row, each 32 values are rebuilt from their nibbles and top
/// bits once (unsigned, 0..63) and dotted with every activation row (chunk `c` to half `c % 2`);
/// the -32 offset is taken off half 0 once per block with the activations' sums of 16.
#[inline(always)]
unsafe fn q6k<const T: usize, const R: usize, const VNNI: bool>(g: &Geom) -> [[f32; R]; T] {
    let mut acc = [[[_mm256_setzero_ps(); 2]; R]; T];
    let nib = _mm256_set1_epi8(0x0f);
    for b in 0..g.nb {
        let (xb, dx) = q8k_rows::<T>(g, b);
        for r in 0..R {
            let wb = g.w.add(r * g.ws + b * Q6K_BYTES);
            prefetch::<R>(g, wb, Q6K_BYTES);
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(192).cast()));
            let mut isum = [[_mm256_setzero_si256(); 2]; T];
            for n in 0..2 {
                let half = if n == 0 {
                    _mm256_permute2x128_si256::<0x00>(sc16, sc16)
                } else {
                    _mm256_permute2x128_si256::<0x11>(sc16, sc16)
                };
                let h = load(wb.add(128 + 32 * n));
                let (l0, l1) = (load(wb.add(64 * n)), load(wb.add(64 * n + 32)));
                let lows = [
                    _mm256_and_si256(l0, nib),
                    _mm256_and_si256(l1, nib),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), nib),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), nib),
                ];
                for (c, low) in lows.into_iter().enumerate() {
                    let q = _mm256_or_si256(low, q6k_high(h, c));
                    let s = _mm256_shuffle_epi8(half, pick16(2 * c, 2 * c + 1));
                    for (t, acc_i) in isum.iter_mut().enumerate() {
                        let x = load(xb[t].add(Q8K_QS + 128 * n + 32 * c));
                        acc_i[c % 2] =
                            madd_acc::<VNNI>(acc_i[c % 2], _mm256_maddubs_epi16(q, x), s);
                    }
                }
            }
            let d = f16(wb.add(208));
            for t in 0..T {
                let offset = _mm256_madd_epi16(load(xb[t].add(Q8K_SUMS)), sc16);
                let i0 = _mm256_sub_epi32(isum[t][0], _mm256_slli_epi32::<5>(offset));
                let [a0, a1] = &mut acc[t][r];
                *a0 = fold(*a0, i0, d * dx[t]);
                *a1 = fold(*a1, isum[t][1], d * dx[t]);
            }
        }
    }
    finish(acc)
}
