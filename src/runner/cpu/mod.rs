//! CPU inference on weights kept in their stored type (bf16, f16, f32 or a GGML block type), read
//! straight from the checkpoint's memory map where the file layout allows it.
//!
//! candle computes norms and rotary in f32; [`attention`] the causal attention over the KV cache
//! (fused, per query row) and [`swiglu`] the feed-forward gate, on every thread; the linear layers,
//! which are nearly all of the work, go through [`Linear`], a candle custom op over our own kernels:
//! - decode (a few activation rows): each weight row is read once and dotted with every row, so a
//!   token costs one pass over the weight bytes — memory bandwidth is the limit;
//! - prefill (many rows): tiles of a few weight rows x a few activation rows, each weight vector
//!   widened once in registers and used for every activation row of the tile (no packing copies);
//! - block-quantized weights ([`quant`]): activations are quantized once per call and every output
//!   is an integer dot product of blocks, for decode and prefill alike (as ggml does); [`qdot`] holds
//!   our own kernels for Q8_0, Q4_K and Q6_K (tiles, and panels for prefill), candle's `vec_dot`
//!   serves the other types.
//!
//! Work is split across rayon's threads by blocks of output rows; every output element is summed by
//! one thread in a fixed order, so results do not depend on the thread count.
pub mod attention;
pub mod kernels;
pub mod qdot;
pub mod quant;

use anyhow::{bail, Result};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use kernels::WeightType;
use memmap2::Mmap;
use quant::{Acts, Quant};
use rayon::prelude::*;
use std::sync::Arc;

/// Where a weight's bytes live. Cloning shares them.
#[derive(Clone)]
pub enum Bytes {
    /// A range of a memory-mapped checkpoint file: file-backed pages the kernel can drop and re-read.
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    /// A buffer of our own (merged shards, a cast, or weights built in memory).
    Owned(Arc<[u8]>),
}

impl From<WeightType> for MatType {
    fn from(w: WeightType) -> MatType {
        MatType::Float(w)
    }
}

impl From<Quant> for MatType {
    fn from(q: Quant) -> MatType {
        MatType::Quant(q)
    }
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Bytes::Owned(v) => v,
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Bytes::Mapped { .. })
    }
}

/// How a matrix stores its elements: one float per element, or GGML blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatType {
    Float(WeightType),
    Quant(Quant),
}

impl MatType {
    pub fn name(self) -> &'static str {
        match self {
            MatType::Float(w) => w.name(),
            MatType::Quant(q) => q.name(),
        }
    }

    /// Bytes of one row of `cols` values (None: not whole blocks).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        match self {
            MatType::Float(w) => Some(cols * w.size()),
            MatType::Quant(q) => q.row_bytes(cols),
        }
    }
}

/// A row-major weight matrix [rows, cols] in its stored type. Cloning shares the bytes.
#[derive(Clone)]
pub struct Matrix {
    pub ty: MatType,
    pub rows: usize,
    pub cols: usize,
    bytes: Bytes,
}

impl Matrix {
    pub fn new(ty: impl Into<MatType>, rows: usize, cols: usize, bytes: Bytes) -> Result<Matrix> {
        let ty = ty.into();
        let Some(row) = ty.row_bytes(cols) else {
            bail!("rows of {cols} values are not whole {} blocks", ty.name());
        };
        let want = rows * row;
        if bytes.as_slice().len() != want {
            bail!(
                "a {rows}x{cols} {} matrix needs {want} bytes, got {}",
                ty.name(),
                bytes.as_slice().len()
            );
        }
        if let MatType::Quant(q) = ty {
            if !quant::aligned(q, bytes.as_slice()) {
                bail!("{} blocks at an odd address", q.name());
            }
        }
        Ok(Matrix {
            ty,
            rows,
            cols,
            bytes,
        })
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    fn row_bytes(&self, rows: std::ops::Range<usize>) -> &[u8] {
        let rb = self.ty.row_bytes(self.cols).expect("checked by new");
        &self.bytes.as_slice()[rows.start * rb..rows.end * rb]
    }

    /// The element type of a float matrix (the float kernels are only handed those).
    fn float_type(&self) -> WeightType {
        match self.ty {
            MatType::Float(w) => w,
            MatType::Quant(q) => unreachable!("{} rows in a float kernel", q.name()),
        }
    }

    /// Rows `rows` as f32 into `out`.
    fn widen_rows(&self, rows: std::ops::Range<usize>, out: &mut [f32]) {
        match self.ty {
            MatType::Float(wt) => kernels::widen(wt, self.row_bytes(rows), out),
            MatType::Quant(q) => quant::dequantize(q, self.row_bytes(rows), out),
        }
    }

    /// The whole matrix as f32 (`--dtype f32` on a quantized file).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1) * 64)
            .enumerate()
            .for_each(|(i, o)| {
                let r0 = i * 64;
                self.widen_rows(r0..r0 + o.len() / self.cols.max(1), o)
            });
        out
    }

    /// Rows `ids` widened to f32, one after another (the embedding lookup).
    pub fn gather(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, o) in ids.iter().zip(out.chunks_mut(self.cols)) {
            let id = id as usize;
            if id >= self.rows {
                bail!(
                    "token id {id} is outside the embedding table ({} rows)",
                    self.rows
                );
            }
            self.widen_rows(id..id + 1, o);
        }
        Ok(out)
    }
}

/// Matrices that share the input and whose outputs are concatenated (wq|wk|wv, w1|w3): one pass over
/// the activations serves all of them, without copying the mapped weights into one buffer.
pub struct Linear {
    parts: Vec<Matrix>,
    cols: usize,
    rows: usize,
}

/// Activation rows up to which decode's one-pass kernel is used (above it, the prefill tiles).
const MATVEC_MAX_ROWS: usize = 8;
/// Inputs from which decode also goes through the tile kernels: such an activation row (16 KiB of
/// f32 and more) no longer stays in L1 beside the weight stream, and the tile reads each of its
/// vectors once per tile of weight rows instead of once per row. Measured on the 1B-shaped bf16
/// checkpoint (its [2048, 8192] down projections), one thread: 7.0-7.3 -> 8.1-8.5 tok/s with AVX-512,
/// 7.7-8.2 -> 8.9-9.3 with AVX2; two threads +5-8%. Shorter rows stay with [`kernels::dot_row`], which
/// measured faster there.
const TILE_DECODE_COLS: usize = 4096;
/// Output rows per task in decode: large enough to amortize scheduling, small enough to balance.
const MATVEC_BLOCK: usize = 32;
/// Output rows per prefill task (a multiple of every ISA's tile rows).
const TILE_BLOCK: usize = 8 * kernels::TILE_ROWS_LCM;
/// Output rows per task for block-quantized weights.
const QUANT_BLOCK: usize = 16;
/// Weight bytes per task for block-quantized weights in decode: each task costs a fixed amount of
/// dispatch, which 16-row tasks (17-35 KiB) did not amortize (1-thread decode of the 1B-shaped
/// files, Q8_0 14.8 -> 17.3 tok/s, Q4_K_M 21.0 -> 22.2 at 256 KiB).
const QUANT_DECODE_BYTES: usize = 256 << 10;

impl Linear {
    pub fn new(parts: Vec<Matrix>) -> Result<Linear> {
        let Some(first) = parts.first() else {
            bail!("a linear layer needs at least one matrix");
        };
        let cols = first.cols;
        if parts.iter().any(|p| p.cols != cols) {
            bail!("stacked matrices disagree on their input size");
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        Ok(Linear { parts, cols, rows })
    }

    pub fn parts(&self) -> &[Matrix] {
        &self.parts
    }

    /// `out[t, :] = x[t, :] @ W.T` for `t` rows of `x` (each `cols` long); `out` is [t, rows].
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        let t = x.len() / self.cols;
        assert_eq!(out.len(), t * self.rows, "linear: output size");
        let quants = self.parts.iter().filter_map(|m| match m.ty {
            MatType::Quant(q) => Some(q),
            MatType::Float(_) => None,
        });
        let acts = Acts::new(x, self.cols, quants);
        let matvec = t <= MATVEC_MAX_ROWS && self.cols < TILE_DECODE_COLS;
        let float_block = if matvec { MATVEC_BLOCK } else { TILE_BLOCK };
        // (part, first output column of the part, row range inside the part)
        let mut tasks = Vec::new();
        let mut col0 = 0;
        for (p, m) in self.parts.iter().enumerate() {
            let block = match m.ty {
                MatType::Quant(q) if t == 1 => {
                    let rb = q.row_bytes(m.cols).expect("checked by Matrix::new");
                    (QUANT_DECODE_BYTES / rb).max(QUANT_BLOCK)
                }
                MatType::Quant(_) => QUANT_BLOCK,
                MatType::Float(_) => float_block,
            };
            for start in (0..m.rows).step_by(block) {
                tasks.push((p, col0, start..(start + block).min(m.rows)));
            }
            col0 += m.rows;
        }
        // The tile kernels' order of the activations, per float type among the parts.
        let mut layouts: Vec<(WeightType, std::borrow::Cow<[f32]>)> = Vec::new();
        for m in self.parts.iter().filter(|_| !matvec) {
            if let MatType::Float(wt) = m.ty {
                if !layouts.iter().any(|(w, _)| *w == wt) {
                    layouts.push((wt, kernels::tile_layout(wt, x, self.cols)));
                }
            }
        }
        let layout = |wt| {
            &layouts
                .iter()
                .find(|(w, _)| *w == wt)
                .expect("made above")
                .1
        };
        let dst = SendPtr(out.as_mut_ptr());
        let total = self.rows;
        tasks.into_par_iter().for_each(|(p, col0, rows)| {
            let m = &self.parts[p];
            // SAFETY: tasks cover disjoint output columns, so no two threads write one element.
            let out = unsafe { OutView::new(dst, total, col0 + rows.start) };
            match m.ty {
                MatType::Quant(q) => quant_block(m, q, rows, &acts, t, &out),
                MatType::Float(_) if matvec => matvec_block(m, rows, x, &out),
                MatType::Float(wt) => tile_block(m, rows, layout(wt), &out),
            }
        });
    }
}

/// Keep freed buffers in the process for the next operation instead of handing them back to the
/// kernel: every layer allocates its activations afresh (candle ops, our linear layers' outputs),
/// and with glibc's defaults buffers of a few MiB were mapped, page-faulted in, zeroed and unmapped
/// again for each operation, on the thread that allocated them while the others waited. Buffers up
/// to 32 MiB (glibc's ceiling for this setting) now come from the heap, which is trimmed only past
/// 1 GiB free. 2-thread prefill of the 1B-shaped bf16 checkpoint, medians of 3 interleaved rounds:
/// 282 tokens 73.2 -> 79.5 tok/s (AVX2), 87.3 -> 89.3 (AVX-512); 502 tokens 81.3 -> 84.8
/// (AVX-512); one thread and decode unchanged; peak RssAnon 38 -> 84 MiB (of 2.8 GiB of weights).
/// Other C libraries keep their own policy.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before the session allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// The feed-forward gate: `silu(g) * u` for each row `[g | u]` of `gu` (`2 * hidden` values), as
/// candle computes it (`g / (1 + exp(-g)) * u`, the same bits), rows spread over rayon's threads:
/// as candle ops it ran on one thread while the other waited (2-3% of a 2-thread prefill).
pub fn swiglu(gu: &[f32], hidden: usize) -> Vec<f32> {
    let mut out = vec![0f32; gu.len() / 2];
    out.par_chunks_mut(hidden)
        .zip(gu.par_chunks(2 * hidden))
        .for_each(|(o, gu)| {
            let (g, u) = gu.split_at(hidden);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
    out
}

/// A raw output pointer handed to rayon tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Columns of a [t, total] output starting at `col0`.
struct OutView {
    ptr: *mut f32,
    total: usize,
}

impl OutView {
    /// SAFETY: the caller guarantees that only this view writes the columns it is used for.
    unsafe fn new(dst: SendPtr, total: usize, col0: usize) -> OutView {
        OutView {
            ptr: dst.0.add(col0),
            total,
        }
    }

    /// The view's first `n` columns of output row 0.
    // The view's columns belong to one task (see `new`), so this is the only reference to them.
    #[allow(clippy::mut_from_ref)]
    fn row0(&self, n: usize) -> &mut [f32] {
        // SAFETY: col0 + n <= total by construction of the tasks, and only this view writes there.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, n) }
    }

    fn set(&self, row: usize, col: usize, v: f32) {
        // SAFETY: row < t and col0 + col < total by construction of the tasks.
        unsafe { *self.ptr.add(row * self.total + col) = v }
    }
}

fn quant_block(
    m: &Matrix,
    q: Quant,
    rows: std::ops::Range<usize>,
    acts: &Acts,
    t: usize,
    out: &OutView,
) {
    let n = rows.len();
    if t == 1 {
        // Decode: the task's output columns are contiguous, so the results land in place.
        quant::dot_block(q, m.row_bytes(rows), n, acts, out.row0(n));
        return;
    }
    let mut res = vec![0f32; n * t];
    quant::dot_block(q, m.row_bytes(rows), n, acts, &mut res);
    // Output row by output row: the other order strode across `t` rows of the output for every
    // value (a TLB miss each in prefill; 9% of a 64-token prefill).
    for i in 0..t {
        for j in 0..n {
            out.set(i, j, res[j * t + i]);
        }
    }
}

fn matvec_block(m: &Matrix, rows: std::ops::Range<usize>, x: &[f32], out: &OutView) {
    let cols = m.cols;
    let xs: Vec<&[f32]> = x.chunks(cols).collect();
    let mut res = [0f32; kernels::MAX_ROWS];
    for (j, r) in rows.clone().enumerate() {
        let w = m.row_bytes(r..r + 1);
        for (g, group) in xs.chunks(kernels::MAX_ROWS).enumerate() {
            kernels::dot_row(m.float_type(), w, group, &mut res[..group.len()]);
            for (k, v) in res[..group.len()].iter().enumerate() {
                out.set(g * kernels::MAX_ROWS + k, j, *v);
            }
        }
    }
}

/// Prefill with the tile kernels: for each group of tile-rows weight rows (which then stay in L1),
/// every group of tile-rows activation rows. Widening in the kernel beat widening each row group to
/// an f32 buffer first (1.7 s vs 2.0 s of CPU for a 64-token prefill of the 1B model): the buffer
/// doubles the bytes the inner loop loads.
fn tile_block(m: &Matrix, rows: std::ops::Range<usize>, x: &[f32], out: &OutView) {
    let k = m.cols;
    let t = x.len() / k;
    let chunk = x_chunk_rows(k, kernels::tile_shape().0);
    for c0 in (0..t).step_by(chunk) {
        tile_chunk(m, rows.clone(), x, c0..(c0 + chunk).min(t), out);
    }
}

/// Activation rows per pass of [`tile_block`] over its weight rows: as many as fit in
/// `X_CHUNK_BYTES` (a whole number of tiles), so they stay in L2 while every weight tile of the task
/// passes over them. Without it a long prompt's activations (4 MiB for 512 tokens of 2048 values,
/// 16 MiB of 8192) came from L3 or DRAM once per weight tile: one thread, 512 tokens, bf16
/// [2048, 8192] weights went from 74-84 to 100 GFLOP/s on AVX-512 and 53-67 to 86-88 on AVX2
/// (`examples/kernel_bench.rs`); [8192, 2048] gained 4-15%.
fn x_chunk_rows(k: usize, tile_t: usize) -> usize {
    let rows = X_CHUNK_BYTES / (k * 4).max(1);
    (rows / tile_t).max(1) * tile_t
}

/// Activation bytes per pass over a task's weight rows: half a typical L2 (1 MiB on recent x86 cores),
/// leaving room for the weight rows of the task.
const X_CHUNK_BYTES: usize = 384 << 10;

/// One pass of [`tile_block`]: the weight rows of the task against activation rows `ts`.
fn tile_chunk(
    m: &Matrix,
    rows: std::ops::Range<usize>,
    x: &[f32],
    ts: std::ops::Range<usize>,
    out: &OutView,
) {
    let k = m.cols;
    let (tile_t, tile_r) = (kernels::tile_shape().0, kernels::tile_rows(ts.len()));
    for r0 in rows.clone().step_by(tile_r) {
        let rn = tile_r.min(rows.end - r0);
        let w = m.row_bytes(r0..r0 + rn);
        for t0 in ts.clone().step_by(tile_t) {
            let tn = tile_t.min(ts.end - t0);
            // SAFETY: the pointer addresses rows t0..t0+tn, columns r0..r0+rn of this task's
            // output view, which no other task writes.
            unsafe {
                kernels::tile(
                    m.float_type(),
                    w,
                    rn,
                    &x[t0 * k..(t0 + tn) * k],
                    tn,
                    out.ptr.add(t0 * out.total + (r0 - rows.start)),
                    out.total,
                )
            };
        }
    }
}

/// `x @ W.T` as a candle op on CPU f32 tensors of any leading shape.
pub struct LinearOp<'a>(pub &'a Linear);

impl CustomOp1 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "llamactl-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("llamactl-linear: activations must be f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("llamactl-linear: activations must be contiguous");
        };
        let dims = layout.shape().dims();
        if dims.last() != Some(&self.0.cols) {
            candle_core::bail!(
                "llamactl-linear: input {:?} does not end in {}",
                dims,
                self.0.cols
            );
        }
        let x = &data[start..end];
        let mut out = vec![0f32; x.len() / self.0.cols * self.0.rows];
        self.0.forward(x, &mut out);
        let mut shape = dims.to_vec();
        *shape.last_mut().unwrap() = self.0.rows;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect()
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

    /// The gate gives candle's `silu(g) * u` bit for bit, row by row.
    #[test]
    fn swiglu_is_candles_silu_times_up() {
        let (rows, hidden) = (5, 24);
        let gu: Vec<f32> = values(rows * 2 * hidden, 11)
            .iter()
            .map(|v| v * 20.0)
            .collect();
        let t = candle_core::Tensor::from_vec(
            gu.clone(),
            (rows, 2 * hidden),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let (g, u) = (
            t.narrow(1, 0, hidden).unwrap(),
            t.narrow(1, hidden, hidden).unwrap(),
        );
        let want = (candle_nn::ops::silu(&g).unwrap() * u).unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let got = swiglu(&gu, hidden);
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    /// Both paths (decode rows and prefill rows) and stacked parts against a plain reference.
    #[test]
    fn linear_matches_reference_for_every_row_count() {
        check_linear(96, (70, 45), &[1, 3, 4, 5, 8, 9, 40], 1e-4);
        // Long rows: decode goes through the tile kernels too, and a prefill's activations in
        // chunks of 12 rows.
        check_linear(8192, (13, 7), &[1, 3, 30], 1e-3);
    }

    /// A two-part bf16 linear layer of `cols` inputs against an f64 reference, for `t` rows each.
    fn check_linear(cols: usize, (r1, r2): (usize, usize), ts: &[usize], tol: f64) {
        let w1 = values(r1 * cols, 1);
        let w2 = values(r2 * cols, 2);
        let lin = Linear::new(vec![
            Matrix::new(
                WeightType::Bf16,
                r1,
                cols,
                Bytes::Owned(bf16_bytes(&w1).into()),
            )
            .unwrap(),
            Matrix::new(
                WeightType::Bf16,
                r2,
                cols,
                Bytes::Owned(bf16_bytes(&w2).into()),
            )
            .unwrap(),
        ])
        .unwrap();
        let wide: Vec<f32> = w1
            .iter()
            .chain(&w2)
            .map(|v| half::bf16::from_f32(*v).to_f32())
            .collect();
        for &t in ts {
            let x = values(t * cols, 10 + t as u64);
            let mut out = vec![0f32; t * lin.rows];
            lin.forward(&x, &mut out);
            for i in 0..t {
                for o in 0..lin.rows {
                    let want: f64 = (0..cols)
                        .map(|c| wide[o * cols + c] as f64 * x[i * cols + c] as f64)
                        .sum();
                    let got = out[i * lin.rows + o] as f64;
                    assert!(
                        (got - want).abs() < tol,
                        "t {t} row {i} col {o}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn gather_widens_rows_and_checks_ids() {
        let w = values(4 * 8, 3);
        let m = Matrix::new(WeightType::Bf16, 4, 8, Bytes::Owned(bf16_bytes(&w).into())).unwrap();
        let g = m.gather(&[2, 0]).unwrap();
        assert_eq!(g[0], half::bf16::from_f32(w[16]).to_f32());
        assert_eq!(g[8], half::bf16::from_f32(w[0]).to_f32());
        assert!(m
            .gather(&[4])
            .unwrap_err()
            .to_string()
            .contains("token id 4"));
        assert!(Matrix::new(WeightType::F32, 2, 2, Bytes::Owned(vec![0; 15].into())).is_err());
    }
}
