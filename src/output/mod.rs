//! Outputs that appear whole or not at all: a file replaced atomically ([`write_atomic`]), an
//! output directory ([`AtomicDir`]) or file ([`AtomicFile`]) written under a temporary name and
//! renamed when complete, the temporary outputs killed runs left ([`stale_temps`]), and where an
//! output may go relative to its input. Above [`crate::signal`]: an interruption removes the
//! temporary outputs registered there; the signal module itself never uses this one.
mod dir;
mod file;
mod stale;

pub(crate) use dir::AtomicDir;
pub(crate) use file::AtomicFile;
pub(crate) use stale::temp_name;
pub(crate) use stale::{stale_temps, stale_temps_of, Owner, StaleTemp};

use crate::util::{parent_or_dot, resolve_path, sync_dir};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` so that `path` is either untouched or complete: a hidden temp file
/// beside it (unique, so concurrent writers never share one) is written, fsynced and renamed over
/// `path`. A failure removes the temp file. Creates missing parent folders.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = parent_or_dot(path);
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create", parent.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // 0666 less the umask, like any file the user creates (tempfile's default is 0600, which hides
    // the output from other users, containers and upload jobs).
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o666))
        .prefix(&format!(".{name}.tmp-"))
        .tempfile_in(parent)
        .with_context(|| format!("{}: cannot create a temp file", parent.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("{}: cannot write", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    sync_dir(parent);
    Ok(())
}

/// Refuse an output directory `dst` that is the source directory `src`, lies inside it (the output
/// would be read back as input) or contains it (`--force` would delete the input).
pub(crate) fn check_dst_outside_src(src: &Path, dst: &Path) -> Result<()> {
    let s = std::fs::canonicalize(src)
        .with_context(|| format!("{}: cannot open source directory", src.display()))?;
    if !s.is_dir() {
        bail!("{}: not a directory", src.display());
    }
    let d = resolve_path(dst)?;
    let (src, dst) = (src.display(), dst.display());
    if d == s {
        bail!("{dst}: destination is the source directory; write to a new directory");
    }
    if d.starts_with(&s) {
        bail!("{dst}: destination is inside the source directory {src}; write it elsewhere");
    }
    if s.starts_with(&d) {
        bail!("{dst}: destination contains the source directory {src}; replacing it would destroy the input");
    }
    Ok(())
}

/// Refuse an output file `dst` that is the source file `src` or lies inside the source directory:
/// the first replaces the input, the second changes the checkpoint (its verify then fails).
pub(crate) fn check_file_dst_outside_src(src: &Path, dst: &Path) -> Result<()> {
    let s = std::fs::canonicalize(src)
        .with_context(|| format!("{}: cannot open the source", src.display()))?;
    let d = resolve_path(dst)?;
    let (src, dst) = (src.display(), dst.display());
    if d == s {
        bail!("{dst}: is the source; write the output elsewhere");
    }
    if s.is_dir() && d.starts_with(&s) {
        bail!("{dst}: is inside the source directory {src}; write it elsewhere");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_whole_and_leaves_no_temp() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("sub/f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        let e = write_atomic(&root.path().join("sub/f.json/x"), b"").unwrap_err();
        assert!(format!("{e:#}").contains("f.json"), "{e:#}");
    }

    #[test]
    fn destination_must_lie_outside_the_source() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let err = |dst: &Path| format!("{:#}", check_dst_outside_src(&src, dst).unwrap_err());
        assert!(err(&src.join("out/deeper")).contains("inside the source"));
        assert!(err(&src.join("x/..")).contains("is the source"));
        assert!(err(d.path()).contains("contains the source"));
        assert!(err(&d.path().join("missing/../..")).contains("contains the source"));
        check_dst_outside_src(&src, &d.path().join("out")).unwrap();
        assert!(check_dst_outside_src(&d.path().join("nope"), d.path()).is_err());
    }
}
