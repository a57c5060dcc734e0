//! An output directory written under a temporary name and renamed into place when complete.
use super::stale::{stale_temps_of, temp_name, Owner, StaleTemp};
use crate::util::{parent_or_dot, resolve_path, sync_dir};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// An output directory that appears under its final name only when complete.
///
/// Everything is written into a hidden temp dir beside the destination, named after its owner
/// (`.NAME.tmp-PID-START-RANDOM`, see [`Owner`]); [`AtomicDir::commit`] fsyncs and renames it.
/// Dropping it uncommitted, or a SIGINT/SIGTERM (see [`crate::signal`]), removes the temp dir. A
/// killed process leaves one that never looks finished, and the next `AtomicDir` for the same
/// destination removes it once its owner is gone.
pub(crate) struct AtomicDir {
    tmp: Option<(PathBuf, crate::signal::Registration)>,
    /// As the user spelled it, for messages and the result.
    dst: PathBuf,
    /// Resolved once, so `.` or `..` name a real folder and a parent to rename in.
    abs: PathBuf,
    force: bool,
    stale_removed: Vec<StaleTemp>,
}

impl AtomicDir {
    /// Prepare to write `dst`: an empty or missing directory, or with `force` a non-empty one that
    /// can be swapped atomically (see [`check_replaceable`]); anything else is refused here,
    /// before any work.
    pub(crate) fn new(dst: &Path, force: bool) -> Result<Self> {
        let abs = resolve_path(dst)?;
        let found = check_replaceable(dst, &abs)?;
        if found == Found::NonEmpty && !force {
            bail!(
                "{}: output directory exists and is not empty (use --force to replace it)",
                dst.display()
            );
        }
        let parent = parent_or_dot(&abs).to_path_buf();
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
        let mut stale_removed = stale_temps_of(&abs);
        stale_removed.retain(|s| std::fs::remove_dir_all(&s.path).is_ok());
        let name = abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let owner = Owner::current();
        let tmp = loop {
            let p = parent.join(temp_name(&name, owner));
            match std::fs::create_dir(&p) {
                Ok(()) => break p,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("{}: cannot create a temp dir", parent.display()))
                }
            }
        };
        let reg = crate::signal::register_temp(&tmp);
        Ok(Self {
            tmp: Some((tmp, reg)),
            dst: dst.to_path_buf(),
            abs,
            force,
            stale_removed,
        })
    }

    /// The temp dir to write into.
    pub(crate) fn path(&self) -> &Path {
        &self.tmp.as_ref().expect("AtomicDir used after commit").0
    }

    /// Temp dirs of earlier, killed runs to the same destination that [`AtomicDir::new`] removed.
    pub(crate) fn removed_stale(&self) -> &[StaleTemp] {
        &self.stale_removed
    }

    /// Fsync every file, then move the temp dir to its final name.
    pub(crate) fn commit(mut self) -> Result<PathBuf> {
        let (tmp, reg) = self.tmp.take().expect("AtomicDir committed twice");
        let synced = (|| -> std::io::Result<()> {
            for entry in std::fs::read_dir(&tmp)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    std::fs::File::open(entry.path())?.sync_all()?;
                }
            }
            Ok(())
        })();
        if let Err(e) = synced {
            crate::signal::remove_temp(reg, &tmp);
            return Err(e).with_context(|| format!("{}: cannot fsync", tmp.display()));
        }
        // Under the signal registry's lock: an interruption now neither removes the temp dir
        // halfway through the rename nor leaves it behind. After a swap the temp name holds the
        // old output, which is removed (it was registered as the temp dir).
        let renamed = crate::signal::commit_temp(reg, || self.rename_into_place(&tmp));
        match renamed {
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
            Ok(swapped) => {
                sync_dir(parent_or_dot(&self.abs));
                if swapped {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
            }
        }
        Ok(self.dst.clone())
    }

    /// Move `tmp` to the destination; `Ok(true)` when it swapped places with an old output,
    /// which now sits under `tmp`'s name. Never deletes before the new output is in place.
    fn rename_into_place(&self, tmp: &Path) -> Result<bool> {
        let ctx = || format!("{} -> {}: cannot rename", tmp.display(), self.dst.display());
        let found = match std::fs::symlink_metadata(&self.abs) {
            Err(_) => Found::Absent,
            Ok(_) => check_replaceable(&self.dst, &self.abs)?,
        };
        match found {
            // NOREPLACE: a directory that appears in the meantime is not silently taken over.
            Found::Absent => match rename_noreplace(tmp, &self.abs) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                    "{}: appeared while writing; not replacing it",
                    self.dst.display()
                ),
                r => r.with_context(ctx).map(|()| false),
            },
            // rename(2) replaces an empty directory atomically.
            Found::Empty => std::fs::rename(tmp, &self.abs)
                .with_context(ctx)
                .map(|()| false),
            Found::NonEmpty if !self.force => bail!(
                "{}: was filled while writing; not replacing it",
                self.dst.display()
            ),
            Found::NonEmpty => {
                let aside = parent_or_dot(&self.abs).join(temp_name("old", Owner::current()));
                rename_exchange(tmp, &self.abs, &aside)
                    .with_context(ctx)
                    .map(|()| true)
            }
        }
    }
}

/// What is at an output directory's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Absent,
    Empty,
    NonEmpty,
}

/// Whether `dst` (spelled by the user; `abs` resolved) can be written as an output directory,
/// replacing what is there: never `/`, the current directory or one that contains it, a mount
/// point, or something that is not a directory.
fn check_replaceable(dst: &Path, abs: &Path) -> Result<Found> {
    use std::os::unix::fs::MetadataExt;
    let shown = dst.display();
    if abs.parent().is_none() {
        bail!("{shown}: is the root directory; write to a new directory");
    }
    let cwd = std::env::current_dir()
        .and_then(std::fs::canonicalize)
        .context("cannot read the current directory")?;
    if cwd.starts_with(abs) {
        let what = if cwd == abs { "is" } else { "contains" };
        bail!("{shown}: {what} the current directory; write to a new directory");
    }
    let meta = match std::fs::symlink_metadata(abs) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Absent),
        r => r.with_context(|| format!("{shown}: cannot stat"))?,
    };
    if !meta.is_dir() {
        bail!("{shown}: exists and is not a directory");
    }
    let parent = std::fs::metadata(parent_or_dot(abs))
        .with_context(|| format!("{}: cannot stat", parent_or_dot(abs).display()))?;
    if parent.dev() != meta.dev() || is_mount_point(abs) {
        bail!(
            "{shown}: is a mount point and cannot be replaced; write to a new directory inside it"
        );
    }
    let non_empty = std::fs::read_dir(abs)
        .with_context(|| format!("{shown}: cannot list"))?
        .next()
        .is_some();
    Ok(if non_empty {
        Found::NonEmpty
    } else {
        Found::Empty
    })
}

/// Listed as a mount point in `/proc/self/mountinfo` (bind mounts keep the device number, so
/// comparing it with the parent's is not enough). Without that file, false.
fn is_mount_point(abs: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&unescape_mount(m)) == abs)
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths, relative to the current directory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a renameat2 error means the kernel or file system lacks the flag.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP)
    )
}

/// Rename `from` to a `to` that must not exist. Where the file system cannot promise that, the
/// check and the rename are two steps.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    match renameat2(from, to, libc::RENAME_NOREPLACE) {
        Err(e) if unsupported(&e) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(std::io::ErrorKind::AlreadyExists.into());
            }
            std::fs::rename(from, to)
        }
        r => r,
    }
}

/// Swap `from` and `to` in one step, so a crash leaves either the old or the new output under
/// `to`. Where the file system cannot, the old one is first moved to `aside` (a temp name a
/// later run can tell is stale), put back if the second rename fails, and ends under `from`.
fn rename_exchange(from: &Path, to: &Path, aside: &Path) -> std::io::Result<()> {
    match renameat2(from, to, libc::RENAME_EXCHANGE) {
        Err(e) if unsupported(&e) => {
            std::fs::rename(to, aside)?;
            if let Err(e) = std::fs::rename(from, to) {
                let _ = std::fs::rename(aside, to);
                return Err(e);
            }
            std::fs::rename(aside, from)
        }
        r => r,
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if let Some((tmp, reg)) = self.tmp.take() {
            crate::signal::remove_temp(reg, &tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
