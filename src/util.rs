//! Small helpers shared by every layer: atomic output (files and directories), where an output may
//! go, a work queue for I/O-bound jobs, and human-readable sizes.
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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

/// `path`'s folder, `.` for a bare file name.
pub fn parent_or_dot(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fsync a directory so a rename inside it survives a crash. Best effort: some file systems refuse
/// to open or sync a directory, and the data itself is already synced.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// An exclusive `flock` on `file`, held until the file is closed; the kernel drops it when the
/// process dies, so a killed run never leaves a stale lock. With `wait`, blocks until the holder
/// lets go; without, `Ok(false)` says another process holds it.
pub fn flock_exclusive(file: &std::fs::File, wait: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
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

/// Write `bytes` to `path` so that `path` is either untouched or complete: a hidden temp file
/// beside it (unique, so concurrent writers never share one) is written, fsynced and renamed over
/// `path`. A failure removes the temp file. Creates missing parent folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
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

/// `path` made absolute with symlinks resolved, for a path that may not exist yet: each existing
/// prefix is canonicalized, and `..` after a missing component is taken lexically (a missing
/// directory holds no symlink to follow).
pub fn resolve_path(path: &Path) -> Result<PathBuf> {
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

/// Refuse an output directory `dst` that is the source directory `src`, lies inside it (the output
/// would be read back as input) or contains it (`--force` would delete the input).
pub fn check_dst_outside_src(src: &Path, dst: &Path) -> Result<()> {
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
pub fn check_file_dst_outside_src(src: &Path, dst: &Path) -> Result<()> {
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

/// Run `job(state, i)` for every `i` in `0..n` on up to `jobs` threads, for I/O-bound work where
/// each job is a whole file (rayon's pool is for CPU-bound splitting). A free thread takes the
/// lowest index not yet started, so callers order the work as they want it to start (largest file
/// first, say). `init(worker)` makes one thread's own state (buffers, a client). Once `stop()`
/// returns true no further index starts. Results come back by index; `None` where a job never
/// started.
pub fn work_queue<S, T: Send>(
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

/// Who created a temporary output: a process id and that process's start time (clock ticks
/// after boot, field 22 of `/proc/PID/stat`). Together they never name two processes, so a
/// reused pid is not mistaken for the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start: process_start(pid).unwrap_or(0),
        }
    }

    /// Still running. Without `/proc` (not Linux) nothing can be told, so every owner counts as
    /// alive and nothing is ever removed.
    pub fn alive(&self) -> bool {
        if !Path::new("/proc/self/stat").exists() {
            return true;
        }
        process_start(self.pid) == Some(self.start)
    }
}

/// Field 22 (`starttime`) of `/proc/PID/stat`; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The temp-dir name for `name`: `.NAME.tmp-PID-START-RANDOM`.
fn temp_name(name: &str, owner: Owner) -> String {
    format!(
        ".{name}.tmp-{}-{}-{:08x}",
        owner.pid,
        owner.start,
        rand::random::<u32>()
    )
}

/// The owner recorded in a temp-dir name, and the destination name it was for.
fn parse_temp_name(file_name: &str) -> Option<(&str, Owner)> {
    let body = file_name.strip_prefix('.')?;
    let at = body.rfind(".tmp-")?;
    let mut parts = body[at + 5..].split('-');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let rand = parts.next()?;
    if rand.is_empty() || parts.next().is_some() {
        return None;
    }
    Some((&body[..at], Owner { pid, start }))
}

/// A temporary output left by a run that was killed (its owner is gone).
#[derive(Debug, Clone)]
pub struct StaleTemp {
    pub path: PathBuf,
    pub bytes: u64,
    pub owner: Owner,
}

impl std::fmt::Display for StaleTemp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, left by process {}, which is gone)",
            self.path.display(),
            human_bytes(self.bytes),
            self.owner.pid
        )
    }
}

/// Temporary outputs in `dir` whose owner is gone; only those for destination `name` if given.
pub fn stale_temps(dir: &Path, name: Option<&str>) -> Vec<StaleTemp> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<StaleTemp> = entries
        .flatten()
        .filter_map(|e| {
            let file_name = e.file_name();
            let (for_name, owner) = parse_temp_name(file_name.to_str()?)?;
            let wanted = name.is_none_or(|n| n == for_name);
            (wanted && e.file_type().ok()?.is_dir() && !owner.alive()).then(|| StaleTemp {
                path: e.path(),
                bytes: crate::signal::tree_bytes(&e.path()),
                owner,
            })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The stale temporary outputs of destination `dst` (beside it, in its parent).
pub fn stale_temps_of(dst: &Path) -> Vec<StaleTemp> {
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned());
    stale_temps(parent_or_dot(dst), name.as_deref())
}

/// An output directory that appears under its final name only when complete.
///
/// Everything is written into a hidden temp dir beside the destination, named after its owner
/// (`.NAME.tmp-PID-START-RANDOM`, see [`Owner`]); [`AtomicDir::commit`] fsyncs and renames it.
/// Dropping it uncommitted, or a SIGINT/SIGTERM (see [`crate::signal`]), removes the temp dir. A
/// killed process leaves one that never looks finished, and the next `AtomicDir` for the same
/// destination removes it once its owner is gone.
pub struct AtomicDir {
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
    pub fn new(dst: &Path, force: bool) -> Result<Self> {
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
    pub fn path(&self) -> &Path {
        &self.tmp.as_ref().expect("AtomicDir used after commit").0
    }

    /// Temp dirs of earlier, killed runs to the same destination that [`AtomicDir::new`] removed.
    pub fn removed_stale(&self) -> &[StaleTemp] {
        &self.stale_removed
    }

    /// Fsync every file, then move the temp dir to its final name.
    pub fn commit(mut self) -> Result<PathBuf> {
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

/// An output file that appears under its final name only when complete: written as `NAME.part`
/// beside it, fsynced and renamed by [`AtomicFile::commit`]; dropped uncommitted, the part is
/// removed. A killed process leaves only the `.part`.
pub struct AtomicFile {
    file: Option<(std::fs::File, crate::signal::Registration)>,
    part: PathBuf,
    dst: PathBuf,
    force: bool,
}

impl AtomicFile {
    /// Refuses an existing `dst` unless `force`, and a `dst` that is a directory.
    pub fn create(dst: &Path, force: bool) -> Result<Self> {
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

    pub fn file(&self) -> &std::fs::File {
        &self.file.as_ref().expect("AtomicFile used after commit").0
    }

    pub fn part_path(&self) -> &Path {
        &self.part
    }

    /// Fsync, then rename the part to the final name (and fsync the folder).
    pub fn commit(mut self) -> Result<PathBuf> {
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

    #[test]
    fn stale_temp_dirs_are_found_by_owner() {
        let root = tempfile::tempdir().unwrap();
        let dst = root.path().join("out");
        let live = AtomicDir::new(&dst, false).unwrap();
        let name = live
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(parse_temp_name(&name).unwrap(), ("out", Owner::current()));
        // A pid that cannot exist, and our own pid with a start time that is not ours.
        let dead = [
            root.path().join(".out.tmp-4294967295-1-aa"),
            root.path()
                .join(format!(".out.tmp-{}-1-bb", std::process::id())),
        ];
        for d in &dead {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("f"), b"12345").unwrap();
        }
        std::fs::create_dir(root.path().join(".other.tmp-4294967295-1-cc")).unwrap();
        let found = stale_temps_of(&dst);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|s| s.bytes == 5));
        assert_eq!(stale_temps(root.path(), None).len(), 3);
        let next = AtomicDir::new(&root.path().join("out"), false).unwrap();
        assert_eq!(next.removed_stale().len(), 2);
        assert!(dead.iter().all(|d| !d.exists()));
        assert!(live.path().exists(), "a live owner's temp dir stays");
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
