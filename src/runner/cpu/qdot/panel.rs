//! Q4_K and Q8_0 prefill on AVX-512 VNNI with activation rows in the lanes: one `vpdpbusd` is 4
//! quants of one weight row (broadcast) times the same 4 positions of 16 activation rows, so
//! every multiply-add instruction does useful work and nothing is unpacked per activation row.
//!
//! The activations are regrouped once per call ([`build`]): per 16 rows and block, steps of
//! 16 x 4 quants (+128, as unsigned bytes, since `vpdpbusd` wants its vector operand unsigned),
//! then (Q4_K) the rows' sums over each sub-block in 16-bit pairs, then their scales. Q4_K weight
//! rows are unpacked once per call into plain bytes (one per quant, in value order) with their
//! scales and then serve every group of 16 activation rows; Q8_0 quants are broadcast straight
//! from the file's blocks.
//!
//! Exactness: the kernels form the same integers as the other paths (the +128 taken off exactly:
//! `128 Σ_k sc_k Σ q` for a Q4_K block, `128 Σ w` for each 4 Q8_0 quants) and apply the same
//! float steps lane by lane: [`super::q4k_fold`] per Q4_K block; for Q8_0 the 16 lanes of the
//! parent doc, each a register over the 16 activation rows, and the same final reduction. So the
//! results are bit-identical to the per-row kernels.
// A tile's loops index several arrays (row pointers, scales, accumulators) by one counter.
#![allow(clippy::needless_range_loop)]
use super::{Kind, Q4K_BYTES, Q8K_BYTES, Q8K_QS, Q8K_SUMS, Q8_0_BYTES};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Activation rows per group: the 16 i32 lanes of a 512-bit vector.
pub(super) const GROUP: usize = 16;
/// Bytes of one (group, block) of the regrouped activations: 64 steps of 16 rows x 4 quants, the
/// sub-block sums (4 pairs x 16 rows x 2 i16), the rows' scales (16 f32).
const XQ: usize = 64 * 64;
const XS: usize = 4 * 64;
pub(super) const XBLOCK: usize = XQ + XS + 64;
/// The same for Q8_0: 8 steps of 16 rows x 4 quants, the rows' scales (16 f32).
const X8BLOCK: usize = 8 * 64 + 64;
/// Weight rows per Q8_0 tile: the 8 lanes of a half of each in registers (16 accumulators).
const ROWS8: usize = 2;
/// Weight rows per tile: their accumulators (3 per row) and the activation vector fit the 32
/// vector registers.
const ROWS: usize = 8;

/// One weight block unpacked: quants as bytes in value order, the sub-block scales, the mins in
/// 16-bit pairs, `-128 Σ_k sc_k Σ q`, and the block's two scales.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct WBlock {
    q: [u8; 256],
    sc: [i32; 8],
    mins: [i32; 4],
    neg_c: i32,
    d: f32,
    dmin: f32,
}

/// Whether a panel kernel serves `t` activation rows of `kind` (on VNNI, where it covers any).
pub(super) fn serves(kind: Kind, t: usize) -> bool {
    kind != Kind::Q6K && covered(kind, t) > 0 && super::path() == super::Path::Vnni
}

/// The fewest activation rows after the last whole group that join the panel as a group of their
/// own, the missing rows zero (their lanes are computed and not stored): where the panel at that
/// fraction of its rate beats the per-row tiles (8192 x 2048 weights, GMAC/s: Q4_K 144 against 54,
/// Q8_0 78 against 54).
fn pad_from(kind: Kind) -> usize {
    match kind {
        Kind::Q8_0 => 11,
        _ => 6,
    }
}

/// How many of `t` activation rows the panel for `kind` covers (the others go to the per-row
/// kernels).
pub(super) fn covered(kind: Kind, t: usize) -> usize {
    if t % GROUP >= pad_from(kind) {
        t
    } else {
        t - t % GROUP
    }
}

/// Stores as many lanes of `v` as `out` holds (at most 16).
#[inline(always)]
unsafe fn store(out: &mut [f32], v: __m512) {
    let n = out.len().min(GROUP);
    _mm512_mask_storeu_ps(out.as_mut_ptr(), ((1u32 << n) - 1) as __mmask16, v);
}

/// The regrouped activations for the groups of 16 of the first [`covered`] of the `t` rows in
/// `x` (`nb` blocks of the activation type of `kind` each); the others are left to the per-row
/// kernels.
pub(super) fn build(kind: Kind, x: &[u8], t: usize, nb: usize) -> Vec<u8> {
    // Bytes of an activation block, where its quants start, its steps of 4 quants, and the bytes
    // of one regrouped (group, block).
    let (bytes, qs, steps, size) = match kind {
        Kind::Q8_0 => (Q8_0_BYTES, 2, 8, X8BLOCK),
        _ => (Q8K_BYTES, Q8K_QS, 64, XBLOCK),
    };
    let groups = covered(kind, t).div_ceil(GROUP);
    let mut out = vec![0u8; groups * nb * size];
    out.par_chunks_exact_mut(size)
        .enumerate()
        .for_each(|(gb, o)| {
            let (g, b) = (gb / nb, gb % nb);
            for a in 0..GROUP.min(t - g * GROUP) {
                let blk = &x[(g * GROUP + a) * nb * bytes + b * bytes..][..bytes];
                for s in 0..steps {
                    for i in 0..4 {
                        o[s * 64 + a * 4 + i] = blk[qs + 4 * s + i] ^ 0x80;
                    }
                }
                let rest = &mut o[steps * 64..];
                match kind {
                    Kind::Q8_0 => {
                        let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                        rest[a * 4..][..4].copy_from_slice(&d.to_le_bytes());
                    }
                    _ => q8k_rest(blk, rest, a),
                }
            }
        });
    out
}

/// A Q8_K block's part after the quants, for lane `a` of `rest`: its sums over each sub-block in
/// 16-bit pairs, then its scale.
fn q8k_rest(blk: &[u8], rest: &mut [u8], a: usize) {
    let s16 = |i: usize| i16::from_le_bytes([blk[Q8K_SUMS + 2 * i], blk[Q8K_SUMS + 2 * i + 1]]);
    // Each sum of 32 is at most 32 x 127 in magnitude: it fits an i16.
    for p in 0..4 {
        let even = s16(4 * p) + s16(4 * p + 1);
        let odd = s16(4 * p + 2) + s16(4 * p + 3);
        let at = p * 64 + a * 4;
        rest[at..at + 2].copy_from_slice(&even.to_le_bytes());
        rest[at + 2..at + 4].copy_from_slice(&odd.to_le_bytes());
    }
    rest[XS + a * 4..][..4].copy_from_slice(&blk[..4]);
}

/// `res[j * t + i]` for the `rn` weight rows at `w` (`nb` blocks of `kind` each) and the
/// activation rows of the groups in `panel`; returns how many rows (from the first) it did.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C must be present; `w` holds `rn` rows of `nb` blocks,
/// `panel` was built by [`build`] for `kind` and `nb` blocks, `res` holds `rn * t` values.
pub(super) unsafe fn dot(
    kind: Kind,
    w: &[u8],
    rn: usize,
    nb: usize,
    panel: &[u8],
    t: usize,
    res: &mut [f32],
) -> usize {
    match kind {
        Kind::Q8_0 => dot_q8_0(w, rn, nb, panel, t, res),
        _ => dot_q4k(w, rn, nb, panel, t, res),
    }
}

/// [`dot`] for Q4_K: whole tiles of `ROWS` weight rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_q4k(
    w: &[u8],
    rn: usize,
    nb: usize,
    panel: &[u8],
    t: usize,
    res: &mut [f32],
) -> usize {
    let groups = panel.len() / (nb * XBLOCK);
    let done = rn - rn % ROWS;
    let mut wb = vec![empty(); ROWS * nb];
    for r0 in (0..done).step_by(ROWS) {
        for r in 0..ROWS {
            let row = &w[(r0 + r) * nb * Q4K_BYTES..][..nb * Q4K_BYTES];
            for b in 0..nb {
                wb[r * nb + b] = unpack(row[b * Q4K_BYTES..].as_ptr());
            }
        }
        for g in 0..groups {
            let acc = tile(&wb, nb, panel[g * nb * XBLOCK..].as_ptr());
            for (r, a) in acc.iter().enumerate() {
                store(&mut res[(r0 + r) * t + g * GROUP..(r0 + r + 1) * t], *a);
            }
        }
    }
    done
}

fn empty() -> WBlock {
    WBlock {
        q: [0; 256],
        sc: [0; 8],
        mins: [0; 4],
        neg_c: 0,
        d: 0.0,
        dmin: 0.0,
    }
}

/// The Q4_K block at `p` unpacked.
#[inline(always)]
unsafe fn unpack(p: *const u8) -> WBlock {
    let mut o = empty();
    let (sc, mn) = super::q4k_scales(&*p.add(4).cast::<[u8; 12]>());
    let nib = _mm512_set1_epi8(0x0f);
    let mut c = 0i32;
    for j in 0..4 {
        // Sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles) of 32 bytes, one after the other.
        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(16 + 32 * j).cast()));
        let v = _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xffff_0000, v, 4), nib);
        _mm512_storeu_si512(o.q[64 * j..].as_mut_ptr().cast(), v);
        // Sums of each 8 quants; the first four make sub-block 2j, the others 2j + 1.
        let s: [u64; 8] = std::mem::transmute(_mm512_sad_epu8(v, _mm512_setzero_si512()));
        let (lo, hi) = (s[..4].iter().sum::<u64>(), s[4..].iter().sum::<u64>());
        c += (sc >> (16 * j) & 0xff) as i32 * lo as i32
            + (sc >> (16 * j + 8) & 0xff) as i32 * hi as i32;
    }
    for k in 0..8 {
        o.sc[k] = (sc >> (8 * k) & 0xff) as i32;
    }
    for p in 0..4 {
        o.mins[p] = (mn >> (16 * p) & 0xff) as i32 | ((mn >> (16 * p + 8) & 0xff) as i32) << 16;
    }
    o.neg_c = -128 * c;
    o.d = super::avx2::f16(p);
    o.dmin = super::avx2::f16(p.add(2));
    o
}

/// One group of 16 activation rows against the `ROWS` unpacked weight rows in `wb` (row-major
/// by block): the 16 results of each row, one per lane.
#[inline(always)]
unsafe fn tile(wb: &[WBlock], nb: usize, xp: *const u8) -> [__m512; ROWS] {
    let mut acc = [_mm512_setzero_ps(); ROWS];
    for b in 0..nb {
        let x = xp.add(b * XBLOCK);
        let w: [&WBlock; ROWS] = std::array::from_fn(|r| &wb[r * nb + b]);
        let mut isum: [__m512i; ROWS] = std::array::from_fn(|r| _mm512_set1_epi32(w[r].neg_c));
        for k in 0..8 {
            let mut sub = [_mm512_setzero_si512(); ROWS];
            for l in 0..8 {
                let s = 8 * k + l;
                let xv = _mm512_loadu_si512(x.add(64 * s).cast());
                for r in 0..ROWS {
                    let wq = w[r].q.as_ptr().add(4 * s).cast::<i32>().read_unaligned();
                    sub[r] = _mm512_dpbusd_epi32(sub[r], xv, _mm512_set1_epi32(wq));
                }
            }
            for r in 0..ROWS {
                let scaled = _mm512_mullo_epi32(sub[r], _mm512_set1_epi32(w[r].sc[k]));
                isum[r] = _mm512_add_epi32(isum[r], scaled);
            }
        }
        let mut msum = [_mm512_setzero_si512(); ROWS];
        for p in 0..4 {
            let sv = _mm512_loadu_si512(x.add(XQ + 64 * p).cast());
            for r in 0..ROWS {
                msum[r] = super::avx512::dpwssd(msum[r], sv, _mm512_set1_epi32(w[r].mins[p]));
            }
        }
        let dx = _mm512_loadu_ps(x.add(XQ + XS).cast());
        for r in 0..ROWS {
            let sd = _mm512_mul_ps(dx, _mm512_set1_ps(w[r].d));
            let sm = _mm512_mul_ps(dx, _mm512_set1_ps(w[r].dmin));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), sd, acc[r]);
            acc[r] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum[r]), sm, acc[r]);
        }
    }
    acc
}

/// [`dot`] for Q8_0, by tiles of `ROWS8` weight rows. An output's 16 lanes (half `b % 2`, lane
/// `l` for quants `4l..4l+3` of block `b`) are each a register over a group's 16 activation rows;
/// a pass takes one half (every other block) for both rows of the tile, so each activation vector
/// loaded serves both and a pass's activations stay in L1.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_q8_0(
    w: &[u8],
    rn: usize,
    nb: usize,
    panel: &[u8],
    t: usize,
    res: &mut [f32],
) -> usize {
    let groups = panel.len() / (nb * X8BLOCK);
    let done = rn - rn % ROWS8;
    // Per row and block: -128 x the sum of each 4 quants, and the scale.
    let mut neg = vec![0i32; ROWS8 * nb * 8];
    let mut dw = vec![0f32; ROWS8 * nb];
    for r0 in (0..done).step_by(ROWS8) {
        let rows: [*const u8; ROWS8] =
            std::array::from_fn(|r| w.as_ptr().add((r0 + r) * nb * Q8_0_BYTES));
        for (r, row) in rows.iter().enumerate() {
            for b in 0..nb {
                let blk = row.add(b * Q8_0_BYTES);
                let q = _mm256_loadu_si256(blk.add(2).cast());
                let s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(-128), q);
                let s = _mm256_sub_epi32(_mm256_setzero_si256(), s);
                _mm256_storeu_si256(neg[8 * (r * nb + b)..].as_mut_ptr().cast(), s);
                dw[r * nb + b] = super::avx2::f16(blk);
            }
        }
        for g in 0..groups {
            let xg = panel.as_ptr().add(g * nb * X8BLOCK);
            // lanes[r][h][l]
            let mut lanes = [[[_mm512_setzero_ps(); 8]; 2]; ROWS8];
            for h in 0..2 {
                let mut acc = [[_mm512_setzero_ps(); 8]; ROWS8];
                for b in (h..nb).step_by(2) {
                    let x = xg.add(b * X8BLOCK);
                    let dx = _mm512_loadu_ps(x.add(8 * 64).cast());
                    let s: [__m512; ROWS8] =
                        std::array::from_fn(|r| _mm512_mul_ps(dx, _mm512_set1_ps(dw[r * nb + b])));
                    for l in 0..8 {
                        let xv = _mm512_loadu_si512(x.add(64 * l).cast());
                        for r in 0..ROWS8 {
                            let wq = rows[r].add(b * Q8_0_BYTES + 2 + 4 * l);
                            let wq = _mm512_set1_epi32(wq.cast::<i32>().read_unaligned());
                            let i = _mm512_dpbusd_epi32(_mm512_setzero_si512(), xv, wq);
                            let c = _mm512_set1_epi32(neg[8 * (r * nb + b) + l]);
                            let i = _mm512_add_epi32(i, c);
                            acc[r][l] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), s[r], acc[r][l]);
                        }
                    }
                }
                for r in 0..ROWS8 {
                    lanes[r][h] = acc[r];
                }
            }
            for (r, [a0, a1]) in lanes.iter().enumerate() {
                let hl: [__m512; 8] = std::array::from_fn(|l| _mm512_add_ps(a0[l], a1[l]));
                let even = _mm512_add_ps(_mm512_add_ps(hl[0], hl[4]), _mm512_add_ps(hl[2], hl[6]));
                let odd = _mm512_add_ps(_mm512_add_ps(hl[1], hl[5]), _mm512_add_ps(hl[3], hl[7]));
                let out = &mut res[(r0 + r) * t + g * GROUP..(r0 + r + 1) * t];
                store(out, _mm512_add_ps(even, odd));
            }
        }
    }
    done
}
