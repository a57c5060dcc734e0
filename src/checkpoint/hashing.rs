//! MD5 of big files at the speed of `md5sum`, several files at once.
//!
//! The `md-5` crate (soft or `asm` feature) hashes about 15-20% slower than GNU coreutils here: LLVM
//! folds each round's constant into the *last* addition, which puts it on the critical dependency
//! chain. [`Md5`] adds message word and constant to the accumulator before the round function is
//! known, keeping the chain at 4-5 operations per step (the classic fast-MD5 schedule); it is
//! cross-checked against the crate in tests.
//!
//! A single file's hash cannot be parallelised, so [`md5_file`] overlaps reading with hashing:
//! a reader thread fills big buffers with sequential reads while the caller's thread hashes the
//! previous one. [`md5_files`] runs several such pipelines at once, largest file first.
use crate::util::work_queue;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

/// Size of one read; big enough that syscalls are noise, small enough to stay cache friendly.
const BLOCK: usize = 4 << 20;
/// Buffers in flight per file: one being hashed, one being filled, one queued.
const BUFFERS: usize = 3;

pub use crate::formats::md5::Md5;

/// Tell the kernel we read front to back, so it reads ahead aggressively.
fn advise_sequential(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: plain syscall on an fd we own; the result is advisory and ignored.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Fill `buf` as far as the file allows; returns the bytes read (short only at end of file).
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// MD5 of a whole file (lowercase hex). `progress` is called with the byte count of each block
/// hashed.
pub fn md5_file(path: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    advise_sequential(&file);
    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        empty_tx
            .send(Vec::new())
            .expect("the receiver is alive and the channel has room");
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> std::io::Result<()> {
            // Ends when the file ends, on an error, or when the hasher has gone away.
            while let Ok(mut buf) = empty_rx.recv() {
                if buf.len() < BLOCK {
                    buf.resize(BLOCK, 0);
                }
                let n = read_full(&mut file, &mut buf)?;
                if n == 0 || full_tx.send((buf, n)).is_err() || n < BLOCK {
                    break;
                }
            }
            Ok(())
        });
        let mut h = Md5::new();
        for (buf, n) in full_rx {
            h.update(&buf[..n]);
            progress(n as u64);
            // The reader may already be done; a failed send just drops the buffer.
            let _ = empty_tx.send(buf);
        }
        match reader.join() {
            Ok(Ok(())) => Ok(h.hex()),
            Ok(Err(e)) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
            Err(_) => anyhow::bail!("{}: reader thread panicked", path.display()),
        }
    })
}

/// MD5 of several files, `jobs` at a time, largest first so the last file to start is a small
/// one. Results come back in the order of `paths`.
pub fn md5_files(
    paths: &[PathBuf],
    jobs: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<Result<String>> {
    let mut order: Vec<(u64, usize)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (std::fs::metadata(p).map(|m| m.len()).unwrap_or(0), i))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let hashed = work_queue(
        order.len(),
        jobs,
        |_| (),
        |_, k| md5_file(&paths[order[k].1], progress),
        || false,
    );
    let mut by_path: Vec<Option<Result<String>>> = (0..paths.len()).map(|_| None).collect();
    for (&(_, i), r) in order.iter().zip(hashed) {
        by_path[i] = r;
    }
    by_path
        .into_iter()
        .zip(paths)
        .map(|(r, p)| r.unwrap_or_else(|| Err(anyhow::anyhow!("{}: not hashed", p.display()))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;

    fn reference(data: &[u8]) -> String {
        hex::encode(md5::Md5::digest(data))
    }

    #[test]
    fn rfc_vectors() {
        let mut h = Md5::new();
        h.update(b"");
        assert_eq!(h.hex(), "d41d8cd98f00b204e9800998ecf8427e");
        let mut h = Md5::new();
        h.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(h.hex(), "9e107d9d372bb6826bd81d3542a419d6");
    }

    #[test]
    fn matches_md5_crate_at_every_boundary() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in (0..200).chain([511, 512, 513, 999, 1000]) {
            let want = reference(&data[..len]);
            let mut one = Md5::new();
            one.update(&data[..len]);
            assert_eq!(one.hex(), want, "len {len}");
            // Same bytes fed in uneven pieces.
            let mut pieces = Md5::new();
            for chunk in data[..len].chunks(1 + len % 37) {
                pieces.update(chunk);
            }
            assert_eq!(pieces.hex(), want, "len {len} in pieces");
        }
    }

    #[test]
    fn files_in_parallel_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        let mut want = Vec::new();
        // One file spans several blocks so the reader/hasher hand-off is exercised.
        for (i, len) in [3 * BLOCK + 5, 0, 100, BLOCK].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|j| (j % 251) as u8 ^ i as u8).collect();
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, &data).unwrap();
            want.push(reference(&data));
            paths.push(p);
        }
        paths.push(dir.path().join("absent"));
        let seen = std::sync::atomic::AtomicU64::new(0);
        let got = md5_files(&paths, 3, &|n| {
            seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        });
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.as_ref().unwrap(), w);
        }
        let e = format!("{:#}", got[4].as_ref().unwrap_err());
        assert!(e.contains("absent") && e.contains("cannot open"), "{e}");
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::Relaxed),
            (4 * BLOCK + 105) as u64
        );
    }
}
