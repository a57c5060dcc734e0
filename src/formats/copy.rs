//! Positional reads and counted, hashed writes: the plumbing that streams tensor bytes between files
//! without holding a tensor whole.
//!
//! Bulk bytes are read with `pread` into a reusable buffer rather than through the mmap: touching a
//! mapped 16 GB shard would count every page in the process's RSS, while pread keeps the data in the
//! page cache only, so peak RSS stays at the buffer size whatever the model size.
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

/// Bytes moved per read when streaming. Small enough that a block is still in the CPU cache when
/// it is CRC'd, md5'd and written after the read: with 8 MiB blocks every byte went through RAM
/// four times, and a userspace copy ran 3-5x slower (dd: 8M blocks 160-200 MB/s, 128K 650-800
/// MB/s on the same file and disk).
pub const CHUNK: usize = 256 << 10;

/// A file opened for positional reads, shareable between threads.
#[derive(Debug)]
pub struct Source {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Source {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("{}: cannot stat", path.display()))?
            .len();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Fill `buf` from `offset`; a short file is an error naming the file.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).with_context(|| {
            format!(
                "{}: cannot read {} bytes at offset {offset} (file is {} bytes; truncated?)",
                self.path.display(),
                buf.len(),
                self.len
            )
        })
    }

    /// Copy `len` bytes at `offset` into `w`, `CHUNK` at a time through `buf`.
    pub fn copy_range(
        &self,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
        w: &mut dyn Write,
    ) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            bail!(
                "{}: range {offset}+{len} runs past the end of the file ({} bytes)",
                self.path.display(),
                self.len
            );
        }
        if buf.len() < CHUNK {
            buf.resize(CHUNK, 0);
        }
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            self.read_exact_at(&mut buf[..n], offset + done)?;
            w.write_all(&buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Append `len` bytes of `src` at `offset` to `dst` at its current position, inside the kernel
/// (`copy_file_range`: no trip through user memory, which is what makes `cp` fast). Falls back to
/// pread + write through `buf` where the kernel or file system can't do it.
pub fn copy_file_range_all(
    src: &Source,
    offset: u64,
    len: u64,
    dst: &File,
    buf: &mut Vec<u8>,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    if offset.checked_add(len).is_none_or(|end| end > src.len) {
        bail!(
            "{}: range {offset}+{len} runs past the end of the file ({} bytes)",
            src.path.display(),
            src.len
        );
    }
    let mut off_in = offset as libc::loff_t;
    let mut left = len;
    while left > 0 {
        let want = left.min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the duration of the call; off_in is a valid
        // pointer; a null out-offset means "use and advance dst's file position".
        let n = unsafe {
            libc::copy_file_range(
                src.file.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                want,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            let unsupported = matches!(
                e.raw_os_error(),
                Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM)
            );
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if unsupported {
                let mut w = dst;
                return src.copy_range(off_in as u64, left, buf, &mut w);
            }
            return Err(e).with_context(|| format!("{}: cannot copy", src.path.display()));
        }
        if n == 0 {
            bail!(
                "{}: ended at offset {off_in} while copying (truncated?)",
                src.path.display()
            );
        }
        left -= n as u64;
    }
    Ok(())
}

/// A writer that counts bytes and keeps a CRC-32 of what passes through it.
pub struct CrcWriter<'a> {
    inner: &'a mut dyn Write,
    pub crc: crc32fast::Hasher,
    pub count: u64,
}

impl<'a> CrcWriter<'a> {
    pub fn new(inner: &'a mut dyn Write) -> Self {
        Self {
            inner,
            crc: crc32fast::Hasher::new(),
            count: 0,
        }
    }
}

impl Write for CrcWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Dirty bytes after which the writer asks the kernel to start writing them out, so the
/// final fsync (required before the rename) finds little left to do and disk writes overlap
/// hashing instead of following it.
const WRITE_BEHIND: u64 = 64 << 20;

/// Start asynchronous writeback of a written range (Linux `sync_file_range`); a hint only, so
/// failure is ignored — the fsync in [`HashingFile::finish`] is what guarantees durability.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// A file writer that keeps the md5 of everything written (for checklist.chk without a second read)
/// and its position.
///
/// md5 is the slowest step of streaming a checkpoint (about 650 MB/s, one core) and cannot be
/// split within a file, so it runs with the `write` calls on a thread of its own: the caller's
/// thread reads, CRCs and hands over CHUNK-sized blocks, and the two overlap.
pub struct HashingFile {
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    free: mpsc::Receiver<Vec<u8>>,
    worker: Option<thread::JoinHandle<io::Result<(File, super::md5::Md5)>>>,
    pending: Vec<u8>,
    pos: u64,
    path: PathBuf,
}

impl HashingFile {
    pub fn create(path: &Path) -> Result<Self> {
        let mut file =
            File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
        // A few blocks in flight: enough to keep both threads busy, bounded memory.
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let (back, free) = mpsc::channel::<Vec<u8>>();
        let worker = thread::Builder::new()
            .name("md5-writer".into())
            .spawn(move || {
                let mut md5 = super::md5::Md5::new();
                let (mut written, mut flushed) = (0u64, 0u64);
                for mut block in rx {
                    md5.update(&block);
                    file.write_all(&block)?;
                    written += block.len() as u64;
                    if written - flushed >= WRITE_BEHIND {
                        start_writeback(&file, flushed, written - flushed);
                        flushed = written;
                    }
                    block.clear();
                    let _ = back.send(block);
                }
                Ok((file, md5))
            })
            .with_context(|| format!("{}: cannot start a writer thread", path.display()))?;
        Ok(Self {
            tx: Some(tx),
            free,
            worker: Some(worker),
            pending: Vec::with_capacity(2 * CHUNK),
            pos: 0,
            path: path.to_path_buf(),
        })
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    fn send_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let next = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(2 * CHUNK));
        let block = std::mem::replace(&mut self.pending, next);
        let sent = self.tx.as_ref().map(|tx| tx.send(block));
        match sent {
            Some(Ok(())) => Ok(()),
            // The writer thread stopped: its own error says why.
            _ => Err(self
                .join()
                .err()
                .unwrap_or_else(|| io::Error::other("writer thread stopped"))),
        }
    }

    fn join(&mut self) -> io::Result<(File, super::md5::Md5)> {
        self.tx = None;
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("writer thread panicked")),
            None => Err(io::Error::other("writer thread already finished")),
        }
    }

    /// Write out, fsync, and return the md5 as lowercase hex.
    pub fn finish(mut self) -> Result<String> {
        let done = self.send_pending().and_then(|_| self.join());
        let (f, md5) = done.with_context(|| format!("{}: cannot write", self.path.display()))?;
        f.sync_all()
            .with_context(|| format!("{}: cannot fsync", self.path.display()))?;
        Ok(md5.hex())
    }
}

impl Drop for HashingFile {
    fn drop(&mut self) {
        // Unfinished (an error elsewhere): let the thread end before the file's dir may go away.
        if self.worker.is_some() {
            let _ = self.join();
        }
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // At most a CHUNK per call, so a huge write_all never becomes one huge block.
        let n = buf.len().min(CHUNK);
        self.pending.extend_from_slice(&buf[..n]);
        self.pos += n as u64;
        if self.pending.len() >= CHUNK {
            self.send_pending()?;
        }
        Ok(n)
    }
    /// Hands what is gathered to the writer thread; [`HashingFile::finish`] waits for it.
    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_file_md5_matches_its_bytes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut f = HashingFile::create(&p).unwrap();
        let mut all = Vec::new();
        for (i, n) in [3, CHUNK - 1, 3 * CHUNK + 7, 1, 0, 100]
            .into_iter()
            .enumerate()
        {
            let b: Vec<u8> = (0..n).map(|j| (i * 31 + j % 253) as u8).collect();
            f.write_all(&b).unwrap();
            all.extend_from_slice(&b);
            assert_eq!(f.position(), all.len() as u64);
        }
        let md5 = f.finish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), all);
        assert_eq!(md5, hex::encode(<md5::Md5 as md5::Digest>::digest(&all)));
    }

    #[test]
    fn hashing_file_reports_write_errors() {
        if !Path::new("/dev/full").exists() {
            return;
        }
        let mut f = HashingFile::create(Path::new("/dev/full")).unwrap();
        // The failure shows up at a later write or at finish, never as success.
        let wrote = (0..64).try_for_each(|_| f.write_all(&[1u8; CHUNK]));
        let e = match wrote {
            Err(e) => e.to_string(),
            Ok(()) => format!("{:#}", f.finish().unwrap_err()),
        };
        assert!(e.contains("space") || e.contains("cannot write"), "{e}");
    }
}
