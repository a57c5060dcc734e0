//! What is on disk: every model in the store, the Hugging Face cache and the folders a user
//! names, with its format, dtype or quant type, MP, bytes on disk, verified state and last change.
//!
//! Sizes count each inode once, per model and in the total (`store::usage`). An HF cache repo
//! is sized as `huggingface_hub`'s `scan_cache_dir()` sizes it: the blobs its snapshots point at,
//! each once; a revision, the blobs its own snapshot points at.
use super::catalog;
use super::usage::Usage;
use super::Roots;
use crate::formats::gguf::{self, GgufFile};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Meta,
    Hf,
    Gguf,
}

impl Format {
    fn label(self) -> &'static str {
        match self {
            Format::Meta => "Meta",
            Format::Hf => "HF",
            Format::Gguf => "GGUF",
        }
    }
}

/// Which root a model was found under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Place {
    /// Meta's checkpoint folder (`checkpoints/`).
    Store,
    /// The Hugging Face cache.
    HfCache,
    /// A folder given with `--dir`.
    Dir,
}

/// One revision of an HF cache repo.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Revision {
    pub commit: String,
    /// Branches and tags (`refs/...`) pointing at it; empty for a detached revision.
    pub refs: Vec<String>,
    /// `snapshots/{commit}`.
    path: PathBuf,
    formats: Vec<Format>,
    pub files: usize,
    pub bytes: u64,
    pub modified: u64,
}

/// One model on disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// Descriptor (store), repo id (HF cache), folder or file name (elsewhere).
    pub name: String,
    pub place: Place,
    pub path: PathBuf,
    pub formats: Vec<Format>,
    /// The weights' type: BF16, F16, F32, F8_E4M3 (fp8 release), or a GGUF file type (Q8_0, ...).
    pub dtype: Option<String>,
    /// Model-parallel size of the Meta files.
    pub mp: Option<usize>,
    pub files: usize,
    /// Bytes on disk, each inode once.
    pub bytes: u64,
    /// `verified`, `changed` (since verified), `never`, or with `--verify` `failed`.
    pub verified: &'static str,
    /// Latest modification time of its files, seconds since the epoch.
    pub modified: u64,
    /// The catalog model it is, when known.
    pub catalog: Option<&'static str>,
    /// HF cache repos: each revision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<Revision>,
    /// `.part` / `.incomplete` files of downloads not finished (resumable).
    pub partial_files: usize,
}

impl Entry {
    /// Its formats as the table shows them: `Meta`, `HF`, `GGUF`, `Meta+HF`.
    pub fn formats_label(&self) -> String {
        let labels: Vec<&str> = self.formats.iter().map(|f| f.label()).collect();
        labels.join("+")
    }
}

/// Everything found, and what looked wrong on the way.
#[derive(Debug, Default, serde::Serialize)]
pub struct Inventory {
    pub entries: Vec<Entry>,
    /// Bytes on disk of all entries together, each inode once.
    pub total_bytes: u64,
    pub warnings: Vec<String>,
}

/// Look through the store, the HF cache and `dirs`.
pub fn scan(roots: &Roots, dirs: &[PathBuf]) -> Inventory {
    let mut inv = Inventory::default();
    let mut seen_paths = HashSet::new();
    let mut total = Usage::default();
    let mut push = |inv: &mut Inventory, e: Entry, files: Vec<std::fs::Metadata>| {
        let key = std::fs::canonicalize(&e.path).unwrap_or_else(|_| e.path.clone());
        if seen_paths.insert(key) {
            files.iter().for_each(|m| {
                total.add(m);
            });
            inv.entries.push(e);
        }
    };
    for (e, f) in folder_models(&roots.checkpoints, Place::Store, &mut inv.warnings) {
        push(&mut inv, e, f);
    }
    for (e, f) in hf_cache_repos(&roots.hf_cache, &mut inv.warnings) {
        push(&mut inv, e, f);
    }
    for dir in dirs {
        let found = match model_in(dir, Place::Dir) {
            Some(one) => vec![one],
            None => folder_models(dir, Place::Dir, &mut inv.warnings),
        };
        for (e, f) in found {
            push(&mut inv, e, f);
        }
    }
    inv.total_bytes = total.bytes;
    inv
}

/// The model folders and GGUF files directly inside `root`.
fn folder_models(
    root: &Path,
    place: Place,
    warnings: &mut Vec<String>,
) -> Vec<(Entry, Vec<std::fs::Metadata>)> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut names: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        match model_in(&path, place) {
            Some(found) => out.push(found),
            // In the store every folder should be a model; a --dir may hold anything.
            None if path.is_dir() && place == Place::Store => {
                warnings.push(format!("{}: not a model folder; skipped", path.display()))
            }
            None => {}
        }
        if path.is_dir() {
            out.extend(ggufs_in(&path, place));
        }
    }
    out
}

/// The GGUF files at the top of a model folder, each listed on its own.
fn ggufs_in(dir: &Path, place: Place) -> Vec<(Entry, Vec<std::fs::Metadata>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_gguf_name(p))
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| gguf_entry(p, place)).collect()
}

fn is_gguf_name(p: &Path) -> bool {
    p.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
}

/// `path` as one model: a Meta or HF folder, or a GGUF file.
pub fn model_in(path: &Path, place: Place) -> Option<(Entry, Vec<std::fs::Metadata>)> {
    if path.is_file() {
        return if is_gguf_name(path) || gguf::is_gguf(path) {
            gguf_entry(path, place)
        } else {
            None
        };
    }
    let kind = folder_kind(path)?;
    let name = file_name(path);
    let mut files = Vec::new();
    let mut partial = 0;
    walk_files(path, &mut |p, m| {
        if is_gguf_name(p) && p.parent() == Some(path) {
            return;
        }
        if is_partial(p) {
            partial += 1;
        }
        files.push(m);
    });
    let mut usage = Usage::default();
    files.iter().for_each(|m| {
        usage.add(m);
    });
    let model = match place {
        Place::Store => catalog::by_store_folder(&name),
        _ => catalog::MODELS.iter().find(|m| m.local_folder == name),
    };
    let entry = Entry {
        name: model.map_or(name, |m| m.descriptor.to_string()),
        place,
        path: path.to_path_buf(),
        dtype: kind.dtype(path),
        mp: kind.meta_dir(path).map(|d| shard_count(&d)),
        formats: kind.formats(),
        files: files.len(),
        bytes: usage.bytes,
        verified: kind
            .meta_dir(path)
            .map_or("never", |d| catalog::verified_state(&d)),
        modified: latest(&files),
        catalog: model.map(|m| m.name),
        revisions: Vec::new(),
        partial_files: partial,
    };
    Some((entry, files))
}

fn is_partial(p: &Path) -> bool {
    let n = p.to_string_lossy();
    n.ends_with(".part") || n.ends_with(".incomplete")
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Which formats a folder holds.
#[derive(Debug, Clone, Copy)]
struct FolderKind {
    /// Meta files at the top.
    meta: bool,
    /// Meta files under `original/` (a Hub repo's layout).
    original: bool,
    hf: bool,
}

impl FolderKind {
    fn formats(self) -> Vec<Format> {
        let mut v = Vec::new();
        if self.meta || self.original {
            v.push(Format::Meta);
        }
        if self.hf {
            v.push(Format::Hf);
        }
        v
    }

    /// Where the Meta files are, if any (the top first, as llama-stack's `model_checkpoint_dir`).
    fn meta_dir(self, dir: &Path) -> Option<PathBuf> {
        if self.meta {
            Some(dir.to_path_buf())
        } else if self.original {
            Some(dir.join("original"))
        } else {
            None
        }
    }

    fn dtype(self, dir: &Path) -> Option<String> {
        if self.hf {
            if let Some(d) = hf_dtype(dir) {
                return Some(d);
            }
        }
        self.meta_dir(dir).and_then(|d| meta_dtype(&d))
    }
}

pub(crate) fn has_meta_files(dir: &Path) -> bool {
    dir.join("params.json").is_file() || dir.join("consolidated.00.pth").is_file()
}

fn folder_kind(dir: &Path) -> Option<FolderKind> {
    if !dir.is_dir() {
        return None;
    }
    let k = FolderKind {
        meta: has_meta_files(dir),
        original: has_meta_files(&dir.join("original")),
        hf: dir.join("config.json").is_file(),
    };
    (k.meta || k.original || k.hf).then_some(k)
}

/// Number of `consolidated.NN.pth` files (and of their `.part`s, for a download in progress).
fn shard_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    let n = n.strip_suffix(".part").unwrap_or(&n);
                    n.starts_with("consolidated.") && n.ends_with(".pth")
                })
                .count()
        })
        .unwrap_or(0)
}

/// `torch_dtype` (or transformers 5's `dtype`) of config.json, in safetensors spelling.
fn hf_dtype(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let d = v["torch_dtype"].as_str().or(v["dtype"].as_str())?;
    Some(
        match d {
            "bfloat16" => "BF16",
            "float16" => "F16",
            "float32" => "F32",
            other => other,
        }
        .to_string(),
    )
}

/// The dtype that holds most elements of the first shard (F8_E4M3 for the fp8 release).
fn meta_dtype(dir: &Path) -> Option<String> {
    let shard = crate::formats::pth::PthFile::open(&dir.join("consolidated.00.pth")).ok()?;
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for t in shard.tensors() {
        *by.entry(t.dtype.name().to_string()).or_default() += t.shape.iter().product::<usize>();
    }
    by.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d)
}

/// llama.cpp's names for `general.file_type` (`LLAMA_FTYPE_MOSTLY_*`).
fn gguf_file_type_name(code: u64) -> Option<&'static str> {
    Some(match code {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// A GGUF file's type: its `general.file_type` by name, else the type of most tensor bytes.
pub(crate) fn gguf_dtype(g: &GgufFile) -> Option<String> {
    if let Some(n) = g
        .get("general.file_type")
        .and_then(|v| v.as_u64())
        .and_then(gguf_file_type_name)
    {
        return Some(n.to_string());
    }
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for t in &g.tensors {
        *by.entry(t.ggml_type.name()).or_default() += t.nbytes().unwrap_or(0);
    }
    by.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d)
}

/// A GGUF file's type, reading only up to `general.file_type` when the file has it (it comes
/// before the tokenizer's arrays), else the whole header.
fn gguf_file_dtype(path: &Path) -> Option<String> {
    let peeked = gguf::peek_kvs(path, &["general.file_type"]).ok()?;
    match peeked
        .first()
        .and_then(|(_, v)| v.as_u64())
        .and_then(gguf_file_type_name)
    {
        Some(name) => Some(name.to_string()),
        None => GgufFile::open(path).ok().as_ref().and_then(gguf_dtype),
    }
}

fn gguf_entry(path: &Path, place: Place) -> Option<(Entry, Vec<std::fs::Metadata>)> {
    let meta = std::fs::metadata(path).ok()?;
    let dtype = gguf_file_dtype(path);
    let mut usage = Usage::default();
    usage.add(&meta);
    let entry = Entry {
        name: file_name(path),
        place,
        path: path.to_path_buf(),
        formats: vec![Format::Gguf],
        dtype,
        mp: None,
        files: 1,
        bytes: usage.bytes,
        verified: "never",
        modified: latest(std::slice::from_ref(&meta)),
        catalog: None,
        revisions: Vec::new(),
        partial_files: 0,
    };
    Some((entry, vec![meta]))
}

/// Every regular file under `dir` (symlinks followed to their target's metadata), depth first.
fn walk_files(dir: &Path, f: &mut dyn FnMut(&Path, std::fs::Metadata)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            walk_files(&p, f);
        } else if m.is_file() {
            f(&p, m);
        }
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn latest(files: &[std::fs::Metadata]) -> u64 {
    files
        .iter()
        .filter_map(|m| m.modified().ok())
        .map(secs)
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The Hugging Face cache

/// `models--org--name` -> `org/name`.
pub fn repo_id_of(folder: &str) -> Option<String> {
    let rest = folder.strip_prefix("models--")?;
    Some(rest.replace("--", "/"))
}

/// One repo folder of the HF cache, read without following anything outside it.
#[derive(Debug, Default)]
pub struct RepoScan {
    /// `refs/{name}` -> commit.
    pub refs: BTreeMap<String, String>,
    /// commit -> (repo path -> blob file name) of its snapshot.
    pub snapshots: BTreeMap<String, BTreeMap<String, String>>,
    /// Every file under `blobs/` (complete blobs and `.incomplete` parts).
    pub blobs: BTreeSet<String>,
    /// Snapshot links whose blob is missing, and refs to missing commits.
    problems: Vec<String>,
}

impl RepoScan {
    pub fn read(root: &Path) -> RepoScan {
        let mut s = RepoScan::default();
        let refs = root.join("refs");
        walk_files(&refs, &mut |p, _| {
            let name = p.strip_prefix(&refs).map(rel_slash).unwrap_or_default();
            if let Ok(c) = std::fs::read_to_string(p) {
                s.refs.insert(name, c.trim().to_string());
            }
        });
        let snaps = root.join("snapshots");
        for e in std::fs::read_dir(&snaps).into_iter().flatten().flatten() {
            let commit = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            let mut files = BTreeMap::new();
            link_targets(&dir, &dir, &mut files, &mut s.problems);
            s.snapshots.insert(commit, files);
        }
        for e in std::fs::read_dir(root.join("blobs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            s.blobs.insert(e.file_name().to_string_lossy().into_owned());
        }
        for (name, commit) in &s.refs {
            if !s.snapshots.contains_key(commit) {
                s.problems.push(format!(
                    "{}: refs/{name} points at {commit}, which has no snapshot",
                    root.display()
                ));
            }
        }
        s
    }

    /// Blob names some snapshot points at, except those of the revisions in `except`.
    pub fn referenced(&self, except: &BTreeSet<String>) -> BTreeSet<String> {
        self.snapshots
            .iter()
            .filter(|(c, _)| !except.contains(*c))
            .flat_map(|(_, files)| files.values().cloned())
            .collect()
    }

    /// The refs pointing at `commit`.
    pub fn refs_of(&self, commit: &str) -> Vec<String> {
        self.refs
            .iter()
            .filter(|(_, c)| c.as_str() == commit)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn rel_slash(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every file of a snapshot: repo path -> the blob its link names (`../../blobs/{etag}`).
fn link_targets(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, String>,
    problems: &mut Vec<String>,
) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            link_targets(root, &p, out, problems);
            continue;
        }
        let rel = p.strip_prefix(root).map(rel_slash).unwrap_or_default();
        let blob = std::fs::read_link(&p)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        match blob {
            Some(b) if p.exists() => {
                out.insert(rel, b);
            }
            Some(_) => problems.push(format!("{}: its blob is missing", p.display())),
            // A regular file in a snapshot (not how the cache stores files): sized as itself.
            None => {
                out.insert(rel, String::new());
            }
        }
    }
}

fn hf_cache_repos(
    cache: &Path,
    warnings: &mut Vec<String>,
) -> Vec<(Entry, Vec<std::fs::Metadata>)> {
    let Ok(rd) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut roots: Vec<_> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("models--"))
        .map(|e| e.path())
        .collect();
    roots.sort();
    roots
        .iter()
        .filter_map(|root| {
            let s = RepoScan::read(root);
            warnings.extend(s.problems.iter().cloned());
            hf_repo_entry(root, &s)
        })
        .collect()
}

/// One revision's files and bytes; the blobs it adds to the repo's count go into `repo`/`metas`.
fn hf_revision(
    root: &Path,
    s: &RepoScan,
    commit: &str,
    repo: &mut Usage,
    metas: &mut Vec<std::fs::Metadata>,
) -> Revision {
    let files = &s.snapshots[commit];
    let snap = root.join("snapshots").join(commit);
    let mut usage = Usage::default();
    let mut rev_metas = Vec::new();
    for (rel, blob) in files {
        let p = match blob.is_empty() {
            true => snap.join(rel),
            false => root.join("blobs").join(blob),
        };
        if let Ok(m) = std::fs::metadata(&p) {
            usage.add(&m);
            if repo.add(&m) > 0 {
                metas.push(m.clone());
            }
            rev_metas.push(m);
        }
    }
    // As scan_cache_dir: its newest blob, or the folder itself when empty.
    let modified = match latest(&rev_metas) {
        0 => std::fs::metadata(&snap)
            .ok()
            .and_then(|m| m.modified().ok())
            .map_or(0, secs),
        t => t,
    };
    Revision {
        commit: commit.to_string(),
        refs: s.refs_of(commit),
        path: snap,
        formats: snapshot_formats(files),
        files: files.len(),
        bytes: usage.bytes,
        modified,
    }
}

/// The dtype and MP of the revision `main` points at (else the newest).
fn head_facts(s: &RepoScan, revisions: &[Revision]) -> (Option<String>, Option<usize>) {
    let head = s
        .refs
        .get("main")
        .and_then(|c| revisions.iter().find(|r| &r.commit == c))
        .or_else(|| revisions.iter().max_by_key(|r| r.modified));
    let Some(r) = head else {
        return (None, None);
    };
    let dtype = hf_dtype(&r.path).or_else(|| {
        r.formats
            .contains(&Format::Gguf)
            .then(|| first_gguf_dtype(&r.path))
            .flatten()
    });
    let mp = [r.path.clone(), r.path.join("original")]
        .iter()
        .map(|d| shard_count(d))
        .find(|n| *n > 0);
    (dtype, mp)
}

fn hf_repo_entry(root: &Path, s: &RepoScan) -> Option<(Entry, Vec<std::fs::Metadata>)> {
    let repo_id = repo_id_of(&file_name(root))?;
    let mut repo_usage = Usage::default();
    let mut metas = Vec::new();
    let revisions: Vec<Revision> = s
        .snapshots
        .keys()
        .map(|c| hf_revision(root, s, c, &mut repo_usage, &mut metas))
        .collect();
    let (dtype, mp) = head_facts(s, &revisions);
    let formats: BTreeSet<Format> = revisions.iter().flat_map(|r| r.formats.clone()).collect();
    let partial = s
        .blobs
        .iter()
        .filter(|b| b.ends_with(".incomplete"))
        .count();
    let entry = Entry {
        catalog: catalog::MODELS
            .iter()
            .find(|m| m.hf_repo.eq_ignore_ascii_case(&repo_id))
            .map(|m| m.name),
        name: repo_id,
        place: Place::HfCache,
        path: root.to_path_buf(),
        formats: formats.into_iter().collect(),
        dtype,
        mp,
        files: metas.len(),
        bytes: repo_usage.bytes,
        verified: "never",
        modified: latest(&metas),
        revisions,
        partial_files: partial,
    };
    Some((entry, metas))
}

fn snapshot_formats(files: &BTreeMap<String, String>) -> Vec<Format> {
    let mut v = Vec::new();
    let has = |n: &str| files.contains_key(n);
    if has("params.json") || has("original/params.json") {
        v.push(Format::Meta);
    }
    if has("config.json") {
        v.push(Format::Hf);
    }
    if files
        .keys()
        .any(|k| k.to_ascii_lowercase().ends_with(".gguf"))
    {
        v.push(Format::Gguf);
    }
    v
}

fn first_gguf_dtype(snap: &Path) -> Option<String> {
    let mut found = None;
    walk_files(snap, &mut |p, _| {
        if found.is_none() && is_gguf_name(p) {
            found = gguf_file_dtype(p);
        }
    });
    found
}
