//! Interruptions of real child processes: SIGINT/SIGTERM during `reshard` and `convert` remove
//! every temporary output and exit 130/143; after SIGKILL the next run to the same destination
//! removes the stale temp dir; a closed stdout ends commands quietly.
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn llamactl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llamactl"))
}

/// The two jobs under test, writing `dst`.
fn job(kind: &str, dst: &Path) -> Command {
    let mut c = llamactl();
    match kind {
        "reshard" => c.args(["reshard", "--mp", "2"]),
        _ => c.args(["convert", "--to", "hf"]),
    };
    c.arg(testdata().join("tiny-mp1")).arg(dst);
    c
}

/// Start `cmd` in its own process group, slowed down (the test-only `LLAMACTL_TEST_SLOW_MS`)
/// so that it is still writing when the signal comes.
fn spawn_slow(mut cmd: Command) -> Child {
    cmd.env("LLAMACTL_TEST_SLOW_MS", "40")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Temp dirs (`.NAME.tmp-*`) in `parent`.
fn temp_dirs(parent: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp-"))
        .collect()
}

/// Wait until the child has written a file into its temp dir.
fn wait_until_writing(child: &mut Child, parent: &Path) {
    let started = Instant::now();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job finished before it could be interrupted"
        );
        assert!(started.elapsed() < Duration::from_secs(60));
        let writing = temp_dirs(parent).iter().any(|d| {
            std::fs::read_dir(d)
                .map(|mut r| r.next().is_some())
                .unwrap_or(false)
        });
        if writing {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal_group(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the process group we created for the child.
    assert_eq!(unsafe { libc::kill(-(child.id() as libc::pid_t), sig) }, 0);
}

#[test]
fn sigint_and_sigterm_remove_every_temporary_output() {
    for (kind, sig, code, name) in [
        ("reshard", libc::SIGINT, 130, "SIGINT"),
        ("convert", libc::SIGTERM, 143, "SIGTERM"),
        ("reshard", libc::SIGTERM, 143, "SIGTERM"),
        ("convert", libc::SIGINT, 130, "SIGINT"),
    ] {
        let root = tempfile::tempdir().unwrap();
        let dst = root.path().join("out");
        let mut child = spawn_slow(job(kind, &dst));
        wait_until_writing(&mut child, root.path());
        let sent = Instant::now();
        signal_group(&child, sig);
        let out = child.wait_with_output().unwrap();
        let took = sent.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{kind}: {err}");
        assert!(
            took < Duration::from_secs(2),
            "{kind} took {took:?} to stop"
        );
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with(&format!("interrupted by {name}: removed "))
                && last.contains(".out.tmp-"),
            "{kind}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!dst.exists(), "{kind}: the destination exists");
        assert!(
            temp_dirs(root.path()).is_empty(),
            "{kind}: {:?}",
            temp_dirs(root.path())
        );
        eprintln!("{kind} {name}: exit {code} {took:?} after the signal");
    }
}

#[test]
fn after_sigkill_the_next_run_removes_the_stale_temp_dir() {
    for kind in ["reshard", "convert"] {
        let root = tempfile::tempdir().unwrap();
        let dst = root.path().join("out");
        let mut child = spawn_slow(job(kind, &dst));
        wait_until_writing(&mut child, root.path());
        signal_group(&child, libc::SIGKILL);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let left = temp_dirs(root.path());
        assert_eq!(left.len(), 1, "{kind}: a killed run leaves its temp dir");
        assert!(!dst.exists());

        let out = job(kind, &dst).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{kind}: {err}");
        assert!(
            err.contains("removed a stale temporary output of an interrupted run")
                && err.contains(&left[0].display().to_string()),
            "{kind}: {err}"
        );
        assert!(dst.join("params.json").exists() || dst.join("config.json").exists());
        assert!(
            temp_dirs(root.path()).is_empty(),
            "{kind}: {:?}",
            temp_dirs(root.path())
        );
    }
}

/// Run a command whose stdout is a pipe with no reader: every write fails with EPIPE.
fn with_closed_stdout(args: &[&str]) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = llamactl()
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let quiet = out.status.code() == Some(0) || out.status.signal() == Some(libc::SIGPIPE);
    assert!(quiet, "{args:?}: {:?}: {err}", out.status);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{args:?}: {err}"
    );
}

#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let tiny = testdata().join("tiny-mp1");
    let tiny = tiny.to_str().unwrap();
    let tok = testdata().join("tokenizer.model");
    with_closed_stdout(&["inspect", tiny]);
    with_closed_stdout(&["inspect", "--json", tiny]);
    with_closed_stdout(&["list"]);
    with_closed_stdout(&["verify", "--json", tiny]);
    with_closed_stdout(&[
        "tokenize",
        "--tokenizer",
        tok.to_str().unwrap(),
        "hello world",
    ]);
}

#[test]
fn verify_and_list_mention_stale_temp_dirs() {
    let root = tempfile::tempdir().unwrap();
    let dst = root.path().join("out");
    // A temp dir whose owner cannot exist (pid 2^32-1).
    let stale = root.path().join(".out.tmp-4294967295-1-0badc0de");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("consolidated.00.pth"), vec![0u8; 3000]).unwrap();
    std::fs::create_dir(&dst).unwrap();
    let verify = llamactl().arg("verify").arg(&dst).output().unwrap();
    let list = llamactl()
        .args(["list", "--dir"])
        .arg(root.path())
        .output()
        .unwrap();
    for out in [verify, list] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("stale temporary output of an interrupted run")
                && err.contains(".out.tmp-4294967295-1-0badc0de")
                && err.contains("2.9 KiB"),
            "{err}"
        );
    }
    assert!(stale.exists(), "verify and list only mention it");
}
