//! What `rm` and `prune` remove, planned first (so `--dry-run` and the question on a terminal show
//! exactly what will go), then carried out in an order that keeps every state readable.
//!
//! Crash safety (a `kill -9` at any instant): a whole model folder, HF repo or snapshot is first
//! renamed out of sight in one step (beside itself, or into the HF cache's `.locks/` folder, which
//! `huggingface_hub` never scans) under a temp name that records its owner, then deleted; a killed
//! run leaves only that temp dir, which `prune` removes once its owner is gone. Inside the HF cache
//! the order is huggingface_hub's delete strategy, made atomic: refs that point at a revision
//! first, then its snapshot, then the blobs no remaining snapshot uses. So no ref ever names a
//! missing snapshot and no snapshot link points at a missing blob.
use super::lock::{self, Held};
use super::scan::{self, RepoScan};
use super::Roots;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// How one item goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Step {
    /// One file (or symlink).
    Unlink,
    /// A folder: renamed out of sight atomically, then deleted.
    Tree,
}

/// One thing to remove.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Item {
    pub path: PathBuf,
    /// In words: "model folder", "HF repo", "revision abc… (refs: v1)", "unreferenced blob", ...
    pub what: String,
    /// Bytes freed (files whose inode another kept path still uses count 0).
    pub bytes: u64,
    step: Step,
    /// Where a `Tree` goes before it is deleted (a folder on the same file system).
    #[serde(skip)]
    trash_dir: PathBuf,
}

impl Item {
    pub fn file(path: PathBuf, what: impl Into<String>, bytes: u64) -> Item {
        Item {
            path,
            what: what.into(),
            bytes,
            step: Step::Unlink,
            trash_dir: PathBuf::new(),
        }
    }

    pub fn tree(path: PathBuf, what: impl Into<String>, bytes: u64, trash_dir: &Path) -> Item {
        Item {
            path,
            what: what.into(),
            bytes,
            step: Step::Tree,
            trash_dir: trash_dir.to_path_buf(),
        }
    }
}

/// Items in the order they must go, and the locks held while they do.
#[derive(Debug, Default)]
pub struct Plan {
    pub items: Vec<Item>,
    /// Notes for the user: what was left alone and why.
    pub skipped: Vec<String>,
    pub locks: Vec<Held>,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.items.iter().map(|i| i.bytes).sum()
    }

    /// Remove every item, in order. Stops at the first failure (later items may depend on it:
    /// a blob only goes once the links to it are gone).
    pub fn execute(&self) -> Result<u64> {
        let mut freed = 0;
        for item in &self.items {
            crate::signal::check()?;
            match item.step {
                Step::Unlink => match std::fs::remove_file(&item.path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e)
                            .with_context(|| format!("{}: cannot remove", item.path.display()))
                    }
                    _ => {}
                },
                Step::Tree => remove_tree_atomically(&item.path, &item.trash_dir)?,
            }
            if let Some(parent) = item.path.parent() {
                crate::util::sync_dir(parent);
            }
            freed += item.bytes;
        }
        Ok(freed)
    }
}

/// Rename `path` into `trash_dir` under an owner-stamped temp name, then delete it there.
fn remove_tree_atomically(path: &Path, trash_dir: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    std::fs::create_dir_all(trash_dir)
        .with_context(|| format!("{}: cannot create", trash_dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let trash = trash_dir.join(crate::output::temp_name(
        &name,
        crate::output::Owner::current(),
    ));
    std::fs::rename(path, &trash).with_context(|| {
        format!(
            "{} -> {}: cannot move aside",
            path.display(),
            trash.display()
        )
    })?;
    crate::util::sync_dir(crate::util::parent_or_dot(path));
    let reg = crate::signal::register_temp(&trash);
    crate::signal::remove_temp(reg, &trash);
    if trash.exists() {
        bail!(
            "{}: could not delete all of it (moved there from {})",
            trash.display(),
            path.display()
        );
    }
    Ok(())
}

/// The folder of the HF cache that `huggingface_hub` does not scan: trash goes there.
fn hf_trash_dir(roots: &Roots) -> PathBuf {
    roots.hf_cache.join(".locks")
}

/// A repo folder's name (`models--org--name`).
fn folder_name(root: &Path) -> String {
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Bytes of the blobs in `names` (each once).
fn blob_bytes(root: &Path, name: &str) -> u64 {
    std::fs::metadata(root.join("blobs").join(name)).map_or(0, |m| m.len())
}

/// Remove revisions `commits` of the repo at `root` (all of them: the whole repo).
pub fn plan_revisions(
    roots: &Roots,
    root: &Path,
    s: &RepoScan,
    commits: &BTreeSet<String>,
) -> Vec<Item> {
    let trash = hf_trash_dir(roots);
    if commits.len() == s.snapshots.len() {
        let bytes = s.blobs.iter().map(|b| blob_bytes(root, b)).sum();
        let what = format!("HF repo, {} revision(s)", s.snapshots.len());
        return vec![Item::tree(root.to_path_buf(), what, bytes, &trash)];
    }
    let mut items = Vec::new();
    for commit in commits {
        for r in s.refs_of(commit) {
            items.push(Item::file(
                root.join("refs").join(&r),
                format!("ref {r} -> {commit}"),
                0,
            ));
        }
    }
    for commit in commits {
        let refs = s.refs_of(commit);
        let what = match refs.is_empty() {
            true => format!("snapshot {commit} (detached)"),
            false => format!("snapshot {commit} (refs: {})", refs.join(", ")),
        };
        items.push(Item::tree(
            root.join("snapshots").join(commit),
            what,
            0,
            &trash,
        ));
    }
    let kept = s.referenced(commits);
    let gone: BTreeSet<String> = s
        .snapshots
        .iter()
        .filter(|(c, _)| commits.contains(*c))
        .flat_map(|(_, f)| f.values().filter(|b| !b.is_empty()).cloned())
        .filter(|b| !kept.contains(b))
        .collect();
    for b in gone {
        let bytes = blob_bytes(root, &b);
        items.push(Item::file(
            root.join("blobs").join(&b),
            "blob no kept revision uses",
            bytes,
        ));
    }
    items
}

/// The revision `rev` (a ref name, a full commit or a unique commit prefix) of a cached repo.
pub fn find_revision(s: &RepoScan, rev: &str) -> Result<String> {
    if let Some(c) = s.refs.get(rev) {
        return Ok(c.clone());
    }
    let hits: Vec<&String> = s.snapshots.keys().filter(|c| c.starts_with(rev)).collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(
            "revision {rev:?} is not in the cache (cached: {})",
            s.snapshots
                .keys()
                .map(|c| {
                    let refs = s.refs_of(c);
                    if refs.is_empty() {
                        c.clone()
                    } else {
                        format!("{c} ({})", refs.join(", "))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => bail!("revision {rev:?} matches several cached commits; give more of it"),
    }
}

/// Refuse when a running command holds the model; else hold it for the removal.
pub fn lock_for_removal(roots: &Roots, target: &Path, shown: &str) -> Result<Held> {
    let refused = || {
        crate::error::Fail::error(
            crate::error::USAGE,
            format!(
                "{shown}: in use by a running download, pull or convert (its lock is held); not removing it"
            ),
        )
    };
    let held = lock::try_exclusive(roots, target)?.ok_or_else(refused)?;
    let is_hf = target.starts_with(&roots.hf_cache);
    if is_hf && lock::hf_blob_lock_busy(&roots.hf_cache, &folder_name(target), None) {
        return Err(refused());
    }
    Ok(held)
}

// ---------------------------------------------------------------------------------------------
// prune

/// What `prune` looks at.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    pub partials: bool,
    pub revisions: bool,
    pub dirs: Vec<PathBuf>,
}

/// Everything `prune` would remove, each model locked (models in use are skipped, with a note).
pub fn plan_prune(roots: &Roots, opts: &PruneOptions) -> Plan {
    let mut plan = Plan::default();
    let mut places = vec![roots.checkpoints.clone(), hf_trash_dir(roots)];
    places.extend(opts.dirs.iter().cloned());
    for place in &places {
        for t in crate::output::stale_temps(place, None) {
            let what = format!("temp dir of a dead run (process {})", t.owner.pid);
            plan.items
                .push(Item::tree(t.path.clone(), what, t.bytes, place));
        }
    }
    for root in hf_repo_roots(&roots.hf_cache) {
        prune_repo(roots, &root, opts, &mut plan);
    }
    if opts.partials {
        let mut folders = Vec::new();
        for place in std::iter::once(&roots.checkpoints).chain(opts.dirs.iter()) {
            folders.push(place.clone());
            folders.extend(subfolders(place));
        }
        for f in folders {
            prune_parts(roots, &f, &mut plan);
        }
    }
    plan
}

fn subfolders(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn hf_repo_roots(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("models--"))
        .map(|e| e.path())
        .filter(|p| p.join("snapshots").is_dir())
        .collect();
    v.sort();
    v
}

/// One HF repo: unreferenced blobs, with `--partials` abandoned `.incomplete` parts, with
/// `--revisions` detached revisions (of repos where some ref remains).
fn prune_repo(roots: &Roots, root: &Path, opts: &PruneOptions, plan: &mut Plan) {
    let Some(repo_id) = scan::repo_id_of(&folder_name(root)) else {
        return;
    };
    let held = match lock::try_exclusive(roots, root) {
        Ok(Some(h)) => h,
        _ => {
            plan.skipped
                .push(format!("{repo_id}: a running pull holds it; left alone"));
            return;
        }
    };
    let s = RepoScan::read(root);
    let folder = folder_name(root);
    let busy = |etag: &str| lock::hf_blob_lock_busy(&roots.hf_cache, &folder, Some(etag));
    let detached = match opts.revisions {
        true => detached(&s),
        false => BTreeSet::new(),
    };
    let before = plan.items.len();
    if !detached.is_empty() {
        plan.items.extend(
            plan_revisions(roots, root, &s, &detached)
                .into_iter()
                .map(|mut i| {
                    i.what = format!("{repo_id}: {}", i.what);
                    i
                }),
        );
    }
    let referenced = s.referenced(&BTreeSet::new());
    for b in &s.blobs {
        let partial = b.ends_with(".incomplete");
        if referenced.contains(b) || (partial && !opts.partials) {
            continue;
        }
        let etag = b.strip_suffix(".incomplete").unwrap_or(b);
        let path = root.join("blobs").join(b);
        if busy(etag) || lock::file_locked(&path) {
            plan.skipped
                .push(format!("{}: being written; left alone", path.display()));
            continue;
        }
        let what = match partial {
            true => format!("{repo_id}: partial download"),
            false => format!("{repo_id}: blob no snapshot uses"),
        };
        plan.items.push(Item::file(path, what, blob_bytes(root, b)));
    }
    if plan.items.len() > before {
        plan.locks.push(held);
    }
}

/// Revisions no ref points at; none when no ref points into the repo at all (a repo pulled by
/// commit is not an old revision).
fn detached(s: &RepoScan) -> BTreeSet<String> {
    let d: BTreeSet<String> = s
        .snapshots
        .keys()
        .filter(|c| s.refs_of(c).is_empty())
        .cloned()
        .collect();
    match d.len() == s.snapshots.len() {
        true => BTreeSet::new(),
        false => d,
    }
}

/// `NAME.part` (+ `NAME.part.meta`) files in `dir` that no running download or convert holds.
fn prune_parts(roots: &Roots, dir: &Path, plan: &mut Plan) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut parts: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(".part"))
        .collect();
    parts.sort();
    for part in parts {
        let dst = PathBuf::from(part.to_string_lossy().trim_end_matches(".part").to_string());
        if lock::file_locked(&part) || lock::busy(roots, &dst) || lock::busy(roots, dir) {
            plan.skipped
                .push(format!("{}: being written; left alone", part.display()));
            continue;
        }
        let bytes = std::fs::metadata(&part).map_or(0, |m| m.len());
        plan.items.push(Item::file(
            part.clone(),
            "partial download or output",
            bytes,
        ));
        let meta = PathBuf::from(format!("{}.meta", part.display()));
        if meta.is_file() {
            let bytes = std::fs::metadata(&meta).map_or(0, |m| m.len());
            plan.items
                .push(Item::file(meta, "its resume record", bytes));
        }
    }
}
