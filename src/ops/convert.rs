//! Meta checkpoint <-> Hugging Face safetensors, streamed.
//!
//! Both directions are the same loop: for every output tensor, find the logical source tensor
//! (shards merged by [`MetaDir::full`] or one safetensors slice), and hand it to
//! [`stream::write_region`] with the q/k row permutation (groups of one head) and the optional
//! cast. Nothing is ever held whole, so memory stays at a few 8 MB blocks whatever the model.
//!
//! [`to_hf`] and [`to_meta`] are the operations `convert --to hf|meta` runs: the weights, and
//! beside them the tokenizer files (written from `tokenizer.model`, or `tokenizer.model` rebuilt
//! from `tokenizer.json`) and, for Meta, `checklist.chk`.
use crate::checkpoint::checklist;
use crate::checkpoint::hf::HfDir;
use crate::checkpoint::hf_config::{self, ModelKind};
use crate::checkpoint::layout::{self, Permute, Role, Split};
use crate::checkpoint::meta::{self, MetaDir};
use crate::checkpoint::stream::{self, Buffers, CastStats, FullTensor, Region, RowPermute};
use crate::checkpoint::tensors::{self, Part};
use crate::checkpoint::Params;
use crate::formats::copy::{self, HashingFile, CHUNK};
use crate::formats::pth::{PthWriter, TensorSpec};
use crate::formats::safetensors::{self as st, Index, IndexMetadata};
use crate::formats::DType;
use crate::progress::{Reporter, Task};
use crate::tokenizer::hf_files::{tiktoken_model_from_tokenizer_json, write_hf_tokenizer_files};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// The Hugging Face tokenizer files [`to_hf`] writes from `tokenizer.model`.
const HF_TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// transformers' default `max_shard_size` ("5GB", decimal).
pub(crate) const DEFAULT_MAX_SHARD: u64 = 5_000_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Cast every floating tensor to this type while streaming.
    pub dtype: Option<DType>,
    /// Meta -> HF: write instruct-model stop tokens.
    pub instruct: bool,
    /// Meta -> HF: shard size limit, transformers' rule.
    pub max_shard_size: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dtype: None,
            instruct: false,
            max_shard_size: DEFAULT_MAX_SHARD,
        }
    }
}

/// What a conversion wrote.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Files written, with their sizes.
    pub files: Vec<(String, u64)>,
    /// md5 of every file written (for checklist.chk).
    md5: BTreeMap<String, String>,
    pub tensors: usize,
    /// Tensor bytes written.
    pub bytes: u64,
    /// Meta -> HF: `lm_head` omitted because it equals the embedding. HF -> Meta: `output.weight`
    /// written as a copy of the tied embedding.
    pub tied: bool,
    /// Values that a cast clamped, per tensor (only tensors with any).
    pub overflow: Vec<(String, u64)>,
}

impl Summary {
    pub(crate) fn overflowed(&self) -> u64 {
        self.overflow.iter().map(|(_, n)| n).sum()
    }
}

/// Parse a shard size the way transformers does ("5GB" = 5*10^9, "500MB", "10KB"), or plain bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let units = [
        ("TB", 1e12),
        ("GB", 1e9),
        ("MB", 1e6),
        ("KB", 1e3),
        ("TIB", 1099511627776.0),
        ("GIB", 1073741824.0),
        ("MIB", 1048576.0),
        ("KIB", 1024.0),
    ];
    let upper = t.to_ascii_uppercase();
    for (u, mult) in units {
        if let Some(num) = upper.strip_suffix(u) {
            let v: f64 = num
                .trim()
                .parse()
                .map_err(|_| anyhow!("size {s:?}: {num:?} is not a number"))?;
            if !(v.is_finite() && v > 0.0) {
                bail!("size {s:?} must be positive");
            }
            return Ok((v * mult) as u64);
        }
    }
    bail!("size {s:?}: expected a number of bytes or a number with KB, MB, GB or TB")
}

/// Split tensors (sizes in state-dict order) into shards exactly as huggingface_hub's
/// `split_torch_state_dict_into_shards` does for `save_pretrained`: walk in order, start a new
/// shard when the next tensor would push the current one past `max`; a tensor larger than `max`
/// gets a shard of its own, placed before the shard still being filled.
pub(crate) fn plan_shards(sizes: &[u64], max: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_size = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if size > max {
            shards.push(vec![i]);
            continue;
        }
        if current_size + size > max {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(i);
        current_size += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// File names transformers gives `n` safetensors shards.
fn shard_file_names(n: usize) -> Vec<String> {
    if n == 1 {
        return vec!["model.safetensors".into()];
    }
    (1..=n)
        .map(|k| format!("model-{k:05}-of-{n:05}.safetensors"))
        .collect()
}

/// Element type a tensor is written in.
fn out_dtype(src: DType, to: Option<DType>) -> Result<DType> {
    match to {
        None => Ok(src),
        Some(t) if t == src => Ok(t),
        Some(t) if matches!(src, DType::BF16 | DType::F16 | DType::F32) => Ok(t),
        Some(t) => bail!("cannot cast {src} to {t}: only BF16, F16 and F32 tensors are cast"),
    }
}

/// Stream a whole tensor, q/k rows reordered for the other rotary convention, optionally cast.
fn write_tensor(
    t: &FullTensor,
    role: Role,
    head_dim: usize,
    permute: Permute,
    to: Option<DType>,
    bufs: &mut Buffers,
    w: &mut dyn Write,
) -> Result<u64> {
    let map = move |j: usize| permute.source_row(j, head_dim);
    let mut region: Region = t.all();
    if matches!(role, Role::Query | Role::Key) {
        region.permute = Some(RowPermute {
            group: head_dim,
            map: &map,
        });
    }
    let mut stats = CastStats::default();
    stream::write_region(t, &region, to, bufs, w, &mut stats)?;
    Ok(stats.overflowed)
}

/// Byte equality of two tensors, read block by block (the tied-embedding test).
fn same_bytes(a: &FullTensor, b: &FullTensor) -> Result<bool> {
    if a.dtype != b.dtype || a.shape != b.shape {
        return Ok(false);
    }
    let row_bytes = (a.cols() * a.dtype.size()).max(1);
    let step = (CHUNK / row_bytes).max(1);
    let (mut ba, mut bb) = (Buffers::default(), Buffers::default());
    let (mut va, mut vb) = (Vec::new(), Vec::new());
    let mut stats = CastStats::default();
    let mut r = 0;
    while r < a.rows() {
        let region = Region {
            rows: r..(r + step).min(a.rows()),
            cols: 0..a.cols(),
            permute: None,
        };
        va.clear();
        vb.clear();
        stream::write_region(a, &region, None, &mut ba, &mut va, &mut stats)?;
        stream::write_region(b, &region, None, &mut bb, &mut vb, &mut stats)?;
        if va != vb {
            return Ok(false);
        }
        r = region.rows.end;
    }
    Ok(true)
}

struct HfOut {
    hf_name: String,
    src: FullTensor,
    role: Role,
    dtype: DType,
}

impl HfOut {
    /// Bytes the tensor takes in the output.
    fn nbytes(&self) -> u64 {
        nbytes(&self.src, self.dtype)
    }
}

/// A Meta Llama 3 checkpoint opened for conversion: every logical tensor located (a missing,
/// unknown or misshapen tensor fails before any byte is written), and whether `output.weight`
/// repeats the embedding (then Hugging Face ties them and writes no `lm_head`).
pub(crate) struct MetaSource {
    pub dir: MetaDir,
    vocab: usize,
    /// Meta name -> the full tensor and its role.
    pub full: HashMap<String, (FullTensor, Role)>,
    pub tied: bool,
}

/// Open `src` as a Meta Llama 3 checkpoint (see [`MetaSource`]).
pub(crate) fn open_meta_llama3(src: &Path) -> Result<MetaSource> {
    let m = MetaDir::open_checked(src)?;
    let p = &m.params;
    let Some(vocab) = p.vocab() else {
        bail!(
            "{}: vocab_size -1 marks a Llama 2 checkpoint (sentencepiece tokenizer); convert handles Llama 3 models only",
            src.join("params.json").display()
        );
    };
    if m.embed_split()? != Split::Rows {
        bail!(
            "{}: {} is split by columns (Llama 2 layout); convert handles Llama 3 models only",
            m.shards[0].path().display(),
            Part::Embedding.meta_name()
        );
    }
    let expected = m.expected()?;
    let roles: HashMap<&str, Role> = expected.iter().map(|w| (w.name.as_str(), w.role)).collect();
    for shard in &m.shards {
        for t in shard.tensors() {
            if !roles.contains_key(t.name.as_str()) {
                let what = if t.name.ends_with(".bias") {
                    "bias tensors are not supported"
                } else {
                    "not a weight of this Llama 3 model (unsupported)"
                };
                bail!("{}: tensor {}: {what}", shard.path().display(), t.name);
            }
        }
    }
    let mut full: HashMap<String, (FullTensor, Role)> = HashMap::new();
    for w in &expected {
        full.insert(w.name.clone(), (m.full(&w.name)?, w.role));
    }
    crate::checkpoint::fp8::dequantize_on_read(src, p.n_layers, full.values_mut().map(|(t, _)| t))?;
    let (embed, _) = &full[Part::Embedding.meta_name()];
    let (output, _) = &full[Part::Output.meta_name()];
    let tied = same_bytes(output, embed)?;
    Ok(MetaSource {
        dir: m,
        vocab,
        full,
        tied,
    })
}

/// Meta -> HF into `out` (an empty directory): the weights and configs and, beside them, the
/// tokenizer files written from `tokenizer.model` (CPU work, done while the weights stream). A
/// source without `tokenizer.model` gives an output without tokenizer files, said as a warning
/// through `progress`.
pub(crate) fn to_hf(
    src: &Path,
    out: &Path,
    opts: &Options,
    progress: &dyn Reporter,
) -> Result<Summary> {
    let tok = src.join("tokenizer.model");
    let max_len = hf_config::max_position_embeddings(&Params::read(&src.join("params.json"))?);
    let instruct = opts.instruct;
    let (weights, tokenizer) = std::thread::scope(|scope| {
        let tok_job = tok.exists().then(|| {
            let (tok, dir) = (tok.clone(), out.to_path_buf());
            scope.spawn(move || write_hf_tokenizer_files(&tok, &dir, instruct, max_len))
        });
        let weights = meta_to_hf(src, out, opts, progress);
        let tokenizer = tok_job.map(|j| {
            j.join()
                .unwrap_or_else(|_| Err(anyhow!("writing the tokenizer files panicked")))
        });
        (weights, tokenizer)
    });
    let mut s = weights?;
    match tokenizer {
        Some(result) => {
            result?;
            for f in HF_TOKENIZER_FILES {
                let size = std::fs::metadata(out.join(f))?.len();
                s.files.push((f.to_string(), size));
            }
        }
        None => progress.message(&format!(
            "warning: {}: not found; the output has no tokenizer files",
            tok.display()
        )),
    }
    Ok(s)
}

/// HF -> Meta (MP 1) into `out` (an empty directory): the weights, `tokenizer.model` rebuilt
/// from `tokenizer.json` (a warning through `progress` when there is none), `checklist.chk`.
pub(crate) fn to_meta(
    src: &Path,
    out: &Path,
    opts: &Options,
    progress: &dyn Reporter,
) -> Result<Summary> {
    let mut s = hf_to_meta(src, out, opts, progress)?;
    let tok = src.join("tokenizer.json");
    if tok.exists() {
        let model = tiktoken_model_from_tokenizer_json(&tok)?;
        write_small(out, "tokenizer.model", &model, &mut s)?;
    } else {
        progress.message(&format!(
            "warning: {}: not found; the output has no tokenizer.model",
            tok.display()
        ));
    }
    write_checklist(out, &s.md5)?;
    Ok(s)
}

/// Write the HF weights and configs of the Meta checkpoint `src` into `out` (an empty directory).
fn meta_to_hf(src: &Path, out: &Path, opts: &Options, progress: &dyn Reporter) -> Result<Summary> {
    let MetaSource {
        dir: m,
        vocab,
        mut full,
        tied,
    } = open_meta_llama3(src)?;
    let p = &m.params;
    let plan = hf_plan(src, &mut full, p.n_layers, tied, opts)?;
    let sizes: Vec<u64> = plan.iter().map(HfOut::nbytes).collect();
    let shards = plan_shards(&sizes, opts.max_shard_size.max(1));
    let names = shard_file_names(shards.len());
    let total: u64 = sizes.iter().sum();
    crate::util::ensure_free_disk(out, total)?;
    let task = progress.task("weights", Some(total));

    let mut summary = Summary {
        tied,
        ..Default::default()
    };
    let mut weight_map = BTreeMap::new();
    let mut w = HfShardWriter {
        head_dim: p.head_dim(),
        bufs: Buffers::default(),
        copy_buf: Vec::new(),
    };
    for (members, file) in shards.iter().zip(&names) {
        let outs: Vec<&HfOut> = members.iter().map(|&i| &plan[i]).collect();
        let size = w.write(&out.join(file), &outs, &mut summary, task.as_ref())?;
        summary.files.push((file.clone(), size));
        for o in outs {
            weight_map.insert(o.hf_name.clone(), file.clone());
        }
    }
    stream::finish_checks(plan.iter().map(|o| &o.src))?;
    if names.len() > 1 {
        let index = Index {
            metadata: IndexMetadata { total_size: total },
            weight_map,
        };
        write_small(
            out,
            "model.safetensors.index.json",
            index.to_json().as_bytes(),
            &mut summary,
        )?;
    }
    let kind = ModelKind {
        instruct: opts.instruct,
        tied,
        dtype: plan[0].dtype,
    };
    let config = hf_config::config_json(p, vocab, &kind);
    let gen = hf_config::generation_config_json(p, opts.instruct);
    for (name, doc) in [("config.json", config), ("generation_config.json", gen)] {
        write_small(
            out,
            name,
            hf_config::to_pretty(&doc).as_bytes(),
            &mut summary,
        )?;
    }
    Ok(summary)
}

/// Every HF tensor in `tensors::hf_order`, taken out of `full` (Meta names), with its output dtype.
fn hf_plan(
    src: &Path,
    full: &mut HashMap<String, (FullTensor, Role)>,
    n_layers: usize,
    tied: bool,
    opts: &Options,
) -> Result<Vec<HfOut>> {
    let mut plan = Vec::new();
    for hf_name in tensors::hf_order(n_layers) {
        if tied && hf_name == Part::Output.hf_name() {
            continue;
        }
        let meta_name = layout::hf_to_meta(&hf_name).expect("hf_order names map back");
        let (t, role) = full
            .remove(&meta_name)
            .ok_or_else(|| anyhow!("{}: tensor {meta_name} is missing", src.display()))?;
        let dtype =
            out_dtype(t.dtype, opts.dtype).with_context(|| format!("tensor {meta_name}"))?;
        plan.push(HfOut {
            hf_name,
            src: t,
            role,
            dtype,
        });
    }
    Ok(plan)
}

/// Writes HF safetensors shards, keeping its buffers from one shard to the next.
struct HfShardWriter {
    head_dim: usize,
    bufs: Buffers,
    copy_buf: Vec<u8>,
}

impl HfShardWriter {
    /// Write the tensors `outs` as one safetensors file at `path`; returns its size.
    fn write(
        &mut self,
        path: &Path,
        outs: &[&HfOut],
        summary: &mut Summary,
        task: &dyn Task,
    ) -> Result<u64> {
        let specs: Vec<(String, DType, Vec<usize>)> = outs
            .iter()
            .map(|o| (o.hf_name.clone(), o.dtype, o.src.shape.clone()))
            .collect();
        let by_name: HashMap<&str, &HfOut> =
            outs.iter().map(|o| (o.hf_name.as_str(), *o)).collect();
        let metadata: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        write_shard(path, &specs, &metadata, &mut |name, w, file| {
            let o = by_name[name];
            let bytes = o.nbytes();
            match whole_copy(o) {
                Some((src, offset)) => {
                    w.flush()?;
                    copy::copy_file_range_all(src, offset, bytes, file, &mut self.copy_buf)?;
                }
                None => {
                    let n = write_tensor(
                        &o.src,
                        o.role,
                        self.head_dim,
                        Permute::MetaToHf,
                        Some(o.dtype),
                        &mut self.bufs,
                        w,
                    )?;
                    if n > 0 {
                        summary.overflow.push((o.hf_name.clone(), n));
                    }
                }
            }
            summary.bytes += bytes;
            summary.tensors += 1;
            task.advance(bytes);
            Ok(())
        })
    }
}

/// Where a tensor that goes out unchanged (no cast, no row permutation) lies whole in one file.
fn whole_copy(o: &HfOut) -> Option<(&copy::Source, u64)> {
    let p = match o.src.pieces.as_slice() {
        [p] => p,
        _ => return None,
    };
    let whole = p.rows == (0..o.src.rows()) && p.cols == (0..o.src.cols());
    let plain = o.dtype == o.src.dtype && !matches!(o.role, Role::Query | Role::Key);
    (whole && plain).then_some((&*p.src, p.offset))
}

/// One safetensors file: the header, then `fill(name, buffered writer, file)` per tensor in file
/// order. `fill` may bypass the buffer (flush it first) and append to the file directly. Checks
/// the size against the header, fsyncs, and returns the size.
fn write_shard(
    path: &Path,
    specs: &[(String, DType, Vec<usize>)],
    metadata: &BTreeMap<String, String>,
    fill: &mut dyn FnMut(&str, &mut dyn Write, &File) -> Result<()>,
) -> Result<u64> {
    let ctx = || format!("{}", path.display());
    let mut sorted = specs.to_vec();
    st::order_for_writing(&mut sorted);
    let file = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
    w.write_all(&st::header(&sorted, metadata)?)
        .with_context(ctx)?;
    for (name, _, _) in &sorted {
        fill(name, &mut w, &file).with_context(|| format!("{}: tensor {name}", path.display()))?;
    }
    w.flush().with_context(ctx)?;
    drop(w);
    let size = file.metadata().with_context(ctx)?.len();
    let want = st::file_size(specs, metadata)?;
    if size != want {
        bail!("{}: wrote {size} bytes, expected {want}", path.display());
    }
    file.sync_all()
        .with_context(|| format!("{}: cannot fsync", path.display()))?;
    Ok(size)
}

/// Write a small file and record it.
fn write_small(dir: &Path, name: &str, bytes: &[u8], summary: &mut Summary) -> Result<()> {
    let path = dir.join(name);
    let mut w = HashingFile::create(&path)?;
    w.write_all(bytes)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    let md5 = w.finish()?;
    summary.files.push((name.to_string(), bytes.len() as u64));
    summary.md5.insert(name.to_string(), md5);
    Ok(())
}

/// Write a Meta checkpoint (MP 1: `consolidated.00.pth`, `params.json`) from the HF directory `src`
/// into `out`. `checklist.chk` is left to the caller, who may add `tokenizer.model` first.
fn hf_to_meta(src: &Path, out: &Path, opts: &Options, progress: &dyn Reporter) -> Result<Summary> {
    let h = HfDir::open(src)?;
    let p = h.params.clone();
    let vocab = p.vocab().ok_or_else(|| {
        anyhow!(
            "{}: vocab_size is invalid",
            src.join("config.json").display()
        )
    })?;
    let expected = layout::meta_weights(&p, vocab, Split::Rows, false);
    let sources = meta_sources(src, &h, &expected, opts)?;
    let total: u64 = sources.iter().map(|(t, _, d)| nbytes(t, *d)).sum();
    crate::util::ensure_free_disk(out, total)?;
    let task = progress.task("weights", Some(total));

    let file = meta::shard_name(0);
    let mut summary = Summary {
        tied: h.tied(),
        ..Default::default()
    };
    let (size, md5) = write_consolidated(
        &out.join(&file),
        &expected,
        &sources,
        p.head_dim(),
        &mut summary,
        task.as_ref(),
    )?;
    summary.files.push((file.clone(), size));
    summary.md5.insert(file, md5);
    write_small(
        out,
        "params.json",
        params_json(&p)?.as_bytes(),
        &mut summary,
    )?;
    Ok(summary)
}

/// Bytes of `t` stored as `dtype`.
fn nbytes(t: &FullTensor, dtype: DType) -> u64 {
    t.rows() as u64 * t.cols() as u64 * dtype.size() as u64
}

/// The HF tensor behind each expected Meta weight, its role and output dtype. Fails before any
/// byte is written on a tensor config.json does not account for or a shape it contradicts.
fn meta_sources(
    src: &Path,
    h: &HfDir,
    expected: &[layout::Weight],
    opts: &Options,
) -> Result<Vec<(FullTensor, Role, DType)>> {
    let want: HashMap<&str, &layout::Weight> =
        expected.iter().map(|w| (w.name.as_str(), w)).collect();
    for n in &h.meta_names()? {
        if !want.contains_key(n.as_str()) {
            let hf = layout::meta_to_hf(n).unwrap_or_else(|| n.clone());
            bail!(
                "{}: tensor {hf} does not fit config.json ({} layers); unsupported",
                src.display(),
                h.params.n_layers
            );
        }
    }
    let tied = h.tied();
    let mut sources = Vec::with_capacity(expected.len());
    for w in expected {
        let hf_name = if tied && w.name == Part::Output.meta_name() {
            Part::Embedding.hf_name().to_string()
        } else {
            layout::meta_to_hf(&w.name).expect("Llama names map")
        };
        let t = h.full(&hf_name)?;
        if t.shape != w.full_shape {
            bail!(
                "{}: tensor {hf_name} has shape {:?}, but config.json implies {:?}",
                h.files[h.map[&hf_name]].path().display(),
                t.shape,
                w.full_shape
            );
        }
        let dtype = out_dtype(t.dtype, opts.dtype).with_context(|| format!("tensor {hf_name}"))?;
        sources.push((t, w.role, dtype));
    }
    Ok(sources)
}

/// Write the one Meta shard at `path`, hashing it as it goes; returns its size and md5.
fn write_consolidated(
    path: &Path,
    expected: &[layout::Weight],
    sources: &[(FullTensor, Role, DType)],
    head_dim: usize,
    summary: &mut Summary,
    task: &dyn Task,
) -> Result<(u64, String)> {
    let specs: Vec<TensorSpec> = expected
        .iter()
        .zip(sources)
        .map(|(w, (_, _, d))| TensorSpec {
            name: w.name.clone(),
            dtype: *d,
            shape: w.full_shape.clone(),
        })
        .collect();
    let ctx = || format!("{}", path.display());
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut bufs = Buffers::default();
    let mut pw = PthWriter::new(HashingFile::create(path)?, &stem, specs).with_context(ctx)?;
    for (w, (t, role, dtype)) in expected.iter().zip(sources) {
        pw.write_tensor(&mut |out| {
            let n = write_tensor(
                t,
                *role,
                head_dim,
                Permute::HfToMeta,
                Some(*dtype),
                &mut bufs,
                out,
            )?;
            if n > 0 {
                summary.overflow.push((w.name.clone(), n));
            }
            Ok(())
        })
        .with_context(ctx)?;
        let bytes = nbytes(t, *dtype);
        summary.bytes += bytes;
        summary.tensors += 1;
        task.advance(bytes);
    }
    let hf = pw.finish().with_context(ctx)?;
    let size = hf.position();
    Ok((size, hf.finish()?))
}

/// params.json spelled the way Meta's files are (Python's `json.dumps`: `{"dim": 4096, ...}`).
fn params_json(p: &Params) -> Result<String> {
    let v = serde_json::to_value(p)?;
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("params do not serialise to an object"))?;
    let fields: Vec<String> = obj
        .iter()
        .map(|(k, v)| {
            let value = match v.as_f64() {
                // Python writes small floats in exponent form (1e-05) and keeps a ".0" on whole ones.
                Some(f) if v.is_f64() && f != 0.0 && f.abs() < 1e-4 => python_exp(f),
                _ => v.to_string(),
            };
            format!("{}: {value}", Value::String(k.clone()))
        })
        .collect();
    Ok(format!("{{{}}}", fields.join(", ")))
}

fn python_exp(f: f64) -> String {
    // Rust's `{:e}` gives "1e-5"; Python's repr gives "1e-05" (at least two exponent digits).
    let s = format!("{f:e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// `checklist.chk` over every file in `md5` (sorted by name, like Meta's).
fn write_checklist(dir: &Path, md5: &BTreeMap<String, String>) -> Result<()> {
    let entries: Vec<checklist::Entry> = md5
        .iter()
        .map(|(name, md5)| checklist::Entry {
            md5: md5.clone(),
            name: name.clone(),
        })
        .collect();
    let path = dir.join("checklist.chk");
    let mut w = HashingFile::create(&path)?;
    w.write_all(checklist::render(&entries)?.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("1.5MB").unwrap(), 1_500_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2KiB").unwrap(), 2048);
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("-1GB").is_err());
    }

    #[test]
    fn params_json_is_spelled_like_meta() {
        let p: Params = serde_json::from_str(r#"{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}"#).unwrap();
        assert_eq!(
            params_json(&p).unwrap(),
            r#"{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}"#
        );
    }

    #[test]
    fn shards_split_greedily_like_huggingface_hub() {
        // The example from huggingface_hub's docstring: limit 10, sizes [6, 6, 2, 6, 2, 2].
        assert_eq!(
            plan_shards(&[6, 6, 2, 6, 2, 2], 10),
            vec![vec![0], vec![1, 2], vec![3, 4, 5]]
        );
        // An oversized tensor gets its own shard ahead of the one being filled.
        assert_eq!(
            plan_shards(&[3, 12, 3, 5], 10),
            vec![vec![1], vec![0, 2], vec![3]]
        );
        assert_eq!(plan_shards(&[1, 2, 3], 100), vec![vec![0, 1, 2]]);
        assert_eq!(shard_file_names(1), vec!["model.safetensors"]);
        assert_eq!(
            shard_file_names(2)[1],
            "model-00002-of-00002.safetensors".to_string()
        );
    }
}
