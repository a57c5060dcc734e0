//! A logical (full) tensor assembled from pieces that live in several files, and the one routine
//! that streams any rectangular region of it — optionally with rows permuted inside fixed groups
//! and with a dtype cast — to a writer. Reshard, convert and model loading are all this routine
//! with different regions; it reads row blocks with pread and never holds a tensor whole.
use crate::formats::copy::{Source, CHUNK};
use crate::formats::DType;
use anyhow::{bail, Result};
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

/// A block of a full tensor stored row-major and contiguous in one file.
#[derive(Debug, Clone)]
pub struct Piece {
    pub src: Arc<Source>,
    /// File offset of the block's first element.
    pub offset: u64,
    /// Full-tensor rows this block covers.
    pub rows: Range<usize>,
    /// Full-tensor columns this block covers.
    pub cols: Range<usize>,
    /// Meta's fp8 release: the block stores float8_e4m3fn bytes, and value (r, c) is
    /// `f32(byte) * scales[r - rows.start]` computed in f32 (torch's `w.float() * scale[:, None]`);
    /// the tensor's dtype is then F32, the dequantized type.
    pub fp8_scales: Option<Arc<Vec<f32>>>,
}

impl Piece {
    /// A block stored in the tensor's own dtype.
    pub fn plain(src: Arc<Source>, offset: u64, rows: Range<usize>, cols: Range<usize>) -> Piece {
        Piece {
            src,
            offset,
            rows,
            cols,
            fp8_scales: None,
        }
    }
}

/// A tensor seen whole, viewed as a 2-D matrix (1-D tensors are one row; higher dims fold into
/// the columns), made of pieces that tile it exactly.
#[derive(Debug, Clone)]
pub struct FullTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub pieces: Vec<Piece>,
}

impl FullTensor {
    pub fn new(name: &str, dtype: DType, shape: Vec<usize>, pieces: Vec<Piece>) -> Result<Self> {
        let t = Self {
            name: name.to_owned(),
            dtype,
            shape,
            pieces,
        };
        let covered: usize = t.pieces.iter().map(|p| p.rows.len() * p.cols.len()).sum();
        if covered != t.rows() * t.cols()
            || t.pieces
                .iter()
                .any(|p| p.rows.end > t.rows() || p.cols.end > t.cols())
        {
            bail!(
                "tensor {name}: shard pieces do not tile its full shape {:?}",
                t.shape
            );
        }
        Ok(t)
    }

    pub fn rows(&self) -> usize {
        if self.shape.len() <= 1 {
            1
        } else {
            self.shape[0]
        }
    }

    pub fn cols(&self) -> usize {
        match self.shape.len() {
            0 => 1,
            1 => self.shape[0],
            _ => self.shape[1..].iter().product(),
        }
    }

    pub fn nbytes(&self) -> u64 {
        (self.rows() * self.cols() * self.dtype.size()) as u64
    }

    pub fn all(&self) -> Region<'static> {
        Region {
            rows: 0..self.rows(),
            cols: 0..self.cols(),
            permute: None,
        }
    }
}

/// Give the verdicts of the read checks on every file the tensors were read from (see
/// [`crate::formats::integrity`]), each file once, reading only what the work did not.
pub(crate) fn finish_checks<'a>(tensors: impl IntoIterator<Item = &'a FullTensor>) -> Result<()> {
    use rayon::prelude::*;
    let mut seen = std::collections::HashSet::new();
    let sources: Vec<&Arc<Source>> = tensors
        .into_iter()
        .flat_map(|t| &t.pieces)
        .map(|p| &p.src)
        .filter(|s| seen.insert(Arc::as_ptr(s)))
        .collect();
    sources.par_iter().try_for_each(|s| s.finish_checks())
}

/// Rows permuted inside consecutive groups of `group` rows: output row j of a group comes from
/// source row `map(j)` of the same group.
#[derive(Clone, Copy)]
pub struct RowPermute<'a> {
    pub group: usize,
    pub map: &'a dyn Fn(usize) -> usize,
}

/// A rectangle of a full tensor, in full-tensor coordinates.
#[derive(Clone)]
pub struct Region<'a> {
    pub rows: Range<usize>,
    pub cols: Range<usize>,
    pub permute: Option<RowPermute<'a>>,
}

/// What a cast had to change.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CastStats {
    /// Finite values beyond the target's range, clamped to its largest finite value.
    pub overflowed: u64,
}

/// Reusable buffers, one set per writing thread.
#[derive(Default)]
pub(crate) struct Buffers {
    read: Vec<u8>,
    asm: Vec<u8>,
    out: Vec<u8>,
}

/// Stream `region` of `t` to `w`, cast to `to` when given.
pub(crate) fn write_region(
    t: &FullTensor,
    region: &Region,
    to: Option<DType>,
    bufs: &mut Buffers,
    w: &mut dyn Write,
    stats: &mut CastStats,
) -> Result<()> {
    let es = t.dtype.size();
    let ncols = region.cols.len();
    if region.rows.end > t.rows() || region.cols.end > t.cols() {
        bail!("tensor {}: region outside its shape {:?}", t.name, t.shape);
    }
    if ncols == 0 || region.rows.is_empty() {
        return Ok(());
    }
    let group = region.permute.map_or(1, |p| p.group.max(1));
    if !region.rows.start.is_multiple_of(group) || !region.rows.len().is_multiple_of(group) {
        bail!(
            "tensor {}: permuted region is not aligned to groups of {group} rows",
            t.name
        );
    }
    let row_bytes = ncols * es;
    let block = ((CHUNK / row_bytes.max(1)) / group).max(1) * group;
    let to = to.filter(|&d| d != t.dtype);

    let mut r0 = region.rows.start;
    while r0 < region.rows.end {
        crate::signal::check()?;
        let r1 = (r0 + block).min(region.rows.end);
        // Fast path: one piece holds exactly these columns, so the block is one contiguous range.
        if region.permute.is_none() && to.is_none() {
            if let Some(p) = t.pieces.iter().find(|p| {
                p.rows.start <= r0
                    && r1 <= p.rows.end
                    && p.cols == region.cols
                    && p.fp8_scales.is_none()
            }) {
                let off = p.offset + ((r0 - p.rows.start) * p.cols.len() * es) as u64;
                p.src
                    .copy_range(off, ((r1 - r0) * row_bytes) as u64, &mut bufs.read, w)?;
                r0 = r1;
                continue;
            }
        }
        assemble(t, r0..r1, &region.cols, bufs)?;
        let mut data: &[u8] = &bufs.asm;
        if let Some(p) = region.permute {
            bufs.out.clear();
            for g in (0..r1 - r0).step_by(group) {
                for j in 0..group {
                    let s = g + (p.map)(j);
                    bufs.out
                        .extend_from_slice(&bufs.asm[s * row_bytes..(s + 1) * row_bytes]);
                }
            }
            std::mem::swap(&mut bufs.asm, &mut bufs.out);
            data = &bufs.asm;
        }
        if let Some(to) = to {
            cast(data, t.dtype, to, &mut bufs.out, stats)?;
            w.write_all(&bufs.out)?;
        } else {
            w.write_all(data)?;
        }
        r0 = r1;
    }
    Ok(())
}

/// Gather rows `rows` x columns `cols` of `t` into `bufs.asm`, row-major.
fn assemble(
    t: &FullTensor,
    rows: Range<usize>,
    cols: &Range<usize>,
    bufs: &mut Buffers,
) -> Result<()> {
    let es = t.dtype.size();
    let ncols = cols.len();
    bufs.asm.clear();
    bufs.asm.resize(rows.len() * ncols * es, 0);
    let mut filled = 0usize;
    for p in &t.pieces {
        let pr = rows.start.max(p.rows.start)..rows.end.min(p.rows.end);
        let pc = cols.start.max(p.cols.start)..cols.end.min(p.cols.end);
        if pr.is_empty() || pc.is_empty() {
            continue;
        }
        // Bytes per stored element (fp8 blocks store one byte per value).
        let ses = if p.fp8_scales.is_some() { 1 } else { es };
        let pw = p.cols.len() * ses;
        let (src_c, dst_c, len) = (
            (pc.start - p.cols.start) * ses,
            (pc.start - cols.start) * es,
            pc.len() * ses,
        );
        // A piece may be much wider than the wanted columns (MP 1 -> 8 of a dim-1 split reads
        // 1/8 of each row): read it in sub-blocks so the read buffer stays at CHUNK, not
        // CHUNK times the width ratio.
        let step = (CHUNK / pw.max(1)).max(1);
        let mut r0 = pr.start;
        while r0 < pr.end {
            let r1 = (r0 + step).min(pr.end);
            // Only the span from the first wanted byte to the last one is read.
            let n = (r1 - r0 - 1) * pw + len;
            if bufs.read.len() < n {
                bufs.read.resize(n, 0);
            }
            let off = p.offset + ((r0 - p.rows.start) * pw + src_c) as u64;
            p.src.read_exact_at(&mut bufs.read[..n], off)?;
            for (i, r) in (r0..r1).enumerate() {
                let s = i * pw;
                let d = (r - rows.start) * ncols * es + dst_c;
                let src = &bufs.read[s..s + len];
                match &p.fp8_scales {
                    None => bufs.asm[d..d + len].copy_from_slice(src),
                    Some(scales) => {
                        let scale = scales[r - p.rows.start];
                        let dst = &mut bufs.asm[d..d + len * 4];
                        for (o, &b) in dst.chunks_exact_mut(4).zip(src) {
                            o.copy_from_slice(&(fp8_e4m3(b) * scale).to_le_bytes());
                        }
                    }
                }
            }
            r0 = r1;
        }
        filled += pr.len() * pc.len();
    }
    if filled != rows.len() * ncols {
        bail!(
            "tensor {}: shard pieces leave rows {rows:?} partly uncovered",
            t.name
        );
    }
    Ok(())
}

/// One float8_e4m3fn value, exactly (a table of the 256 values).
fn fp8_e4m3(b: u8) -> f32 {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| std::array::from_fn(|i| crate::formats::fp8_to_f32(DType::F8E4M3, i as u8)))
        [b as usize]
}

/// Convert a little-endian float buffer between BF16, F16 and F32.
pub(crate) fn cast(
    src: &[u8],
    from: DType,
    to: DType,
    out: &mut Vec<u8>,
    stats: &mut CastStats,
) -> Result<()> {
    use half::{bf16, f16};
    let read: fn(&[u8]) -> f32 = match from {
        DType::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        DType::BF16 => |b| bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        DType::F16 => |b| f16::from_le_bytes([b[0], b[1]]).to_f32(),
        _ => bail!("cannot cast from {from}"),
    };
    out.clear();
    out.reserve(src.len() / from.size() * to.size());
    for b in src.chunks_exact(from.size()) {
        let v = read(b);
        match to {
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
            DType::F16 => {
                let mut h = f16::from_f32(v);
                if h.is_infinite() && v.is_finite() {
                    stats.overflowed += 1;
                    h = if v > 0.0 { f16::MAX } else { f16::MIN };
                }
                out.extend_from_slice(&h.to_le_bytes())
            }
            _ => bail!("cannot cast to {to}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(bytes: &[u8]) -> (tempfile::TempDir, Arc<Source>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        let s = Arc::new(Source::open(&p).unwrap());
        (d, s)
    }

    #[test]
    fn column_pieces_merge_and_permute() {
        // A 4x4 U8 matrix with value 10*r + c, stored as two column halves in one file.
        let left: Vec<u8> = (0..4).flat_map(|r| [10 * r, 10 * r + 1]).collect();
        let right: Vec<u8> = (0..4).flat_map(|r| [10 * r + 2, 10 * r + 3]).collect();
        let (_d, s) = source(&[left, right].concat());
        let t = FullTensor::new(
            "m",
            DType::U8,
            vec![4, 4],
            vec![
                Piece::plain(s.clone(), 0, 0..4, 0..2),
                Piece::plain(s, 8, 0..4, 2..4),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut b = Buffers::default();
        let mut st = CastStats::default();
        write_region(&t, &t.all(), None, &mut b, &mut out, &mut st).unwrap();
        let want: Vec<u8> = (0..4)
            .flat_map(|r| (0..4).map(move |c| 10 * r + c))
            .collect();
        assert_eq!(out, want);
        // Rows 2..4, columns 1..3, swapped inside groups of 2.
        let swap = |j: usize| 1 - j;
        let region = Region {
            rows: 2..4,
            cols: 1..3,
            permute: Some(RowPermute {
                group: 2,
                map: &swap,
            }),
        };
        out.clear();
        write_region(&t, &region, None, &mut b, &mut out, &mut st).unwrap();
        assert_eq!(out, vec![31, 32, 21, 22]);
    }

    #[test]
    fn narrow_columns_of_a_wide_piece_keep_the_read_buffer_bounded() {
        // 64 rows of 2*CHUNK/64 bytes: the left half of every row is wanted. Reading whole rows
        // for a CHUNK-sized output block would need 2*CHUNK of read buffer.
        let (rows, cols) = (64, 2 * CHUNK / 64);
        let val = |r: usize, c: usize| ((r * 7 + c) % 251) as u8;
        let data: Vec<u8> = (0..rows)
            .flat_map(|r| (0..cols).map(move |c| val(r, c)))
            .collect();
        let (_d, s) = source(&data);
        let t = FullTensor::new(
            "w",
            DType::U8,
            vec![rows, cols],
            vec![Piece::plain(s, 0, 0..rows, 0..cols)],
        )
        .unwrap();
        let region = Region {
            rows: 0..rows,
            cols: 0..cols / 2,
            permute: None,
        };
        let mut out = Vec::new();
        let mut b = Buffers::default();
        write_region(
            &t,
            &region,
            None,
            &mut b,
            &mut out,
            &mut CastStats::default(),
        )
        .unwrap();
        assert!(
            b.read.len() <= CHUNK,
            "read buffer grew to {}",
            b.read.len()
        );
        assert_eq!(out.len(), rows * cols / 2);
        assert!((0..rows).all(|r| (0..cols / 2)
            .step_by(997)
            .all(|c| out[r * cols / 2 + c] == val(r, c))));
    }

    #[test]
    fn cast_counts_f16_overflow() {
        let vals = [1.5f32, 1e6, -1e6, f32::INFINITY];
        let src: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        let mut st = CastStats::default();
        cast(&src, DType::F32, DType::F16, &mut out, &mut st).unwrap();
        assert_eq!(st.overflowed, 2);
        let back: Vec<f32> = out
            .chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(back, vec![1.5, 65504.0, -65504.0, f32::INFINITY]);
    }
}
