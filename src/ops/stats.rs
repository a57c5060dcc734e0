//! Value statistics of stored tensors: NaN/Inf counts and min/max/mean/std, computed at disk speed.
//!
//! Tensors are cut into [`CHUNK`]-sized pieces that rayon scans in parallel, each read with pread
//! into a per-thread buffer (the page cache holds the data, not our RSS). Inside a piece values are
//! widened to f32 in small blocks (bf16 is a shift, f16 goes through `half`'s SIMD path) and
//! summed in fixed-width lanes the compiler vectorises. Sums are taken relative to a per-piece
//! shift (its first finite value) so that tensors whose values cluster far from zero, like norm
//! weights near 1.0, keep their variance; pieces are merged with Chan's parallel formula in a fixed
//! order, so the numbers do not depend on thread timing.
use crate::formats::copy::{Source, CHUNK};
use crate::formats::DType;
use anyhow::Result;
use rayon::prelude::*;
use std::sync::Arc;

/// Values widened to f32 per block; small enough to stay in L1.
const BLOCK: usize = 4096;
/// Accumulator lanes; a multiple of every x86/ARM vector width for f32.
const LANES: usize = 16;

/// Statistics of the finite values of a tensor, plus counts of the non-finite ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stats {
    /// Finite values seen.
    pub count: u64,
    pub nan: u64,
    pub inf: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    m2: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            count: 0,
            nan: 0,
            inf: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
        }
    }
}

impl Stats {
    /// Population standard deviation of the finite values (numpy's default, ddof = 0).
    pub(crate) fn std(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            (self.m2 / self.count as f64).max(0.0).sqrt()
        }
    }

    pub(crate) fn non_finite(&self) -> u64 {
        self.nan + self.inf
    }

    /// Combine with the statistics of another part of the same tensor (Chan et al.).
    fn merge(&mut self, o: &Stats) {
        self.nan += o.nan;
        self.inf += o.inf;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            self.count = o.count;
            self.mean = o.mean;
            self.m2 = o.m2;
            return;
        }
        let (na, nb) = (self.count as f64, o.count as f64);
        let n = na + nb;
        let delta = o.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += o.m2 + delta * delta * na * nb / n;
        self.count += o.count;
    }
}

/// Sums of one block of values, relative to a shift; non-finite values excluded.
#[derive(Debug, Clone, Copy)]
struct BlockSums {
    finite: u64,
    s1: f64,
    s2: f64,
    min: f32,
    max: f32,
}

impl BlockSums {
    fn merge(&mut self, o: BlockSums) {
        self.finite += o.finite;
        self.s1 += o.s1;
        self.s2 += o.s2;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// Portable kernel (and the tails of the SIMD one). Lane sums stay short (BLOCK / LANES values
/// each) before they move to f64, which bounds f32 rounding error.
fn block_scalar(vals: &[f32], k: f32) -> BlockSums {
    let mut s1 = [0f32; LANES];
    let mut s2 = [0f32; LANES];
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut finite = 0u64;
    for (j, &x) in vals.iter().enumerate() {
        // False for NaN and for both infinities.
        if x.abs() < f32::INFINITY {
            let i = j % LANES;
            let d = x - k;
            s1[i] += d;
            s2[i] += d * d;
            lo[i] = lo[i].min(x);
            hi[i] = hi[i].max(x);
            finite += 1;
        }
    }
    BlockSums {
        finite,
        s1: s1.iter().map(|&v| v as f64).sum(),
        s2: s2.iter().map(|&v| v as f64).sum(),
        min: lo.iter().fold(f32::INFINITY, |m, &v| m.min(v)),
        max: hi.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
    }
}

/// SSE2 (every x86-64 CPU has it): the compiler does not vectorise the masked reductions by
/// itself, and scalar code runs at a fraction of disk speed.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use super::{block_scalar, BlockSums};
    use std::arch::x86_64::*;

    struct Lanes {
        s1: __m128,
        s2: __m128,
        lo: __m128,
        hi: __m128,
        /// Finite count per lane.
        fin: __m128i,
    }

    #[target_feature(enable = "sse2")]
    fn lanes(v: __m128) -> [f32; 4] {
        // SAFETY: same size, and every bit pattern is a valid f32.
        unsafe { std::mem::transmute::<__m128, [f32; 4]>(v) }
    }

    impl Lanes {
        #[target_feature(enable = "sse2")]
        fn new() -> Self {
            Self {
                s1: _mm_setzero_ps(),
                s2: _mm_setzero_ps(),
                lo: _mm_set1_ps(f32::INFINITY),
                hi: _mm_set1_ps(f32::NEG_INFINITY),
                fin: _mm_setzero_si128(),
            }
        }

        #[inline]
        #[target_feature(enable = "sse2")]
        fn add(&mut self, x: __m128, k: __m128) {
            let abs = _mm_castsi128_ps(_mm_set1_epi32(0x7fff_ffff));
            // All ones where finite: |x| < inf is false for NaN and both infinities.
            let m = _mm_cmplt_ps(_mm_and_ps(x, abs), _mm_set1_ps(f32::INFINITY));
            let d = _mm_and_ps(_mm_sub_ps(x, k), m);
            self.s1 = _mm_add_ps(self.s1, d);
            self.s2 = _mm_add_ps(self.s2, _mm_mul_ps(d, d));
            // Non-finite lanes become NaN, which minps/maxps drop when it is the first operand.
            let all = _mm_castsi128_ps(_mm_set1_epi32(-1));
            let xn = _mm_or_ps(x, _mm_andnot_ps(m, all));
            self.lo = _mm_min_ps(xn, self.lo);
            self.hi = _mm_max_ps(xn, self.hi);
            self.fin = _mm_sub_epi32(self.fin, _mm_castps_si128(m));
        }

        #[target_feature(enable = "sse2")]
        fn finish(self) -> BlockSums {
            // SAFETY: same size, every bit pattern is a valid u32.
            let fin = unsafe { std::mem::transmute::<__m128i, [u32; 4]>(self.fin) };
            BlockSums {
                finite: fin.iter().map(|&c| c as u64).sum(),
                s1: lanes(self.s1).iter().map(|&v| v as f64).sum(),
                s2: lanes(self.s2).iter().map(|&v| v as f64).sum(),
                min: lanes(self.lo).iter().fold(f32::INFINITY, |m, &v| m.min(v)),
                max: lanes(self.hi)
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
            }
        }
    }

    /// bf16 values: the widening to f32 is an interleave with zeros (a 16-bit shift left).
    #[target_feature(enable = "sse2")]
    pub(super) fn bf16(bytes: &[u8], k: f32) -> BlockSums {
        let kv = _mm_set1_ps(k);
        let zero = _mm_setzero_si128();
        let (mut a, mut b) = (Lanes::new(), Lanes::new());
        let chunks = bytes.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            // SAFETY: `c` holds 16 readable bytes; loadu has no alignment requirement.
            let v = unsafe { _mm_loadu_si128(c.as_ptr().cast()) };
            a.add(_mm_castsi128_ps(_mm_unpacklo_epi16(zero, v)), kv);
            b.add(_mm_castsi128_ps(_mm_unpackhi_epi16(zero, v)), kv);
        }
        let mut out = a.finish();
        out.merge(b.finish());
        let tail: Vec<f32> = rest
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect();
        out.merge(block_scalar(&tail, k));
        out
    }

    /// f32 values, little-endian bytes.
    #[target_feature(enable = "sse2")]
    pub(super) fn f32(bytes: &[u8], k: f32) -> BlockSums {
        let kv = _mm_set1_ps(k);
        let (mut a, mut b) = (Lanes::new(), Lanes::new());
        let chunks = bytes.chunks_exact(32);
        let rest = chunks.remainder();
        for c in chunks {
            // SAFETY: `c` holds 32 readable bytes; loadu has no alignment requirement.
            let (x, y) = unsafe {
                (
                    _mm_loadu_ps(c.as_ptr().cast()),
                    _mm_loadu_ps(c.as_ptr().add(16).cast()),
                )
            };
            a.add(x, kv);
            b.add(y, kv);
        }
        let mut out = a.finish();
        out.merge(b.finish());
        let tail: Vec<f32> = rest
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.merge(block_scalar(&tail, k));
        out
    }
}

/// Sums of one block (at most BLOCK elements of a float dtype other than F64).
fn block_sums(dtype: DType, bytes: &[u8], k: f32, tmp: &mut [f32; BLOCK]) -> BlockSums {
    // SAFETY (the unsafe calls): SSE2 is part of the x86-64 baseline, every such CPU has it.
    #[cfg(target_arch = "x86_64")]
    match dtype {
        DType::BF16 => return unsafe { sse2::bf16(bytes, k) },
        DType::F32 => return unsafe { sse2::f32(bytes, k) },
        _ => {
            let n = widen(dtype, bytes, tmp);
            return unsafe { sse2::f32(bytemuck::cast_slice(&tmp[..n]), k) };
        }
    }
    #[allow(unreachable_code)]
    {
        let n = widen(dtype, bytes, tmp);
        block_scalar(&tmp[..n], k)
    }
}

/// Sums of one piece, relative to `shift` (its first finite value, so that values clustered far
/// from zero keep their variance).
struct Acc {
    shift: f32,
    elements: u64,
    sums: BlockSums,
}

impl Acc {
    fn finish(self, nan: u64, inf: u64) -> Stats {
        let b = self.sums;
        if b.finite == 0 {
            return Stats {
                nan,
                inf,
                ..Stats::default()
            };
        }
        let n = b.finite as f64;
        Stats {
            count: b.finite,
            nan,
            inf,
            min: b.min as f64,
            max: b.max as f64,
            mean: self.shift as f64 + b.s1 / n,
            m2: (b.s2 - b.s1 * b.s1 / n).max(0.0),
        }
    }
}

/// Split non-finite values into NaN and Inf; only called on pieces that have any.
fn count_nan_inf(dtype: DType, bytes: &[u8]) -> (u64, u64) {
    let (mut nan, mut inf) = (0u64, 0u64);
    let mut tally = |is_nan: bool, is_inf: bool| {
        nan += u64::from(is_nan);
        inf += u64::from(is_inf);
    };
    match dtype {
        DType::BF16 | DType::F16 => {
            let (exp, mant) = if dtype == DType::BF16 {
                (0x7f80u16, 0x007fu16)
            } else {
                (0x7c00, 0x03ff)
            };
            for c in bytes.chunks_exact(2) {
                let b = u16::from_le_bytes([c[0], c[1]]);
                let all_ones = b & exp == exp;
                tally(all_ones && b & mant != 0, all_ones && b & mant == 0);
            }
        }
        DType::F32 => {
            for c in bytes.chunks_exact(4) {
                let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                tally(x.is_nan(), x.is_infinite());
            }
        }
        DType::F64 => {
            for c in bytes.chunks_exact(8) {
                let x = f64::from_le_bytes(c.try_into().expect("chunks of 8"));
                tally(x.is_nan(), x.is_infinite());
            }
        }
        _ => {}
    }
    (nan, inf)
}

/// Widen `bytes` (whole elements of `dtype`) into `out`, returning how many values were written.
fn widen(dtype: DType, bytes: &[u8], out: &mut [f32; BLOCK]) -> usize {
    match dtype {
        DType::BF16 => {
            let n = bytes.len() / 2;
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
            n
        }
        DType::F16 => {
            use half::slice::HalfFloatSliceExt;
            let n = bytes.len() / 2;
            let mut h = [half::f16::ZERO; BLOCK];
            for (o, c) in h.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
            }
            h[..n].convert_to_f32_slice(&mut out[..n]);
            n
        }
        DType::F32 => {
            let n = bytes.len() / 4;
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            n
        }
        _ => 0,
    }
}

/// Statistics of one run of elements (`bytes.len()` a multiple of the element size).
/// None for non-float dtypes. fp8 values count as stored (scale 1); see [`scan_fp8`].
fn scan_bytes(dtype: DType, bytes: &[u8]) -> Option<Stats> {
    if dtype.is_fp8() {
        return scan_fp8(dtype, bytes, 0, None);
    }
    if !dtype.is_float() {
        return None;
    }
    if dtype == DType::F64 {
        // Rare in checkpoints; plain f64 arithmetic is exact enough and fast enough.
        let mut st = Stats::default();
        for c in bytes.chunks_exact(8) {
            let x = f64::from_le_bytes(c.try_into().expect("chunks of 8"));
            if x.is_nan() {
                st.nan += 1;
            } else if x.is_infinite() {
                st.inf += 1;
            } else {
                st.merge(&Stats {
                    count: 1,
                    nan: 0,
                    inf: 0,
                    min: x,
                    max: x,
                    mean: x,
                    m2: 0.0,
                });
            }
        }
        return Some(st);
    }
    let es = dtype.size();
    let mut tmp = [0f32; BLOCK];
    let mut acc = Acc {
        shift: 0.0,
        elements: 0,
        sums: BlockSums {
            finite: 0,
            s1: 0.0,
            s2: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        },
    };
    for block in bytes.chunks(BLOCK * es) {
        if acc.sums.finite == 0 {
            // Anchor the shift on the first finite value (no finite value so far means no sums).
            let n = widen(dtype, block, &mut tmp);
            if let Some(&f) = tmp[..n].iter().find(|x| x.is_finite()) {
                acc.shift = f;
            }
        }
        acc.elements += (block.len() / es) as u64;
        let b = block_sums(dtype, block, acc.shift, &mut tmp);
        acc.sums.merge(b);
    }
    let non_finite = acc.elements - acc.sums.finite;
    let (nan, inf) = if non_finite > 0 {
        count_nan_inf(dtype, bytes)
    } else {
        (0, 0)
    };
    Some(acc.finish(nan, inf))
}

/// One scale per row of an fp8 matrix (Meta's fp8 release): value = stored * scale[row].
#[derive(Debug, Clone)]
pub(crate) struct RowScales {
    /// Elements per row.
    pub row_len: usize,
    pub scales: Vec<f32>,
}

/// Dequantized statistics of fp8 bytes whose first element is element `first` of its tensor:
/// each value widened to f32 and multiplied by its row's scale in f32, as llama-models computes
/// `w.float() * scale[:, None]`. A row past the scales (the caller checked their count) gets NaN.
fn scan_fp8(dtype: DType, bytes: &[u8], first: usize, scales: Option<&RowScales>) -> Option<Stats> {
    let table: Vec<f32> = (0..=255u8)
        .map(|b| crate::checkpoint::fp8::to_f32(dtype, b))
        .collect();
    let vals: Vec<f32> = match scales {
        None => bytes.iter().map(|&b| table[b as usize]).collect(),
        Some(rs) => bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let row = (first + i) / rs.row_len.max(1);
                table[b as usize] * rs.scales.get(row).copied().unwrap_or(f32::NAN)
            })
            .collect(),
    };
    scan_bytes(DType::F32, bytemuck::cast_slice(&vals))
}

/// A stored tensor to scan: `nbytes` bytes at `offset` of `src`.
#[derive(Debug, Clone)]
pub(crate) struct ScanItem {
    pub src: Arc<Source>,
    pub offset: u64,
    pub nbytes: u64,
    pub dtype: DType,
    /// fp8 weights: their row scales, so that the values scanned are the dequantized ones.
    pub scales: Option<Arc<RowScales>>,
}

/// Scan every item in parallel on `jobs` threads (at most the cores and the pieces: the scan is
/// compute-bound, and `--jobs 20000` must not start 20000 threads); one result per item, in
/// order. `progress` gets the byte count of each piece scanned.
pub(crate) fn scan_all(
    items: &[ScanItem],
    jobs: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Result<Stats>>> {
    // Cut every tensor into pieces of at most CHUNK bytes, on element boundaries.
    let mut pieces: Vec<(usize, u64, usize)> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let es = it.dtype.size() as u64;
        let step = (CHUNK as u64 / es) * es;
        let mut off = 0u64;
        while off < it.nbytes {
            let n = step.min(it.nbytes - off);
            pieces.push((i, it.offset + off, n as usize));
            off += n;
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.min(cores).min(pieces.len()).max(1))
        .build()?;
    let results: Vec<Result<Stats>> = pool.install(|| {
        pieces
            .par_iter()
            .map_init(Vec::<u8>::new, |buf, &(i, offset, n)| {
                let it = &items[i];
                buf.resize(n, 0);
                it.src.read_exact_at(&mut buf[..n], offset)?;
                progress(n as u64);
                let stats = match &it.scales {
                    Some(rs) => {
                        let first = ((offset - it.offset) / it.dtype.size() as u64) as usize;
                        scan_fp8(it.dtype, &buf[..n], first, Some(rs))
                    }
                    None => scan_bytes(it.dtype, &buf[..n]),
                };
                Ok(stats.unwrap_or_default())
            })
            .collect()
    });
    let mut out: Vec<Result<Stats>> = items.iter().map(|_| Ok(Stats::default())).collect();
    for (&(i, _, _), r) in pieces.iter().zip(results) {
        match (&mut out[i], r) {
            (Ok(acc), Ok(s)) => acc.merge(&s),
            (slot @ Ok(_), Err(e)) => *slot = Err(e),
            (Err(_), _) => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(vals: &[f64]) -> (u64, f64, f64, f64, f64) {
        let f: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
        let n = f.len() as f64;
        let mean = f.iter().sum::<f64>() / n;
        let var = f.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let min = f.iter().copied().fold(f64::INFINITY, f64::min);
        let max = f.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (f.len() as u64, min, max, mean, var.sqrt())
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-12)
    }

    #[test]
    fn bf16_stats_match_naive_including_offset_values() {
        // Values near 1.0 with a small spread, like a norm weight, plus NaN and Inf.
        let mut vals: Vec<half::bf16> = (0..10_001)
            .map(|i| half::bf16::from_f32(1.0 + ((i * 37 % 101) as f32 - 50.0) * 1e-3))
            .collect();
        vals[17] = half::bf16::NAN;
        vals[4000] = half::bf16::INFINITY;
        vals[9999] = half::bf16::NEG_INFINITY;
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let s = scan_bytes(DType::BF16, &bytes).unwrap();
        let wide: Vec<f64> = vals.iter().map(|v| v.to_f64()).collect();
        let (n, min, max, mean, std) = naive(&wide);
        assert_eq!((s.count, s.nan, s.inf), (n, 1, 2));
        assert_eq!((s.min, s.max), (min, max));
        assert!(close(s.mean, mean, 1e-9), "{} vs {mean}", s.mean);
        assert!(close(s.std(), std, 1e-4), "{} vs {std}", s.std());
    }

    #[test]
    fn f16_f32_f64_and_pieces_merge() {
        let vals: Vec<f32> = (0..9000)
            .map(|i| ((i as f32) * 0.731).sin() * 3.0)
            .collect();
        let wide: Vec<f64> = vals
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f64())
            .collect();
        let (n, min, max, mean, std) = naive(&wide);
        let f16: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        // Whole, and as two pieces merged.
        let whole = scan_bytes(DType::F16, &f16).unwrap();
        let mut merged = scan_bytes(DType::F16, &f16[..5000]).unwrap();
        merged.merge(&scan_bytes(DType::F16, &f16[5000..]).unwrap());
        for s in [whole, merged] {
            assert_eq!((s.count, s.min, s.max), (n, min, max));
            // The mean is near zero here, so compare it on the scale of the spread.
            assert!((s.mean - mean).abs() < 1e-6 * std, "{} vs {mean}", s.mean);
            assert!(close(s.std(), std, 1e-5), "{} vs {std}", s.std());
        }
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let s = scan_bytes(DType::F32, &f32b).unwrap();
        assert_eq!(s.count, 9000);
        let f64b: Vec<u8> = [1.0f64, f64::NAN, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = scan_bytes(DType::F64, &f64b).unwrap();
        assert_eq!((s.count, s.nan, s.mean, s.std()), (2, 1, 2.0, 1.0));
        assert!(scan_bytes(DType::I64, &[0; 8]).is_none());
    }

    #[test]
    fn fp8_values_are_dequantized_per_row() {
        // Two rows of two e4m3fn values: [1, 2] * 0.5 and [-1, 448] * 2.
        let bytes = [0x38u8, 0x40, 0xb8, 0x7e];
        let rs = RowScales {
            row_len: 2,
            scales: vec![0.5, 2.0],
        };
        let s = scan_fp8(DType::F8E4M3, &bytes, 0, Some(&rs)).unwrap();
        assert_eq!((s.count, s.min, s.max), (4, -2.0, 896.0));
        assert_eq!(s.mean, (0.5 + 1.0 - 2.0 + 896.0) / 4.0);
        // A piece starting in the second row uses the second row's scale.
        let s = scan_fp8(DType::F8E4M3, &bytes[2..], 2, Some(&rs)).unwrap();
        assert_eq!((s.min, s.max), (-2.0, 896.0));
        // Without scales the stored values; the NaN pattern is counted.
        let s = scan_bytes(DType::F8E4M3, &[0x38, 0x7f]).unwrap();
        assert_eq!((s.count, s.nan, s.max), (1, 1, 1.0));
    }

    #[test]
    fn all_non_finite_has_no_range() {
        let bytes: Vec<u8> = [half::bf16::NAN; 5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = scan_bytes(DType::BF16, &bytes).unwrap();
        assert_eq!((s.count, s.nan, s.inf), (0, 5, 0));
        assert!(s.min.is_infinite() && s.std().is_nan());
    }
}
