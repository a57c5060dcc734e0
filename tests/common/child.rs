//! Driving llamactl processes against local servers: wait for a partial file to grow, kill or
//! interrupt the process, find a port where nothing listens.
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Wait (at most 20 s) until `path` holds at least `min` bytes while `child` is still running.
pub fn wait_for_bytes(child: &mut Child, path: &Path, min: u64) {
    wait_until(child, || {
        std::fs::metadata(path).map_or(0, |m| m.len()) >= min
    });
}

/// Wait (at most 20 s) until `ready()` while `child` is still running.
pub fn wait_until(child: &mut Child, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "no partial download appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the command ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port on 127.0.0.1 where nothing listens (connection refused).
pub fn refused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIGKILL: no chance to clean up or flush anything.
pub fn kill_9(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGINT to the child's process group (spawned with `process_group(0)` and stderr piped): it
/// must exit 130 within 2 s. Returns its stderr.
pub fn interrupt(child: Child) -> String {
    let sent = Instant::now();
    // SAFETY: kill(2) on the child's own process group.
    assert_eq!(unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    err
}
