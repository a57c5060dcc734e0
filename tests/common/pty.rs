//! A child process on a pseudo-terminal, for what only a terminal shows: line editing, history,
//! prompts. Its stdin, stdout and stderr are the terminal; a thread collects what it prints.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Pty {
    master: File,
    pub child: Child,
    seen: Arc<Mutex<Vec<u8>>>,
    /// How far [`Pty::expect`] has read.
    pos: usize,
}

impl Pty {
    /// Start `cmd` as the leader of a new session whose controlling terminal is an 80×24 pty.
    pub fn spawn(mut cmd: Command) -> Pty {
        let (mut m, mut s) = (0, 0);
        let size = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty fills two descriptors that we then own.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let (master, slave) = unsafe { (File::from_raw_fd(m), File::from_raw_fd(s)) };
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on a pty");
        drop(cmd); // our copies of the terminal's slave side
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the child and every copy of the slave side are gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            child,
            seen,
            pos: 0,
        }
    }

    /// Type `keys` (raw bytes: "\r" is Enter, "\x1b[A" the Up arrow).
    pub fn send(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Wait until `needle` appears after what earlier calls consumed; returns the text from
    /// there to the end of the match, and consumes it.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                let rest = &seen[self.pos..];
                let found = rest
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes());
                if let Some(i) = found {
                    let upto = String::from_utf8_lossy(&rest[..i + needle.len()]).into_owned();
                    self.pos += i + needle.len();
                    return upto;
                }
                if Instant::now() > end {
                    let text = String::from_utf8_lossy(rest);
                    panic!("timed out waiting for {needle:?}; the terminal showed:\n{text}");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the terminal showed so far.
    pub fn all(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Wait for the child to exit (killing it after `timeout`); its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "the child did not exit; the terminal showed:\n{}",
                    self.all()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
