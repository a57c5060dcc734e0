//! An output file written as `NAME.part` and renamed into place when complete.
use crate::util::{parent_or_dot, sync_dir};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// An output file that appears under its final name only when complete: written as `NAME.part`
/// beside it, fsynced and renamed by [`AtomicFile::commit`]; dropped uncommitted, the part is
/// removed. A killed process leaves only the `.part`.
pub(crate) struct AtomicFile {
    file: Option<(std::fs::File, crate::signal::Registration)>,
    part: PathBuf,
    dst: PathBuf,
    force: bool,
}

impl AtomicFile {
    /// Refuses an existing `dst` unless `force`, and a `dst` that is a directory.
    pub(crate) fn create(dst: &Path, force: bool) -> Result<Self> {
        if dst.as_os_str().as_encoded_bytes().ends_with(b"/") {
            bail!(
                "{}: names a directory; give the output file's name (e.g. {}model.gguf)",
                dst.display(),
                dst.display()
            );
        }
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
        // An interruption removes the part (signal::finish).
        let reg = crate::signal::register_temp(&part);
        Ok(Self {
            file: Some((file, reg)),
            part,
            dst: dst.to_path_buf(),
            force,
        })
    }

    pub(crate) fn file(&self) -> &std::fs::File {
        &self.file.as_ref().expect("AtomicFile used after commit").0
    }

    pub(crate) fn part_path(&self) -> &Path {
        &self.part
    }

    /// Fsync, then rename the part to the final name (and fsync the folder).
    pub(crate) fn commit(mut self) -> Result<PathBuf> {
        let (file, reg) = self.file.take().expect("AtomicFile committed twice");
        if let Err(e) = file.sync_all() {
            crate::signal::remove_temp(reg, &self.part);
            return Err(e).with_context(|| format!("{}: cannot fsync", self.part.display()));
        }
        drop(file);
        // Under the signal registry's lock, like AtomicDir::commit.
        let renamed = crate::signal::commit_temp(reg, || -> Result<()> {
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
            })
        });
        if renamed.is_err() {
            let _ = std::fs::remove_file(&self.part);
        }
        renamed?;
        sync_dir(parent_or_dot(&self.dst));
        Ok(self.dst.clone())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some((_, reg)) = self.file.take() {
            crate::signal::remove_temp(reg, &self.part);
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
}
