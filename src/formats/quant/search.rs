//! The k-quant sub-block searches: ggml's `make_qkx2_quants` (Q2_K, Q4_K, Q5_K), `make_qx_quants`
//! (Q6_K) and `make_q3_quants` (Q3_K), ported operation for operation (integer codes enter float
//! products as floats at the same place, sums accumulate in the same order), and the first two
//! again over many sub-blocks at once, each SIMD lane running one sub-block.
//!
//! Each search tries about twenty candidate scales per sub-block, and a candidate depends on the
//! ones before it (`make_qkx2_quants` moves the minimum it measures from whenever a candidate
//! wins), so the parallelism is across sub-blocks: lane k of every vector belongs to sub-block k,
//! and performs the scalar port's operations in its order, the scalar `if` becoming a per-lane
//! select. Results are therefore bit-identical to the scalar port, which stays the portable path
//! (and the reference the tests compare against).
use super::lanes::Lanes;
use super::nearest_int;
use crate::isa::{isa, Isa};

/// ggml's threshold under which a group counts as all zeros.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// The value of largest magnitude (the first one on ties) and that magnitude.
fn signed_max(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric codes in [-nmax, nmax) for `x` with weights x² (ggml's `make_qx_quants`, rmse type 1,
/// no importance weights): the best of 19 candidate scales around nmax / max by weighted error.
/// Writes `l + nmax` into `out` and returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32; 16], out: &mut [i8; 16]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = code(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (code(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = (code(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q3_K's sub-block search (ggml's `make_q3_quants` with rmse): start from nmax / max, then move
/// single codes while the weighted fit improves, up to five passes. Writes `l + nmax`.
pub(super) fn make_q3_quants(nmax: i32, x: &[f32], out: &mut [i8]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut l = [0i32; 16];
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * *li as f32;
        suml2 += w * *li as f32 * *li as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let mut slx = sumlx - w * v * *li as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * *li as f32 * *li as f32;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for (o, li) in out.iter_mut().zip(l) {
        *o = (li + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Search parameters of ggml's `make_qkx2_quants`.
pub(super) struct Qkx2 {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    pub use_mad: bool,
}

/// Weighted error of codes `l` with `scale` and `min` (squared, or absolute with `use_mad`),
/// summed in index order.
#[inline(always)]
fn fit_error<const N: usize>(
    x: &[f32; N],
    w: &[f32; N],
    l: &[u8; N],
    scale: f32,
    min: f32,
    use_mad: bool,
) -> f32 {
    let mut e = 0f32;
    for i in 0..N {
        let diff = scale * l[i] as f32 + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        e += w[i] * diff;
    }
    e
}

/// Asymmetric codes in [0, nmax] with a scale and a (non-positive) minimum, chosen among
/// `nstep + 1` candidate scales by weighted squared (or absolute) error (`make_qkx2_quants`).
/// Returns (scale, -min); codes go to `out`. Inlined so that each caller's constant parameters
/// specialize the loops.
#[inline(always)]
fn make_qkx2_quants<const N: usize>(
    p: &Qkx2,
    x: &[f32; N],
    weights: &[f32; N],
    out: &mut [u8; N],
) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        out.fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax as f32;
    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    for i in 0..N {
        out[i] = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax) as u8;
    }
    let mut best_error = fit_error(x, weights, out, scale, min, p.use_mad);
    let mut aux = [0u8; N];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..N {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
            aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error = fit_error(x, weights, &aux, this_scale, this_min, p.use_mad);
            if cur_error < best_error {
                *out = aux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// How `make_qkx2_quants` weighs the values of a sub-block.
#[derive(Clone, Copy)]
pub(super) enum Weights {
    /// Q4_K, Q5_K: rms of the sub-block + |x|.
    RmsAbs,
    /// Q2_K: |x|.
    Abs,
}

/// One sub-block's importance weights (the scalar rule, index order).
#[inline(always)]
fn weights<const N: usize>(kind: Weights, x: &[f32; N]) -> [f32; N] {
    let av_x = match kind {
        Weights::RmsAbs => {
            let mut sum_x2 = 0f32;
            for &v in x {
                sum_x2 += v * v;
            }
            (sum_x2 / N as f32).sqrt()
        }
        Weights::Abs => 0.0,
    };
    x.map(|v| match kind {
        Weights::RmsAbs => av_x + v.abs(),
        Weights::Abs => v.abs(),
    })
}

/// Searches every `N`-value sub-block of `x`: `scales[k]`, `mins[k]` (as `make_qkx2_quants`
/// returns them: the minimum negated) and codes `codes[N * k..][..N]` of sub-block `k`.
pub(super) fn qkx2<const N: usize>(
    p: &Qkx2,
    kind: Weights,
    x: &[f32],
    scales: &mut [f32],
    mins: &mut [f32],
    codes: &mut [u8],
) {
    match isa() {
        // SAFETY: `isa` reports AVX-512F / AVX2 only where the CPU has them.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { qkx2_avx512::<N>(p, kind, x, scales, mins, codes) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { qkx2_avx2::<N>(p, kind, x, scales, mins, codes) },
        _ => {
            for (k, xs) in x.chunks_exact(N).enumerate() {
                let xs: &[f32; N] = xs.try_into().expect("N values");
                let out = (&mut codes[N * k..N * k + N]).try_into().expect("N codes");
                (scales[k], mins[k]) = make_qkx2_quants(p, xs, &weights(kind, xs), out);
            }
        }
    }
}

/// Searches every 16-value sub-block of `x` with `make_qx_quants(nmax)`: `scales[k]` and codes
/// (`l + nmax`) `codes[16 * k..][..16]`.
pub(super) fn qx(nmax: i32, x: &[f32], scales: &mut [f32], codes: &mut [i8]) {
    match isa() {
        // SAFETY: as in `qkx2`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { qx_avx512(nmax, x, scales, codes) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { qx_avx2(nmax, x, scales, codes) },
        _ => {
            for (k, xs) in x.chunks_exact(16).enumerate() {
                let out = (&mut codes[16 * k..16 * k + 16])
                    .try_into()
                    .expect("16 codes");
                scales[k] = make_qx_quants(nmax, xs.try_into().expect("16 values"), out);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn qkx2_avx512<const N: usize>(
    p: &Qkx2,
    kind: Weights,
    x: &[f32],
    scales: &mut [f32],
    mins: &mut [f32],
    codes: &mut [u8],
) {
    qkx2_all::<super::lanes::Avx512, N>(p, kind, x, scales, mins, codes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn qkx2_avx2<const N: usize>(
    p: &Qkx2,
    kind: Weights,
    x: &[f32],
    scales: &mut [f32],
    mins: &mut [f32],
    codes: &mut [u8],
) {
    qkx2_all::<super::lanes::Avx2, N>(p, kind, x, scales, mins, codes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn qx_avx512(nmax: i32, x: &[f32], scales: &mut [f32], codes: &mut [i8]) {
    qx_all::<super::lanes::Avx512>(nmax, x, scales, codes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn qx_avx2(nmax: i32, x: &[f32], scales: &mut [f32], codes: &mut [i8]) {
    qx_all::<super::lanes::Avx2>(nmax, x, scales, codes)
}

/// Most lanes of any vector type.
const MAX_LANES: usize = 16;

/// Sub-blocks `s0..s0 + V::N` of `x` (`N` values each; missing ones read as zeros) transposed:
/// vector `i` holds value `i` of every sub-block.
#[inline(always)]
fn transpose<V: Lanes, const N: usize>(x: &[f32], s0: usize) -> [V; N] {
    let subs = x.len() / N;
    let mut t = [[0f32; MAX_LANES]; N];
    for k in 0..V::N.min(subs - s0) {
        for (i, &v) in x[(s0 + k) * N..(s0 + k + 1) * N].iter().enumerate() {
            t[i][k] = v;
        }
    }
    let mut xs = [V::splat(0.0); N];
    for (v, row) in xs.iter_mut().zip(&t) {
        *v = V::load(row);
    }
    xs
}

/// The first `n` lanes of `v`.
#[inline(always)]
fn lanes_of<V: Lanes>(v: V, n: usize) -> impl Iterator<Item = f32> {
    let mut t = [0f32; MAX_LANES];
    v.store(&mut t);
    t.into_iter().take(n)
}

/// Writes the codes of the first `n` lanes of `l` (sub-blocks `s0..`) into `codes`.
#[inline(always)]
fn untranspose<V: Lanes, const N: usize, T>(
    l: &[V; N],
    s0: usize,
    n: usize,
    codes: &mut [T],
    cast: impl Fn(f32) -> T,
) {
    for (i, &v) in l.iter().enumerate() {
        for (k, c) in lanes_of(v, n).enumerate() {
            codes[(s0 + k) * N + i] = cast(c);
        }
    }
}

#[inline(always)]
fn qkx2_all<V: Lanes, const N: usize>(
    p: &Qkx2,
    kind: Weights,
    x: &[f32],
    scales: &mut [f32],
    mins: &mut [f32],
    codes: &mut [u8],
) {
    let subs = x.len() / N;
    for s0 in (0..subs).step_by(V::N) {
        let n = V::N.min(subs - s0);
        let xs = transpose::<V, N>(x, s0);
        let ws = weights_lanes(kind, &xs);
        let mut l = [V::splat(0.0); N];
        let (scale, min) = qkx2_lanes(p, &xs, &ws, &mut l);
        for (k, s) in lanes_of(scale, n).enumerate() {
            scales[s0 + k] = s;
        }
        for (k, m) in lanes_of(min, n).enumerate() {
            mins[s0 + k] = -m;
        }
        untranspose(&l, s0, n, codes, |c| c as u8);
    }
}

#[inline(always)]
fn qx_all<V: Lanes>(nmax: i32, x: &[f32], scales: &mut [f32], codes: &mut [i8]) {
    let subs = x.len() / 16;
    for s0 in (0..subs).step_by(V::N) {
        let n = V::N.min(subs - s0);
        let xs = transpose::<V, 16>(x, s0);
        let mut l = [V::splat(0.0); 16];
        let scale = qx_lanes(nmax, &xs, &mut l);
        for (k, s) in lanes_of(scale, n).enumerate() {
            scales[s0 + k] = s;
        }
        untranspose(&l, s0, n, codes, |c| (c as i32 + nmax) as i8);
    }
}

/// [`weights`], lane by lane.
#[inline(always)]
fn weights_lanes<V: Lanes, const N: usize>(kind: Weights, x: &[V; N]) -> [V; N] {
    match kind {
        Weights::RmsAbs => {
            let mut sum_x2 = V::splat(0.0);
            for &v in x {
                sum_x2 = sum_x2.add(v.mul(v));
            }
            let av_x = sum_x2.div(V::splat(N as f32)).sqrt();
            let mut w = *x;
            for v in w.iter_mut() {
                *v = av_x.add(v.abs());
            }
            w
        }
        Weights::Abs => {
            let mut w = *x;
            for v in w.iter_mut() {
                *v = v.abs();
            }
            w
        }
    }
}

/// `kquants::fit_error`, lane by lane.
#[inline(always)]
fn fit_error_lanes<V: Lanes, const N: usize>(
    x: &[V; N],
    w: &[V; N],
    l: &[V; N],
    scale: V,
    min: V,
    use_mad: bool,
) -> V {
    let mut e = V::splat(0.0);
    for i in 0..N {
        let diff = scale.mul(l[i]).add(min).sub(x[i]);
        let diff = if use_mad { diff.abs() } else { diff.mul(diff) };
        e = e.add(w[i].mul(diff));
    }
    e
}

/// `kquants::make_qkx2_quants`, lane by lane: returns (scale, min) with the minimum not negated;
/// codes (as f32) in `l`.
#[inline(always)]
fn qkx2_lanes<V: Lanes, const N: usize>(
    p: &Qkx2,
    x: &[V; N],
    w: &[V; N],
    l: &mut [V; N],
) -> (V, V) {
    let zero = V::splat(0.0);
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w.mul(x[0]);
    for i in 1..N {
        min = V::select(x[i].lt(min), x[i], min);
        max = V::select(x[i].gt(max), x[i], max);
        sum_w = sum_w.add(w[i]);
        sum_x = sum_x.add(w[i].mul(x[i]));
    }
    min = V::select(min.gt(zero), zero, min);
    let (min0, live) = (min, max.ne(min));
    let nmax = p.nmax as f32;
    let iscale = V::splat(nmax).div(max.sub(min));
    let mut scale = V::splat(1.0).div(iscale);
    for i in 0..N {
        l[i] = iscale.mul(x[i].sub(min)).round_clamp(0, p.nmax);
    }
    let mut best = fit_error_lanes(x, w, l, scale, min, p.use_mad);
    let mut aux = [zero; N];
    for is in 0..=p.nstep {
        let iscale = V::splat(p.rmin + p.rdelta * is as f32 + nmax).div(max.sub(min));
        let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
        for i in 0..N {
            let li = iscale.mul(x[i].sub(min)).round_clamp(0, p.nmax);
            aux[i] = li;
            let wl = w[i].mul(li);
            sum_l = sum_l.add(wl);
            sum_l2 = sum_l2.add(wl.mul(li));
            sum_xl = sum_xl.add(wl.mul(x[i]));
        }
        let d = sum_w.mul(sum_l2).sub(sum_l.mul(sum_l));
        let mut this_scale = sum_w.mul(sum_xl).sub(sum_x.mul(sum_l)).div(d);
        let mut this_min = sum_l2.mul(sum_x).sub(sum_l.mul(sum_xl)).div(d);
        let positive = this_min.gt(zero);
        this_min = V::select(positive, zero, this_min);
        this_scale = V::select(positive, sum_xl.div(sum_l2), this_scale);
        let cur = fit_error_lanes(x, w, &aux, this_scale, this_min, p.use_mad);
        let better = V::and(d.gt(zero), cur.lt(best));
        for (li, &a) in l.iter_mut().zip(&aux) {
            *li = V::select(better, a, *li);
        }
        best = V::select(better, cur, best);
        scale = V::select(better, this_scale, scale);
        min = V::select(better, this_min, min);
    }
    for li in l.iter_mut() {
        *li = V::select(live, *li, zero);
    }
    (V::select(live, scale, zero), V::select(live, min, min0))
}

/// `kquants::make_qx_quants` for 16 values, lane by lane: returns the scale; codes `l` (not yet
/// offset by `nmax`, as f32).
#[inline(always)]
fn qx_lanes<V: Lanes>(nmax: i32, x: &[V; 16], l: &mut [V; 16]) -> V {
    let zero = V::splat(0.0);
    let (mut max, mut amax) = (zero, zero);
    for &v in x {
        let bigger = v.abs().gt(amax);
        amax = V::select(bigger, v.abs(), amax);
        max = V::select(bigger, v, max);
    }
    let dead = amax.lt(V::splat(GROUP_MAX_EPS));
    let (sumlx, suml2) = qx_sums(nmax, x, V::splat(-(nmax as f32)).div(max), l);
    let mut scale = V::select(suml2.ne(zero), sumlx.div(suml2), zero);
    let mut best = scale.mul(sumlx);
    let mut aux = [zero; 16];
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = V::splat(-(nmax as f32 + 0.1 * is as f32)).div(max);
        let (sumlx, suml2) = qx_sums(nmax, x, iscale, &mut aux);
        let better = V::and(suml2.gt(zero), sumlx.mul(sumlx).gt(best.mul(suml2)));
        for (li, &a) in l.iter_mut().zip(&aux) {
            *li = V::select(better, a, *li);
        }
        scale = V::select(better, sumlx.div(suml2), scale);
        best = V::select(better, scale.mul(sumlx), best);
    }
    let floor = V::splat(-(nmax as f32));
    for li in l.iter_mut() {
        *li = V::select(dead, floor, *li);
    }
    V::select(dead, zero, scale)
}

/// `make_qx_quants`' sums of w·x·l and w·l² (w = x²) for the codes at `iscale`, lane by lane;
/// the codes go to `codes`. (A function, not a closure: closures do not inherit the caller's
/// inlining into the `#[target_feature]` entry point, and the intrinsics would become calls.)
#[inline(always)]
fn qx_sums<V: Lanes>(nmax: i32, x: &[V; 16], iscale: V, codes: &mut [V; 16]) -> (V, V) {
    let zero = V::splat(0.0);
    let (mut sumlx, mut suml2) = (zero, zero);
    for (c, &v) in codes.iter_mut().zip(x) {
        let li = iscale.mul(v).round_clamp(-nmax, nmax - 1);
        *c = li;
        let w = v.mul(v);
        sumlx = sumlx.add(w.mul(v).mul(li));
        suml2 = suml2.add(w.mul(li).mul(li));
    }
    (sumlx, suml2)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// xorshift64*: reproducible values without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Uniform in [-1, 1).
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// Sub-blocks of `n` values: sums of uniforms at several scales, and the adversarial shapes
    /// (all zero, constant, one spike, ties on a grid, one sign only, values under ggml's zero
    /// threshold), at magnitudes from 1e-20 to 1e30.
    fn blocks(n: usize, count: usize) -> Vec<f32> {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut x = Vec::with_capacity(n * count);
        for b in 0..count {
            let scale = [1.0, 0.02, 3e-5, 1e4, 1e-20, 1e30][b % 6];
            for i in 0..n {
                let u = r.unit();
                let v = match (b / 6) % 9 {
                    0 => (u + r.unit() + r.unit()) * scale,
                    1 => 0.0,
                    2 => scale,
                    3 => {
                        if i == b % n {
                            scale
                        } else {
                            0.0
                        }
                    }
                    4 => (u * 4.0).round() * 0.25 * scale,
                    5 => u.abs() * scale,
                    6 => -u.abs() * scale,
                    7 => (u * 8.0).round() / 8.0,
                    _ => u * 1e-16,
                };
                x.push(v);
            }
        }
        x
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    type Qkx2Fn = fn(&[f32], &mut [f32], &mut [f32], &mut [u8]);

    fn check_qkx2<const N: usize>(p: &Qkx2, kind: Weights, x: &[f32], simd: Qkx2Fn) {
        let subs = x.len() / N;
        let (mut s0, mut m0, mut l0) = (vec![0f32; subs], vec![0f32; subs], vec![0u8; x.len()]);
        for (k, xs) in x.chunks_exact(N).enumerate() {
            let xs: &[f32; N] = xs.try_into().unwrap();
            let out = (&mut l0[N * k..N * k + N]).try_into().unwrap();
            (s0[k], m0[k]) = make_qkx2_quants(p, xs, &weights(kind, xs), out);
        }
        let (mut s1, mut m1, mut l1) = (vec![0f32; subs], vec![0f32; subs], vec![0u8; x.len()]);
        simd(x, &mut s1, &mut m1, &mut l1);
        assert_eq!(bits(&s0), bits(&s1), "scales");
        assert_eq!(bits(&m0), bits(&m1), "mins");
        assert_eq!(l0, l1, "codes");
    }

    fn check_qx(x: &[f32], simd: fn(&[f32], &mut [f32], &mut [i8])) {
        let subs = x.len() / 16;
        let (mut s0, mut l0) = (vec![0f32; subs], vec![0i8; x.len()]);
        for (k, xs) in x.chunks_exact(16).enumerate() {
            let out = (&mut l0[16 * k..16 * k + 16]).try_into().unwrap();
            s0[k] = make_qx_quants(32, xs.try_into().unwrap(), out);
        }
        let (mut s1, mut l1) = (vec![0f32; subs], vec![0i8; x.len()]);
        simd(x, &mut s1, &mut l1);
        assert_eq!(bits(&s0), bits(&s1), "scales");
        assert_eq!(l0, l1, "codes");
    }

    const Q4: Qkx2 = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    const Q5: Qkx2 = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    const Q2: Qkx2 = Qkx2 {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };

    #[test]
    fn simd_searches_equal_the_scalar_port() {
        // 999 sub-blocks: the last vector is partly empty.
        let (x32, x16) = (blocks(32, 999), blocks(16, 999));
        // SAFETY (every `unsafe` below): each path runs only where the CPU has its features.
        if is_x86_feature_detected!("avx512f") {
            check_qkx2::<32>(&Q4, Weights::RmsAbs, &x32, |x, s, m, l| unsafe {
                qkx2_avx512::<32>(&Q4, Weights::RmsAbs, x, s, m, l)
            });
            check_qkx2::<32>(&Q5, Weights::RmsAbs, &x32, |x, s, m, l| unsafe {
                qkx2_avx512::<32>(&Q5, Weights::RmsAbs, x, s, m, l)
            });
            check_qkx2::<16>(&Q2, Weights::Abs, &x16, |x, s, m, l| unsafe {
                qkx2_avx512::<16>(&Q2, Weights::Abs, x, s, m, l)
            });
            check_qx(&x16, |x, s, l| unsafe { qx_avx512(32, x, s, l) });
        }
        if is_x86_feature_detected!("avx2") {
            check_qkx2::<32>(&Q4, Weights::RmsAbs, &x32, |x, s, m, l| unsafe {
                qkx2_avx2::<32>(&Q4, Weights::RmsAbs, x, s, m, l)
            });
            check_qkx2::<32>(&Q5, Weights::RmsAbs, &x32, |x, s, m, l| unsafe {
                qkx2_avx2::<32>(&Q5, Weights::RmsAbs, x, s, m, l)
            });
            check_qkx2::<16>(&Q2, Weights::Abs, &x16, |x, s, m, l| unsafe {
                qkx2_avx2::<16>(&Q2, Weights::Abs, x, s, m, l)
            });
            check_qx(&x16, |x, s, l| unsafe { qx_avx2(32, x, s, l) });
        }
    }
}
