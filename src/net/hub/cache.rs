//! The Hub cache on disk, laid out as `huggingface_hub` lays it out (see the parent module).
use super::is_commit_hash;
use crate::output::write_atomic;
use crate::progress::Reporter;
use crate::util::flock_exclusive;
use anyhow::{anyhow, bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// One repo's folder in the Hub cache.
#[derive(Debug, Clone)]
pub(crate) struct RepoCache {
    cache_dir: PathBuf,
    folder: String,
}

impl RepoCache {
    pub(crate) fn new(cache_dir: &Path, repo_id: &str) -> Self {
        // huggingface_hub's cache folder name for a model repo: `models--org--name`.
        let folder = format!("models--{}", repo_id.replace('/', "--"));
        Self {
            cache_dir: cache_dir.to_path_buf(),
            folder,
        }
    }

    /// `models--{org}--{name}`.
    pub(crate) fn root(&self) -> PathBuf {
        self.cache_dir.join(&self.folder)
    }

    pub(crate) fn blob_path(&self, etag: &str) -> PathBuf {
        self.root().join("blobs").join(etag)
    }

    pub(crate) fn incomplete_path(&self, etag: &str) -> PathBuf {
        self.root().join("blobs").join(format!("{etag}.incomplete"))
    }

    /// The lock file `huggingface_hub` takes for the same blob, so the two never write it at once.
    pub(crate) fn lock_path(&self, etag: &str) -> PathBuf {
        self.cache_dir
            .join(".locks")
            .join(&self.folder)
            .join(format!("{etag}.lock"))
    }

    fn ref_path(&self, revision: &str) -> PathBuf {
        self.root().join("refs").join(revision)
    }

    pub(crate) fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root().join("snapshots").join(commit)
    }

    pub(crate) fn pointer_path(&self, commit: &str, file: &str) -> PathBuf {
        let mut p = self.snapshot_dir(commit);
        p.extend(file.split('/'));
        p
    }

    /// Mark the cache folder for backup tools (the Cache Directory Tagging Standard), as
    /// `huggingface_hub` does; best effort.
    pub(crate) fn tag_cache_dir(&self) {
        let tag = self.cache_dir.join("CACHEDIR.TAG");
        if !tag.exists() && std::fs::create_dir_all(&self.cache_dir).is_ok() {
            let _ = std::fs::write(
                &tag,
                "Signature: 8a477f597d28d172789f06886806bc55\n\
                 # This file is a cache directory tag created by llamactl (Hugging Face Hub cache).\n\
                 # For information about cache directory tags, see https://bford.info/cachedir/\n",
            );
        }
    }

    /// The commit a branch or tag pointed at when it was last fetched.
    fn read_ref(&self, revision: &str) -> Result<Option<String>> {
        let p = self.ref_path(revision);
        match std::fs::read_to_string(&p) {
            Ok(s) => {
                let c = s.trim();
                if !is_commit_hash(c) {
                    bail!("{}: does not hold a commit hash", p.display());
                }
                Ok(Some(c.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{}: cannot read", p.display())),
        }
    }

    /// Point `refs/{revision}` at `commit` (atomically; `huggingface_hub` reads it without trimming,
    /// so no newline).
    pub(crate) fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit || self.read_ref(revision).ok().flatten().as_deref() == Some(commit) {
            return Ok(());
        }
        let p = self.ref_path(revision);
        write_atomic(&p, commit.as_bytes())
    }

    /// The commit a revision names, from the cache alone.
    pub(crate) fn resolve_offline(&self, revision: &str) -> Result<String> {
        if is_commit_hash(revision) {
            return Ok(revision.to_string());
        }
        self.read_ref(revision)?.ok_or_else(|| {
            anyhow!(
                "{}: revision {revision:?} is not in the cache (HF_HUB_OFFLINE is set, so nothing can be fetched)",
                self.root().display()
            )
        })
    }

    /// `snapshots/{commit}/{file}` -> `../../blobs/{etag}` (relative, so the cache can move).
    pub(crate) fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let pointer = self.pointer_path(commit, file);
        let parent = pointer
            .parent()
            .ok_or_else(|| anyhow!("{}: no parent folder", pointer.display()))?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
        let target: PathBuf = std::iter::repeat_n("..", file.split('/').count() + 1)
            .chain(["blobs", etag])
            .collect();
        let tmp = parent.join(format!(
            ".{}.{}.tmp",
            file.rsplit('/').next().unwrap_or(file),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .with_context(|| format!("{}: cannot create a symlink", tmp.display()))?;
        std::fs::rename(&tmp, &pointer)
            .with_context(|| format!("{}: cannot create", pointer.display()))?;
        Ok(pointer)
    }
}

/// Every file under `dir` as repo paths (`a/b.txt`), skipping the `.cache` bookkeeping folder that
/// local-dir downloads keep. Dangling snapshot links are an error naming the file.
pub(crate) fn list_local_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
            let path = entry.path();
            let name = entry.file_name();
            if dir == root && name == ".cache" {
                continue;
            }
            let meta = std::fs::metadata(&path).with_context(|| {
                format!(
                    "{}: broken link (its blob is missing from the cache)",
                    path.display()
                )
            })?;
            if meta.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(root)
                    .map_err(|_| anyhow!("{}: outside {}", path.display(), root.display()))?;
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// An exclusive `flock` on `path`, held until the file is dropped (the kernel drops it if we die).
pub(super) fn lock_exclusive(path: &Path, what: &str, progress: &dyn Reporter) -> Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))?;
    let locked = |wait| {
        flock_exclusive(&f, wait).with_context(|| format!("{}: cannot lock", path.display()))
    };
    if !locked(false)? {
        progress.message(&format!(
            "{what}: another process is downloading it; waiting"
        ));
        locked(true)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_paths_match_huggingface_hub() {
        let c = RepoCache::new(Path::new("/c"), "meta-llama/Meta-Llama-3-8B");
        assert_eq!(
            c.root(),
            Path::new("/c/models--meta-llama--Meta-Llama-3-8B")
        );
        assert_eq!(
            c.pointer_path("abc", "original/params.json"),
            Path::new("/c/models--meta-llama--Meta-Llama-3-8B/snapshots/abc/original/params.json")
        );
        assert_eq!(
            c.lock_path("e"),
            Path::new("/c/.locks/models--meta-llama--Meta-Llama-3-8B/e.lock")
        );
    }

    #[test]
    fn links_are_relative_and_refs_have_no_newline() {
        let dir = tempfile::tempdir().unwrap();
        let c = RepoCache::new(dir.path(), "o/n");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(c.root().join("blobs")).unwrap();
        std::fs::write(c.blob_path("e1"), b"hi").unwrap();
        let p = c.link(commit, "original/params.json", "e1").unwrap();
        assert_eq!(
            std::fs::read_link(&p).unwrap(),
            Path::new("../../../blobs/e1")
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"hi");
        c.write_ref("main", commit).unwrap();
        assert_eq!(std::fs::read_to_string(c.ref_path("main")).unwrap(), commit);
        assert_eq!(c.resolve_offline("main").unwrap(), commit);
        assert!(c.resolve_offline("v2").is_err());
        assert_eq!(
            list_local_files(&c.snapshot_dir(commit)).unwrap(),
            ["original/params.json"]
        );
    }
}
