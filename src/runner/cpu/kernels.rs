//! The inner loops of CPU inference, for weights stored as bf16, f16 or f32 against f32 activations:
//! the dot product of one weight row with a few activation rows (decode), the prefill tile (a few
//! weight rows x a few activation rows, each weight vector widened once in registers and used for
//! every activation row), and the widening of weight rows to f32 (embedding lookups, `--dtype f32`).
//!
//! Weights are read as raw little-endian bytes with unaligned loads, so rows can sit at any offset
//! of a memory-mapped file. Products and sums are f32: bf16 -> f32 is exact, f16 -> f32 is exact, so
//! the result is that of the f32 model up to summation order.
//!
//! The instruction set is picked once at run time: AVX-512F, AVX2+FMA+F16C, or portable Rust written
//! with eight independent lanes, which LLVM turns into SSE2 on x86-64 and NEON on aarch64 (NEON is part
//! of every aarch64 CPU, so the baseline build already vectorizes there).
pub use crate::isa::{isa, Isa};

/// How a weight matrix stores its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    F32,
    F16,
    Bf16,
}

impl WeightType {
    pub fn size(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::Bf16 => "bf16",
        }
    }
}

/// Independent accumulators (FMA chains) per activation row in [`dot_row`]: four, so the loop is
/// not held to one step per FMA latency and runs far enough ahead of its loads to keep the weight
/// stream's cache misses in flight (one thread, a 65536 x 2048 bf16 matrix out of DRAM: 14-17 GB/s
/// with two chains, 18-20 with four; 1B-shaped decode 6.2-6.6 -> 6.7-7.2 tok/s); two with three or
/// four activation rows, where the rows' chains already fill the FMA units and four
/// each would not fit AVX2's 16 registers.
const fn chains(rows: usize) -> usize {
    if rows <= 2 {
        4
    } else {
        2
    }
}

/// Most activation rows one call of [`dot_row`] handles (each needs its own accumulators).
pub const MAX_ROWS: usize = 4;

/// `out[r] = Σ_i w[i] * xs[r][i]` for one weight row `w` (`cols` elements of type `wt`) and up to
/// [`MAX_ROWS`] activation rows of `cols` f32 each.
pub fn dot_row(wt: WeightType, w: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    let cols = w.len() / wt.size();
    assert!(
        xs.len() <= MAX_ROWS && out.len() == xs.len() && xs.iter().all(|x| x.len() == cols),
        "dot_row: mismatched operands"
    );
    match xs.len() {
        1 => dispatch_dot::<1>(wt, w, xs, out),
        2 => dispatch_dot::<2>(wt, w, xs, out),
        3 => dispatch_dot::<3>(wt, w, xs, out),
        4 => dispatch_dot::<4>(wt, w, xs, out),
        _ => {}
    }
}

fn dispatch_dot<const R: usize>(wt: WeightType, w: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    let cols = w.len() / wt.size();
    let xp: [*const f32; R] = std::array::from_fn(|r| xs[r].as_ptr());
    let res: [f32; R] = match isa() {
        // SAFETY: the ISA was detected at run time; every pointer covers `cols` elements (checked
        // by the caller's assert).
        // The 256-bit kernel on AVX-512 machines too: decode is bound by the weight stream, and
        // there the 512-bit one was slower (AMD EPYC, 1B-shaped bf16 decode, one thread: 6.0-6.8
        // against 8.3-9.3 tok/s; two threads 8.7-10.6 against 11.4-12.6).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe { x86::dot_avx2::<R>(wt, w.as_ptr(), xp, cols) },
        _ => portable::dot::<R>(wt, w, xs),
    };
    out.copy_from_slice(&res);
}

/// Activation rows x weight rows of one prefill tile on the ISA in use, chosen so the accumulators
/// (one vector per pair), the widened weight vectors and one activation vector fit the register file:
/// AVX-512 4 x 6 (24 accumulators + 6 weights of the 32 zmm), AVX2 4 x 3 (12 + 3 + 1 of the 16 ymm),
/// portable 4 x 3 as well (two 4-lane registers per 8-lane vector: 24 + 6 + 2 of NEON's 32).
pub fn tile_shape() -> (usize, usize) {
    shape_on(isa())
}

fn shape_on(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (4, 6),
        Isa::Avx2 | Isa::Portable => (4, 3),
    }
}

/// Weight rows of a tile of `tn` activation rows: [`tile_shape`]'s, except with one activation row
/// (decode of rows too long for [`dot_row`]), where the accumulators are all the registers need and
/// more weight rows share each activation vector read. One thread, a bf16 [16384, 8192] matrix out
/// of DRAM (`examples/kernel_bench.rs`): AVX2 1 x 3 17-20 GB/s -> 1 x 8 21-25, AVX-512 1 x 6 22-25
/// -> 1 x 12 23-26 (1 x 12 on AVX2 and 1 x 16 on AVX-512 were no better); 1B-shaped decode with
/// AVX2, one thread, 10.57 -> 11.0 tok/s (AVX-512 unchanged). The bits do not change: each output
/// is one accumulator whatever the tile.
pub fn tile_rows(tn: usize) -> usize {
    rows_on(isa(), tn)
}

fn rows_on(isa: Isa, tn: usize) -> usize {
    match (isa, tn) {
        (Isa::Avx512, 1) => 12,
        (Isa::Avx2, 1) => 8,
        _ => shape_on(isa).1,
    }
}

/// Weight rows of every prefill task: a multiple of each ISA's tile rows.
pub const TILE_ROWS_LCM: usize = 12;

/// Activations `x` (rows of `k`) in the order [`tile`] reads them for weights of type `wt`: a copy
/// where the kernel wants one, else `x` itself. The AVX2 bf16 tile splits each two vectors' worth
/// of columns (16) into the even-indexed ones followed by the odd-indexed ones
/// (the columns after the last whole step stay as they are): it loads the bf16 weights as u32
/// pairs, and one shift gives the even weights as f32, one mask the odd ones, against two
/// instructions per vector to widen them in order (AVX2: 1-thread 64-token prefill of the
/// 1B-shaped bf16 checkpoint 39.3 -> 41.2 tok/s).
pub fn tile_layout(wt: WeightType, x: &[f32], k: usize) -> std::borrow::Cow<'_, [f32]> {
    layout_on(isa(), wt, x, k)
}

fn layout_on(isa: Isa, wt: WeightType, x: &[f32], k: usize) -> std::borrow::Cow<'_, [f32]> {
    // Columns per step of the ISA's bf16 tile: two vectors' worth. (The same on AVX-512's 4 x 6
    // tile was slower, 44.8 -> 37.7 tok/s: LLVM widened both halves up front and spilled.)
    let step = match (isa, wt) {
        (Isa::Avx2, WeightType::Bf16) => 16,
        _ => return std::borrow::Cow::Borrowed(x),
    };
    let half = step / 2;
    let mut out = x.to_vec();
    for (o, x) in out.chunks_exact_mut(k).zip(x.chunks_exact(k)) {
        for (o, x) in o.chunks_exact_mut(step).zip(x.chunks_exact(step)) {
            for l in 0..half {
                o[l] = x[2 * l];
                o[half + l] = x[2 * l + 1];
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A prefill tile without packing: `out[tt * out_stride + r] = Σ_i w_r[i] * x_tt[i]` for `tn`
/// activation rows (`x`, row stride `k`, in the order of [`tile_layout`]) and `rn` weight rows (`w`,
/// `k` elements each, row after row), `tn` at most [`tile_shape`]'s first and `rn` at most
/// [`tile_rows`] of `tn`. Each weight vector is widened once, in registers, and used for every
/// activation row. Each output is one accumulator over `k` in a fixed order, whatever the
/// tile's size.
///
/// # Safety
/// `w` holds `rn * k` elements, `x` `tn` rows of `k`, `out` `tn` rows of `out_stride` with `rn` columns.
pub unsafe fn tile(
    wt: WeightType,
    w: &[u8],
    rn: usize,
    x: &[f32],
    tn: usize,
    out: *mut f32,
    out_stride: usize,
) {
    tile_on(isa(), wt, w, rn, x, tn, out, out_stride)
}

/// [`tile`] with the kernels of `isa`, which the CPU must have.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_on(
    isa: Isa,
    wt: WeightType,
    w: &[u8],
    rn: usize,
    x: &[f32],
    tn: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let k = x.len() / tn;
    let (mt, mr) = (shape_on(isa).0, rows_on(isa, tn));
    assert!(
        w.len() == rn * k * wt.size() && tn <= mt && rn <= mr,
        "tile: bad operands"
    );
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    macro_rules! go {
        ($m:ident::$f:ident; $($t:literal, $r:literal);*) => {
            match (tn, rn) {
                $(($t, $r) => $m::$f::<$t, $r>(wt, wp, xp, k, out, out_stride),)*
                _ => {}
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => go!(x86::tile_avx512; 1,1;1,2;1,3;1,4;1,5;1,6;2,1;2,2;2,3;2,4;2,5;2,6;
            3,1;3,2;3,3;3,4;3,5;3,6;4,1;4,2;4,3;4,4;4,5;4,6;1,7;1,8;1,9;1,10;1,11;1,12),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => go!(x86::tile_avx2; 1,1;1,2;1,3;2,1;2,2;2,3;3,1;3,2;3,3;4,1;4,2;4,3;
            1,4;1,5;1,6;1,7;1,8),
        _ => go!(portable::tile; 1,1;1,2;1,3;2,1;2,2;2,3;3,1;3,2;3,3;4,1;4,2;4,3),
    }
}

/// Widen `w` (elements of type `wt`) into `out` as f32.
pub fn widen(wt: WeightType, w: &[u8], out: &mut [f32]) {
    assert_eq!(w.len(), out.len() * wt.size(), "widen: mismatched lengths");
    match isa() {
        // SAFETY: ISA detected at run time; lengths checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::widen_avx512(wt, w.as_ptr(), out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::widen_avx2(wt, w.as_ptr(), out) },
        _ => portable::widen(wt, w, out),
    }
}

/// `s` plus the products of columns `from..` of weight row `w` and activation row `x` (the
/// columns after the last whole vector of a tile or dot kernel), in column order.
#[inline(always)]
fn tail(wt: WeightType, w: &[u8], x: &[f32], from: usize, s: f32) -> f32 {
    (from..x.len()).fold(s, |s, j| s + elem(wt, w, j) * x[j])
}

/// One element of `w` as f32.
#[inline(always)]
fn elem(wt: WeightType, w: &[u8], i: usize) -> f32 {
    match wt {
        WeightType::F32 => f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]),
        WeightType::F16 => {
            half::f16::from_bits(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])).to_f32()
        }
        WeightType::Bf16 => {
            f32::from_bits((u16::from_le_bytes([w[2 * i], w[2 * i + 1]]) as u32) << 16)
        }
    }
}

mod portable {
    use super::{elem, WeightType};

    const LANES: usize = 8;

    /// Eight lanes accumulate independently, so the loop vectorizes without reassociating floats.
    pub(super) fn dot<const R: usize>(wt: WeightType, w: &[u8], xs: &[&[f32]]) -> [f32; R] {
        let cols = w.len() / wt.size();
        let mut acc = [[0f32; LANES]; R];
        let mut lanes = [0f32; LANES];
        let full = cols / LANES * LANES;
        for base in (0..full).step_by(LANES) {
            load(wt, w, base, &mut lanes);
            for r in 0..R {
                let x = &xs[r][base..base + LANES];
                for l in 0..LANES {
                    acc[r][l] += lanes[l] * x[l];
                }
            }
        }
        std::array::from_fn(|r| {
            let tail: f32 = (full..cols).map(|i| elem(wt, w, i) * xs[r][i]).sum();
            acc[r].iter().sum::<f32>() + tail
        })
    }

    #[inline(always)]
    fn load(wt: WeightType, w: &[u8], base: usize, lanes: &mut [f32; LANES]) {
        match wt {
            WeightType::Bf16 => {
                for (l, v) in lanes.iter_mut().enumerate() {
                    let i = 2 * (base + l);
                    *v = f32::from_bits((u16::from_le_bytes([w[i], w[i + 1]]) as u32) << 16);
                }
            }
            WeightType::F32 => {
                for (l, v) in lanes.iter_mut().enumerate() {
                    let i = 4 * (base + l);
                    *v = f32::from_le_bytes([w[i], w[i + 1], w[i + 2], w[i + 3]]);
                }
            }
            WeightType::F16 => {
                let mut bits = [0u16; LANES];
                for (l, b) in bits.iter_mut().enumerate() {
                    let i = 2 * (base + l);
                    *b = u16::from_le_bytes([w[i], w[i + 1]]);
                }
                // half's slice conversion uses the CPU's own f16 instructions where it can.
                use half::slice::HalfFloatSliceExt;
                let h: &[half::f16] = bytemuck::cast_slice(&bits);
                h.convert_to_f32_slice(lanes);
            }
        }
    }

    /// T activation rows x R weight rows, eight lanes per accumulator; see `super::tile`. Written
    /// like `dot`, so LLVM keeps the lanes apart and vectorizes (NEON on aarch64, SSE2 on x86-64).
    ///
    /// # Safety
    /// `w` holds `R * k` elements, `x` `T` rows of `k`, `out` `T` rows of `out_stride`.
    pub(super) unsafe fn tile<const T: usize, const R: usize>(
        wt: WeightType,
        w: *const u8,
        x: *const f32,
        k: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let w = std::slice::from_raw_parts(w, R * k * wt.size());
        let x = std::slice::from_raw_parts(x, T * k);
        let mut acc = [[[0f32; LANES]; R]; T];
        let mut wv = [[0f32; LANES]; R];
        let full = k / LANES * LANES;
        for base in (0..full).step_by(LANES) {
            for (r, v) in wv.iter_mut().enumerate() {
                load(wt, w, r * k + base, v);
            }
            for (t, a) in acc.iter_mut().enumerate() {
                let xv = &x[t * k + base..t * k + base + LANES];
                for r in 0..R {
                    for l in 0..LANES {
                        a[r][l] += wv[r][l] * xv[l];
                    }
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            for (r, v) in a.iter().enumerate() {
                let tail: f32 = (full..k)
                    .map(|j| elem(wt, w, r * k + j) * x[t * k + j])
                    .sum();
                *out.add(t * out_stride + r) = v.iter().sum::<f32>() + tail;
            }
        }
    }

    pub(super) fn widen(wt: WeightType, w: &[u8], out: &mut [f32]) {
        match wt {
            WeightType::F16 => {
                use half::slice::HalfFloatSliceExt;
                for (chunk, o) in w.chunks(2 * 256).zip(out.chunks_mut(256)) {
                    let mut bits = [0u16; 256];
                    for (b, c) in bits.iter_mut().zip(chunk.chunks_exact(2)) {
                        *b = u16::from_le_bytes([c[0], c[1]]);
                    }
                    let h: &[half::f16] = bytemuck::cast_slice(&bits[..o.len()]);
                    h.convert_to_f32_slice(o);
                }
            }
            _ => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = elem(wt, w, i);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{chains, elem, tail, WeightType};
    use std::arch::x86_64::*;

    /// 16 weights at `p` as f32.
    #[inline(always)]
    unsafe fn load16(wt: WeightType, p: *const u8) -> __m512 {
        match wt {
            WeightType::Bf16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)),
            )),
            WeightType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
            WeightType::F32 => _mm512_loadu_ps(p as *const f32),
        }
    }

    /// T activation rows x R weight rows, one 16-lane accumulator each; see `super::tile`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_avx512<const T: usize, const R: usize>(
        wt: WeightType,
        w: *const u8,
        x: *const f32,
        k: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let es = wt.size();
        let mut acc = [[_mm512_setzero_ps(); R]; T];
        let full = k / 16 * 16;
        let mut i = 0;
        while i < full {
            let wv: [__m512; R] = std::array::from_fn(|r| load16(wt, w.add((r * k + i) * es)));
            for (t, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.add(t * k + i));
                for r in 0..R {
                    a[r] = _mm512_fmadd_ps(wv[r], xv, a[r]);
                }
            }
            i += 16;
        }
        let wall = std::slice::from_raw_parts(w, R * k * es);
        for (t, a) in acc.iter().enumerate() {
            for (r, v) in a.iter().enumerate() {
                let x = std::slice::from_raw_parts(x.add(t * k), k);
                *out.add(t * out_stride + r) =
                    tail(wt, &wall[r * k * es..], x, full, _mm512_reduce_add_ps(*v));
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn widen_avx512(wt: WeightType, w: *const u8, out: &mut [f32]) {
        let n = out.len();
        let full = n / 16 * 16;
        let mut i = 0;
        while i < full {
            _mm512_storeu_ps(out.as_mut_ptr().add(i), load16(wt, w.add(i * wt.size())));
            i += 16;
        }
        let src = std::slice::from_raw_parts(w, n * wt.size());
        for (j, o) in out.iter_mut().enumerate().skip(full) {
            *o = elem(wt, src, j);
        }
    }

    /// 8 weights at `p` as f32.
    #[inline(always)]
    unsafe fn load8(wt: WeightType, p: *const u8) -> __m256 {
        match wt {
            WeightType::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
            )),
            WeightType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            WeightType::F32 => _mm256_loadu_ps(p as *const f32),
        }
    }

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// [`chains`] 8-wide accumulators per activation row.
    // `c` picks both a chain's accumulator and its columns.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2<const R: usize>(
        wt: WeightType,
        w: *const u8,
        xs: [*const f32; R],
        cols: usize,
    ) -> [f32; R] {
        let (es, n) = (wt.size(), chains(R));
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let (step, vfull) = (8 * n, cols / 8 * 8);
        let full = cols / step * step;
        let mut i = 0;
        while i < full {
            for c in 0..n {
                let wv = load8(wt, w.add((i + 8 * c) * es));
                for r in 0..R {
                    let x = _mm256_loadu_ps(xs[r].add(i + 8 * c));
                    acc[r][c] = _mm256_fmadd_ps(wv, x, acc[r][c]);
                }
            }
            i += step;
        }
        let mut c = 0;
        while i < vfull {
            let wv = load8(wt, w.add(i * es));
            for r in 0..R {
                acc[r][c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs[r].add(i)), acc[r][c]);
            }
            (i, c) = (i + 8, c + 1);
        }
        let w = std::slice::from_raw_parts(w, cols * es);
        std::array::from_fn(|r| {
            let [a0, a1, a2, a3] = acc[r];
            let s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            tail(wt, w, std::slice::from_raw_parts(xs[r], cols), vfull, s)
        })
    }

    /// T activation rows x R weight rows, one 8-lane accumulator each; see `super::tile`. bf16
    /// weights take [`super::tile_layout`]'s order: per 16 columns lane `l` adds column `2l`, then
    /// `2l + 1`. The odd weights are loaded a second time (from L1) rather than kept: 12
    /// accumulators, 3 weight vectors and an activation vector fill the 16 registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const T: usize, const R: usize>(
        wt: WeightType,
        w: *const u8,
        x: *const f32,
        k: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let es = wt.size();
        let mut acc = [[_mm256_setzero_ps(); R]; T];
        let mut wv = [_mm256_setzero_ps(); R];
        let high = _mm256_set1_epi32(0xffff_0000_u32 as i32);
        // Columns per step: 16 bf16 (two halves of 8), else 8.
        let step = if wt == WeightType::Bf16 { 16 } else { 8 };
        let full = k / step * step;
        let mut i = 0;
        // (Loops, not closures: a closure is compiled without this function's target features.)
        while i < full {
            for half in 0..step / 8 {
                for (r, wv) in wv.iter_mut().enumerate() {
                    let p = w.add((r * k + i) * es);
                    *wv = match (wt, half) {
                        (WeightType::Bf16, 0) => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(
                            _mm256_loadu_si256(p as *const __m256i),
                        )),
                        (WeightType::Bf16, _) => _mm256_castsi256_ps(and_mem(high, p)),
                        _ => load8(wt, p),
                    };
                }
                for (t, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(x.add(t * k + i + 8 * half));
                    for r in 0..R {
                        a[r] = _mm256_fmadd_ps(wv[r], xv, a[r]);
                    }
                }
            }
            i += step;
        }
        let wall = std::slice::from_raw_parts(w, R * k * es);
        for (t, a) in acc.iter().enumerate() {
            for (r, v) in a.iter().enumerate() {
                let x = std::slice::from_raw_parts(x.add(t * k), k);
                *out.add(t * out_stride + r) = tail(wt, &wall[r * k * es..], x, full, hsum256(*v));
            }
        }
    }

    /// `m & *p` (32 bytes at `p`, unaligned) as one `vpand` with a memory operand. Written as
    /// assembly so LLVM cannot merge it with the load of the same bytes for the even weights, which
    /// kept that vector alive across the even half and spilled the accumulators to the stack (the
    /// tile ran at 29 instead of 43 tok/s).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn and_mem(m: __m256i, p: *const u8) -> __m256i {
        let out: __m256i;
        std::arch::asm!(
            "vpand {o}, {m}, ymmword ptr [{p}]",
            o = lateout(ymm_reg) out,
            m = in(ymm_reg) m,
            p = in(reg) p,
            options(pure, readonly, nostack, preserves_flags)
        );
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn widen_avx2(wt: WeightType, w: *const u8, out: &mut [f32]) {
        let n = out.len();
        let full = n / 8 * 8;
        let mut i = 0;
        while i < full {
            _mm256_storeu_ps(out.as_mut_ptr().add(i), load8(wt, w.add(i * wt.size())));
            i += 8;
        }
        let src = std::slice::from_raw_parts(w, n * wt.size());
        for (j, o) in out.iter_mut().enumerate().skip(full) {
            *o = elem(wt, src, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(wt: WeightType, v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| match wt {
                WeightType::F32 => x.to_le_bytes().to_vec(),
                WeightType::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
                WeightType::Bf16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
            })
            .collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// The instruction sets this CPU can run: the detected one and every lower one.
    fn runnable() -> Vec<Isa> {
        match crate::isa::detect() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2, Isa::Portable],
            Isa::Avx2 => vec![Isa::Avx2, Isa::Portable],
            Isa::Portable => vec![Isa::Portable],
        }
    }

    /// Every tile size of every runnable ISA (the decode tiles of one activation row too) against an
    /// f64 reference; and each output bit for bit the same whatever tile it is computed in (so the
    /// split of rows into tiles cannot change it).
    #[test]
    fn tiles_match_the_reference() {
        const STRIDE: usize = 16;
        for isa in runnable() {
            let (mt, mr) = shape_on(isa);
            let dr = rows_on(isa, 1);
            let rows = mr.max(dr);
            for wt in [WeightType::F32, WeightType::F16, WeightType::Bf16] {
                for k in [16, 40, 64, 67] {
                    let w = encode(wt, &values(rows * k, 3));
                    let x = values(mt * k, 9);
                    let xl = layout_on(isa, wt, &x, k);
                    let row = |r: usize| &w[r * k * wt.size()..(r + 1) * k * wt.size()];
                    let mut single = vec![0f32; mt * rows];
                    for t in 0..mt {
                        for r in 0..rows {
                            let xt = &xl[t * k..(t + 1) * k];
                            let o = &mut single[t * rows + r];
                            unsafe { tile_on(isa, wt, row(r), 1, xt, 1, o, rows) };
                        }
                    }
                    let shapes = [
                        (mt, mr),
                        (mt - 1, mr),
                        (mt, mr - 1),
                        (1, mr),
                        (1, dr),
                        (1, dr - 1),
                    ];
                    for (tn, rn) in shapes {
                        let mut out = vec![0f32; tn * STRIDE];
                        let wb = &w[..rn * k * wt.size()];
                        let xs = &xl[..tn * k];
                        unsafe { tile_on(isa, wt, wb, rn, xs, tn, out.as_mut_ptr(), STRIDE) };
                        for t in 0..tn {
                            for r in 0..rn {
                                let want: f64 = (0..k)
                                    .map(|i| elem(wt, &w, r * k + i) as f64 * x[t * k + i] as f64)
                                    .sum();
                                let got = out[t * STRIDE + r];
                                let at = format!("{isa:?} {wt:?} k {k} tile {tn}x{rn} t {t} r {r}");
                                assert!((got as f64 - want).abs() < 1e-4, "{at}");
                                assert_eq!(got.to_bits(), single[t * rows + r].to_bits(), "{at}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every path (the detected one and the portable one) against a plain f64 reference, for
    /// lengths that exercise the vector body and the scalar tail, on a misaligned weight slice.
    #[test]
    fn dot_and_widen_match_the_reference() {
        for wt in [WeightType::F32, WeightType::F16, WeightType::Bf16] {
            for cols in [1, 7, 8, 31, 32, 33, 100, 257] {
                let wv = values(cols, 7);
                let mut bytes = vec![0u8];
                bytes.extend(encode(wt, &wv));
                let w = &bytes[1..];
                let exact: Vec<f32> = (0..cols).map(|i| elem(wt, w, i)).collect();
                let xs: Vec<Vec<f32>> = (0..4).map(|r| values(cols, 100 + r)).collect();
                for r in 1..=MAX_ROWS {
                    let refs: Vec<&[f32]> = xs[..r].iter().map(|x| x.as_slice()).collect();
                    let mut out = vec![0f32; r];
                    dot_row(wt, w, &refs, &mut out);
                    let mut port = vec![0f32; r];
                    match r {
                        1 => port.copy_from_slice(&portable::dot::<1>(wt, w, &refs)),
                        2 => port.copy_from_slice(&portable::dot::<2>(wt, w, &refs)),
                        3 => port.copy_from_slice(&portable::dot::<3>(wt, w, &refs)),
                        _ => port.copy_from_slice(&portable::dot::<4>(wt, w, &refs)),
                    }
                    for k in 0..r {
                        let want: f64 = exact
                            .iter()
                            .zip(&xs[k])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum();
                        for got in [out[k], port[k]] {
                            assert!(
                                (got as f64 - want).abs() < 1e-4 * (1.0 + cols as f64).sqrt(),
                                "{wt:?} cols {cols} rows {r}: {got} vs {want}"
                            );
                        }
                    }
                }
                let mut wide = vec![0f32; cols];
                widen(wt, w, &mut wide);
                assert_eq!(wide, exact, "{wt:?} cols {cols}");
                let mut wide = vec![0f32; cols];
                portable::widen(wt, w, &mut wide);
                assert_eq!(wide, exact, "{wt:?} cols {cols} portable");
            }
        }
    }
}
