//! Our own integer dot-product kernels for the block types that carry nearly all the bytes of the
//! usual quantized checkpoints: Q8_0 (against Q8_0 activations), Q4_K and Q6_K (against Q8_K
//! activations; a Q4_K_M file is Q4_K plus Q6_K). The other types go through candle's `vec_dot`
//! (see `super::quant`).
//!
//! One kernel shape serves decode and prefill: a tile of up to `T` activation rows by `R` weight
//! rows. Each weight block is read from the memory map and unpacked into registers once, then
//! dotted with every activation row of the tile (in prefill the activations stay in L1/L2 while
//! the weights stream past; in decode `T` is 1 and the `R` rows are independent streams).
//!
//! Exactness: every block dot is integer arithmetic, exact in any order. What is fixed is the
//! float part, identical on every path (AVX-512 VNNI, AVX2, portable), so the three agree bit for
//! bit: an output keeps 8 f32 lanes; lane `l` holds the integer sum over bytes `4l..4l+3` of each
//! 32-byte group of the block (with the block's integer sub-scales applied), and per block, in
//! block order, `lane = fma(lane_sum as f32, d_w * d_x, lane)` (Q4_K then adds its mins term,
//! `fma(mins_l as f32, -(dmin_w * d_x), lane)` with lane `l` = sub-block `l`). The 8 lanes are
//! then summed as `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`. One output is always computed by
//! one call, so nothing depends on the thread count.
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::kernels::{self, Isa};
use super::quant::Quant;
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
    pub fn of(q: Quant) -> Option<Kind> {
        match q {
            Quant::Q8_0 => Some(Kind::Q8_0),
            Quant::Q4K => Some(Kind::Q4K),
            Quant::Q6K => Some(Kind::Q6K),
            _ => None,
        }
    }

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
    fn max_t(self) -> usize {
        match self {
            Path::Vnni => 4,
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

/// `res[j * t + i] = w_j · x_i` for the `rn` weight rows in `w` (blocks of `q`) and the `t`
/// activation rows in `x` (the blocks `q` pairs with). False when `q` has no kernel here.
pub fn dot_block(q: Quant, w: &[u8], rn: usize, x: &[u8], t: usize, res: &mut [f32]) -> bool {
    dot_block_on(path(), q, w, rn, x, t, res)
}

fn dot_block_on(
    path: Path,
    q: Quant,
    w: &[u8],
    rn: usize,
    x: &[u8],
    t: usize,
    res: &mut [f32],
) -> bool {
    let Some(kind) = Kind::of(q) else {
        return false;
    };
    if rn == 0 || t == 0 {
        return true;
    }
    let (wb, xb) = kind.sizes();
    let (ws, xs) = (w.len() / rn, x.len() / t);
    let nb = ws / wb;
    assert!(
        w.len() == rn * ws && ws == nb * wb && x.len() == t * xs && xs == nb * xb,
        "qdot: operands are not whole rows of blocks"
    );
    assert_eq!(res.len(), rn * t, "qdot: result size");
    let mut r0 = 0;
    while r0 < rn {
        let r = if rn - r0 >= TILE_R { TILE_R } else { 1 };
        let mut t0 = 0;
        while t0 < t {
            let tn = path.max_t().min(t - t0);
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
    true
}

/// One tile: `out[r * os + i]` for its `r` weight rows and `tn` activation rows.
fn tile(path: Path, kind: Kind, tn: usize, r: usize, g: &Geom, out: &mut [f32], os: usize) {
    debug_assert!(out.len() > (r - 1) * os + tn - 1);
    match path {
        // SAFETY: the path was detected at run time; `g` addresses whole rows checked by the caller.
        #[cfg(target_arch = "x86_64")]
        Path::Vnni => unsafe { x86::tile_vnni(kind, tn, r, g, out, os) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::tile_avx2(kind, tn, r, g, out, os) },
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

/// The fixed reduction of an output's 8 lanes (see the module doc).
#[inline(always)]
fn reduce(l: [f32; 8]) -> f32 {
    let s: [f32; 4] = std::array::from_fn(|i| l[i] + l[i + 4]);
    (s[0] + s[2]) + (s[1] + s[3])
}

#[cfg(test)]
mod tests;
