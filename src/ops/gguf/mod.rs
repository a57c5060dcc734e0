//! Llama 3 weights -> one GGUF file, equal to what llama.cpp's `convert_hf_to_gguf.py` writes for
//! the Hugging Face directory of the same weights (the one `convert --to hf` makes).
//!
//! The metadata is derived from that directory's JSON files ([`docs::HfDocs`]; for a Meta
//! checkpoint they are built in memory exactly as `convert --to hf` would write them), so both
//! sources go through one path; the tokenizer must be Llama 3's (`docs`). Tensors come out in the converter's order (per safetensors shard, names
//! sorted), q/k rows in Meta's order (an HF source is un-permuted), 1-D tensors as F32, every
//! other weight in the file type. Each tensor streams through [`stream::write_region`]: memory
//! stays at a few blocks whatever the model size.
mod docs;
mod meta;
mod types;

use self::docs::HfDocs;
use self::types::{quantize_order, ModelFacts, QuantRules};
use super::convert::{self as conv, DEFAULT_MAX_SHARD};
use crate::checkpoint::hf::HfDir;
use crate::checkpoint::layout::{self, Permute, Role, Split};
use crate::checkpoint::rope::{rope_from_config, RopeScaling};
use crate::checkpoint::stream::{self, Buffers, CastStats, FullTensor, Region, RowPermute};
use crate::checkpoint::tensors::{self, part_of, Naming, Part, GGUF_ROPE_FACTORS};
use crate::checkpoint::{DirKind, ModelDir};
use crate::formats::copy;
use crate::formats::gguf::{self, GgmlType, Header, TensorEntry, Value};
use crate::formats::quant;
use crate::formats::DType;
use crate::progress::Reporter;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use std::fs::File;
use std::io::Write;
use std::path::Path;

pub(crate) use types::FileType;

/// What [`plan_dir`] needs besides the directory.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// None: the dtype of the source's first matrix.
    pub file_type: Option<FileType>,
    /// A Meta source is an instruct model (its stop tokens and chat template go into the file).
    pub instruct: bool,
    /// The caller was told instruct or base: a Hugging Face source's own files decide, and a
    /// note says so.
    pub instruct_given: bool,
}

enum Payload {
    /// Rows go out in Meta's order: `Some(head_dim)` un-permutes an HF q/k matrix.
    Tensor(FullTensor, Option<usize>),
    F32(Vec<f32>),
}

struct Planned {
    entry: TensorEntry,
    payload: Payload,
}

/// Everything the file will hold, decided before the first byte is written.
pub(crate) struct Plan {
    pub header: Header,
    pub file_type: FileType,
    /// The kind of the source directory; None for a GGUF source.
    pub source: Option<DirKind>,
    items: Vec<Planned>,
}

impl Plan {
    /// Size of the whole file.
    pub(crate) fn file_size(&self) -> Result<u64> {
        let (_, data) = self.header.layout()?;
        Ok(self.header.encode()?.len() as u64 + data)
    }

    /// Tensor bytes (without padding).
    fn tensor_bytes(&self) -> Result<u64> {
        self.items.iter().map(|i| i.entry.nbytes()).sum()
    }
}

/// Source tensors in the order the converter meets them, as (Meta name, tensor, un-permute?).
fn sources(dir: &ModelDir) -> Result<Vec<(String, FullTensor, Role, bool)>> {
    match dir {
        ModelDir::Meta(m) => meta_sources(&m.dir),
        ModelDir::Hf(h) => hf_sources(h),
    }
}

/// A Meta checkpoint in the order of the HF directory `convert --to hf` makes: transformers'
/// shards of at most 5 GB, names sorted inside each (the order the converter reads them).
fn meta_sources(src: &std::path::Path) -> Result<Vec<(String, FullTensor, Role, bool)>> {
    let mut s = conv::open_meta_llama3(src)?;
    let names: Vec<String> = tensors::hf_order(s.dir.params.n_layers)
        .into_iter()
        .filter(|n| !(s.tied && n == Part::Output.hf_name()))
        .collect();
    let meta: Vec<String> = names
        .iter()
        .map(|n| layout::hf_to_meta(n).expect("hf_order names map back"))
        .collect();
    let sizes: Vec<u64> = meta.iter().map(|n| s.full[n].0.nbytes()).collect();
    let mut out = Vec::new();
    for mut shard in conv::plan_shards(&sizes, DEFAULT_MAX_SHARD) {
        shard.sort_by(|&a, &b| names[a].cmp(&names[b]));
        for i in shard {
            let (t, role) = s
                .full
                .remove(&meta[i])
                .expect("every expected weight is open");
            out.push((meta[i].clone(), t, role, false));
        }
    }
    Ok(out)
}

/// An HF directory in the converter's order: shard files sorted, names sorted inside each.
fn hf_sources(h: &HfDir) -> Result<Vec<(String, FullTensor, Role, bool)>> {
    let p = &h.params;
    let vocab = p
        .vocab()
        .ok_or_else(|| anyhow!("config.json: vocab_size is invalid"))?;
    let expected = layout::meta_weights(p, vocab, Split::Rows, false);
    let mut out = Vec::new();
    for f in &h.files {
        let mut names: Vec<&str> = f.tensors().map(|t| t.name.as_str()).collect();
        names.sort();
        for hf_name in names {
            if hf_name.ends_with("rotary_emb.inv_freq") {
                continue;
            }
            let meta = layout::hf_to_meta(hf_name).ok_or_else(|| {
                anyhow!(
                    "{}: tensor {hf_name} is not part of a Llama model",
                    f.path().display()
                )
            })?;
            let w = expected.iter().find(|w| w.name == meta).ok_or_else(|| {
                anyhow!(
                    "{}: tensor {hf_name} does not fit config.json",
                    f.path().display()
                )
            })?;
            let t = h.full(hf_name)?;
            if t.shape != w.full_shape {
                bail!(
                    "{}: tensor {hf_name} has shape {:?}, but config.json implies {:?}",
                    f.path().display(),
                    t.shape,
                    w.full_shape
                );
            }
            let qk = matches!(w.role, Role::Query | Role::Key);
            out.push((meta, t, w.role, qk));
        }
    }
    Ok(out)
}

/// The GGML type a tensor is stored as: 1-D tensors and norms stay F32; a Q8_0 matrix whose rows
/// are not whole blocks falls back to F16 (as the converter does).
fn tensor_type(shape: &[usize], name: &str, ft: FileType) -> GgmlType {
    if shape.len() <= 1 || part_of(Naming::Gguf, name).is_some_and(Part::is_norm) {
        return GgmlType::F32;
    }
    let t = ft.weight_type();
    let inner = *shape.last().expect("2-D") as u64;
    if t.row_bytes(inner).is_none() {
        return GgmlType::F16;
    }
    t
}

/// A model directory -> the plan of its GGUF file: the Hugging Face files the metadata comes from
/// (read, or built from a Meta checkpoint), the tokenizer checked to be Llama 3's, then [`plan`]
/// with the directory's name as `general.name`. Notes for the user go through `progress`.
pub(crate) fn plan_dir(src: &Path, opts: &Options, progress: &dyn Reporter) -> Result<Plan> {
    let (docs, tok) = match crate::checkpoint::detect(src)? {
        DirKind::Meta => docs::from_meta(src, opts.instruct, progress)?,
        DirKind::Hf => docs::from_hf(src, opts.instruct_given, progress)?,
    };
    docs::check_llama3_pretokenizer(&tok)?;
    let dir = ModelDir::open(src)?;
    let name = src
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    plan(&dir, &docs, opts.file_type, &name)
}

/// Decide the whole file: metadata and tensor table. A llama-quantize file type is planned as
/// the converter's file in the source's own dtype, then [`requantize`]d.
fn plan(dir: &ModelDir, docs: &HfDocs, file_type: Option<FileType>, name: &str) -> Result<Plan> {
    let srcs = sources(dir)?;
    let first = srcs
        .iter()
        .find(|s| s.1.shape.len() >= 2)
        .ok_or_else(|| anyhow!("{}: no weight matrices", dir.dir().display()))?;
    let source_type = FileType::from_dtype(first.1.dtype);
    let file_type = match (file_type, source_type) {
        (Some(f), _) => f,
        (None, Some(f)) => f,
        (None, None) => bail!(
            "tensor {}: {} weights need an explicit --dtype",
            first.0,
            first.1.dtype
        ),
    };
    let direct = if file_type.is_llama_quantize() {
        source_type.unwrap_or(FileType::F32)
    } else {
        file_type
    };
    let head_dim = dir.params().head_dim();
    let mut items = Vec::new();
    if let Some(factors) = rope_factors(&docs.config, head_dim)? {
        items.push(Planned {
            entry: TensorEntry {
                name: GGUF_ROPE_FACTORS.into(),
                shape: vec![factors.len() as u64],
                ggml_type: GgmlType::F32,
            },
            payload: Payload::F32(factors),
        });
    }
    for (meta, t, _, unpermute) in srcs {
        if !t.dtype.is_float() {
            bail!("tensor {meta}: {} is not a floating-point type", t.dtype);
        }
        let name =
            layout::meta_to_gguf(&meta).ok_or_else(|| anyhow!("tensor {meta}: no GGUF name"))?;
        let ggml_type = tensor_type(&t.shape, &name, direct);
        items.push(Planned {
            entry: TensorEntry {
                name,
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                ggml_type,
            },
            payload: Payload::Tensor(t, unpermute.then_some(head_dim)),
        });
    }
    let params: u64 = items
        .iter()
        .map(|i| i.entry.shape.iter().product::<u64>())
        .sum();
    let pre = docs::LLAMA3_PRE_TOKENIZER;
    let kvs = meta::metadata(docs, direct, name, params, pre)?;
    let plan = Plan {
        header: Header {
            kvs,
            tensors: items.iter().map(|i| i.entry.clone()).collect(),
        },
        file_type: direct,
        source: Some(dir.kind()),
        items,
    };
    if !file_type.is_llama_quantize() {
        return Ok(plan);
    }
    let p = dir.params();
    requantize(plan, file_type, p.n_layers, p.n_heads, p.kv_heads())
}

/// What llama-quantize makes of a planned file: tensors in its order with its per-tensor types,
/// the same metadata with `general.quantization_version` and then `general.file_type` moved to
/// the end (it sets both, and setting a key re-appends it).
fn requantize(
    mut plan: Plan,
    ft: FileType,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
) -> Result<Plan> {
    plan.items
        .sort_by(|a, b| quantize_order(&a.entry.name, &b.entry.name));
    let has = |f: &dyn Fn(&str) -> bool| plan.items.iter().filter(|i| f(&i.entry.name)).count();
    let facts = ModelFacts {
        n_layers,
        n_heads,
        n_kv_heads,
        tied: has(&|n| n == Part::Output.gguf_name()) == 0,
        n_attn_v: has(&|n| part_of(Naming::Gguf, n) == Some(Part::Wv)),
    };
    let mut rules = QuantRules::new(ft, facts);
    for it in &mut plan.items {
        let e = &mut it.entry;
        e.ggml_type = rules.tensor_type(&e.name, &e.shape, e.ggml_type);
        if e.ggml_type.is_quantized() && !quant::can_quantize(e.ggml_type) {
            bail!("tensor {}: cannot write {}", e.name, e.ggml_type.name());
        }
    }
    let kvs = &mut plan.header.kvs;
    kvs.retain(|(k, _)| k != "general.quantization_version" && k != "general.file_type");
    kvs.push(("general.quantization_version".into(), Value::U32(2)));
    kvs.push(("general.file_type".into(), Value::U32(ft.code())));
    plan.header.tensors = plan.items.iter().map(|i| i.entry.clone()).collect();
    plan.file_type = ft;
    Ok(plan)
}

/// Re-quantize an f32/f16/bf16 GGUF file of a Llama model as llama-quantize does.
pub(crate) fn plan_from_gguf(src: &gguf::GgufFile, ft: FileType) -> Result<Plan> {
    let arch = src.get("general.architecture").and_then(Value::as_str);
    if arch != Some("llama") {
        bail!("general.architecture is {arch:?}; only Llama models (\"llama\") are supported");
    }
    let num = |k: &str| {
        src.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| anyhow!("metadata key {k} is missing"))
    };
    let (n_layers, n_heads) = (
        num("llama.block_count")?,
        num("llama.attention.head_count")?,
    );
    let n_kv = num("llama.attention.head_count_kv").unwrap_or(n_heads);
    let source = std::sync::Arc::new(copy::Source::open(&src.path)?);
    let mut items = Vec::new();
    for t in &src.tensors {
        let dtype = match t.ggml_type {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            other => bail!(
                "tensor {}: is {}; only f32, f16 and bf16 tensors can be quantized (as llama-quantize without --allow-requantize)",
                t.name,
                other.name()
            ),
        };
        let shape: Vec<usize> = t.shape().iter().map(|&d| d as usize).collect();
        let (rows, cols) = match shape.as_slice() {
            [] => (1, 1),
            [n] => (1, *n),
            [r, rest @ ..] => (*r, rest.iter().product()),
        };
        let piece =
            stream::Piece::plain(source.clone(), src.data_offset + t.offset, 0..rows, 0..cols);
        items.push(Planned {
            entry: TensorEntry {
                name: t.name.clone(),
                shape: t.shape(),
                ggml_type: t.ggml_type,
            },
            payload: Payload::Tensor(FullTensor::new(&t.name, dtype, shape, vec![piece])?, None),
        });
    }
    let plan = Plan {
        header: Header {
            kvs: src.kvs.clone(),
            tensors: Vec::new(),
        },
        file_type: ft,
        source: None,
        items,
    };
    requantize(plan, ft, n_layers, n_heads, n_kv)
}

/// Llama 3.1's `rope_freqs.weight` when config.json asks for `llama3` rope scaling (see
/// [`RopeScaling::divisors`]).
fn rope_factors(config: &Json, head_dim: usize) -> Result<Option<Vec<f32>>> {
    let (theta, _) = rope_from_config(config);
    Ok(RopeScaling::from_hf_config(config)?.map(|s| s.divisors(theta, head_dim)))
}

/// Source values per quantization batch. A batch is quantized on the rayon pool in the background
/// while the next one is read and the one before it written, so every core stays busy; small
/// enough that the pipeline's fill and drain at each tensor's ends cost little.
const QUANT_BATCH: usize = 1 << 20;

/// A batch of whole rows being quantized: its source bytes and, once joined, its output.
type Batch = std::thread::JoinHandle<(Vec<u8>, Vec<u8>)>;

/// Quantizes the rows written into it (little-endian `dtype` values) to `ty`, a batch of whole
/// rows at a time, one batch in flight while the next is filled.
struct QuantWriter<'a> {
    inner: &'a mut dyn Write,
    ty: GgmlType,
    dtype: DType,
    ncols: usize,
    pending: Vec<u8>,
    in_flight: Option<Batch>,
    /// Buffers of finished batches, reused.
    spare: Vec<Vec<u8>>,
    task: &'a dyn crate::progress::Task,
}

impl QuantWriter<'_> {
    /// Start quantizing the whole rows pending (only once a batch is full unless `all`), then
    /// write the batch before it.
    fn quantize(&mut self, all: bool) -> std::io::Result<()> {
        let row = self.ncols * self.dtype.size();
        let whole = self.pending.len() / row * row;
        if whole == 0 || (!all && whole < QUANT_BATCH * self.dtype.size()) {
            return if all { self.finish_in_flight() } else { Ok(()) };
        }
        let mut next = self.spare.pop().unwrap_or_default();
        next.clear();
        next.extend_from_slice(&self.pending[whole..]);
        let mut src = std::mem::replace(&mut self.pending, next);
        src.truncate(whole);
        let mut out = self.spare.pop().unwrap_or_default();
        let (ty, dtype, ncols) = (self.ty, self.dtype, self.ncols);
        let batch = std::thread::spawn(move || {
            let row_bytes = ty.row_bytes(ncols as u64).expect("planned") as usize;
            out.resize(src.len() / row * row_bytes, 0);
            quant::quantize_raw_rows(ty, dtype, &src, ncols, &mut out);
            (src, out)
        });
        self.finish_in_flight()?;
        self.in_flight = Some(batch);
        if all {
            self.finish_in_flight()?;
        }
        Ok(())
    }

    /// Wait for the batch in flight and write its bytes.
    fn finish_in_flight(&mut self) -> std::io::Result<()> {
        let Some(batch) = self.in_flight.take() else {
            return Ok(());
        };
        let (src, out) = batch
            .join()
            .map_err(|_| std::io::Error::other("quantizer thread panicked"))?;
        self.inner.write_all(&out)?;
        self.task.advance(out.len() as u64);
        self.spare.extend([src, out]);
        Ok(())
    }
}

impl Write for QuantWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        self.quantize(false)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Write `plan` to `file` (positioned at 0): header, then each tensor padded to the alignment.
/// Tensor bytes are reported to `progress` as one task, "weights". Returns values clamped by an f16 cast, per tensor.
pub(crate) fn write(
    plan: &Plan,
    file: &File,
    progress: &dyn Reporter,
) -> Result<Vec<(String, u64)>> {
    let header = plan.header.encode()?;
    let align = plan.header.alignment();
    let total = plan.tensor_bytes()?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(&header)?;
    let mut bufs = Buffers::default();
    let mut copy_buf = Vec::new();
    let mut clamped = Vec::new();
    let task = progress.task("weights", Some(total));
    for item in &plan.items {
        let want = item.entry.nbytes()?;
        let ctx = || format!("tensor {}", item.entry.name);
        let mut out = Out {
            w: &mut w,
            file,
            bufs: &mut bufs,
            copy_buf: &mut copy_buf,
            task: &*task,
        };
        let (n, advanced) = write_tensor(item, &mut out).with_context(ctx)?;
        if n > 0 {
            clamped.push((item.entry.name.clone(), n));
        }
        let pad = gguf::pad_to(want, align) - want;
        w.write_all(&vec![0u8; pad as usize])?;
        task.advance(want - advanced);
    }
    w.flush()?;
    drop(w);
    stream::finish_checks(plan.items.iter().filter_map(|i| match &i.payload {
        Payload::Tensor(t, _) => Some(t),
        Payload::F32(_) => None,
    }))?;
    let size = file.metadata()?.len();
    let expect = plan.file_size()?;
    if size != expect {
        bail!("wrote {size} bytes, expected {expect}");
    }
    Ok(clamped)
}

/// Where a tensor goes: the buffered file writer (and the file, for kernel copies), with
/// reusable buffers and the progress task.
struct Out<'a, 'b> {
    w: &'a mut std::io::BufWriter<&'b File>,
    file: &'b File,
    bufs: &'a mut Buffers,
    copy_buf: &'a mut Vec<u8>,
    task: &'a dyn crate::progress::Task,
}

/// One tensor's bytes; returns how many values an f16 cast clamped and how many bytes were
/// already reported to the progress task.
fn write_tensor(item: &Planned, out: &mut Out) -> Result<(u64, u64)> {
    let (t, unpermute) = match &item.payload {
        Payload::F32(v) => {
            for x in v {
                out.w.write_all(&x.to_le_bytes())?;
            }
            return Ok((0, 0));
        }
        Payload::Tensor(t, u) => (t, *u),
    };
    let ty = item.entry.ggml_type;
    let to = match ty {
        GgmlType::F32 => DType::F32,
        GgmlType::F16 => DType::F16,
        GgmlType::BF16 => DType::BF16,
        q if quant::can_quantize(q) => DType::F32,
        other => bail!("cannot write {}", other.name()),
    };
    // Unchanged bytes in one piece: let the kernel copy them.
    if let ([p], None) = (t.pieces.as_slice(), unpermute) {
        let whole = p.rows == (0..t.rows()) && p.cols == (0..t.cols());
        if whole && to == t.dtype && !ty.is_quantized() && p.fp8_scales.is_none() {
            out.w.flush()?;
            copy::copy_file_range_all(&p.src, p.offset, t.nbytes(), out.file, out.copy_buf)?;
            return Ok((0, 0));
        }
    }
    let map = move |j: usize| Permute::HfToMeta.source_row(j, unpermute.unwrap_or(1));
    let mut region: Region = t.all();
    if let Some(hd) = unpermute {
        region.permute = Some(RowPermute {
            group: hd,
            map: &map,
        });
    }
    let mut stats = CastStats::default();
    if !ty.is_quantized() {
        stream::write_region(t, &region, Some(to), out.bufs, out.w, &mut stats)?;
        return Ok((stats.overflowed, 0));
    }
    // The source's own values (bf16, f16 or f32; fp8 pieces arrive dequantized to f32): the
    // batches decode them to f32 on the rayon pool.
    let mut q = QuantWriter {
        inner: out.w,
        ty,
        dtype: t.dtype,
        ncols: t.cols(),
        pending: Vec::new(),
        in_flight: None,
        spare: Vec::new(),
        task: out.task,
    };
    stream::write_region(t, &region, None, out.bufs, &mut q, &mut stats)?;
    q.quantize(true)?;
    if !q.pending.is_empty() {
        bail!("rows are not whole {} blocks", ty.name());
    }
    Ok((0, item.entry.nbytes()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_per_tensor() {
        let wq = layout::meta_to_gguf(&Part::Wq.at(0)).unwrap();
        assert_eq!(tensor_type(&[64], "x", FileType::Q8_0), GgmlType::F32);
        assert_eq!(tensor_type(&[8, 64], &wq, FileType::Q8_0), GgmlType::Q8_0);
        // Rows of 16 values are not whole Q8_0 blocks: F16, like the converter.
        assert_eq!(tensor_type(&[8, 16], &wq, FileType::Q8_0), GgmlType::F16);
        assert_eq!(
            tensor_type(&[8, 16], Part::Embedding.gguf_name(), FileType::BF16),
            GgmlType::BF16
        );
    }

    #[test]
    fn rope_factors_have_the_three_bands() {
        let cfg = serde_json::json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}});
        let f = rope_factors(&cfg, 128).unwrap().unwrap();
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
        assert!(rope_factors(&serde_json::json!({"rope_theta": 1e4}), 128)
            .unwrap()
            .is_none());
    }
}
