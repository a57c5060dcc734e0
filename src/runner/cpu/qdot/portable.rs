//! The kernels in plain Rust, lane for lane what the SIMD paths compute (see the parent doc), so
//! they are also the reference the SIMD paths are tested against. The per-lane loops are written
//! over fixed arrays of 8 so LLVM vectorizes them (SSE2 on x86-64, NEON on aarch64).
use super::{
    q4k_fold, q4k_scales, reduce, Kind, Q4K_BYTES, Q6K_BYTES, Q8K_BYTES, Q8K_QS, Q8K_SUMS,
    Q8_0_BYTES,
};

/// Lanes of an output, in two halves of 8.
const LANES: usize = 16;
const HALF: usize = 8;

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// One weight row (`nb` blocks of `kind`) dotted with one activation row.
pub(super) fn dot(kind: Kind, w: &[u8], x: &[u8], nb: usize) -> f32 {
    if kind == Kind::Q4K {
        return (0..nb).fold(0.0, |acc, b| {
            let (w, x) = (
                &w[b * Q4K_BYTES..][..Q4K_BYTES],
                &x[b * Q8K_BYTES..][..Q8K_BYTES],
            );
            let (i, m) = q4k_sums(w, x);
            q4k_fold(acc, i, m, f16(w), f16(&w[2..]), q8k_d(x))
        });
    }
    let mut acc = [0f32; LANES];
    for b in 0..nb {
        match kind {
            Kind::Q8_0 => q8_0_block(
                &w[b * Q8_0_BYTES..][..Q8_0_BYTES],
                &x[b * Q8_0_BYTES..][..Q8_0_BYTES],
                &mut acc[HALF * (b % 2)..][..HALF],
            ),
            Kind::Q4K => unreachable!("Q4_K is summed above"),
            Kind::Q6K => q6k_block(
                &w[b * Q6K_BYTES..][..Q6K_BYTES],
                &x[b * Q8K_BYTES..][..Q8K_BYTES],
                &mut acc,
            ),
        }
    }
    reduce(acc)
}

/// `acc[l] = fma(v[l] as f32, scale, acc[l])` for the lanes of `v` (all, or half 0).
fn fold(acc: &mut [f32], v: &[i32], scale: f32) {
    for (a, &s) in acc.iter_mut().zip(v) {
        *a = (s as f32).mul_add(scale, *a);
    }
}

/// Adds to the 8 lanes of `half` the products of 32 weights and activations, `scale(i)` applied
/// per value `i`, lane `l` taking values `4l..4l+3`.
#[inline(always)]
fn group(half: &mut [i32], q: impl Fn(usize) -> i32, x: &[u8], scale: impl Fn(usize) -> i32) {
    for (l, s) in half[..HALF].iter_mut().enumerate() {
        *s += (4 * l..4 * l + 4)
            .map(|i| scale(i) * q(i) * x[i] as i8 as i32)
            .sum::<i32>();
    }
}

fn q8_0_block(w: &[u8], x: &[u8], half: &mut [f32]) {
    let mut lanes = [0i32; HALF];
    group(&mut lanes, |i| w[2 + i] as i8 as i32, &x[2..], |_| 1);
    fold(half, &lanes, f16(w) * f16(x));
}

fn q8k_d(x: &[u8]) -> f32 {
    f32::from_le_bytes([x[0], x[1], x[2], x[3]])
}

fn q8k_sum(x: &[u8], i: usize) -> i32 {
    i16::from_le_bytes([x[Q8K_SUMS + 2 * i], x[Q8K_SUMS + 2 * i + 1]]) as i32
}

/// Q4_K: sub-block `k` (32 values) is the low nibbles of `qs[32 (k/2) ..][..32]` for even `k`, the
/// high nibbles for odd `k`; value = d * sc_k * q - dmin * m_k. Returns the block's integer sums
/// (I, M) of the module doc.
fn q4k_sums(w: &[u8], x: &[u8]) -> (i32, i32) {
    let (sc, mn) = q4k_scales(w[4..16].try_into().expect("12 scale bytes"));
    let qs = &w[16..];
    let mut lanes = [0i32; HALF];
    for k in 0..8 {
        let sck = (sc >> (8 * k)) as u8 as i32;
        let q = |i: usize| (qs[32 * (k / 2) + i] >> (4 * (k % 2)) & 0x0f) as i32;
        group(&mut lanes, q, &x[Q8K_QS + 32 * k..], |_| sck);
    }
    let m = (0..8)
        .map(|k| ((mn >> (8 * k)) as u8 as i32) * (q8k_sum(x, 2 * k) + q8k_sum(x, 2 * k + 1)));
    (lanes.iter().sum(), m.sum())
}

/// Q6_K: in half `n` (128 values), chunk `c` (32 values) takes its low 4 bits from the low
/// (c < 2) or high nibbles of `ql[64n + 32 (c%2) ..]` and its top 2 bits from bits `2c, 2c+1` of
/// `qh[32n ..]`; value = d * sc[16-value group] * (q - 32).
fn q6k_block(w: &[u8], x: &[u8], acc: &mut [f32; LANES]) {
    let (ql, qh) = (&w[..128], &w[128..192]);
    let sc = |g: usize| w[192 + g] as i8 as i32;
    let mut lanes = [0i32; LANES];
    for n in 0..2 {
        for c in 0..4 {
            let q = |i: usize| {
                let lo = ql[64 * n + 32 * (c % 2) + i] >> (4 * (c / 2)) & 0x0f;
                let hi = qh[32 * n + i] >> (2 * c) & 3;
                (lo | hi << 4) as i32
            };
            let first = 8 * n + 2 * c;
            let x = &x[Q8K_QS + 128 * n + 32 * c..];
            group(&mut lanes[HALF * (c % 2)..], q, x, |i| sc(first + i / 16));
        }
    }
    // The -32 offset of every value, by the activation sums of 16, in half 0.
    for (l, s) in lanes[..HALF].iter_mut().enumerate() {
        *s -= 32 * (sc(2 * l) * q8k_sum(x, 2 * l) + sc(2 * l + 1) * q8k_sum(x, 2 * l + 1));
    }
    fold(acc, &lanes, f16(&w[208..]) * q8k_d(x));
}
