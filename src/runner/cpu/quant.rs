//! GGML block-quantized weights (the types of GGUF files) on the CPU, computed the way ggml
//! computes them: each activation row is quantized once per call to the block type the weight
//! type pairs with (Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the k-quants), and every
//! output element is one integer dot product of a weight row with an activation row, scaled per
//! block. So results track llama.cpp's rather than those of the dequantized f32 model.
//!
//! Q8_0, Q4_K and Q6_K weights go through our own kernels ([`super::qdot`]); the other types
//! through candle's `k_quants` (ports of ggml's block layouts, quantizers and dot products, AVX2+FMA
//! picked at run time on x86-64, NEON on aarch64, a portable fallback). Weight rows are read in
//! place from the file's memory map: a block is plain bytes (`u8`/`i8` arrays and f16 scales,
//! alignment 2), so a row of blocks is a slice view of the map.
use super::{kernels, qdot};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use candle_core::quantized::GgmlType as Block;
use rayon::prelude::*;

/// A block-quantized weight type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quant {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// The activation block type a weight type is dotted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActKind {
    Q8_0,
    Q8_1,
    Q8K,
}

impl Quant {
    pub const ALL: [Quant; 10] = [
        Quant::Q4_0,
        Quant::Q4_1,
        Quant::Q5_0,
        Quant::Q5_1,
        Quant::Q8_0,
        Quant::Q2K,
        Quant::Q3K,
        Quant::Q4K,
        Quant::Q5K,
        Quant::Q6K,
    ];

    /// The type by its GGML name ("Q4_K").
    pub fn from_name(name: &str) -> Option<Quant> {
        Self::ALL.into_iter().find(|q| q.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Quant::Q4_0 => "Q4_0",
            Quant::Q4_1 => "Q4_1",
            Quant::Q5_0 => "Q5_0",
            Quant::Q5_1 => "Q5_1",
            Quant::Q8_0 => "Q8_0",
            Quant::Q2K => "Q2_K",
            Quant::Q3K => "Q3_K",
            Quant::Q4K => "Q4_K",
            Quant::Q5K => "Q5_K",
            Quant::Q6K => "Q6_K",
        }
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        fn of<T: Block>() -> (usize, usize) {
            (T::BLCK_SIZE, std::mem::size_of::<T>())
        }
        match self {
            Quant::Q4_0 => of::<BlockQ4_0>(),
            Quant::Q4_1 => of::<BlockQ4_1>(),
            Quant::Q5_0 => of::<BlockQ5_0>(),
            Quant::Q5_1 => of::<BlockQ5_1>(),
            Quant::Q8_0 => of::<BlockQ8_0>(),
            Quant::Q2K => of::<BlockQ2K>(),
            Quant::Q3K => of::<BlockQ3K>(),
            Quant::Q4K => of::<BlockQ4K>(),
            Quant::Q5K => of::<BlockQ5K>(),
            Quant::Q6K => of::<BlockQ6K>(),
        }
    }

    /// Bytes of a row of `cols` values, or None when `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let (n, size) = self.block();
        cols.is_multiple_of(n).then_some(cols / n * size)
    }

    /// Our own kernel for this type, if there is one ([`qdot`]).
    fn kernel(self) -> Option<qdot::Kind> {
        match self {
            Quant::Q8_0 => Some(qdot::Kind::Q8_0),
            Quant::Q4K => Some(qdot::Kind::Q4K),
            Quant::Q6K => Some(qdot::Kind::Q6K),
            _ => None,
        }
    }

    fn act(self) -> ActKind {
        match self {
            Quant::Q4_0 | Quant::Q5_0 | Quant::Q8_0 => ActKind::Q8_0,
            Quant::Q4_1 | Quant::Q5_1 => ActKind::Q8_1,
            _ => ActKind::Q8K,
        }
    }
}

/// Calls `$f::<Block type of q>($args)`.
macro_rules! by_type {
    ($q:expr, $f:ident ( $($a:expr),* )) => {
        match $q {
            Quant::Q4_0 => $f::<BlockQ4_0>($($a),*),
            Quant::Q4_1 => $f::<BlockQ4_1>($($a),*),
            Quant::Q5_0 => $f::<BlockQ5_0>($($a),*),
            Quant::Q5_1 => $f::<BlockQ5_1>($($a),*),
            Quant::Q8_0 => $f::<BlockQ8_0>($($a),*),
            Quant::Q2K => $f::<BlockQ2K>($($a),*),
            Quant::Q3K => $f::<BlockQ3K>($($a),*),
            Quant::Q4K => $f::<BlockQ4K>($($a),*),
            Quant::Q5K => $f::<BlockQ5K>($($a),*),
            Quant::Q6K => $f::<BlockQ6K>($($a),*),
        }
    };
}

/// Whether `bytes` can be viewed as blocks of `q` (their f16 fields need 2-byte alignment).
pub fn aligned(q: Quant, bytes: &[u8]) -> bool {
    fn ok<T: Block>(b: &[u8]) -> bool {
        (b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
            && b.len().is_multiple_of(std::mem::size_of::<T>())
    }
    by_type!(q, ok(bytes))
}

/// `bytes` as blocks of `T`.
fn blocks<T: Block>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    assert!(
        (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
            && bytes.len().is_multiple_of(size),
        "quantized rows must be whole, aligned blocks"
    );
    // SAFETY: every GGML block type is a repr(C) struct of integer arrays and f16 values, for which
    // any bit pattern is valid; length and alignment were checked above.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) }
}

/// Dequantize whole rows (`bytes`) into `out`.
pub fn dequantize(q: Quant, bytes: &[u8], out: &mut [f32]) {
    fn go<T: Block>(b: &[u8], out: &mut [f32]) {
        let bl = blocks::<T>(b);
        assert_eq!(bl.len() * T::BLCK_SIZE, out.len(), "dequantize: lengths");
        T::to_float(bl, out);
    }
    by_type!(q, go(bytes, out))
}

/// Activation rows quantized for the weight types of one linear layer.
pub struct Acts {
    cols: usize,
    rows: usize,
    q8_0: Vec<BlockQ8_0>,
    q8_1: Vec<BlockQ8_1>,
    q8k: Vec<BlockQ8K>,
    /// The rows regrouped for the panel kernels of Q4_K and Q8_0, where they serve them.
    q8k_panel: Option<Vec<u8>>,
    q8_0_panel: Option<Vec<u8>>,
}

impl Acts {
    /// Quantize the rows of `x` (each `cols` long) for every type in `types`.
    pub fn new(x: &[f32], cols: usize, types: impl IntoIterator<Item = Quant>) -> Acts {
        let mut a = Acts {
            cols,
            rows: x.len() / cols.max(1),
            q8_0: Vec::new(),
            q8_1: Vec::new(),
            q8k: Vec::new(),
            q8k_panel: None,
            q8_0_panel: None,
        };
        let types: Vec<Quant> = types.into_iter().collect();
        let kinds: Vec<ActKind> = types.iter().map(|q| q.act()).collect();
        if kinds.contains(&ActKind::Q8_0) {
            a.q8_0 = quantize_rows(x, cols, ActKind::Q8_0);
            if types.contains(&Quant::Q8_0) {
                a.q8_0_panel = qdot::x_panel(qdot::Kind::Q8_0, a.bytes_for(Quant::Q8_0), a.rows);
            }
        }
        if kinds.contains(&ActKind::Q8_1) {
            a.q8_1 = quantize_rows(x, cols, ActKind::Q8_1);
        }
        if kinds.contains(&ActKind::Q8K) {
            a.q8k = quantize_rows(x, cols, ActKind::Q8K);
            if types.contains(&Quant::Q4K) {
                a.q8k_panel = qdot::x_panel(qdot::Kind::Q4K, a.bytes_for(Quant::Q4K), a.rows);
            }
        }
        a
    }

    /// The rows quantized for weight type `q`, as bytes.
    fn bytes_for(&self, q: Quant) -> &[u8] {
        fn raw<T>(v: &[T]) -> &[u8] {
            // SAFETY: the blocks are plain bytes (see `blocks`), read as such.
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
        }
        match q.act() {
            ActKind::Q8_0 => raw(&self.q8_0),
            ActKind::Q8_1 => raw(&self.q8_1),
            ActKind::Q8K => raw(&self.q8k),
        }
    }

    /// The rows as blocks of `T`, the vec-dot type of some weight type.
    fn rows<T: 'static>(&self) -> &[T] {
        let any: &dyn std::any::Any =
            if std::any::TypeId::of::<T>() == std::any::TypeId::of::<BlockQ8_0>() {
                &self.q8_0
            } else if std::any::TypeId::of::<T>() == std::any::TypeId::of::<BlockQ8_1>() {
                &self.q8_1
            } else {
                &self.q8k
            };
        any.downcast_ref::<Vec<T>>().expect("activation block type")
    }
}

/// Rows of `x` quantized to activation blocks `T` (of kind `kind`).
fn quantize_rows<T: Block>(x: &[f32], cols: usize, kind: ActKind) -> Vec<T> {
    let n = T::BLCK_SIZE;
    let mut out = vec![T::zeros(); x.len() / n];
    let size = std::mem::size_of::<T>();
    // SAFETY: the blocks are plain bytes (see `blocks`), written as such.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * size) };
    let row_bytes = cols / n * size;
    let simd = cfg!(target_arch = "x86_64") && kernels::isa() != kernels::Isa::Portable;
    bytes
        .par_chunks_mut(row_bytes.max(1))
        .zip(x.par_chunks(cols))
        .for_each(|(o, x)| {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: AVX2 and FMA are present whenever the ISA is not the portable one.
                return unsafe { quantize_row_avx2(o, x, size, n, kind) };
            }
            let _ = simd;
            quantize_row(o, x, size, n, kind)
        });
    out
}

/// One row, block by block (blocks of `size` bytes, `n` values). The block quantizers are called
/// directly, not through a closure: a closure's call shim is not inlined into the AVX2 copy below,
/// which left every value's rounding a call to `rintf` (2% of a decode).
#[inline(always)]
fn quantize_row(o: &mut [u8], x: &[f32], size: usize, n: usize, kind: ActKind) {
    for (ob, xb) in o.chunks_exact_mut(size).zip(x.chunks_exact(n)) {
        match kind {
            ActKind::Q8_0 => q8_block(xb, ob, false),
            ActKind::Q8_1 => q8_block(xb, ob, true),
            ActKind::Q8K => q8k_block(xb, ob),
        }
    }
}

/// [`quantize_row`] compiled for AVX2: `round_ties_even` becomes one instruction instead of a call
/// to libm's `rintf`, and the loops vectorize (the activation quantizers took 8% of a prefill).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(o: &mut [u8], x: &[f32], size: usize, n: usize, kind: ActKind) {
    quantize_row(o, x, size, n, kind)
}

/// ggml's Q8_0 / Q8_1 activation block as llama.cpp computes it on x86 (and the same on every other
/// path up to rounding ties): d = max|x| / 127 stored as f16, q = round-half-even(x * (127 / max|x|));
/// Q8_1 also stores s = f16(d * Σq) before the quants. candle's own quantizer differs in the last
/// bit of some products (1/d instead of 127/max) and computes s in f16, which moved greedy choices.
#[inline(always)]
fn q8_block(x: &[f32], out: &mut [u8], with_sum: bool) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    let qs_at = if with_sum { 4 } else { 2 };
    let mut sum = 0i32;
    for (q, v) in out[qs_at..].iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i32;
        sum += r;
        *q = r as i8 as u8;
    }
    if with_sum {
        out[2..4].copy_from_slice(&half::f16::from_f32(d * sum as f32).to_le_bytes());
    }
}

/// ggml's Q8_K block (`quantize_row_q8_K_ref`, which llama.cpp runs on x86): the value of largest
/// magnitude maps to -127, q = nearest_int(-127 / max * x) (ties to even), f32 d = 1 / scale, and
/// the sums of each 16 quants.
#[inline(always)]
fn q8k_block(x: &[f32], out: &mut [u8]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    out.fill(0);
    if amax == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    let (qs, sums) = out[4..].split_at_mut(x.len());
    for (q, v) in qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8 as u8;
    }
    for (j, s) in sums.chunks_exact_mut(2).enumerate() {
        let sum: i32 = qs[j * 16..j * 16 + 16]
            .iter()
            .map(|&q| q as i8 as i32)
            .sum();
        s.copy_from_slice(&(sum as i16).to_le_bytes());
    }
    out[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

/// Activation rows per inner tile of [`dot_block`]: their quantized blocks stay in L2 while the
/// weight rows of the block pass over them.
const ACT_TILE: usize = 16;

/// `res[j * t + i] = w_j · x_i` for the `rn` weight rows in `w` and every activation row of `acts`
/// (`t` of them): our own kernels ([`super::qdot`]) where the type has one, else candle's.
pub fn dot_block(q: Quant, w: &[u8], rn: usize, acts: &Acts, res: &mut [f32]) {
    match q.kernel() {
        Some(kind) => {
            let panel = match q {
                Quant::Q4K => acts.q8k_panel.as_deref(),
                Quant::Q8_0 => acts.q8_0_panel.as_deref(),
                _ => None,
            };
            qdot::dot_block(kind, w, rn, acts.bytes_for(q), acts.rows, panel, res)
        }
        None => candle_dot_block(q, w, rn, acts, res),
    }
}

/// [`dot_block`] with candle's `vec_dot`, one call per (weight row, activation row).
fn candle_dot_block(q: Quant, w: &[u8], rn: usize, acts: &Acts, res: &mut [f32]) {
    fn go<T: Block>(w: &[u8], rn: usize, acts: &Acts, res: &mut [f32])
    where
        T::VecDotType: 'static,
    {
        let cols = acts.cols;
        let per_row = cols / T::BLCK_SIZE;
        let w = blocks::<T>(w);
        let x = acts.rows::<T::VecDotType>();
        let act_per_row = cols / <T::VecDotType as Block>::BLCK_SIZE;
        let t = x.len() / act_per_row.max(1);
        assert!(w.len() == rn * per_row && res.len() == rn * t, "dot_block");
        for i0 in (0..t).step_by(ACT_TILE) {
            for (j, wr) in w.chunks_exact(per_row).enumerate() {
                for i in i0..(i0 + ACT_TILE).min(t) {
                    let xr = &x[i * act_per_row..(i + 1) * act_per_row];
                    res[j * t + i] = T::vec_dot(cols, wr, xr);
                }
            }
        }
    }
    by_type!(q, go(w, rn, acts, res))
}

/// Quantize `x` (whole rows of `cols`) to `q` with candle's quantizer (ggml's reference one):
/// for building test files.
#[cfg(test)]
pub fn quantize(q: Quant, x: &[f32]) -> Vec<u8> {
    fn go<T: Block>(x: &[f32]) -> Vec<u8> {
        let mut out = vec![T::zeros(); x.len() / T::BLCK_SIZE];
        T::from_float(x, &mut out);
        let size = std::mem::size_of::<T>();
        // SAFETY: the blocks are plain bytes (see `blocks`), read back as such.
        unsafe { std::slice::from_raw_parts(out.as_ptr().cast::<u8>(), out.len() * size) }.to_vec()
    }
    by_type!(q, go(x))
}

#[cfg(test)]
mod tests {
    use super::qdot::{dot_block_on, Path};
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        }
    }

    /// Random bytes for `rows` rows of `cols` values of `q`, with every f16 scale set to a small value.
    fn random_blocks(q: Quant, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut r = rng(seed);
        let (_, size) = q.block();
        let mut bytes: Vec<u8> = (0..rows * q.row_bytes(cols).unwrap())
            .map(|_| r() as u8)
            .collect();
        let scale_at: &[usize] = match q {
            Quant::Q8_0 => &[0],
            Quant::Q4K => &[0, 2],
            _ => &[208],
        };
        for blk in bytes.chunks_exact_mut(size) {
            for &at in scale_at {
                let v = half::f16::from_f32((r() % 1000) as f32 / 50000.0 + 1e-4);
                blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        bytes
    }

    fn paths() -> Vec<Path> {
        let mut p = vec![Path::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                p.push(Path::Avx2);
            }
            if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                p.push(Path::Vnni);
            }
        }
        p
    }

    fn check(q: Quant, w: &[u8], rn: usize, x: &[f32], cols: usize) {
        let t = x.len() / cols;
        let acts = Acts::new(x, cols, [q]);
        let mut want = vec![0f32; rn * t];
        candle_dot_block(q, w, rn, &acts, &mut want);
        let mut port = vec![0f32; rn * t];
        let kind = q.kernel().unwrap();
        dot_block_on(Path::Portable, kind, w, rn, acts.bytes_for(q), t, &mut port);
        for (i, (a, b)) in port.iter().zip(&want).enumerate() {
            let tol = 1e-5 * (1.0 + b.abs()) + 1e-6 * cols as f32;
            assert!(
                (a - b).abs() <= tol,
                "{q:?} portable [{i}] {a} vs candle {b}"
            );
        }
        for p in paths() {
            let mut got = vec![f32::NAN; rn * t];
            dot_block_on(p, kind, w, rn, acts.bytes_for(q), t, &mut got);
            let same = got
                .iter()
                .zip(&port)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{q:?} {p:?} differs from portable: {got:?} vs {port:?}"
            );
        }
        // The dispatching entry (with the Q4_K panel kernel where the machine has it).
        let mut got = vec![f32::NAN; rn * t];
        dot_block(q, w, rn, &acts, &mut got);
        let diff = got
            .iter()
            .zip(&port)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(
            diff.is_none(),
            "{q:?} dot_block differs from portable at {diff:?}"
        );
    }

    #[test]
    /// Our kernels ([`qdot`]) on every path against the portable one (bit for bit) and against
    /// candle's `vec_dot` (up to float summation order), on random blocks: quantized values and raw
    /// random bytes (every bit pattern of the quants, negative and 6-bit scales) with sane scales.
    fn qdot_paths_match_portable_and_candle() {
        // Row counts that take the 4-row tiles and the single-row tail; token counts for every tile
        // height and the decode shape.
        for q in [Quant::Q8_0, Quant::Q4K, Quant::Q6K] {
            // Q8_0 also with an odd block count (the lone last block of the 2-block steps).
            let odd: &[_] = if q == Quant::Q8_0 {
                &[(96, 5, 3), (160, 4, 1)]
            } else {
                &[]
            };
            let shapes = [
                (256, 1, 1),
                (512, 6, 1),
                (512, 9, 5),
                (768, 4, 8),
                (256, 5, 3),
                // Panel tiles of weight rows by groups of 16 activation rows, with tails of both
                // (5 rows after the last group: the per-row kernels; 12: a padded group), and
                // fewer rows than a group (7: padded for Q4_K only).
                (512, 19, 37),
                (256, 16, 16),
                (256, 9, 28),
                (256, 9, 7),
                // Decode: the row loop, with an odd block count.
                (2304, 17, 1),
            ];
            for &(cols, rn, t) in shapes.iter().chain(odd) {
                let x = values(t * cols, 11 + t as u64);
                let w = random_blocks(q, rn, cols, 3 + rn as u64);
                check(q, &w, rn, &x, cols);
                let w = quantize(q, &values(rn * cols, 5));
                check(q, &w, rn, &x, cols);
            }
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// Every type: the integer dot product matches the dequantized weights dotted with the
    /// dequantized activations, and both stay near the f32 product.
    #[test]
    fn dot_tracks_dequantized_product_for_every_type() {
        let (cols, rn, t) = (512, 3, 5);
        let w = values(rn * cols, 7);
        let x = values(t * cols, 9);
        for q in Quant::ALL {
            let bytes = quantize(q, &w);
            assert_eq!(bytes.len(), rn * q.row_bytes(cols).unwrap(), "{q:?}");
            let mut deq = vec![0f32; w.len()];
            dequantize(q, &bytes, &mut deq);
            let acts = Acts::new(&x, cols, [q]);
            let mut res = vec![0f32; rn * t];
            dot_block(q, &bytes, rn, &acts, &mut res);
            for j in 0..rn {
                for i in 0..t {
                    let dot = |a: &[f32]| -> f32 {
                        (0..cols).map(|c| a[j * cols + c] * x[i * cols + c]).sum()
                    };
                    let (got, deq, exact) = (res[j * t + i], dot(&deq), dot(&w));
                    // Only the activations' 8-bit rounding separates the first two.
                    assert!((got - deq).abs() < 0.05, "{q:?} ({j},{i}): {got} vs {deq}");
                    assert!(
                        (got - exact).abs() < 2.0,
                        "{q:?} ({j},{i}): {got} vs {exact}"
                    );
                }
            }
        }
    }

    /// The activation quantizers written for ggml's rounding: every value comes back within about
    /// half a step, and Q8_1's sum is d times the sum of the quants.
    #[test]
    fn activation_blocks_round_trip() {
        let x = values(512, 3);
        fn back<T: Block>(b: &[T]) -> Vec<f32> {
            let mut out = vec![0f32; b.len() * T::BLCK_SIZE];
            T::to_float(b, &mut out);
            out
        }
        let steps = [
            (
                back(&quantize_rows::<BlockQ8_0>(&x, 256, ActKind::Q8_0)),
                32,
            ),
            (
                back(&quantize_rows::<BlockQ8_1>(&x, 256, ActKind::Q8_1)),
                32,
            ),
            (back(&quantize_rows::<BlockQ8K>(&x, 256, ActKind::Q8K)), 256),
        ];
        for (y, n) in steps {
            for (xb, yb) in x.chunks(n).zip(y.chunks(n)) {
                let step = xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (a, b) in xb.iter().zip(yb) {
                    // Half a step, plus up to 127 times the f16 rounding of the step itself.
                    assert!((a - b).abs() <= step * 0.57, "{a} vs {b} ({n})");
                }
            }
        }
        let mut blk = [0u8; 36];
        q8_block(&x[..32], &mut blk, true);
        let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let s = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
        let sum: i32 = blk[4..].iter().map(|&q| q as i8 as i32).sum();
        let amax = x[..32].iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(s, half::f16::from_f32(amax / 127.0 * sum as f32).to_f32());
        assert_eq!(d, half::f16::from_f32(amax / 127.0).to_f32());
    }

    #[test]
    fn names_and_sizes() {
        assert_eq!(Quant::from_name("Q4_K"), Some(Quant::Q4K));
        assert_eq!(Quant::Q4K.block(), (256, 144));
        assert_eq!(Quant::Q6K.block(), (256, 210));
        assert_eq!(Quant::Q8_0.row_bytes(64), Some(68));
        assert_eq!(Quant::Q4K.row_bytes(64), None);
    }
}
