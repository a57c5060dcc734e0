//! Small helpers shared by every layer: free disk space, directory fsync, file locks, resolving a
//! path that may not exist yet, and a work queue for I/O-bound jobs. Below the signal handling:
//! nothing here knows about interruptions (atomic outputs, which do, live a floor up).
use crate::human::human_bytes;
use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Free bytes on the file system that holds `path` (or its nearest existing ancestor).
pub(crate) fn free_disk_bytes(path: &Path) -> Result<u64> {
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
pub(crate) fn ensure_free_disk(path: &Path, need: u64) -> Result<()> {
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

/// `path`'s folder, `.` for a bare file name.
pub(crate) fn parent_or_dot(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fsync a directory so a rename inside it survives a crash. Best effort: some file systems refuse
/// to open or sync a directory, and the data itself is already synced.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// An exclusive `flock` on `file`, held until the file is closed; the kernel drops it when the
/// process dies, so a killed run never leaves a stale lock. With `wait`, blocks until the holder
/// lets go; without, `Ok(false)` says another process holds it.
pub(crate) fn flock_exclusive(file: &std::fs::File, wait: bool) -> std::io::Result<bool> {
    flock(file, libc::LOCK_EX, wait)
}

/// A shared `flock`, as [`flock_exclusive`]: any number of holders, but none while an exclusive
/// one is held.
pub(crate) fn flock_shared(file: &std::fs::File, wait: bool) -> std::io::Result<bool> {
    flock(file, libc::LOCK_SH, wait)
}

fn flock(file: &std::fs::File, mode: i32, wait: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let op = if wait { mode } else { mode | libc::LOCK_NB };
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// `path` made absolute with symlinks resolved, for a path that may not exist yet: each existing
/// prefix is canonicalized, and `..` after a missing component is taken lexically (a missing
/// directory holds no symlink to follow).
pub(crate) fn resolve_path(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => {
                out.push(c);
                if out.exists() {
                    out = std::fs::canonicalize(&out)
                        .with_context(|| format!("{}: cannot resolve", out.display()))?;
                }
            }
        }
    }
    Ok(out)
}

/// Run `job(state, i)` for every `i` in `0..n` on up to `jobs` threads, for I/O-bound work where
/// each job is a whole file (rayon's pool is for CPU-bound splitting). A free thread takes the
/// lowest index not yet started, so callers order the work as they want it to start (largest file
/// first, say). `init(worker)` makes one thread's own state (buffers, a client). Once `stop()`
/// returns true no further index starts. Results come back by index; `None` where a job never
/// started.
pub(crate) fn work_queue<S, T: Send>(
    n: usize,
    jobs: usize,
    init: impl Fn(usize) -> S + Sync,
    job: impl Fn(&mut S, usize) -> T + Sync,
    stop: impl Fn() -> bool + Sync,
) -> Vec<Option<T>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for worker in 0..jobs.clamp(1, n.max(1)) {
            let (next, results, init, job, stop) = (&next, &results, &init, &job, &stop);
            s.spawn(move || {
                let mut state = init(worker);
                while !stop() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = job(&mut state, i);
                    // A panicking job fails the whole scope; the results behind the lock stay usable.
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flock_is_exclusive_between_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let a = std::fs::File::create(&path).unwrap();
        let b = std::fs::File::open(&path).unwrap();
        assert!(flock_exclusive(&a, false).unwrap());
        assert!(!flock_exclusive(&b, false).unwrap());
        drop(a);
        assert!(flock_exclusive(&b, true).unwrap());
    }

    #[test]
    fn work_queue_runs_each_index_once_and_stops() {
        let started = AtomicUsize::new(0);
        let out = work_queue(50, 4, |w| w, |_, i| i * 2, || false);
        assert_eq!(out, (0..50).map(|i| Some(i * 2)).collect::<Vec<_>>());
        // One thread, stopping after the third job: the rest never start.
        let out = work_queue(
            10,
            1,
            |_| (),
            |_, i| started.fetch_add(1, Ordering::SeqCst) + i,
            || started.load(Ordering::SeqCst) >= 3,
        );
        assert_eq!(out.iter().filter(|r| r.is_some()).count(), 3);
        assert!(work_queue(0, 4, |_| (), |_, i| i, || false).is_empty());
    }
}
