//! Small helpers shared by every layer: atomic output and human-readable sizes.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Bytes as a short human string (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Free bytes on the file system that holds `path` (or its nearest existing ancestor).
pub fn free_disk_bytes(path: &Path) -> Result<u64> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            p = PathBuf::from(".");
            break;
        }
    }
    if p.as_os_str().is_empty() {
        p = PathBuf::from(".");
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{}: path contains a NUL byte", p.display()))?;
    // SAFETY: statvfs only writes into the struct we hand it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{}: cannot read free disk space", p.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuse to start writing `need` bytes under `path` when the file system has less free.
pub fn ensure_free_disk(path: &Path, need: u64) -> Result<()> {
    let free = free_disk_bytes(path)?;
    if free < need {
        bail!(
            "{}: not enough free disk space: the output needs {}, {} is free",
            path.display(),
            human_bytes(need),
            human_bytes(free)
        );
    }
    Ok(())
}

/// An output directory that appears under its final name only when complete.
///
/// Everything is written into a hidden temp dir beside the destination; [`AtomicDir::commit`] fsyncs
/// and renames it. Dropping it uncommitted removes the temp dir, and a killed process leaves only a
/// `.NAME.tmp-*` folder that never looks finished.
pub struct AtomicDir {
    tmp: Option<tempfile::TempDir>,
    dst: PathBuf,
    force: bool,
}

impl AtomicDir {
    /// Prepare to write `dst`. Refuses a non-empty `dst` unless `force`.
    pub fn new(dst: &Path, force: bool) -> Result<Self> {
        if dst.exists() {
            if !dst.is_dir() {
                bail!("{}: exists and is not a directory", dst.display());
            }
            let non_empty = std::fs::read_dir(dst)
                .with_context(|| format!("{}: cannot list", dst.display()))?
                .next()
                .is_some();
            if non_empty && !force {
                bail!(
                    "{}: output directory exists and is not empty (use --force to replace it)",
                    dst.display()
                );
            }
        }
        let parent = match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
        let name = dst
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp-"))
            .tempdir_in(&parent)
            .with_context(|| format!("{}: cannot create a temp dir", parent.display()))?;
        Ok(Self {
            tmp: Some(tmp),
            dst: dst.to_path_buf(),
            force,
        })
    }

    /// The temp dir to write into.
    pub fn path(&self) -> &Path {
        self.tmp
            .as_ref()
            .expect("AtomicDir used after commit")
            .path()
    }

    /// Fsync every file, then move the temp dir to its final name.
    pub fn commit(mut self) -> Result<PathBuf> {
        let tmp = self.tmp.take().expect("AtomicDir committed twice");
        for entry in std::fs::read_dir(tmp.path())? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::File::open(entry.path())?.sync_all()?;
            }
        }
        let tmp_path = tmp.keep();
        if self.dst.exists() {
            if !self.force {
                bail!(
                    "{}: appeared while writing; not replacing it",
                    self.dst.display()
                );
            }
            std::fs::remove_dir_all(&self.dst)
                .with_context(|| format!("{}: cannot replace", self.dst.display()))?;
        }
        std::fs::rename(&tmp_path, &self.dst).with_context(|| {
            format!(
                "{} -> {}: cannot rename",
                tmp_path.display(),
                self.dst.display()
            )
        })?;
        if let Some(parent) = self.dst.parent() {
            if let Ok(d) = std::fs::File::open(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            }) {
                let _ = d.sync_all();
            }
        }
        Ok(self.dst.clone())
    }
}

/// An output file that appears under its final name only when complete: written as `NAME.part`
/// beside it, fsynced and renamed by [`AtomicFile::commit`]; dropped uncommitted, the part is
/// removed. A killed process leaves only the `.part`.
pub struct AtomicFile {
    file: Option<std::fs::File>,
    part: PathBuf,
    dst: PathBuf,
    force: bool,
}

impl AtomicFile {
    /// Refuses an existing `dst` unless `force`, and a `dst` that is a directory.
    pub fn create(dst: &Path, force: bool) -> Result<Self> {
        if dst.is_dir() {
            bail!("{}: is a directory; give a file name", dst.display());
        }
        if dst.exists() && !force {
            bail!(
                "{}: output file exists (use --force to replace it)",
                dst.display()
            );
        }
        let mut part = dst.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        if let Some(parent) = dst.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create", parent.display()))?;
        }
        let file = std::fs::File::create(&part)
            .with_context(|| format!("{}: cannot create", part.display()))?;
        Ok(Self {
            file: Some(file),
            part,
            dst: dst.to_path_buf(),
            force,
        })
    }

    pub fn file(&self) -> &std::fs::File {
        self.file.as_ref().expect("AtomicFile used after commit")
    }

    pub fn part_path(&self) -> &Path {
        &self.part
    }

    /// Fsync, then rename the part to the final name (and fsync the folder).
    pub fn commit(mut self) -> Result<PathBuf> {
        let file = self.file.take().expect("AtomicFile committed twice");
        file.sync_all()
            .with_context(|| format!("{}: cannot fsync", self.part.display()))?;
        drop(file);
        if self.dst.exists() && !self.force {
            bail!(
                "{}: appeared while writing; not replacing it",
                self.dst.display()
            );
        }
        std::fs::rename(&self.part, &self.dst).with_context(|| {
            format!(
                "{} -> {}: cannot rename",
                self.part.display(),
                self.dst.display()
            )
        })?;
        let parent = self
            .dst
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(self.dst.clone())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_appears_only_on_commit() {
        use std::io::Write;
        let root = tempfile::tempdir().unwrap();
        let dst = root.path().join("m.gguf");
        let a = AtomicFile::create(&dst, false).unwrap();
        a.file().write_all(b"x").unwrap();
        assert!(!dst.exists() && a.part_path().exists());
        a.commit().unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"x");
        assert!(AtomicFile::create(&dst, false).is_err());
        let b = AtomicFile::create(&dst, true).unwrap();
        drop(b);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
        assert_eq!(std::fs::read(&dst).unwrap(), b"x");
    }

    #[test]
    fn atomic_dir_appears_only_on_commit() {
        let root = tempfile::tempdir().unwrap();
        let dst = root.path().join("out");
        let a = AtomicDir::new(&dst, false).unwrap();
        std::fs::write(a.path().join("f"), b"x").unwrap();
        assert!(!dst.exists());
        a.commit().unwrap();
        assert_eq!(std::fs::read(dst.join("f")).unwrap(), b"x");
        // Non-empty destination is refused without force.
        assert!(AtomicDir::new(&dst, false).is_err());
        let b = AtomicDir::new(&dst, true).unwrap();
        drop(b);
        assert!(dst.join("f").exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
