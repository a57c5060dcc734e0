//! f32 vectors whose lanes each run one scalar computation: the k-quant searches give every lane
//! its own sub-block, so a lane performs exactly the operations the scalar port performs, in the
//! same order, and its result is bit-identical. Only IEEE operations that SIMD and scalar code
//! round alike are offered (add, sub, mul, div, sqrt; abs and selects are exact); no fused
//! multiply-add.
//!
//! The vector types are module-private and only ever built inside the `#[target_feature]` entry
//! points of `kquants`, which are called after [`crate::isa::isa`] detected the feature.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One f32 per lane, with the operations the searches need. Methods are `inline(always)` so that
/// they compile inside the caller's `#[target_feature]` function.
pub(super) trait Lanes: Copy {
    /// Lanes per vector.
    const N: usize;
    type Mask: Copy;
    fn splat(v: f32) -> Self;
    /// The first `N` values of `v`.
    fn load(v: &[f32]) -> Self;
    /// Into the first `N` values of `out`.
    fn store(self, out: &mut [f32]);
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    /// `nearest_int(self)` (the 1.5 * 2^23 trick of `quant::nearest_int`) clamped to
    /// `lo..=hi`, as f32.
    fn round_clamp(self, lo: i32, hi: i32) -> Self;
    /// Ordered comparisons (false on NaN), as the scalar `<` and `>`.
    fn lt(self, o: Self) -> Self::Mask;
    fn gt(self, o: Self) -> Self::Mask;
    /// Unordered not-equal (true on NaN), as the scalar `!=`.
    fn ne(self, o: Self) -> Self::Mask;
    fn and(a: Self::Mask, b: Self::Mask) -> Self::Mask;
    /// Per lane: `t` where `m`, else `f`.
    fn select(m: Self::Mask, t: Self, f: Self) -> Self;
}

/// 1.5 * 2^23: adding it leaves round-to-nearest-even of a small value in the low mantissa bits.
const MAGIC: f32 = 12582912.0;

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Avx512(__m512);

// SAFETY (all methods): values of `Avx512` exist only inside functions compiled with AVX-512F
// and reached after runtime detection (module docs).
#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    const N: usize = 16;
    type Mask = __mmask16;
    #[inline(always)]
    fn splat(v: f32) -> Self {
        Self(unsafe { _mm512_set1_ps(v) })
    }
    #[inline(always)]
    fn load(v: &[f32]) -> Self {
        assert!(v.len() >= Self::N);
        Self(unsafe { _mm512_loadu_ps(v.as_ptr()) })
    }
    #[inline(always)]
    fn store(self, out: &mut [f32]) {
        assert!(out.len() >= Self::N);
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Self(unsafe { _mm512_add_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Self(unsafe { _mm512_sub_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Self(unsafe { _mm512_mul_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        Self(unsafe { _mm512_div_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        Self(unsafe { _mm512_sqrt_ps(self.0) })
    }
    #[inline(always)]
    fn abs(self) -> Self {
        Self(unsafe { _mm512_abs_ps(self.0) })
    }
    #[inline(always)]
    fn round_clamp(self, lo: i32, hi: i32) -> Self {
        unsafe {
            let v = _mm512_castps_si512(_mm512_add_ps(self.0, _mm512_set1_ps(MAGIC)));
            let i = _mm512_sub_epi32(
                _mm512_and_si512(v, _mm512_set1_epi32(0x007f_ffff)),
                _mm512_set1_epi32(0x0040_0000),
            );
            let i = _mm512_min_epi32(
                _mm512_max_epi32(i, _mm512_set1_epi32(lo)),
                _mm512_set1_epi32(hi),
            );
            Self(_mm512_cvtepi32_ps(i))
        }
    }
    #[inline(always)]
    fn lt(self, o: Self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn gt(self, o: Self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn ne(self, o: Self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn and(a: __mmask16, b: __mmask16) -> __mmask16 {
        a & b
    }
    #[inline(always)]
    fn select(m: __mmask16, t: Self, f: Self) -> Self {
        Self(unsafe { _mm512_mask_blend_ps(m, f.0, t.0) })
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Avx2(__m256);

// SAFETY (all methods): values of `Avx2` exist only inside functions compiled with AVX2 and
// reached after runtime detection (module docs).
#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    const N: usize = 8;
    type Mask = __m256;
    #[inline(always)]
    fn splat(v: f32) -> Self {
        Self(unsafe { _mm256_set1_ps(v) })
    }
    #[inline(always)]
    fn load(v: &[f32]) -> Self {
        assert!(v.len() >= Self::N);
        Self(unsafe { _mm256_loadu_ps(v.as_ptr()) })
    }
    #[inline(always)]
    fn store(self, out: &mut [f32]) {
        assert!(out.len() >= Self::N);
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Self(unsafe { _mm256_add_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Self(unsafe { _mm256_sub_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Self(unsafe { _mm256_mul_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        Self(unsafe { _mm256_div_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        Self(unsafe { _mm256_sqrt_ps(self.0) })
    }
    #[inline(always)]
    fn abs(self) -> Self {
        Self(unsafe {
            _mm256_castsi256_ps(_mm256_and_si256(
                _mm256_castps_si256(self.0),
                _mm256_set1_epi32(0x7fff_ffff),
            ))
        })
    }
    #[inline(always)]
    fn round_clamp(self, lo: i32, hi: i32) -> Self {
        unsafe {
            let v = _mm256_castps_si256(_mm256_add_ps(self.0, _mm256_set1_ps(MAGIC)));
            let i = _mm256_sub_epi32(
                _mm256_and_si256(v, _mm256_set1_epi32(0x007f_ffff)),
                _mm256_set1_epi32(0x0040_0000),
            );
            let i = _mm256_min_epi32(
                _mm256_max_epi32(i, _mm256_set1_epi32(lo)),
                _mm256_set1_epi32(hi),
            );
            Self(_mm256_cvtepi32_ps(i))
        }
    }
    #[inline(always)]
    fn lt(self, o: Self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn gt(self, o: Self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn ne(self, o: Self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_NEQ_UQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn and(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_and_ps(a, b) }
    }
    #[inline(always)]
    fn select(m: __m256, t: Self, f: Self) -> Self {
        Self(unsafe { _mm256_blendv_ps(f.0, t.0, m) })
    }
}
