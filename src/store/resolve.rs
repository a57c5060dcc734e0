//! A MODEL argument to a path. Commands that take a model (`run`, `verify`, `show`, `convert`,
//! `reshard`) accept, in this order:
//! 1. a path that exists (a Meta or HF folder, a `.gguf` file), or anything spelled as a path
//!    (absolute, `./`, `../`, more than one `/`), left for the command to judge;
//! 2. a catalog name or llama-models descriptor (`8B-instruct`, `Llama3.1-8B-Instruct`): its store
//!    folder, else its Hub repo in the HF cache, else its download.sh folder in the current dir;
//! 3. a Hub repo id, optionally `@REVISION` (`meta-llama/Llama-3.2-1B@main`), from the HF cache;
//! 4. the name of a folder or GGUF file in the store.
//!
//! A folder holding both layouts (a Hub repo: HF files on top, Meta files in `original/`) gives
//! Meta-format commands its `original/` folder, as llama-stack's `model_checkpoint_dir` does.
use super::catalog;
use super::scan::has_meta_files;
use super::Roots;
use crate::net::hub::{validate_repo_id, RepoCache};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Which layout the command reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Meta files (`consolidated.*.pth`, `params.json`): `original/` of a Hub repo.
    Meta,
    /// Hugging Face files (`config.json`, safetensors).
    Hf,
    /// Whatever is there, HF files first, then Meta files, then a single GGUF file.
    Any,
}

/// Resolve `arg` for a command; says on stderr what it resolved to unless it was a plain path.
pub fn model_path(arg: &Path, want: Want) -> Result<PathBuf> {
    let (path, how) = resolve(arg, want)?;
    if let Some(how) = how {
        eprintln!("model: {} -> {} ({how})", arg.display(), path.display());
    }
    Ok(path)
}

/// The path and, unless `arg` was a path used as given, how it was found.
fn resolve(arg: &Path, want: Want) -> Result<(PathBuf, Option<String>)> {
    if std::fs::symlink_metadata(arg).is_ok() {
        let picked = pick(arg, want);
        let how = (picked != arg).then(|| "the Meta files of that folder".to_string());
        return Ok((picked, how));
    }
    let Some(s) = arg.to_str() else {
        bail!("{}: no such file or directory", arg.display());
    };
    // Spelled as a path (absolute, ./, ../, more than ORG/NAME): no name to look up; the command
    // says what is wrong with the path itself.
    if arg.is_absolute() || s.starts_with('.') || s.matches('/').count() > 1 {
        return Ok((arg.to_path_buf(), None));
    }
    let roots = Roots::from_env()?;
    if let Some(m) = catalog::find_any(s) {
        return catalog_model(&roots, m, want);
    }
    if s.contains('/') {
        let (id, rev) = s.split_once('@').unwrap_or((s, "main"));
        if validate_repo_id(id).is_ok() {
            return cached_repo(&roots, id, rev, want);
        }
    }
    let in_store = roots.checkpoints.join(s);
    if !s.contains('/') && in_store.exists() {
        return Ok((pick(&in_store, want), Some("in the store".into())));
    }
    bail!(
        "{s}: no such file or directory, and not a catalog model (llamactl list), a Hub repo id \
         in the HF cache, or a model in {}",
        roots.checkpoints.display()
    )
}

fn catalog_model(
    roots: &Roots,
    m: &catalog::Model,
    want: Want,
) -> Result<(PathBuf, Option<String>)> {
    let store = roots.store_dir(m);
    if store.is_dir() {
        let how = format!("catalog model {} in the store", m.name);
        return Ok((pick(&store, want), Some(how)));
    }
    if let Ok(found) = cached_repo(roots, m.hf_repo, "main", want) {
        return Ok(found);
    }
    let here = Path::new(m.local_folder);
    if here.is_dir() {
        let how = format!("catalog model {}, download.sh's folder here", m.name);
        return Ok((pick(here, want), Some(how)));
    }
    bail!(
        "{}: not on this machine (looked in {}, the HF cache for {} and ./{}); fetch it with \
         `llamactl download --models {}` or `llamactl pull {} --include 'original/*'`",
        m.name,
        store.display(),
        m.hf_repo,
        m.local_folder,
        m.name,
        m.hf_repo
    )
}

fn cached_repo(
    roots: &Roots,
    id: &str,
    rev: &str,
    want: Want,
) -> Result<(PathBuf, Option<String>)> {
    let cache = RepoCache::new(&roots.hf_cache, id);
    let commit = match cache.resolve_offline(rev) {
        Ok(c) => c,
        Err(_) => bail!(
            "{id}@{rev}: not in the HF cache ({}); fetch it with `llamactl pull {id}`",
            roots.hf_cache.display()
        ),
    };
    let snap = cache.snapshot_dir(&commit);
    if !snap.is_dir() {
        bail!("{id}@{rev}: commit {commit} has no snapshot in the HF cache; `llamactl pull {id}` fetches it");
    }
    let how = format!("Hub repo {id}@{rev} in the HF cache, commit {commit}");
    Ok((pick(&snap, want), Some(how)))
}

/// The folder (or file) inside `dir` that holds what the command reads.
fn pick(dir: &Path, want: Want) -> PathBuf {
    if !dir.is_dir() {
        return dir.to_path_buf();
    }
    let original = dir.join("original");
    let hf = dir.join("config.json").is_file();
    let meta_here = has_meta_files(dir);
    let meta_below = has_meta_files(&original);
    match want {
        Want::Meta if !meta_here && meta_below => original,
        Want::Any if !hf && !meta_here && meta_below => original,
        Want::Any if !hf && !meta_here => single_gguf(dir).unwrap_or_else(|| dir.to_path_buf()),
        _ => dir.to_path_buf(),
    }
}

fn single_gguf(dir: &Path) -> Option<PathBuf> {
    let ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    match ggufs.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}
