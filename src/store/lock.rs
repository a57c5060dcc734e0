//! The model lock: `download`, `pull`, `convert` and `reshard` hold a *shared* lock on each model
//! they read or write for as long as they run; `rm` and `prune` need it *exclusively*, so they
//! refuse (or skip) a model in use instead of pulling files from under a running command.
//!
//! The lock is an `flock` on `{llama_home}/.llamactl-locks/{name}-{hash}.lock`, where the hash is
//! of the model's absolute path with symlinks resolved, so every spelling of a path meets the same
//! lock, and nothing is written beside the model (Meta's CLI lists every entry of `checkpoints/`).
//! The kernel drops an `flock` when its process dies, so a killed run never leaves a model
//! locked. Python `huggingface_hub` holds `.locks/{repo folder}/{etag}.lock` while it writes a
//! blob; [`hf_blob_lock_busy`] tests those.
use super::Roots;
use crate::util::{flock_exclusive, flock_shared};
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A lock held until dropped.
#[derive(Debug)]
pub struct Held {
    _file: File,
}

/// FNV-1a, 64 bits: a stable name for a path (not a security boundary).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// The lock file of `target`.
fn lock_path(roots: &Roots, target: &Path) -> Result<PathBuf> {
    let key = crate::util::resolve_path(target)?;
    let name: String = key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let hash = fnv1a(key.as_os_str().as_bytes());
    Ok(roots.lock_dir().join(format!("{name}-{hash:016x}.lock")))
}

fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))
}

/// Hold `target` shared while a command reads or writes it. Waits (saying so) while an `rm` or
/// `prune` holds it. Best effort: where no lock can be taken (no HOME, a read-only home), the
/// command runs unlocked rather than not at all.
pub fn hold(target: &Path) -> Option<Held> {
    let roots = Roots::from_env().ok()?;
    let file = open(&lock_path(&roots, target).ok()?).ok()?;
    if !flock_shared(&file, false).ok()? {
        eprintln!(
            "{}: being removed by another llamactl; waiting",
            target.display()
        );
        flock_shared(&file, true).ok()?;
    }
    Some(Held { _file: file })
}

/// Hold every target shared (see [`hold`]).
pub fn hold_all(targets: &[&Path]) -> Vec<Held> {
    targets.iter().filter_map(|t| hold(t)).collect()
}

/// `target` exclusively, or `Ok(None)` when a running command holds it.
pub fn try_exclusive(roots: &Roots, target: &Path) -> Result<Option<Held>> {
    let file = open(&lock_path(roots, target)?)?;
    let got = flock_exclusive(&file, false)
        .with_context(|| format!("{}: cannot lock", target.display()))?;
    Ok(got.then_some(Held { _file: file }))
}

/// Some running command holds `target` (its lock cannot be taken exclusively right now).
pub fn busy(roots: &Roots, target: &Path) -> bool {
    matches!(try_exclusive(roots, target), Ok(None))
}

/// A file someone holds an `flock` on (a download's part file, a huggingface_hub blob lock).
pub fn file_locked(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    matches!(flock_exclusive(&f, false), Ok(false))
}

/// huggingface_hub (or llamactl's `pull`) is writing a blob of the repo in `repo_folder`
/// (`models--org--name`): one of its `.locks/{repo_folder}/*.lock` files is held. With `etag`,
/// only that blob's lock counts.
pub fn hf_blob_lock_busy(cache: &Path, repo_folder: &str, etag: Option<&str>) -> bool {
    let dir = cache.join(".locks").join(repo_folder);
    if let Some(etag) = etag {
        return file_locked(&dir.join(format!("{etag}.lock")));
    }
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".lock") && file_locked(&e.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_holders_block_exclusive_and_every_spelling_meets_one_lock() {
        let d = tempfile::tempdir().unwrap();
        let roots = Roots {
            llama_home: d.path().join("home"),
            checkpoints: d.path().join("home/checkpoints"),
            hf_cache: d.path().join("hub"),
        };
        let model = d.path().join("m");
        std::fs::create_dir(&model).unwrap();
        let other_spelling = d.path().join("x/../m");
        assert_eq!(
            lock_path(&roots, &model).unwrap(),
            lock_path(&roots, &other_spelling).unwrap()
        );
        let f = open(&lock_path(&roots, &model).unwrap()).unwrap();
        assert!(flock_shared(&f, false).unwrap());
        assert!(busy(&roots, &other_spelling));
        drop(f);
        let held = try_exclusive(&roots, &model).unwrap();
        assert!(held.is_some());
        assert!(!busy(&roots, &d.path().join("elsewhere")));
    }
}
