//! The k-quants: super-blocks of 256 values split into sub-blocks of 16 or 32, each with its own
//! scale (and minimum), the sub-block scales themselves quantized against one f16 per super-block.
//!
//! | type | bytes | layout |
//! |---|---|---|
//! | Q2_K | 84 | 16 B scales (low nibble scale, high nibble min), 64 B 2-bit codes, d, dmin |
//! | Q3_K | 110 | 32 B high bits, 64 B low 2 bits, 12 B 6-bit signed scales, d |
//! | Q4_K | 144 | d, dmin, 12 B 6-bit scales and mins, 128 B nibbles |
//! | Q5_K | 176 | d, dmin, 12 B scales and mins, 32 B fifth bits, 128 B nibbles |
//! | Q6_K | 210 | 128 B low nibbles, 64 B high 2 bits, 16 signed 8-bit scales, d |
//!
//! The searches for the best sub-block scales, which decide every code, live in `search`.
use super::search::{self, make_q3_quants, Qkx2, Weights, GROUP_MAX_EPS};
use super::{f16_bytes, f16_value, nearest_int, QK_K};

/// `N` values of `s` starting at `at`, as an array reference.
#[inline(always)]
fn arr<const N: usize, T>(s: &[T], at: usize) -> &[T; N] {
    s[at..at + N].try_into().expect("in range")
}

#[inline(always)]
fn arr_mut<const N: usize, T>(s: &mut [T], at: usize) -> &mut [T; N] {
    (&mut s[at..at + N]).try_into().expect("in range")
}

/// The 6-bit scale and min of sub-block `j` from Q4_K/Q5_K's 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K/Q5_K's scales: the 8 sub-block scales and mins the search found, quantized to 6 bits
/// against f16 `d`/`dmin` written at `y[0..4]`, packed into `y[4..16]` (zeroed by the caller);
/// then every code in `l` (the search's) recomputed from the stored scales.
fn scales_mins_k(
    x: &[f32],
    y: &mut [u8],
    nmax: i32,
    scales: &[f32; 8],
    mins: &[f32; 8],
    l: &mut [u8; QK_K],
) {
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..QK_K / 32 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut y[4..16];
    for j in 0..QK_K / 32 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    y[..2].copy_from_slice(&f16_bytes(max_scale / 63.0));
    y[2..4].copy_from_slice(&f16_bytes(max_min / 63.0));
    let (d_all, dmin_all) = (f16_value(&y[..2]), f16_value(&y[2..4]));
    for j in 0..QK_K / 32 {
        let (s, m) = scale_min_k4(j, &y[4..16]);
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

/// Values whose sub-blocks are searched in one go (then finished super-block by super-block).
const PIECE: usize = 16 * QK_K;

/// Q4_K and Q5_K: the sub-block search with `p` over a piece, then per super-block its scales and
/// `pack(codes, block)` for the codes.
fn k4_family(
    x: &[f32],
    out: &mut [u8],
    size: usize,
    p: &Qkx2,
    pack: impl Fn(&[u8; QK_K], &mut [u8]),
) {
    let (mut scales, mut mins, mut l) = ([0f32; PIECE / 32], [0f32; PIECE / 32], [0u8; PIECE]);
    for (xp, op) in x.chunks(PIECE).zip(out.chunks_mut(PIECE / QK_K * size)) {
        let subs = xp.len() / 32;
        let (sc, mn) = (&mut scales[..subs], &mut mins[..subs]);
        search::qkx2::<32>(p, Weights::RmsAbs, xp, sc, mn, &mut l[..xp.len()]);
        for (b, (xb, y)) in super_blocks(xp, op, size).enumerate() {
            y.fill(0);
            let lb = arr_mut(&mut l, QK_K * b);
            scales_mins_k(xb, y, p.nmax, arr(&scales, 8 * b), arr(&mins, 8 * b), lb);
            pack(lb, y);
        }
    }
}

fn super_blocks<'a>(
    x: &'a [f32],
    out: &'a mut [u8],
    size: usize,
) -> impl Iterator<Item = (&'a [f32], &'a mut [u8])> {
    x.chunks_exact(QK_K).zip(out.chunks_exact_mut(size))
}

pub(super) fn q4_k(x: &[f32], out: &mut [u8]) {
    let p = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    k4_family(x, out, 144, &p, |l, y| {
        let q = &mut y[16..];
        for (n, chunk) in (0..QK_K).step_by(64).zip(q.chunks_exact_mut(32)) {
            for i in 0..32 {
                chunk[i] = l[n + i] | (l[n + i + 32] << 4);
            }
        }
    });
}

pub(super) fn q5_k(x: &[f32], out: &mut [u8]) {
    let p = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    k4_family(x, out, 176, &p, |l, y| {
        let (qh, ql) = y[16..].split_at_mut(32);
        let (mut m1, mut m2) = (1u8, 2u8);
        for (n, chunk) in (0..QK_K).step_by(64).zip(ql.chunks_exact_mut(32)) {
            for j in 0..32 {
                let (mut l1, mut l2) = (l[n + j], l[n + j + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                chunk[j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    });
}

pub(super) fn q6_k(x: &[f32], out: &mut [u8]) {
    let (mut scales, mut l) = ([0f32; PIECE / 16], [0i8; PIECE]);
    for (xp, op) in x.chunks(PIECE).zip(out.chunks_mut(PIECE / QK_K * 210)) {
        let subs = xp.len() / 16;
        search::qx(32, xp, &mut scales[..subs], &mut l[..xp.len()]);
        for (b, (xb, y)) in super_blocks(xp, op, 210).enumerate() {
            q6_k_block(xb, y, arr(&scales, 16 * b), arr_mut(&mut l, QK_K * b));
        }
    }
}

/// One Q6_K super-block from its sub-blocks' searched scales and codes (`l + 32`).
fn q6_k_block(xb: &[f32], y: &mut [u8], scales: &[f32; 16], l: &mut [i8; QK_K]) {
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for &s in scales {
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    y.fill(0);
    if max_abs < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    y[208..210].copy_from_slice(&f16_bytes(1.0 / iscale));
    let d_all = f16_value(&y[208..210]);
    for ib in 0..16 {
        y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let d = d_all * (y[192 + j] as i8) as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            l[i] = (nearest_int(xb[i] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    let (ql, rest) = y.split_at_mut(128);
    let qh = &mut rest[..64];
    for (half, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * half..], &mut qh[32 * half..]);
        for i in 0..32 {
            let q = |k: usize| l[j + i + 32 * k] as u8;
            ql[i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
            ql[i + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
            qh[i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}

/// Two-bit codes of 256 values, four per byte as ggml packs Q2_K and Q3_K.
fn pack2(l: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

pub(super) fn q3_k(x: &[f32], out: &mut [u8]) {
    for (xb, y) in super_blocks(x, out, 110) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &xb[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        y.fill(0);
        let sc = 96..108;
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            let s = &mut y[sc.clone()];
            for j in 0..16 {
                let l = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
                if j < 8 {
                    s[j] = (l & 0xF) as u8;
                } else {
                    s[j - 8] |= ((l & 0xF) << 4) as u8;
                }
                s[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
            }
            y[108..110].copy_from_slice(&f16_bytes(1.0 / iscale));
        }
        let d_all = f16_value(&y[108..110]);
        let s = &y[sc];
        for j in 0..16 {
            let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
            let code = (low | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8 - 32;
            let d = d_all * code as f32;
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(xb[i] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        let mut codes = [0u8; QK_K];
        for (j, (c, &v)) in codes.iter_mut().zip(&l).enumerate() {
            // High bit of value j goes to bit j / 32 of hmask byte j % 32.
            let mut v = v as u8;
            if v > 3 {
                y[j % 32] |= 1 << (j / 32);
                v -= 4;
            }
            *c = v;
        }
        pack2(&codes, &mut y[32..96]);
    }
}

pub(super) fn q2_k(x: &[f32], out: &mut [u8]) {
    let p = Qkx2 {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    let (mut scales, mut mins, mut l) = ([0f32; PIECE / 16], [0f32; PIECE / 16], [0u8; PIECE]);
    for (xp, op) in x.chunks(PIECE).zip(out.chunks_mut(PIECE / QK_K * 84)) {
        let subs = xp.len() / 16;
        let (sc, mn) = (&mut scales[..subs], &mut mins[..subs]);
        search::qkx2::<16>(&p, Weights::Abs, xp, sc, mn, &mut l[..xp.len()]);
        for (b, (xb, y)) in super_blocks(xp, op, 84).enumerate() {
            let lb = arr_mut(&mut l, QK_K * b);
            q2_k_block(xb, y, arr(&scales, 16 * b), arr(&mins, 16 * b), lb);
        }
    }
}

/// One Q2_K super-block from its sub-blocks' searched scales, mins and codes.
fn q2_k_block(xb: &[f32], y: &mut [u8], scales: &[f32; 16], mins: &[f32; 16], l: &mut [u8; QK_K]) {
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..16 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    y.fill(0);
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            y[j] = nearest_int(iscale * scales[j]) as u8;
        }
        y[80..82].copy_from_slice(&f16_bytes(max_scale / 15.0));
    }
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (sc, &m) in y[..16].iter_mut().zip(mins) {
            *sc |= (nearest_int(iscale * m) << 4) as u8;
        }
        y[82..84].copy_from_slice(&f16_bytes(max_min / 15.0));
    }
    let (d_all, dmin_all) = (f16_value(&y[80..82]), f16_value(&y[82..84]));
    for (j, &sc) in y[..16].iter().enumerate() {
        let d = d_all * (sc & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * (sc >> 4) as f32;
        for i in 16 * j..16 * j + 16 {
            l[i] = nearest_int((xb[i] + dm) / d).clamp(0, 3) as u8;
        }
    }
    pack2(l, &mut y[16..80]);
}
