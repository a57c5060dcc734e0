//! Causal attention on the CPU, fused: per query row the scores over the cached positions it may
//! see, their softmax and the weighted sum of values, in one pass over a row-sized buffer.
//!
//! Computing it as tensors (scores = q·Kᵀ for every pair, a mask of -inf, softmax, probs·V) wrote
//! and re-read heads x t x (start + t) scores several times per layer (32 MiB per temporary for a
//! 512-token prompt of a 32-head model, each one fresh pages to fault in and zero), and computed
//! the masked half. Here each (batch row, head) is one task over its query rows, each query row
//! sees only the positions up to its own, and nothing larger than one row of scores is allocated.
//!
//! Exactness: every output element is computed by one task in a fixed order (dot products in 8
//! lanes folded by a fixed tree, sums in position order), with separate multiplies and adds, so the
//! result does not depend on the thread count or on the instruction set.
use rayon::prelude::*;

/// Keys or values of one layer: `[batch, n_kv_heads, positions, head_dim]` inside the cache's
/// buffer, which has room for more positions than are used.
pub struct Kv<'a> {
    pub data: &'a [f32],
    /// Elements between consecutive batch rows and consecutive kv heads.
    pub batch_stride: usize,
    pub head_stride: usize,
}

impl Kv<'_> {
    fn row(&self, b: usize, g: usize, pos: usize, hd: usize) -> &[f32] {
        let at = b * self.batch_stride + g * self.head_stride + pos * hd;
        &self.data[at..at + hd]
    }
}

/// The attention's shape: `b` batch rows of `t` new positions after `start` cached ones,
/// `n_heads` query heads sharing `n_kv_heads` key/value heads, `head_dim` values per head.
#[derive(Clone, Copy)]
pub struct Shape {
    pub b: usize,
    pub t: usize,
    pub start: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// `q`: `[b, n_heads, t, head_dim]`, rotated; returns `[b, n_heads, t, head_dim]`: for query row
/// `i` (position `start + i`), `Σ_j softmax_j(q·k_j · scale) v_j` over positions `j <= start + i`.
pub fn attend(q: &[f32], keys: &Kv, values: &Kv, s: Shape, scale: f32) -> Vec<f32> {
    let hd = s.head_dim;
    let rep = s.n_heads / s.n_kv_heads;
    let mut out = vec![0f32; s.b * s.n_heads * s.t * hd];
    #[cfg(target_arch = "x86_64")]
    let avx2 = is_x86_feature_detected!("avx2");
    out.par_chunks_mut(s.t * hd)
        .zip(q.par_chunks(s.t * hd))
        .enumerate()
        .for_each_init(Vec::new, |scores, (bh, (out, q))| {
            let (b, g) = (bh / s.n_heads, bh % s.n_heads / rep);
            let job = Job {
                keys,
                values,
                b,
                g,
                hd,
                scale,
            };
            for (i, (o, q)) in out.chunks_mut(hd).zip(q.chunks(hd)).enumerate() {
                let n = s.start + i + 1;
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2 was detected above.
                    unsafe { job.row_avx2(q, n, scores, o) };
                    continue;
                }
                job.row::<Portable>(q, n, scores, o);
            }
        });
    out
}

/// One (batch row, kv head) of [`attend`].
struct Job<'a> {
    keys: &'a Kv<'a>,
    values: &'a Kv<'a>,
    b: usize,
    g: usize,
    hd: usize,
    scale: f32,
}

impl Job<'_> {
    /// One query row `q` over the first `n` positions, into `o`. The same operations in the same
    /// order on every instruction set: AVX2 only widens the vectors (no fused multiply-adds).
    #[inline(always)]
    fn row<L: Lanes>(&self, q: &[f32], n: usize, scores: &mut Vec<f32>, o: &mut [f32]) {
        let key = |j| self.keys.row(self.b, self.g, j, self.hd);
        scores.clear();
        // Four keys at a time: four independent chains of adds.
        let mut j = 0;
        while j + 4 <= n {
            let d = L::dot4(q, [key(j), key(j + 1), key(j + 2), key(j + 3)]);
            scores.extend(d.map(|d| d * self.scale));
            j += 4;
        }
        // (A loop, not a closure: a closure is compiled without the caller's target features,
        // and the AVX2 lanes inside it became calls.)
        for j in j..n {
            scores.push(L::dot4(q, [key(j); 4])[0] * self.scale);
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0f32;
        for x in scores.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        for p in scores.iter_mut() {
            *p /= sum;
        }
        let value = |j| self.values.row(self.b, self.g, j, self.hd);
        L::weighted_sum(scores, value, o);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn row_avx2(&self, q: &[f32], n: usize, scores: &mut Vec<f32>, o: &mut [f32]) {
        self.row::<Avx2>(q, n, scores, o)
    }
}

/// `Σ a_i k_i` for four `k`s (each as long as `a`), each in 8 lanes (lane `l` takes `i ≡ l mod 8`,
/// in order, a product rounded and then added), folded `((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7))`; a
/// tail past the last 8 is added to that at the end. Four keys at a time: four independent chains.
/// And the weighted sum of value rows: `o_e += p_j * v_j[e]` for each `j` in order, a product
/// rounded and then added.
trait Lanes {
    fn dot4(a: &[f32], k: [&[f32]; 4]) -> [f32; 4];
    fn weighted_sum<'v>(p: &[f32], v: impl Fn(usize) -> &'v [f32], o: &mut [f32]);
}

/// Plain Rust over lane arrays.
struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    fn dot4(a: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
        let full = a.len() / 8 * 8;
        std::array::from_fn(|r| {
            let mut lanes = [0f32; 8];
            for c in (0..full).step_by(8) {
                for l in 0..8 {
                    lanes[l] += a[c + l] * k[r][c + l];
                }
            }
            let h: [f32; 4] = std::array::from_fn(|l| lanes[l] + lanes[l + 4]);
            ((h[0] + h[2]) + (h[1] + h[3])) + tail(a, k[r], full)
        })
    }

    #[inline(always)]
    fn weighted_sum<'v>(p: &[f32], v: impl Fn(usize) -> &'v [f32], o: &mut [f32]) {
        for (j, &p) in p.iter().enumerate() {
            for (o, &v) in o.iter_mut().zip(v(j)) {
                *o += p * v;
            }
        }
    }
}

fn tail(a: &[f32], k: &[f32], from: usize) -> f32 {
    (from..a.len()).fold(0f32, |s, i| s + a[i] * k[i])
}

/// The same lanes as one 256-bit vector; only inlined into `#[target_feature(enable = "avx2")]`
/// code (a function of its own would lose the vectors to calls).
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    #[inline(always)]
    fn dot4(a: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
        use std::arch::x86_64::*;
        let full = a.len() / 8 * 8;
        assert!(k.iter().all(|k| k.len() >= a.len()));
        // SAFETY: loads stay within the first `full` elements of `a` and of each `k`; AVX2 is
        // present wherever this is inlined (see above).
        unsafe {
            // Named accumulators: as an array LLVM kept them on the stack, a store and a reload
            // in every chain's step.
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            );
            for c in (0..full).step_by(8) {
                let x = _mm256_loadu_ps(a.as_ptr().add(c));
                macro_rules! prod {
                    ($k:expr) => {
                        _mm256_mul_ps(x, _mm256_loadu_ps($k.as_ptr().add(c)))
                    };
                }
                a0 = _mm256_add_ps(a0, prod!(k[0]));
                a1 = _mm256_add_ps(a1, prod!(k[1]));
                a2 = _mm256_add_ps(a2, prod!(k[2]));
                a3 = _mm256_add_ps(a3, prod!(k[3]));
            }
            // (A macro, not a closure: a closure is compiled without the caller's target
            // features, and these intrinsics became calls.)
            macro_rules! hsum {
                ($v:expr, $r:expr) => {{
                    let h = _mm_add_ps(_mm256_castps256_ps128($v), _mm256_extractf128_ps::<1>($v));
                    let s = _mm_add_ps(h, _mm_movehl_ps(h, h));
                    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s))) + tail(a, k[$r], full)
                }};
            }
            [hsum!(a0, 0), hsum!(a1, 1), hsum!(a2, 2), hsum!(a3, 3)]
        }
    }

    /// Blocks of 64 outputs (8 vectors) stay in registers over every `j` (written through the
    /// slice, each `j` was a load and a store per vector, a store-to-load chain: 40% of a decode's
    /// attention at 500 positions).
    #[inline(always)]
    fn weighted_sum<'v>(p: &[f32], v: impl Fn(usize) -> &'v [f32], o: &mut [f32]) {
        use std::arch::x86_64::*;
        const W: usize = 8;
        let full = o.len() / (8 * W) * (8 * W);
        for c in (0..full).step_by(8 * W) {
            // SAFETY: `c + 8 * W <= o.len()`, and every value row is `o.len()` long (checked
            // below before any load); AVX2 is present wherever this is inlined.
            unsafe {
                let mut acc = [_mm256_setzero_ps(); W];
                for (i, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_loadu_ps(o.as_ptr().add(c + 8 * i));
                }
                for (j, &pj) in p.iter().enumerate() {
                    let row = v(j);
                    assert!(row.len() >= c + 8 * W);
                    let pv = _mm256_set1_ps(pj);
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_loadu_ps(row.as_ptr().add(c + 8 * i));
                        *acc = _mm256_add_ps(*acc, _mm256_mul_ps(pv, x));
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.as_mut_ptr().add(c + 8 * i), *acc);
                }
            }
        }
        for (j, &pj) in p.iter().enumerate() {
            for (o, &x) in o[full..].iter_mut().zip(&v(j)[full..]) {
                *o += pj * x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same attention in f64, as the definition.
    fn reference(q: &[f32], k: &[f32], v: &[f32], s: Shape, total: usize) -> Vec<f64> {
        let hd = s.head_dim;
        let rep = s.n_heads / s.n_kv_heads;
        let mut out = vec![0f64; s.b * s.n_heads * s.t * hd];
        for b in 0..s.b {
            for h in 0..s.n_heads {
                let g = h / rep;
                for i in 0..s.t {
                    let qr = &q[((b * s.n_heads + h) * s.t + i) * hd..][..hd];
                    let kv = |m: &[f32], j: usize| {
                        m[((b * s.n_kv_heads + g) * total + j) * hd..][..hd].to_vec()
                    };
                    let n = s.start + i + 1;
                    let sc: Vec<f64> = (0..n)
                        .map(|j| {
                            let kr = kv(k, j);
                            qr.iter()
                                .zip(&kr)
                                .map(|(x, y)| *x as f64 * *y as f64)
                                .sum::<f64>()
                                * 0.125
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let o = &mut out[((b * s.n_heads + h) * s.t + i) * hd..][..hd];
                    for (j, p) in e.iter().enumerate() {
                        for (o, v) in o.iter_mut().zip(kv(v, j)) {
                            *o += p / z * v as f64;
                        }
                    }
                }
            }
        }
        out
    }

    fn kv(data: &[f32], s: Shape, room: usize) -> Kv<'_> {
        let head_stride = room * s.head_dim;
        Kv {
            data,
            batch_stride: s.n_kv_heads * head_stride,
            head_stride,
        }
    }

    #[test]
    fn matches_the_definition_and_ignores_later_positions() {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // 2 batch rows, 4 query heads on 2 kv heads, head_dim 20 (two lanes' worth and a tail),
        // 3 new positions after 4 cached, in a cache with room for 9.
        let s = Shape {
            b: 2,
            t: 3,
            start: 4,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 20,
        };
        let room = 9;
        let q: Vec<f32> = (0..s.b * s.n_heads * s.t * s.head_dim)
            .map(|_| rnd() * 3.0)
            .collect();
        let mut k: Vec<f32> = (0..s.b * s.n_kv_heads * room * s.head_dim)
            .map(|_| rnd())
            .collect();
        let mut v: Vec<f32> = k.iter().map(|x| x * 0.5 + 0.1).collect();
        let got = attend(&q, &kv(&k, s, room), &kv(&v, s, room), s, 0.125);
        let want = reference(&q, &k, &v, s, room);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((*g as f64 - w).abs() < 1e-5, "element {i}: {g} vs {w}");
        }
        // Positions after the last query's are never read.
        for bg in 0..s.b * s.n_kv_heads {
            let from = (bg * room + s.start + s.t) * s.head_dim;
            k[from..(bg + 1) * room * s.head_dim].fill(f32::NAN);
            v[from..(bg + 1) * room * s.head_dim].fill(f32::NAN);
        }
        assert_eq!(
            got,
            attend(&q, &kv(&k, s, room), &kv(&v, s, room), s, 0.125)
        );
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn lanes_agree_bit_for_bit() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let v = |n: usize, m: f32| {
            (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * m)
                .collect::<Vec<_>>()
        };
        for n in [8, 20, 64, 128] {
            let a = v(n, 0.013);
            let k: Vec<Vec<f32>> = (1..5).map(|r| v(n + r, 0.7 / r as f32)).collect();
            let ks = [&k[0][..n], &k[1][..n], &k[2][..n], &k[3][..n]];
            let (p, x) = (Portable::dot4(&a, ks), Avx2::dot4(&a, ks));
            assert_eq!(p.map(f32::to_bits), x.map(f32::to_bits), "head_dim {n}");
        }
        // The weighted sum of values, for head sizes with and without a whole block of 64.
        for n in [20, 64, 72, 128] {
            let probs = v(37, 0.0007);
            let rows: Vec<Vec<f32>> = (0..37).map(|j| v(n + j, 0.3)).collect();
            let row = |j: usize| &rows[j][..n];
            let (mut p, mut x) = (v(n, 0.01), v(n, 0.01));
            Portable::weighted_sum(&probs, row, &mut p);
            Avx2::weighted_sum(&probs, row, &mut x);
            let bits = |o: &[f32]| o.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p), bits(&x), "head_dim {n}");
        }
    }
}
