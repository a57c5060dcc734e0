//! SIGINT / SIGTERM: stop within a second, remove temporary outputs, say what was kept, exit 130/143.
//!
//! The handler only stores the signal number in an atomic and writes one byte to a pipe (both
//! async-signal-safe). Long loops (copies, hashing writers, transfers) poll [`check`] and unwind
//! with [`Interrupted`]; dropping their temporary outputs removes them, and `main` calls
//! [`finish`]. A watchdog thread, woken through the pipe, calls [`finish`] itself if the process
//! is still running after `GRACE` (a read blocked on a dead connection, a command that never
//! polls), so every command stops in about a second.
//!
//! An interactive loop (the chat REPL) can take the first SIGINT as "stop what you are doing"
//! instead: while a [`SoftStop`] is held, one SIGINT only sets its flag; a second one takes the
//! usual way.
//!
//! Temporary outputs and "kept" notes live in one registry behind one lock. Whoever removes or
//! renames a registered path holds the lock while doing it, and [`finish`] prints its one line and
//! exits while holding it, so a temp dir is never half removed nor reported twice.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

/// How long the commands get to unwind by themselves before the watchdog ends the process.
const GRACE: Duration = Duration::from_millis(600);

static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// A [`SoftStop`] is held: the next SIGINT sets [`SOFT_HIT`] and goes no further.
static SOFT: AtomicBool = AtomicBool::new(false);
static SOFT_HIT: AtomicBool = AtomicBool::new(false);
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    entries: Vec::new(),
    removed: Vec::new(),
});

/// The error a polled loop returns once a signal arrived.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.0))]
pub struct Interrupted(pub i32);

impl From<Interrupted> for std::io::Error {
    fn from(e: Interrupted) -> Self {
        std::io::Error::new(std::io::ErrorKind::Interrupted, e)
    }
}

/// The signal received so far, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// `Err` once SIGINT or SIGTERM arrived: long loops call this between blocks.
pub fn check() -> Result<(), Interrupted> {
    if let Some(d) = test_delay() {
        std::thread::sleep(d);
    }
    received().map_or(Ok(()), |s| Err(Interrupted(s)))
}

/// For tests only: `LLAMACTL_TEST_SLOW_MS=N` sleeps N ms at every [`check`], so that a test can
/// interrupt a job on a tiny checkpoint while it is still writing.
fn test_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("LLAMACTL_TEST_SLOW_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_millis)
    })
}

/// Sleep for `d`, waking early (with `Err`) when a signal arrives.
pub fn sleep(d: Duration) -> Result<(), Interrupted> {
    let end = std::time::Instant::now() + d;
    loop {
        check()?;
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The exit status for a signal (128 + its number: 130 for SIGINT, 143 for SIGTERM).
pub fn exit_code(sig: i32) -> i32 {
    128 + sig
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work: atomics and write(2).
    if sig == libc::SIGINT && SOFT.load(Ordering::SeqCst) && !SOFT_HIT.swap(true, Ordering::SeqCst)
    {
        return;
    }
    RECEIVED.store(sig, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) on a pipe we own, from a one-byte stack buffer.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// Install the SIGINT/SIGTERM handlers and the watchdog (once per process), and give SIGPIPE its
/// default action back: a closed stdout (`| head`) then ends the process quietly (status 141)
/// instead of making every `println!` panic. Socket writes are unaffected (Rust sends with
/// `MSG_NOSIGNAL`), and outputs are written to stdout only after they are committed.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills the two descriptors we pass; sigaction gets a zeroed, filled struct.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) == 0 {
                WAKE_FD.store(fds[1], Ordering::SeqCst);
                let read_fd = fds[0];
                let _ = std::thread::Builder::new()
                    .name("signal-watchdog".into())
                    .spawn(move || watchdog(read_fd));
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            act.sa_flags = libc::SA_RESTART;
            libc::sigaction(libc::SIGINT, &act, std::ptr::null_mut());
            libc::sigaction(libc::SIGTERM, &act, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    });
}

fn watchdog(read_fd: libc::c_int) {
    let mut byte = 0u8;
    loop {
        // SAFETY: read(2) into a one-byte stack buffer from our own pipe.
        let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 || received().is_some() {
            break;
        }
        if n == 0 {
            return;
        }
    }
    std::thread::sleep(GRACE);
    if let Some(sig) = received() {
        finish(sig);
    }
}

/// While held, the first SIGINT asks the holder to stop (see [`SoftStop::requested`]) instead of
/// ending the process; a second SIGINT, or SIGTERM, ends it as usual. One at a time.
#[derive(Debug)]
pub struct SoftStop(());

impl SoftStop {
    pub fn begin() -> SoftStop {
        SOFT_HIT.store(false, Ordering::SeqCst);
        SOFT.store(true, Ordering::SeqCst);
        SoftStop(())
    }

    /// Whether a SIGINT asked to stop since [`SoftStop::begin`].
    pub fn requested(&self) -> bool {
        SOFT_HIT.load(Ordering::SeqCst)
    }
}

impl Drop for SoftStop {
    fn drop(&mut self) {
        SOFT.store(false, Ordering::SeqCst);
    }
}

struct Registry {
    entries: Vec<(u64, Entry)>,
    /// What was removed because of the signal, for the one line.
    removed: Vec<String>,
}

enum Entry {
    /// A temporary output to remove on interruption.
    Temp(PathBuf),
    /// Says what an interrupted command keeps (e.g. resumable partial downloads), or nothing.
    Kept(Box<dyn Fn() -> Option<String> + Send>),
}

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registry entry; dropping it unregisters (without removing anything).
#[derive(Debug)]
pub struct Registration(u64);

impl Drop for Registration {
    /// Once a signal arrived, entries stay until [`finish`] has acted on them: the commands
    /// unwind (dropping their registrations) before `main` calls it.
    fn drop(&mut self) {
        if received().is_none() {
            registry().entries.retain(|(id, _)| *id != self.0);
        }
    }
}

fn register(entry: Entry) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry().entries.push((id, entry));
    Registration(id)
}

/// Register a temporary output that an interruption must remove.
pub fn register_temp(path: &Path) -> Registration {
    register(Entry::Temp(path.to_path_buf()))
}

/// Register a note saying what an interruption keeps; `note` runs only if one happens.
pub fn register_kept(note: impl Fn() -> Option<String> + Send + 'static) -> Registration {
    register(Entry::Kept(Box::new(note)))
}

/// Remove the temp output of `reg` now (an abandoned run), under the lock.
pub fn remove_temp(reg: Registration, path: &Path) {
    let mut r = registry();
    if let Some(phrase) = remove_tree(path) {
        r.removed.push(phrase);
    }
    r.entries.retain(|(id, _)| *id != reg.0);
    drop(r);
    std::mem::forget(reg);
}

/// Run `f` (e.g. the rename that commits a temp dir) so that no interruption removes the temp
/// output of `reg` meanwhile; the output is unregistered afterwards.
pub fn commit_temp<T>(reg: Registration, f: impl FnOnce() -> T) -> T {
    let mut r = registry();
    let out = f();
    r.entries.retain(|(id, _)| *id != reg.0);
    drop(r);
    std::mem::forget(reg);
    out
}

/// Remove a tree; when a signal caused it, a phrase naming it and what it freed.
fn remove_tree(path: &Path) -> Option<String> {
    let interrupted = received().is_some();
    let bytes = if interrupted { tree_bytes(path) } else { 0 };
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
        let _ = std::fs::remove_file(path);
    }
    // A worker may still create a file inside while we remove: try again.
    for _ in 0..5 {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound && path.exists() => continue,
            _ => break,
        }
    }
    let gone = !path.exists();
    interrupted.then(|| match gone {
        true => format!(
            "removed {} ({})",
            path.display(),
            crate::human::human_bytes(bytes)
        ),
        false => format!("could not remove {}", path.display()),
    })
}

/// Bytes held by the files under `path` (0 when it is gone).
pub fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// Remove every registered temp output, print one line saying what was removed and kept, and
/// exit with 128 + `sig`. Holds the registry lock to the end, so it runs once.
pub fn finish(sig: i32) -> ! {
    let mut r = registry();
    let entries = std::mem::take(&mut r.entries);
    let mut phrases = std::mem::take(&mut r.removed);
    for (_, entry) in &entries {
        match entry {
            Entry::Temp(path) => phrases.extend(remove_tree(path)),
            Entry::Kept(note) => phrases.extend(note()),
        }
    }
    let what = if phrases.is_empty() {
        "no temporary output to remove".to_string()
    } else {
        phrases.join("; ")
    };
    eprintln!("interrupted by {}: {what}", signal_name(sig));
    std::process::exit(exit_code(sig));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_and_remove_unregister() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::create_dir(&t).unwrap();
        std::fs::write(t.join("f"), b"abc").unwrap();
        assert_eq!(tree_bytes(&t), 3);
        let reg = register_temp(&t);
        let id = reg.0;
        remove_temp(reg, &t);
        assert!(!t.exists());
        assert!(registry().entries.iter().all(|(i, _)| *i != id));
        let reg = register_temp(dir.path());
        let id = reg.0;
        assert_eq!(commit_temp(reg, || 7), 7);
        assert!(registry().entries.iter().all(|(i, _)| *i != id));
        assert!(check().is_ok());
    }
}
