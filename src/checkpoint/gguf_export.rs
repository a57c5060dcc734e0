//! Llama 3 weights -> one GGUF file, equal to what llama.cpp's `convert_hf_to_gguf.py` writes for
//! the Hugging Face directory of the same weights (the one `convert --to hf` makes).
//!
//! The metadata is derived from that directory's JSON files ([`HfDocs`]; for a Meta checkpoint the
//! command builds them in memory exactly as `convert --to hf` would write them), so both sources
//! go through one path. Tensors come out in the converter's order (per safetensors shard, names
//! sorted), q/k rows in Meta's order (an HF source is un-permuted), 1-D tensors as F32, every
//! other weight in the file type. Each tensor streams through [`stream::write_region`]: memory
//! stays at a few blocks whatever the model size.
use super::convert::{self as conv, DEFAULT_MAX_SHARD};
use super::hf::{rope_from_config, HfDir};
use super::layout::{self, Permute, Role, Split};
use super::stream::{self, Buffers, CastStats, FullTensor, Region, RowPermute};
use super::ModelDir;
use crate::formats::copy::{self, CHUNK};
use crate::formats::gguf::{self, GgmlType, Header, TensorEntry};
use crate::formats::DType;
use crate::progress::Reporter;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use std::fs::File;
use std::io::Write;

/// `general.file_type`: what the weights (2-D tensors) are stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl FileType {
    /// llama.cpp's `LlamaFileType` number.
    pub fn code(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q8_0 => 7,
            FileType::BF16 => 32,
        }
    }

    fn weight_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
        }
    }

    pub fn from_dtype(d: DType) -> Option<FileType> {
        match d {
            DType::F32 => Some(FileType::F32),
            DType::F16 => Some(FileType::F16),
            DType::BF16 => Some(FileType::BF16),
            _ => None,
        }
    }
}

/// The Hugging Face files the metadata comes from.
#[derive(Debug, Clone)]
pub struct HfDocs {
    pub config: Json,
    pub generation: Option<Json>,
    pub tokenizer: Json,
    pub tokenizer_config: Option<Json>,
    /// The chat template(s) of the files beside tokenizer_config.json (`chat_template.jinja`, with
    /// `additional_chat_templates/*.jinja` as a list of `{name, template}`, or `chat_template.json`),
    /// used when tokenizer_config.json has no `chat_template`.
    pub chat_template_files: Option<Json>,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// None: the dtype of the source's first matrix.
    pub file_type: Option<FileType>,
    /// `general.name`.
    pub name: String,
    /// `tokenizer.ggml.pre`, as the caller identified the pre-tokenizer.
    pub pre_tokenizer: String,
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
pub struct Plan {
    pub header: Header,
    pub file_type: FileType,
    items: Vec<Planned>,
}

impl Plan {
    /// Size of the whole file.
    pub fn file_size(&self) -> Result<u64> {
        let (_, data) = self.header.layout()?;
        Ok(self.header.encode()?.len() as u64 + data)
    }

    /// Tensor bytes (without padding).
    pub fn tensor_bytes(&self) -> Result<u64> {
        self.items.iter().map(|i| i.entry.nbytes()).sum()
    }
}

/// GGUF name of a Meta weight name.
pub fn gguf_name(meta: &str) -> Option<String> {
    Some(match meta {
        "tok_embeddings.weight" => "token_embd.weight".into(),
        "norm.weight" => "output_norm.weight".into(),
        "output.weight" => "output.weight".into(),
        _ => {
            let rest = meta.strip_prefix("layers.")?;
            let (n, tail) = rest.split_once('.')?;
            let g = match tail {
                "attention.wq.weight" => "attn_q",
                "attention.wk.weight" => "attn_k",
                "attention.wv.weight" => "attn_v",
                "attention.wo.weight" => "attn_output",
                "feed_forward.w1.weight" => "ffn_gate",
                "feed_forward.w2.weight" => "ffn_down",
                "feed_forward.w3.weight" => "ffn_up",
                "attention_norm.weight" => "attn_norm",
                "ffn_norm.weight" => "ffn_norm",
                _ => return None,
            };
            format!("blk.{n}.{g}.weight")
        }
    })
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
    let names: Vec<String> = conv::hf_order(s.dir.params.n_layers)
        .into_iter()
        .filter(|n| !(s.tied && n == "lm_head.weight"))
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
    if shape.len() <= 1 || name.ends_with("_norm.weight") {
        return GgmlType::F32;
    }
    let t = ft.weight_type();
    let inner = *shape.last().expect("2-D") as u64;
    if t.row_bytes(inner).is_none() {
        return GgmlType::F16;
    }
    t
}

/// Decide the whole file: metadata and tensor table.
pub fn plan(dir: &ModelDir, docs: &HfDocs, opts: &Options) -> Result<Plan> {
    let srcs = sources(dir)?;
    let file_type = match opts.file_type {
        Some(f) => f,
        None => {
            let first = srcs
                .iter()
                .find(|s| s.1.shape.len() >= 2)
                .ok_or_else(|| anyhow!("{}: no weight matrices", dir.dir().display()))?;
            FileType::from_dtype(first.1.dtype).ok_or_else(|| {
                anyhow!(
                    "tensor {}: {} weights need an explicit --dtype",
                    first.0,
                    first.1.dtype
                )
            })?
        }
    };
    let head_dim = dir.params().head_dim();
    let mut items = Vec::new();
    if let Some(factors) = rope_factors(&docs.config, head_dim)? {
        items.push(Planned {
            entry: TensorEntry {
                name: "rope_freqs.weight".into(),
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
        let name = gguf_name(&meta).ok_or_else(|| anyhow!("tensor {meta}: no GGUF name"))?;
        let ggml_type = tensor_type(&t.shape, &name, file_type);
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
    let kvs = super::gguf_meta::metadata(docs, file_type, &opts.name, params, &opts.pre_tokenizer)?;
    Ok(Plan {
        header: Header {
            kvs,
            tensors: items.iter().map(|i| i.entry.clone()).collect(),
        },
        file_type,
        items,
    })
}

/// Llama 3.1's `rope_freqs.weight` when config.json asks for `llama3` rope scaling: per
/// frequency 1 (short wavelengths), `factor` (long ones), or the smooth blend between, computed
/// in f32 the way the converter's torch code does (x / y as reciprocal(y) * x).
pub fn rope_factors(config: &Json, head_dim: usize) -> Result<Option<Vec<f32>>> {
    let (theta, scaling) = rope_from_config(config);
    let Some(s) = scaling else { return Ok(None) };
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Json::as_str);
    if !kind.is_some_and(|k| k.eq_ignore_ascii_case("llama3")) {
        bail!("config.json: rope scaling {kind:?} is not supported (only llama3)");
    }
    let num = |k: &str, d: f64| s.get(k).and_then(Json::as_f64).unwrap_or(d);
    let (factor, low, high) = (
        num("factor", 8.0),
        num("low_freq_factor", 1.0),
        num("high_freq_factor", 4.0),
    );
    let old_ctx = num("original_max_position_embeddings", 8192.0);
    let (low_wl, high_wl) = ((old_ctx / low) as f32, (old_ctx / high) as f32);
    let two_pi = std::f64::consts::TAU as f32;
    let base = theta as f32 as f64;
    let factors = (0..head_dim)
        .step_by(2)
        .map(|i| {
            let e = i as f32 / head_dim as f32;
            let freq = 1.0 / (base.powf(f64::from(e)) as f32);
            let wavelen = (1.0 / freq) * two_pi;
            if wavelen < high_wl {
                1.0
            } else if wavelen > low_wl {
                factor as f32
            } else {
                let smooth = ((1.0 / wavelen) * old_ctx as f32 - low as f32) / (high - low) as f32;
                1.0 / ((1.0 - smooth) / factor as f32 + smooth)
            }
        })
        .collect();
    Ok(Some(factors))
}

/// Quantizes the f32 values written into it to Q8_0, block by block.
struct Q8Writer<'a> {
    inner: &'a mut dyn Write,
    pending: Vec<u8>,
    vals: Vec<f32>,
    out: Vec<u8>,
}

impl Write for Q8Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let whole = self.pending.len() / (4 * gguf::Q8_0_BLOCK) * (4 * gguf::Q8_0_BLOCK);
        self.vals.clear();
        self.vals.extend(
            self.pending[..whole]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        self.out.clear();
        gguf::quantize_q8_0(&self.vals, &mut self.out);
        self.inner.write_all(&self.out)?;
        self.pending.drain(..whole);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Write `plan` to `file` (positioned at 0): header, then each tensor padded to the alignment.
/// Tensor bytes are reported to `progress` as one task, "weights". Returns values clamped by an f16 cast, per tensor.
pub fn write(plan: &Plan, file: &File, progress: &dyn Reporter) -> Result<Vec<(String, u64)>> {
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
        let n = write_tensor(item, &mut w, file, &mut bufs, &mut copy_buf).with_context(ctx)?;
        if n > 0 {
            clamped.push((item.entry.name.clone(), n));
        }
        let pad = gguf::pad_to(want, align) - want;
        w.write_all(&vec![0u8; pad as usize])?;
        task.advance(want);
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

/// One tensor's bytes; returns how many values an f16 cast clamped.
fn write_tensor(
    item: &Planned,
    w: &mut std::io::BufWriter<&File>,
    file: &File,
    bufs: &mut Buffers,
    copy_buf: &mut Vec<u8>,
) -> Result<u64> {
    let (t, unpermute) = match &item.payload {
        Payload::F32(v) => {
            for x in v {
                w.write_all(&x.to_le_bytes())?;
            }
            return Ok(0);
        }
        Payload::Tensor(t, u) => (t, *u),
    };
    let ty = item.entry.ggml_type;
    let to = match ty {
        GgmlType::F32 | GgmlType::Q8_0 => DType::F32,
        GgmlType::F16 => DType::F16,
        GgmlType::BF16 => DType::BF16,
        other => bail!("cannot write {}", other.name()),
    };
    // Unchanged bytes in one piece: let the kernel copy them.
    if let ([p], None) = (t.pieces.as_slice(), unpermute) {
        let whole = p.rows == (0..t.rows()) && p.cols == (0..t.cols());
        if whole && to == t.dtype && ty != GgmlType::Q8_0 {
            w.flush()?;
            copy::copy_file_range_all(&p.src, p.offset, t.nbytes(), file, copy_buf)?;
            return Ok(0);
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
    if ty == GgmlType::Q8_0 {
        let mut q = Q8Writer {
            inner: w,
            pending: Vec::with_capacity(CHUNK),
            vals: Vec::new(),
            out: Vec::new(),
        };
        stream::write_region(t, &region, Some(to), bufs, &mut q, &mut stats)?;
        if !q.pending.is_empty() {
            bail!("rows are not whole Q8_0 blocks");
        }
    } else {
        stream::write_region(t, &region, Some(to), bufs, w, &mut stats)?;
    }
    Ok(stats.overflowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(
            gguf_name("tok_embeddings.weight").unwrap(),
            "token_embd.weight"
        );
        assert_eq!(
            gguf_name("layers.3.feed_forward.w1.weight").unwrap(),
            "blk.3.ffn_gate.weight"
        );
        assert_eq!(
            gguf_name("layers.0.attention_norm.weight").unwrap(),
            "blk.0.attn_norm.weight"
        );
        assert!(gguf_name("rope.freqs").is_none());
    }

    #[test]
    fn types_per_tensor() {
        assert_eq!(tensor_type(&[64], "x", FileType::Q8_0), GgmlType::F32);
        assert_eq!(
            tensor_type(&[8, 64], "blk.0.attn_q.weight", FileType::Q8_0),
            GgmlType::Q8_0
        );
        // Rows of 16 values are not whole Q8_0 blocks: F16, like the converter.
        assert_eq!(
            tensor_type(&[8, 16], "blk.0.attn_q.weight", FileType::Q8_0),
            GgmlType::F16
        );
        assert_eq!(
            tensor_type(&[8, 16], "token_embd.weight", FileType::BF16),
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
