//! Checks a CI pipeline can gate a deployment on: checksums, structure against the hyper-parameters,
//! and (deep) the values themselves. Every problem is collected, none aborts the run; only an
//! unusable input (not a directory, not a model directory) is an error.
use super::hashing;
use super::layout::{self, Role, Split, Weight};
use super::stats::{self, ScanItem, Stats};
use super::{checklist, hf, Layout, Params};
use crate::error::one_line;
use crate::formats::pth::PthFile;
use crate::formats::safetensors::SafetensorsFile;
use crate::formats::{DType, TensorInfo};
use crate::util::human_bytes;
use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hash every checklist.chk entry.
    pub md5: bool,
    /// Scan every value for NaN/Inf and collect per-tensor statistics.
    pub deep: bool,
    /// Files hashed / pieces scanned at once.
    pub jobs: usize,
}

/// Where long passes report how far they are.
pub trait Progress: Sync {
    fn begin(&self, what: &str, total_bytes: u64);
    fn advance(&self, bytes: u64);
    fn end(&self);
}

/// Progress that goes nowhere.
pub struct Quiet;

impl Progress for Quiet {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}

/// Kinds of problems, as they appear in the JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// checklist.chk is absent from a Meta directory.
    NoChecklist,
    /// A checklist line that is malformed or names an unsafe path (never followed).
    BadChecklistLine,
    Md5Mismatch,
    /// Listed in checklist.chk, absent from the directory.
    MissingFile,
    /// Present in the directory, absent from checklist.chk.
    UnlistedFile,
    /// An I/O error while reading a file.
    Unreadable,
    InvalidParams,
    InvalidConfig,
    /// The shard count is not a model-parallel size these params allow.
    InvalidMp,
    MissingShard,
    /// A shard that cannot be opened (truncated, not a checkpoint, ...).
    CorruptShard,
    /// A safetensors file that exists but no index entry refers to.
    DanglingShard,
    MissingTensor,
    UnexpectedTensor,
    WrongShape,
    WrongDtype,
    /// The same tensor in two files.
    DuplicateTensor,
    /// Copies of a replicated tensor that differ between shards.
    ReplicaMismatch,
    InvalidTokenizer,
    VocabMismatch,
    InvalidIndex,
    /// A tensor listed more than once in the index.
    IndexDuplicate,
    /// A stored tensor the index does not list.
    IndexUnlistedTensor,
    /// The index names a file that does not hold the tensor.
    IndexWrongFile,
    /// NaN or Inf values (--deep).
    NonFinite,
    /// A tensor that could not be scanned (--deep).
    Unscannable,
}

impl Kind {
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: Kind,
    pub detail: String,
    /// The file inside the directory the problem is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    Ok,
    Mismatch,
    Missing,
    Unlisted,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub name: String,
    pub status: FileState,
    /// The digest computed here (None when the file was not hashed).
    pub md5: Option<String>,
    /// The digest checklist.chk gives (None for unlisted files).
    pub expected: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    Ok,
    Failed,
    Skipped,
}

/// One line of the "what was checked" table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: CheckState,
    pub detail: String,
}

/// Per-tensor values (--deep). min/max/mean/std are over the finite values (None when there are
/// none); std is the population standard deviation.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub file: String,
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub nan: u64,
    pub inf: u64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub std: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub format: &'static str,
    pub dir: PathBuf,
    pub checks: Vec<Check>,
    pub files: Vec<FileStatus>,
    pub problems: Vec<Problem>,
    pub tensors: Vec<TensorReport>,
    /// Bytes hashed by the md5 pass and scanned by the deep pass.
    pub hashed_bytes: u64,
    pub scanned_bytes: u64,
}

impl Report {
    fn problem(&mut self, kind: Kind, file: Option<&str>, tensor: Option<&str>, detail: String) {
        self.problems.push(Problem {
            kind,
            detail,
            file: file.map(str::to_owned),
            tensor: tensor.map(str::to_owned),
        });
    }

    fn check(&mut self, name: &'static str, status: CheckState, detail: String) {
        self.checks.push(Check {
            name,
            status,
            detail,
        });
    }

    /// Record a check as failed when problems were added since `mark`, ok otherwise.
    fn settle(&mut self, name: &'static str, mark: usize, ok_detail: String) {
        let n = self.problems.len() - mark;
        if n == 0 {
            self.check(name, CheckState::Ok, ok_detail);
        } else {
            let kinds: BTreeSet<String> = self.problems[mark..]
                .iter()
                .map(|p| p.kind.as_str())
                .collect();
            let kinds: Vec<String> = kinds.into_iter().collect();
            self.check(
                name,
                CheckState::Failed,
                format!(
                    "{n} problem{} ({})",
                    if n == 1 { "" } else { "s" },
                    kinds.join(", ")
                ),
            );
        }
    }
}

/// A stored tensor that the deep pass will scan.
struct Stored {
    file: String,
    info: TensorInfo,
    item: Option<ScanItem>,
}

/// Verify a Meta or HF model directory. Err only when `dir` is not usable as a model directory.
pub fn verify(dir: &Path, opts: &Options, progress: &dyn Progress) -> Result<Report> {
    let layout = super::detect(dir)?;
    let mut r = Report {
        ok: false,
        format: match layout {
            Layout::Meta => "meta",
            Layout::Hf => "hf",
        },
        dir: dir.to_path_buf(),
        checks: Vec::new(),
        files: Vec::new(),
        problems: Vec::new(),
        tensors: Vec::new(),
        hashed_bytes: 0,
        scanned_bytes: 0,
    };
    if opts.md5 {
        checksums(dir, layout, opts.jobs, progress, &mut r);
    } else {
        r.check("checksums", CheckState::Skipped, "--no-md5".into());
    }
    let stored = match layout {
        Layout::Meta => meta_structure(dir, &mut r),
        Layout::Hf => hf_structure(dir, &mut r),
    };
    if opts.deep {
        deep(&stored, opts.jobs, progress, &mut r)?;
    } else {
        r.check("values", CheckState::Skipped, "without --deep".into());
    }
    r.ok = r.problems.is_empty();
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// checksums

fn checksums(dir: &Path, layout: Layout, jobs: usize, progress: &dyn Progress, r: &mut Report) {
    let mark = r.problems.len();
    let chk = dir.join("checklist.chk");
    if !chk.exists() {
        if layout == Layout::Meta {
            r.problem(
                Kind::NoChecklist,
                Some("checklist.chk"),
                None,
                "checklist.chk is missing; file integrity cannot be proven (pass --no-md5 to skip)"
                    .into(),
            );
            r.settle("checksums", mark, String::new());
        } else {
            r.check(
                "checksums",
                CheckState::Skipped,
                "no checklist.chk in this HF directory".into(),
            );
        }
        return;
    }
    let (entries, bad) = match checklist::read(&chk) {
        Ok(v) => v,
        Err(e) => {
            r.problem(Kind::Unreadable, Some("checklist.chk"), None, one_line(&e));
            r.settle("checksums", mark, String::new());
            return;
        }
    };
    for b in &bad {
        r.problem(
            Kind::BadChecklistLine,
            Some("checklist.chk"),
            None,
            format!("checklist.chk line {}: {}", b.line, b.reason),
        );
    }
    // Hash each listed file once, even if the checklist names it twice.
    let mut names: Vec<&str> = Vec::new();
    for e in &entries {
        if !names.contains(&e.name.as_str()) {
            names.push(&e.name);
        }
    }
    let present: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| dir.join(n).is_file())
        .collect();
    let paths: Vec<PathBuf> = present.iter().map(|n| dir.join(n)).collect();
    let total: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    progress.begin("md5", total);
    let digests = hashing::md5_files(&paths, jobs, &|n| progress.advance(n));
    progress.end();
    r.hashed_bytes = total;
    let mut got: HashMap<&str, Result<String>> = present.into_iter().zip(digests).collect();
    for e in &entries {
        let (status, md5) = match got.get_mut(e.name.as_str()) {
            None => {
                r.problem(
                    Kind::MissingFile,
                    Some(&e.name),
                    None,
                    format!("{}: listed in checklist.chk but absent", e.name),
                );
                (FileState::Missing, None)
            }
            Some(Err(err)) => {
                r.problem(Kind::Unreadable, Some(&e.name), None, one_line(err));
                (FileState::Missing, None)
            }
            Some(Ok(d)) if *d == e.md5 => (FileState::Ok, Some(d.clone())),
            Some(Ok(d)) => {
                r.problem(
                    Kind::Md5Mismatch,
                    Some(&e.name),
                    None,
                    format!("{}: md5 is {d}, checklist.chk says {}", e.name, e.md5),
                );
                (FileState::Mismatch, Some(d.clone()))
            }
        };
        r.files.push(FileStatus {
            name: e.name.clone(),
            status,
            md5,
            expected: Some(e.md5.clone()),
        });
    }
    let listed: BTreeSet<&str> = names.iter().copied().collect();
    let mut unlisted: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && n != "checklist.chk")
                .filter(|n| !listed.contains(n.as_str()))
                .collect()
        })
        .unwrap_or_default();
    unlisted.sort();
    for n in unlisted {
        r.problem(
            Kind::UnlistedFile,
            Some(&n),
            None,
            format!("{n}: present but not listed in checklist.chk"),
        );
        r.files.push(FileStatus {
            name: n,
            status: FileState::Unlisted,
            md5: None,
            expected: None,
        });
    }
    let ok = r.files.iter().filter(|f| f.status == FileState::Ok).count();
    r.settle(
        "checksums",
        mark,
        format!("{ok} files, {} hashed", human_bytes(total)),
    );
}

// ---------------------------------------------------------------------------------------------
// Meta directories

/// `consolidated.NN.pth` files by rank (gaps are None); an unreadable dir has none.
fn meta_shards(dir: &Path) -> Vec<Option<PathBuf>> {
    super::meta::shards_by_rank(dir).unwrap_or_default()
}

fn meta_structure(dir: &Path, r: &mut Report) -> Vec<Stored> {
    // params.json
    let mark = r.problems.len();
    let params = match Params::read(&dir.join("params.json")) {
        Ok(p) => Some(p),
        Err(e) => {
            r.problem(Kind::InvalidParams, Some("params.json"), None, one_line(&e));
            None
        }
    };
    let pdetail = params.as_ref().map_or(String::new(), |p| {
        format!(
            "dim {}, {} layers, {} heads / {} kv, ffn {}, vocab {}",
            p.dim,
            p.n_layers,
            p.n_heads,
            p.kv_heads(),
            p.ffn_hidden(),
            p.vocab()
                .map_or("-1 (from weights)".into(), |v| v.to_string())
        )
    });
    r.settle("params", mark, pdetail);

    // shards: present, numbered without gaps, each opens
    let mark = r.problems.len();
    let paths = meta_shards(dir);
    if paths.is_empty() {
        r.problem(
            Kind::MissingShard,
            None,
            None,
            format!("{}: no consolidated.NN.pth shards", dir.display()),
        );
    }
    let mut mp = paths.len();
    let mut shards: Vec<Option<PthFile>> = Vec::with_capacity(mp);
    for (rank, p) in paths.iter().enumerate() {
        let name = super::meta::shard_name(rank);
        match p {
            None => {
                r.problem(
                    Kind::MissingShard,
                    Some(&name),
                    None,
                    format!("{name} is missing (shards up to rank {} exist)", mp - 1),
                );
                shards.push(None);
            }
            Some(p) => match PthFile::open(p) {
                Ok(f) => shards.push(Some(f)),
                Err(e) => {
                    r.problem(Kind::CorruptShard, Some(&name), None, one_line(&e));
                    shards.push(None);
                }
            },
        }
    }
    // Losing the last shards leaves no gap in the numbering, but the per-shard shapes still tell
    // the model-parallel size the checkpoint was written with.
    let implied = params.as_ref().and_then(|p| {
        let s = shards.iter().flatten().next()?;
        let rows = *s.get("layers.0.attention.wq.weight")?.shape.first()?;
        let full = p.n_heads * p.head_dim();
        (rows > 0 && full.is_multiple_of(rows)).then(|| (full / rows, s.path().to_path_buf()))
    });
    if let Some((m, from)) = implied.filter(|(m, _)| *m > mp && mp > 0) {
        let from = from
            .file_name()
            .map_or(String::new(), |f| f.to_string_lossy().into_owned());
        for rank in mp..m {
            let name = super::meta::shard_name(rank);
            r.problem(
                Kind::MissingShard,
                Some(&name),
                None,
                format!("{name} is missing: the shapes in {from} are those of MP {m}"),
            );
            shards.push(None);
        }
        mp = m;
    }
    let good: Vec<(usize, &PthFile)> = shards
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
        .collect();

    // What the params imply: vocabulary, embedding split, expected weights.
    let expected = params.as_ref().and_then(|p| {
        let first = good.first()?.1;
        let emb = first.get("tok_embeddings.weight").map(|t| t.shape.clone());
        let split = match emb.as_deref() {
            Some([_, d]) if mp > 1 && *d != p.dim && d * mp == p.dim => Split::Cols,
            _ => Split::Rows,
        };
        let vocab = p.vocab().or_else(|| {
            let rows = *emb.as_ref()?.first()?;
            Some(if split == Split::Rows {
                rows * mp
            } else {
                rows
            })
        })?;
        let rope = good.iter().any(|(_, s)| s.get("rope.freqs").is_some());
        Some((layout::meta_weights(p, vocab, split, rope), vocab))
    });
    if let (Some(p), Some((_, vocab))) = (&params, &expected) {
        if mp > 0 && !p.is_valid_mp(mp, *vocab) {
            r.problem(
                Kind::InvalidMp,
                None,
                None,
                format!(
                    "{mp} shards is not a model-parallel size these params allow (valid: {})",
                    join(&p.valid_mps(*vocab))
                ),
            );
        }
    }
    let mp_ok = expected
        .as_ref()
        .zip(params.as_ref())
        .is_some_and(|((_, v), p)| p.is_valid_mp(mp, *v));
    r.settle(
        "shards",
        mark,
        format!("{mp} shard{} (MP {mp})", if mp == 1 { "" } else { "s" }),
    );

    // tensors: every expected one in every shard, per-shard shape, one dtype, no extras
    let mark = r.problems.len();
    let mut counts: HashMap<DType, usize> = HashMap::new();
    for (_, s) in &good {
        for t in s.tensors() {
            *counts.entry(t.dtype).or_default() += 1;
        }
    }
    let model_dtype = counts
        .iter()
        .max_by_key(|(d, n)| (**n, d.is_float()))
        .map(|(d, _)| *d);
    match (&expected, &params, mp_ok) {
        (Some((weights, _)), Some(p), true) => {
            for &(rank, s) in &good {
                let file = super::meta::shard_name(rank);
                let want = |w: &Weight| layout::shard_shape(w, p, mp);
                check_tensors(r, &file, s.tensors(), weights, &want, model_dtype, false);
            }
            r.settle(
                "tensors",
                mark,
                format!(
                    "{} tensors x {mp} shard{}, {}",
                    weights.len(),
                    if mp == 1 { "" } else { "s" },
                    model_dtype.map_or("-", |d| d.name())
                ),
            );
        }
        _ => r.check(
            "tensors",
            CheckState::Skipped,
            "needs valid params.json, a valid shard count and a readable shard".into(),
        ),
    }

    // replicas: byte-identical copies across shards
    let mark = r.problems.len();
    match (&expected, &params, mp_ok) {
        (Some((weights, _)), Some(p), true) if mp > 1 => {
            let mut compared = 0;
            for w in weights {
                for set in replica_sets(w, p, mp) {
                    compared += compare_replicas(r, &shards, &w.name, &set);
                }
            }
            r.settle(
                "replicas",
                mark,
                format!("{compared} replicated copies identical"),
            );
        }
        (_, _, true) if mp == 1 => {
            r.check("replicas", CheckState::Skipped, "single shard".into());
        }
        _ => r.check(
            "replicas",
            CheckState::Skipped,
            "needs valid params.json and shard count".into(),
        ),
    }

    tokenizer(dir, params.as_ref(), r);

    let mut stored = Vec::new();
    for &(rank, s) in &good {
        let file = super::meta::shard_name(rank);
        for t in s.tensors() {
            let item = s.data_offset(t).ok().map(|offset| ScanItem {
                src: s.source().clone(),
                offset,
                nbytes: t.nbytes() as u64,
                dtype: t.dtype,
            });
            stored.push(Stored {
                file: file.clone(),
                info: t.clone(),
                item,
            });
        }
    }
    stored
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compare stored tensors of one file against the expected weights.
fn check_tensors<'a>(
    r: &mut Report,
    file: &str,
    stored: impl IntoIterator<Item = &'a TensorInfo>,
    weights: &[Weight],
    want_shape: &dyn Fn(&Weight) -> Vec<usize>,
    model_dtype: Option<DType>,
    // HF: a weight need only be present in one of the files, so absence is checked by the caller.
    partial: bool,
) {
    let stored: Vec<&TensorInfo> = stored.into_iter().collect();
    let by_name: HashMap<&str, &TensorInfo> =
        stored.iter().map(|t| (t.name.as_str(), *t)).collect();
    let known: HashMap<&str, &Weight> = weights.iter().map(|w| (w.name.as_str(), w)).collect();
    for w in weights {
        match by_name.get(w.name.as_str()) {
            None if !partial => r.problem(
                Kind::MissingTensor,
                Some(file),
                Some(&w.name),
                format!("{file}: tensor {} is missing", w.name),
            ),
            None => {}
            Some(t) => {
                let want = want_shape(w);
                if t.shape != want {
                    r.problem(
                        Kind::WrongShape,
                        Some(file),
                        Some(&w.name),
                        format!(
                            "{file}: {} has shape {:?}, expected {want:?}",
                            w.name, t.shape
                        ),
                    );
                }
                if let Some(d) = model_dtype {
                    if t.dtype != d {
                        r.problem(
                            Kind::WrongDtype,
                            Some(file),
                            Some(&w.name),
                            format!(
                                "{file}: {} is {}, the rest of the model is {d}",
                                w.name, t.dtype
                            ),
                        );
                    }
                }
            }
        }
    }
    for t in stored {
        if !known.contains_key(t.name.as_str()) {
            r.problem(
                Kind::UnexpectedTensor,
                Some(file),
                Some(&t.name),
                format!(
                    "{file}: unexpected tensor {} ({} {:?}) is not a weight of this model",
                    t.name, t.dtype, t.shape
                ),
            );
        }
    }
}

/// Groups of ranks that must hold identical copies of `w`: all ranks for replicated tensors, the
/// ranks sharing a kv head when there are more shards than kv heads.
fn replica_sets(w: &Weight, p: &Params, mp: usize) -> Vec<Vec<usize>> {
    if w.split == Split::Replicated {
        return vec![(0..mp).collect()];
    }
    if !(matches!(w.role, Role::Key | Role::Value) && mp > p.kv_heads()) {
        return Vec::new();
    }
    let mut sets: Vec<(std::ops::Range<usize>, Vec<usize>)> = Vec::new();
    for rank in 0..mp {
        let range = layout::shard_range(w, p, mp, rank);
        match sets.iter_mut().find(|(rg, _)| *rg == range) {
            Some((_, v)) => v.push(rank),
            None => sets.push((range, vec![rank])),
        }
    }
    sets.into_iter()
        .map(|(_, v)| v)
        .filter(|v| v.len() > 1)
        .collect()
}

/// Compare the copies of `name` in `set` against the first readable one with pread; returns how
/// many copies were compared.
fn compare_replicas(
    r: &mut Report,
    shards: &[Option<PthFile>],
    name: &str,
    set: &[usize],
) -> usize {
    // Only copies that exist with matching shape and dtype; the tensor check reports the rest.
    let copies: Vec<(usize, u64, &PthFile, &TensorInfo)> = set
        .iter()
        .filter_map(|&rank| {
            let s = shards.get(rank)?.as_ref()?;
            let t = s.get(name)?;
            Some((rank, s.data_offset(t).ok()?, s, t))
        })
        .collect();
    let Some(&(base_rank, base_off, base, bt)) = copies.first() else {
        return 0;
    };
    let mut compared = 0;
    let size = bt.nbytes().min(crate::formats::copy::CHUNK);
    let (mut a, mut b) = (vec![0u8; size], vec![0u8; size]);
    for &(rank, off, s, t) in &copies[1..] {
        if t.shape != bt.shape || t.dtype != bt.dtype {
            continue;
        }
        compared += 1;
        let len = bt.nbytes() as u64;
        let mut done = 0u64;
        let mut same = true;
        while done < len && same {
            let n = (len - done).min(a.len() as u64) as usize;
            let ra = base.source().read_exact_at(&mut a[..n], base_off + done);
            let rb = s.source().read_exact_at(&mut b[..n], off + done);
            if let Err(e) = ra.and(rb) {
                r.problem(Kind::Unreadable, None, Some(name), one_line(&e));
                break;
            }
            same = a[..n] == b[..n];
            done += n as u64;
        }
        if !same {
            let (fa, fb) = (
                super::meta::shard_name(base_rank),
                super::meta::shard_name(rank),
            );
            r.problem(
                Kind::ReplicaMismatch,
                Some(&fb),
                Some(name),
                format!(
                    "{name} differs between {fa} and {fb}; every shard must hold the same copy"
                ),
            );
        }
    }
    compared
}

/// What a tokenizer.model file turned out to be.
#[derive(Debug)]
enum TokenizerFile {
    /// tiktoken BPE ranks (Llama 3): base64 token, space, rank per line.
    Tiktoken { ranks: usize },
    /// A sentencepiece protobuf (Llama 2).
    SentencePiece,
}

fn parse_tokenizer(bytes: &[u8]) -> std::result::Result<TokenizerFile, String> {
    use base64::Engine;
    // A sentencepiece ModelProto starts with field 1 (pieces), length-delimited: tag byte 0x0a.
    if bytes.first() == Some(&0x0a) {
        return Ok(TokenizerFile::SentencePiece);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "neither tiktoken text nor sentencepiece".to_string())?;
    let mut ranks = 0usize;
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}", i + 1);
        let (tok, rank) = line
            .split_once(' ')
            .ok_or_else(|| bad("not \"<base64> <rank>\""))?;
        let token = base64::engine::general_purpose::STANDARD
            .decode(tok)
            .map_err(|_| bad("token is not base64"))?;
        let rank: usize = rank.parse().map_err(|_| bad("rank is not a number"))?;
        if rank != ranks {
            return Err(bad(&format!(
                "rank {rank}, expected {ranks} (ranks must run 0, 1, 2, ...)"
            )));
        }
        if !seen.insert(token) {
            return Err(bad("token listed twice"));
        }
        ranks += 1;
    }
    if ranks == 0 {
        return Err("no tokens".into());
    }
    Ok(TokenizerFile::Tiktoken { ranks })
}

/// Llama 3 adds 256 reserved special tokens after the BPE ranks.
const SPECIAL_TOKENS: usize = 256;

fn tokenizer(dir: &Path, params: Option<&Params>, r: &mut Report) {
    let mark = r.problems.len();
    let path = dir.join("tokenizer.model");
    if !path.exists() {
        r.check(
            "tokenizer",
            CheckState::Skipped,
            "no tokenizer.model in the directory".into(),
        );
        return;
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            r.problem(
                Kind::Unreadable,
                Some("tokenizer.model"),
                None,
                format!("tokenizer.model: cannot read: {e}"),
            );
            r.settle("tokenizer", mark, String::new());
            return;
        }
    };
    let detail = match parse_tokenizer(&bytes) {
        Err(why) => {
            r.problem(
                Kind::InvalidTokenizer,
                Some("tokenizer.model"),
                None,
                format!("tokenizer.model is not a valid tiktoken file: {why}"),
            );
            String::new()
        }
        Ok(TokenizerFile::SentencePiece) => {
            r.check(
                "tokenizer",
                CheckState::Skipped,
                "sentencepiece model (Llama 2): not checked".into(),
            );
            return;
        }
        Ok(TokenizerFile::Tiktoken { ranks }) => match params.map(|p| p.vocab()) {
            Some(Some(vocab)) if ranks + SPECIAL_TOKENS != vocab => {
                r.problem(
                    Kind::VocabMismatch,
                    Some("tokenizer.model"),
                    None,
                    format!(
                        "tokenizer.model has {ranks} ranks + {SPECIAL_TOKENS} special tokens = {}, but params.json says vocab_size {vocab}",
                        ranks + SPECIAL_TOKENS
                    ),
                );
                String::new()
            }
            Some(Some(vocab)) => {
                format!("{ranks} ranks + {SPECIAL_TOKENS} specials = vocab_size {vocab}")
            }
            _ => format!("{ranks} ranks; vocab_size not known, size not compared"),
        },
    };
    r.settle("tokenizer", mark, detail);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face directories

/// Index json whose weight_map is read as a list of pairs, so a tensor listed twice is seen
/// (a JSON object parser keeps only the last).
fn read_index_pairs(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    struct Pairs(Vec<(String, String)>);
    impl<'de> serde::Deserialize<'de> for Pairs {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Pairs;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of tensor name -> file name")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> std::result::Result<Pairs, A::Error> {
                    let mut v = Vec::new();
                    while let Some(kv) = m.next_entry::<String, String>()? {
                        v.push(kv);
                    }
                    Ok(Pairs(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(serde::Deserialize)]
    struct IndexDoc {
        weight_map: Pairs,
    }
    serde_json::from_str::<IndexDoc>(text)
        .map(|d| d.weight_map.0)
        .map_err(|e| e.to_string())
}

fn hf_structure(dir: &Path, r: &mut Report) -> Vec<Stored> {
    // config.json
    let mark = r.problems.len();
    let config: Option<Value> = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|e| {
            r.problem(
                Kind::InvalidConfig,
                Some("config.json"),
                None,
                format!("config.json: {e}"),
            )
        })
        .ok();
    let params = config.as_ref().and_then(|c| {
        hf::params_from_config(c)
            .map_err(|e| r.problem(Kind::InvalidConfig, Some("config.json"), None, one_line(&e)))
            .ok()
    });
    let pdetail = params.as_ref().map_or(String::new(), |p| {
        format!(
            "hidden {}, {} layers, {} heads / {} kv, intermediate {}, vocab {}",
            p.dim,
            p.n_layers,
            p.n_heads,
            p.kv_heads(),
            p.ffn_hidden(),
            p.vocab_size
        )
    });
    r.settle("config", mark, pdetail);

    // index and shard files
    let mark = r.problems.len();
    let index_name = "model.safetensors.index.json";
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect()
        })
        .unwrap_or_default();
    let mut index: Option<Vec<(String, String)>> = None;
    if dir.join(index_name).exists() {
        match std::fs::read_to_string(dir.join(index_name))
            .map_err(|e| e.to_string())
            .and_then(|t| read_index_pairs(&t))
        {
            Ok(pairs) => index = Some(pairs),
            Err(e) => r.problem(
                Kind::InvalidIndex,
                Some(index_name),
                None,
                format!("{index_name}: {e}"),
            ),
        }
    }
    let files: Vec<String> = match &index {
        Some(pairs) => {
            let mut seen: HashMap<&str, &str> = HashMap::new();
            for (t, f) in pairs {
                if let Some(prev) = seen.insert(t, f) {
                    r.problem(
                        Kind::IndexDuplicate,
                        Some(index_name),
                        Some(t),
                        format!("{index_name}: {t} is listed twice ({prev}, {f})"),
                    );
                }
            }
            let named: BTreeSet<String> = pairs.iter().map(|(_, f)| f.clone()).collect();
            let mut files = Vec::new();
            for f in named {
                if f.contains('/') || f.contains('\\') || f == ".." {
                    r.problem(
                        Kind::InvalidIndex,
                        Some(index_name),
                        None,
                        format!(
                            "{index_name}: shard name {f:?} is not a plain file name; not followed"
                        ),
                    );
                } else if !on_disk.contains(&f) {
                    r.problem(
                        Kind::MissingShard,
                        Some(&f),
                        None,
                        format!("{f} is named by {index_name} but absent"),
                    );
                } else {
                    files.push(f);
                }
            }
            for f in &on_disk {
                if !pairs.iter().any(|(_, g)| g == f) {
                    r.problem(
                        Kind::DanglingShard,
                        Some(f),
                        None,
                        format!("{f} is not referenced by {index_name}"),
                    );
                }
            }
            files
        }
        None if dir.join(index_name).exists() => on_disk.iter().cloned().collect(),
        None => {
            if on_disk.contains("model.safetensors") {
                for f in on_disk.iter().filter(|f| *f != "model.safetensors") {
                    r.problem(
                        Kind::DanglingShard,
                        Some(f),
                        None,
                        format!("{f} sits beside model.safetensors without an index"),
                    );
                }
                vec!["model.safetensors".to_string()]
            } else if on_disk.is_empty() {
                r.problem(
                    Kind::MissingShard,
                    None,
                    None,
                    format!("{}: no model.safetensors or {index_name}", dir.display()),
                );
                Vec::new()
            } else {
                r.problem(
                    Kind::InvalidIndex,
                    Some(index_name),
                    None,
                    format!(
                        "{index_name} is missing but the weights are split over {} files",
                        on_disk.len()
                    ),
                );
                on_disk.iter().cloned().collect()
            }
        }
    };
    let attempted = files.len();
    let mut opened: Vec<(String, SafetensorsFile)> = Vec::new();
    for f in files {
        match SafetensorsFile::open(&dir.join(&f)) {
            // The header parser also refuses a file shorter than its tensors (truncation).
            Ok(s) => opened.push((f, s)),
            Err(e) => r.problem(Kind::CorruptShard, Some(&f), None, one_line(&e)),
        }
    }
    // Which file holds each tensor; the index must agree.
    let mut holder: HashMap<String, String> = HashMap::new();
    for (f, s) in &opened {
        for t in s.tensors() {
            if let Some(prev) = holder.insert(t.name.clone(), f.clone()) {
                r.problem(
                    Kind::DuplicateTensor,
                    Some(f),
                    Some(&t.name),
                    format!("{} is stored in both {prev} and {f}", t.name),
                );
            }
        }
    }
    if let Some(pairs) = &index {
        let listed: HashMap<&str, &str> = pairs
            .iter()
            .map(|(t, f)| (t.as_str(), f.as_str()))
            .collect();
        let readable: BTreeSet<&str> = opened.iter().map(|(f, _)| f.as_str()).collect();
        for (t, f) in pairs {
            match holder.get(t) {
                Some(h) if h == f => {}
                Some(h) => r.problem(
                    Kind::IndexWrongFile,
                    Some(index_name),
                    Some(t),
                    format!("{index_name}: {t} is mapped to {f} but stored in {h}"),
                ),
                // A missing or corrupt shard is reported already; don't repeat it per tensor.
                None if readable.contains(f.as_str()) => r.problem(
                    Kind::IndexWrongFile,
                    Some(index_name),
                    Some(t),
                    format!("{index_name}: {t} is mapped to {f}, which does not hold it"),
                ),
                None => {}
            }
        }
        let mut unlisted: Vec<(&String, &String)> = holder
            .iter()
            .filter(|(t, _)| !listed.contains_key(t.as_str()))
            .collect();
        unlisted.sort();
        for (t, f) in unlisted {
            r.problem(
                Kind::IndexUnlistedTensor,
                Some(f),
                Some(t),
                format!("{f}: tensor {t} is not listed in {index_name}"),
            );
        }
    }
    let n_files = opened.len();
    r.settle(
        "shards",
        mark,
        format!(
            "{n_files} safetensors file{}{}",
            if n_files == 1 { "" } else { "s" },
            if index.is_some() {
                ", index covers every tensor once"
            } else {
                ""
            }
        ),
    );

    // tensors against config.json
    let mark = r.problems.len();
    let mut counts: HashMap<DType, usize> = HashMap::new();
    for (_, s) in &opened {
        for t in s.tensors() {
            *counts.entry(t.dtype).or_default() += 1;
        }
    }
    let model_dtype = counts
        .iter()
        .max_by_key(|(d, n)| (**n, d.is_float()))
        .map(|(d, _)| *d);
    match (&params, &config) {
        (Some(p), Some(c)) => {
            let vocab = p.vocab().unwrap_or(0);
            let tied = c
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let weights: Vec<Weight> = layout::meta_weights(p, vocab, Split::Rows, false)
                .into_iter()
                .filter_map(|w| {
                    Some(Weight {
                        name: layout::meta_to_hf(&w.name)?,
                        ..w
                    })
                })
                .collect();
            // Older transformers saved rotary inverse frequencies; they are recomputed on load.
            let is_buffer = |n: &str| n.ends_with("rotary_emb.inv_freq");
            for (f, s) in &opened {
                let infos = s.tensors().filter(|t| !is_buffer(&t.name));
                check_tensors(
                    r,
                    f,
                    infos,
                    &weights,
                    &|w| w.full_shape.clone(),
                    model_dtype,
                    true,
                );
            }
            // A weight whose file is missing or corrupt was reported with that file.
            let readable: BTreeSet<&str> = opened.iter().map(|(f, _)| f.as_str()).collect();
            let lost = |name: &str| match &index {
                Some(pairs) => pairs
                    .iter()
                    .any(|(t, f)| t == name && !readable.contains(f.as_str())),
                None => opened.len() < attempted,
            };
            for w in &weights {
                let optional = tied && w.name == "lm_head.weight";
                if !optional && !holder.contains_key(&w.name) && !lost(&w.name) {
                    r.problem(
                        Kind::MissingTensor,
                        None,
                        Some(&w.name),
                        format!("tensor {} is in no safetensors file", w.name),
                    );
                }
            }
            r.settle(
                "tensors",
                mark,
                format!(
                    "{} tensors{}, {}",
                    holder.len(),
                    if tied { " (embeddings tied)" } else { "" },
                    model_dtype.map_or("-", |d| d.name())
                ),
            );
        }
        _ => r.check(
            "tensors",
            CheckState::Skipped,
            "needs a valid config.json".into(),
        ),
    }

    let mut stored = Vec::new();
    for (f, s) in &opened {
        for t in s.tensors() {
            let item = s.data_offset(&t.name).ok().map(|offset| ScanItem {
                src: s.source().clone(),
                offset,
                nbytes: t.nbytes() as u64,
                dtype: t.dtype,
            });
            stored.push(Stored {
                file: f.clone(),
                info: t.clone(),
                item,
            });
        }
    }
    stored
}

// ---------------------------------------------------------------------------------------------
// values

fn deep(stored: &[Stored], jobs: usize, progress: &dyn Progress, r: &mut Report) -> Result<()> {
    let mark = r.problems.len();
    let mut items = Vec::new();
    let mut which = Vec::new();
    for (i, s) in stored.iter().enumerate() {
        if !s.info.dtype.is_float() {
            continue;
        }
        match &s.item {
            Some(it) => {
                items.push(it.clone());
                which.push(i);
            }
            None => r.problem(
                Kind::Unscannable,
                Some(&s.file),
                Some(&s.info.name),
                format!(
                    "{}: {} is a non-contiguous view and was not scanned",
                    s.file, s.info.name
                ),
            ),
        }
    }
    let total: u64 = items.iter().map(|i| i.nbytes).sum();
    progress.begin("scan", total);
    let results = stats::scan_all(&items, jobs, &|n| progress.advance(n))?;
    progress.end();
    r.scanned_bytes = total;
    let finite = |v: f64| v.is_finite().then_some(v);
    for (&i, res) in which.iter().zip(results) {
        let s = &stored[i];
        let st: Stats = match res {
            Ok(st) => st,
            Err(e) => {
                r.problem(
                    Kind::Unreadable,
                    Some(&s.file),
                    Some(&s.info.name),
                    one_line(&e),
                );
                continue;
            }
        };
        if st.non_finite() > 0 {
            r.problem(
                Kind::NonFinite,
                Some(&s.file),
                Some(&s.info.name),
                format!(
                    "{}: {} has {} NaN and {} Inf values",
                    s.file, s.info.name, st.nan, st.inf
                ),
            );
        }
        let has = st.count > 0;
        r.tensors.push(TensorReport {
            file: s.file.clone(),
            name: s.info.name.clone(),
            dtype: s.info.dtype.name().into(),
            shape: s.info.shape.clone(),
            nan: st.nan,
            inf: st.inf,
            min: finite(st.min).filter(|_| has),
            max: finite(st.max).filter(|_| has),
            mean: finite(st.mean).filter(|_| has),
            std: finite(st.std()).filter(|_| has),
        });
    }
    r.settle(
        "values",
        mark,
        format!(
            "{} tensors, {} scanned, no NaN/Inf",
            r.tensors.len(),
            human_bytes(total)
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_files() {
        let ok = "IQ== 0\nIg== 1\nIw== 2\n";
        assert!(matches!(
            parse_tokenizer(ok.as_bytes()),
            Ok(TokenizerFile::Tiktoken { ranks: 3 })
        ));
        let gap = "IQ== 0\nIw== 2\n";
        assert!(parse_tokenizer(gap.as_bytes())
            .unwrap_err()
            .contains("line 2"));
        assert!(parse_tokenizer(b"!!! 0\n").unwrap_err().contains("base64"));
        assert!(parse_tokenizer(b"IQ== 0\nIQ== 1\n")
            .unwrap_err()
            .contains("twice"));
        assert!(matches!(
            parse_tokenizer(b"\x0a\x05hello"),
            Ok(TokenizerFile::SentencePiece)
        ));
    }

    #[test]
    fn index_duplicates_are_seen() {
        let t = r#"{"metadata": {"total_size": 1}, "weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}"#;
        let pairs = read_index_pairs(t).unwrap();
        assert_eq!(pairs.len(), 2);
        assert!(read_index_pairs("{}").is_err());
    }

    #[test]
    fn kv_replicas_past_n_kv() {
        let p: Params = serde_json::from_value(serde_json::json!({"dim": 32, "n_layers": 1,
            "n_heads": 8, "n_kv_heads": 2, "vocab_size": 64, "multiple_of": 32, "norm_eps": 1e-5}))
        .unwrap();
        let ws = layout::meta_weights(&p, 64, Split::Rows, false);
        let wk = ws.iter().find(|w| w.role == Role::Key).unwrap();
        assert_eq!(replica_sets(wk, &p, 4), vec![vec![0, 1], vec![2, 3]]);
        assert!(replica_sets(wk, &p, 2).is_empty());
        let norm = ws.iter().find(|w| w.name == "norm.weight").unwrap();
        assert_eq!(replica_sets(norm, &p, 2), vec![vec![0, 1]]);
    }
}
