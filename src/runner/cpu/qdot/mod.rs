//! Our own integer dot-product kernels for the block types that carry nearly all the bytes of the
//! usual quantized checkpoints: Q8_0 (against Q8_0 activations), Q4_K and Q6_K (against Q8_K
//! activations; a Q4_K_M file is Q4_K plus Q6_K). The other types go through candle's `vec_dot`
//! (see the `quant` module beside this one).
//!
//! Two kernel shapes. Per-row tiles (`avx512`, `avx2`, `portable`) serve decode and short prompts:
//! up to `T` activation rows by `R` weight rows, each weight block read from the memory map and
//! unpacked into registers once, then dotted with every activation row of the tile (in decode the
//! tile is 1 x 1, one sequential stream of weight rows). Panels (`panel`, AVX-512 VNNI, Q4_K and
//! Q8_0) serve prefill: activation rows in the vector lanes, one `vpdpbusd` per 64 multiply-adds.
//!
//! Exactness: every block dot is integer arithmetic, exact in any order. What is fixed is the
//! float part, identical on every path (AVX-512 VNNI, AVX2, portable), so the three agree bit for
//! bit. Q4_K keeps one f32 per output: per block, in block order, `acc = fma(I as f32, d_w * d_x,
//! acc)` then `acc = fma(M as f32, -(dmin_w * d_x), acc)` (`q4k_fold`), where `I = Σ_k sc_k Σ q·x`
//! over the block's 8 sub-blocks and `M = Σ_k m_k (s_2k + s_2k+1)` (the mins by the activations'
//! sums of 16) are exact integers. Q8_0 and Q6_K keep 16 f32 lanes in two halves of 8 (one 512-bit
//! register, or two 256-bit ones). Each group of 32 weight values goes to one half: Q8_0 block `b`
//! to half `b % 2`, Q6_K's 32-value chunk `c` of each 128 to half `c % 2`. Lane `l` of the half
//! takes the integer sum over values `4l..4l+3` of the group (times its integer scale for Q6_K).
//! Per block, in block order, each touched lane becomes `fma(lane_sum as f32, d_w * d_x, lane)`
//! (for Q6_K after summing the whole 256-value block in integers, its `-32 x sums` offset
//! subtracted in lanes 0-7 of half 0 first). At the end `h_l = lane_l + lane_{l+8}`, summed as
//! `((h0+h4) + (h2+h6)) + ((h1+h5) + (h3+h7))`. One output is always computed by one call, so
//! nothing depends on the thread count.
/// `fn $name(acc, a, b) -> acc + a · b` over pairs of i16 lanes, as one `vpdpwssd` on `$v`
/// (registers `$reg`; the function enables `$features`, the caller checks AVX-512 VNNI, and VL for
/// 256 bits). Written as assembly: through the intrinsic, LLVM's generic x86-64 tuning (the one
/// runtime-dispatched code gets) splits it into `vpmaddwd` + `vpaddd`, one more vector op per
/// multiply-add step in the k-quant kernels' innermost loops.
#[cfg(target_arch = "x86_64")]
macro_rules! dpwssd {
    ($name:ident, $v:ty, $reg:ident, $features:literal) => {
        #[inline]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name(acc: $v, a: $v, b: $v) -> $v {
            let mut acc = acc;
            std::arch::asm!(
                "vpdpwssd {acc}, {a}, {b}",
                acc = inout($reg) acc,
                a = in($reg) a,
                b = in($reg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
            acc
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod panel;
mod portable;

use super::kernels::{self, Isa};
use std::sync::OnceLock;

/// A weight type with a kernel here, and the activation block it is dotted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 34-byte blocks of 32: f16 d, 32 i8 (weights and activations alike).
    Q8_0,
    /// 144-byte blocks of 256 against Q8_K (292 bytes: f32 d, 256 i8, 16 i16 sums of 16).
    Q4K,
    /// 210-byte blocks of 256 against Q8_K.
    Q6K,
}

impl Kind {
    /// Bytes of one weight block and of one activation block.
    fn sizes(self) -> (usize, usize) {
        match self {
            Kind::Q8_0 => (Q8_0_BYTES, Q8_0_BYTES),
            Kind::Q4K => (Q4K_BYTES, Q8K_BYTES),
            Kind::Q6K => (Q6K_BYTES, Q8K_BYTES),
        }
    }
}

const Q8_0_BYTES: usize = 34;
const Q4K_BYTES: usize = 144;
const Q6K_BYTES: usize = 210;
const Q8K_BYTES: usize = 292;
/// Offsets inside a Q8_K block: the quants and the 16 sums of 16 quants.
const Q8K_QS: usize = 4;
const Q8K_SUMS: usize = 260;

/// The code path for these kernels: AVX-512 needs VNNI (and VL for its 256-bit forms), else the
/// AVX2 one runs; `LLAMACTL_CPU_ISA` lowers it as it does for the float kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Vnni,
    Avx2,
    Portable,
}

pub fn path() -> Path {
    static PATH: OnceLock<Path> = OnceLock::new();
    *PATH.get_or_init(|| match kernels::isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512
            if is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw") =>
        {
            Path::Vnni
        }
        Isa::Avx512 | Isa::Avx2 if cfg!(target_arch = "x86_64") => Path::Avx2,
        _ => Path::Portable,
    })
}

impl Path {
    /// Most activation rows per tile: the integer accumulators of a tile must fit the register
    /// file (32 vector registers with AVX-512, 16 with AVX2).
    fn max_t(self, kind: Kind) -> usize {
        match self {
            Path::Vnni => 4,
            Path::Avx2 if kind == Kind::Q4K => 4,
            Path::Avx2 => 2,
            Path::Portable => 1,
        }
    }
}

/// Weight rows per tile (a tail of fewer rows goes one row at a time).
const TILE_R: usize = 4;

/// Raw operands of one tile: `R` weight rows of `nb` blocks at `w` (row stride `ws` bytes) and `T`
/// activation rows at `x` (row stride `xs`).
#[derive(Clone, Copy)]
pub struct Geom {
    w: *const u8,
    ws: usize,
    x: *const u8,
    xs: usize,
    nb: usize,
}

impl Geom {
    /// The operands from weight row `j` on.
    ///
    /// # Safety
    /// Row `j` lies inside the weights `self` addresses.
    #[cfg(target_arch = "x86_64")]
    unsafe fn row(&self, j: usize) -> Geom {
        Geom {
            w: self.w.add(j * self.ws),
            ..*self
        }
    }
}

/// The activation rows `x` (`t` rows of the blocks `kind` pairs with) regrouped for the panel
/// kernels, where one serves them (see `panel`); None elsewhere.
pub fn x_panel(kind: Kind, x: &[u8], t: usize) -> Option<Vec<u8>> {
    #[cfg(target_arch = "x86_64")]
    if panel::serves(kind, t) {
        return Some(panel::build(kind, x, t, x.len() / t / kind.sizes().1));
    }
    let _ = (kind, x, t);
    None
}

/// `res[j * t + i] = w_j · x_i` for the `rn` weight rows in `w` (blocks of `kind`) and the `t`
/// activation rows in `x` (the blocks `kind` pairs with); `panel` is [`x_panel`] of `x` if any.
pub fn dot_block(
    kind: Kind,
    w: &[u8],
    rn: usize,
    x: &[u8],
    t: usize,
    panel: Option<&[u8]>,
    res: &mut [f32],
) {
    let path = path();
    #[cfg(target_arch = "x86_64")]
    if let (Kind::Q4K | Kind::Q8_0, Some(p), Path::Vnni) = (kind, panel, path) {
        return dot_panel(kind, w, rn, x, t, p, res);
    }
    let _ = panel;
    dot_block_on(path, kind, w, rn, x, t, res)
}

/// [`dot_block`] through a panel kernel: the weight rows it takes by the groups of activation
/// rows there, the rest through the per-row tiles (the same bits either way).
#[cfg(target_arch = "x86_64")]
fn dot_panel(kind: Kind, w: &[u8], rn: usize, x: &[u8], t: usize, p: &[u8], res: &mut [f32]) {
    assert!(rn > 0 && t > 0, "qdot: no rows");
    let (ws, xs, nb) = rows(kind, w, rn, x, t, res);
    // SAFETY: the VNNI path was detected; the operands were checked above and `p` was built from
    // `x` by `x_panel`.
    let done = unsafe { panel::dot(kind, w, rn, nb, p, t, res) };
    let t0 = panel::covered(kind, t);
    dot_block_on(
        Path::Vnni,
        kind,
        &w[done * ws..],
        rn - done,
        x,
        t,
        &mut res[done * t..],
    );
    if t0 < t && done > 0 {
        let tail_t = t - t0;
        let mut tail = vec![0f32; done * tail_t];
        let x = &x[t0 * xs..];
        dot_block_on(
            Path::Vnni,
            kind,
            &w[..done * ws],
            done,
            x,
            tail_t,
            &mut tail,
        );
        for j in 0..done {
            res[j * t + t0..(j + 1) * t].copy_from_slice(&tail[j * tail_t..(j + 1) * tail_t]);
        }
    }
}

/// The row strides of weights and activations and the blocks per row, checked: `w` holds `rn`
/// whole rows of `kind`'s blocks, `x` `t` rows of its activation blocks, `res` `rn * t` values.
fn rows(kind: Kind, w: &[u8], rn: usize, x: &[u8], t: usize, res: &[f32]) -> (usize, usize, usize) {
    let (wb, xb) = kind.sizes();
    let (ws, xs) = (w.len() / rn, x.len() / t);
    let nb = ws / wb;
    assert!(
        w.len() == rn * ws && ws == nb * wb && x.len() == t * xs && xs == nb * xb,
        "qdot: operands are not whole rows of blocks"
    );
    assert_eq!(res.len(), rn * t, "qdot: result size");
    (ws, xs, nb)
}

/// [`dot_block`] on a given path (tests compare the paths).
pub fn dot_block_on(
    path: Path,
    kind: Kind,
    w: &[u8],
    rn: usize,
    x: &[u8],
    t: usize,
    res: &mut [f32],
) {
    if rn == 0 || t == 0 {
        return;
    }
    let (ws, xs, nb) = rows(kind, w, rn, x, t, res);
    // Decode: the rows of the matrix stream through one call of the path's row loop.
    #[cfg(target_arch = "x86_64")]
    if t == 1 && path != Path::Portable {
        let g = Geom {
            w: w.as_ptr(),
            ws,
            x: x.as_ptr(),
            xs,
            nb,
        };
        // SAFETY: the path was detected at run time; `g` addresses the checked rows.
        unsafe {
            match (path, kind) {
                (Path::Vnni, Kind::Q8_0) => avx512::q8_0_rows(&g, res),
                // The k-quants take the 256-bit kernels on VNNI machines too (with `vpdpwssd`): their
                // unpacking needs no cross-lane permutes and streamed faster than the 512-bit one
                // (AMD EPYC Zen 4, 1-thread decode of the Q4_K_M file 19.5 -> 21.1, and 16.3 -> 19.3
                // tok/s with the row loop); the results are the same bits on every path.
                (Path::Vnni, _) => avx2::rows::<true>(kind, &g, res),
                _ => avx2::rows::<false>(kind, &g, res),
            }
        }
        return;
    }
    let mut r0 = 0;
    while r0 < rn {
        // One activation row (decode; portable here) streams one weight row at a time: a single
        // sequential stream kept the memory system busier than four interleaved ones (1-thread
        // decode of the 1B-shaped files: Q8_0 8.3 -> 11.5 tok/s, Q4_K_M 12.5 -> 17.7). Prefill
        // reuses each unpacked block for the activation rows of the tile, so there `TILE_R` rows
        // share the work.
        let r = if rn - r0 >= TILE_R && t > 1 {
            TILE_R
        } else {
            1
        };
        let mut t0 = 0;
        while t0 < t {
            let tn = path.max_t(kind).min(t - t0);
            let g = Geom {
                // SAFETY (of the `add`s): r0 < rn and t0 < t, inside the checked slices.
                w: unsafe { w.as_ptr().add(r0 * ws) },
                ws,
                x: unsafe { x.as_ptr().add(t0 * xs) },
                xs,
                nb,
            };
            let out = &mut res[r0 * t + t0..];
            tile(path, kind, tn, r, &g, out, t);
            t0 += tn;
        }
        r0 += r;
    }
}

/// One tile: `out[r * os + i]` for its `r` weight rows and `tn` activation rows.
fn tile(path: Path, kind: Kind, tn: usize, r: usize, g: &Geom, out: &mut [f32], os: usize) {
    debug_assert!(out.len() > (r - 1) * os + tn - 1);
    match path {
        // SAFETY: the path was detected at run time; `g` addresses whole rows checked by the caller.
        #[cfg(target_arch = "x86_64")]
        Path::Vnni => unsafe { avx512::tile(kind, tn, r, g, out, os) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { avx2::tile(kind, tn, r, g, out, os) },
        _ => {
            for j in 0..r {
                for i in 0..tn {
                    // SAFETY: row j of the weights and row i of the activations lie inside the
                    // slices the caller checked.
                    let (w, x) = unsafe {
                        let (wb, xb) = kind.sizes();
                        (
                            std::slice::from_raw_parts(g.w.add(j * g.ws), g.nb * wb),
                            std::slice::from_raw_parts(g.x.add(i * g.xs), g.nb * xb),
                        )
                    };
                    out[j * os + i] = portable::dot(kind, w, x, g.nb);
                }
            }
        }
    }
}

/// Q4_K's 12 bytes of packed 6-bit sub-block scales and mins as (8 scales, 8 mins), one per byte
/// (little-endian u64): scales 0-3 and mins 0-3 are the low 6 bits of bytes 0-3 and 4-7; scales and
/// mins 4-7 take their low 4 bits from bytes 8-11 (low and high nibble) and their top 2 bits from
/// the top bits of bytes 0-3 and 4-7.
#[inline(always)]
fn q4k_scales(b: &[u8; 12]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (a, m, c) = (word(0), word(4), word(8));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let sc_hi = (c & LOW4) | (((a >> 6) & LOW2) << 4);
    let mn_hi = ((c >> 4) & LOW4) | (((m >> 6) & LOW2) << 4);
    let sc = (a & LOW6) as u64 | ((sc_hi as u64) << 32);
    let mn = (m & LOW6) as u64 | ((mn_hi as u64) << 32);
    (sc, mn)
}

/// Q4_K's float step for one block (see the module doc): the same expression on every path.
#[inline(always)]
fn q4k_fold(acc: f32, i: i32, m: i32, d: f32, dmin: f32, dx: f32) -> f32 {
    let acc = (i as f32).mul_add(d * dx, acc);
    (m as f32).mul_add(-(dmin * dx), acc)
}

/// The fixed reduction of an output's 16 lanes (see the module doc).
#[inline(always)]
fn reduce(l: [f32; 16]) -> f32 {
    let h: [f32; 8] = std::array::from_fn(|i| l[i] + l[i + 8]);
    let s: [f32; 4] = std::array::from_fn(|i| h[i] + h[i + 4]);
    (s[0] + s[2]) + (s[1] + s[3])
}

/// A tile's results (`res[t][r]`) into `out[r * os + t]`.
#[inline(always)]
fn store<const T: usize, const R: usize>(res: &[[f32; R]; T], out: &mut [f32], os: usize) {
    for (t, row) in res.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            out[j * os + t] = *v;
        }
    }
}

#[cfg(test)]
mod tests;
