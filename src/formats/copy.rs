//! Positional reads and counted, hashed writes: the plumbing that streams tensor bytes between files
//! without holding a tensor whole.
//!
//! Bulk bytes are read with `pread` into a reusable buffer rather than through the mmap: touching a
//! mapped 16 GB shard would count every page in the process's RSS, while pread keeps the data in the
//! page cache only, so peak RSS stays at the buffer size whatever the model size.
use super::integrity::Expect;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::thread;

/// Bytes moved per read when streaming. Small enough that a block is still in the CPU cache when
/// it is CRC'd, md5'd and written after the read: with 8 MiB blocks every byte went through RAM
/// four times, and a userspace copy ran 3-5x slower (dd: 8M blocks 160-200 MB/s, 128K 650-800
/// MB/s on the same file and disk).
pub const CHUNK: usize = 256 << 10;

/// A file opened for positional reads, shareable between threads.
pub struct Source {
    file: File,
    path: PathBuf,
    len: u64,
    /// Checksums the bytes must match, checked as they are read (see [`super::integrity`]).
    expect: Mutex<Option<Expect>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("path", &self.path).finish()
    }
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
            expect: Mutex::new(None),
        })
    }

    /// From now on every read is checked against `expect`.
    pub fn check_reads(&self, expect: Expect) {
        *self.lock_expect() = Some(expect);
    }

    /// Whether reads are being checked (kernel-side copies would bypass the check).
    fn checks_reads(&self) -> bool {
        self.lock_expect().is_some()
    }

    /// Read what the work did not and give the checks' verdicts (see [`Expect::finish`]).
    pub fn finish_checks(&self) -> Result<()> {
        match self.lock_expect().as_mut() {
            Some(e) => e.finish(&self.file),
            None => Ok(()),
        }
    }

    fn lock_expect(&self) -> std::sync::MutexGuard<'_, Option<Expect>> {
        // A panicking reader already fails the run; the state behind the lock is still usable.
        self.expect.lock().unwrap_or_else(|e| e.into_inner())
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
        })?;
        match self.lock_expect().as_mut() {
            Some(e) => e.observe(offset, buf),
            None => Ok(()),
        }
    }

    /// A range that runs past the end of the file is an error naming the file.
    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            bail!(
                "{}: range {offset}+{len} runs past the end of the file ({} bytes)",
                self.path.display(),
                self.len
            );
        }
        Ok(())
    }

    /// Copy `len` bytes at `offset` into `w`, `CHUNK` at a time through `buf`.
    pub fn copy_range(
        &self,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
        w: &mut dyn Write,
    ) -> Result<()> {
        self.check_range(offset, len)?;
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
    src.check_range(offset, len)?;
    if src.checks_reads() {
        let mut w = dst;
        return src.copy_range(offset, len, buf, &mut w);
    }
    let mut off_in = offset as libc::loff_t;
    let mut left = len;
    while left > 0 {
        // Pieces small enough that a SIGINT is noticed within a fraction of a second.
        crate::signal::check()?;
        let want = left.min(64 << 20) as usize;
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

/// Bytes per block handed from the caller to the md5 thread and on to the disk: large enough
/// that a direct write keeps the device busy, small enough that a few per output file stay
/// far inside the memory budget even with many shards written at once.
const BLOCK: usize = 4 << 20;

/// Blocks per file: one being filled, one being hashed, one being written, and three queued so
/// a stall on either side (a read waiting for the disk, a write waiting for the device) does not
/// leave the md5 thread idle.
const BLOCKS_IN_FLIGHT: usize = 6;

/// Direct I/O alignment (buffer address, file offset and length): the largest logical block
/// size in common use, so it is valid for 512-byte and 4 KiB devices alike.
const ALIGN: usize = 4096;

/// A `BLOCK`-sized buffer whose start is `ALIGN`-aligned, as `O_DIRECT` needs; safe code: the
/// Vec is over-allocated and the aligned window inside it is used.
struct Block {
    buf: Vec<u8>,
    start: usize,
}

impl Block {
    fn new() -> Self {
        let buf = vec![0u8; BLOCK + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Self { buf, start }
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + BLOCK]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + BLOCK]
    }
}

/// Dirty bytes after which the buffered fallback asks the kernel to start writing them out, so
/// the final fsync finds little left to do.
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

/// Open `path` a second time for direct (page-cache-bypassing) writes; `None` where the file
/// system refuses `O_DIRECT` (tmpfs on older kernels, some FUSE mounts).
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// The disk side of a [`HashingFile`]: whole aligned blocks go out with `O_DIRECT` where the file
/// system allows it, everything else (the last, partial block; any file system without direct
/// I/O) through the page cache.
struct Sink {
    file: File,
    direct: Option<File>,
    flushed: u64,
}

impl Sink {
    fn write_block(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if data.len() == BLOCK {
            if let Some(d) = &self.direct {
                match d.write_all_at(data, offset) {
                    Ok(()) => return Ok(()),
                    // Accepted at open but refused at write (alignment rules of an unusual
                    // device or file system): the page cache takes this and every later block.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                    Err(e) => return Err(e),
                }
            }
        }
        self.file.write_all_at(data, offset)?;
        let end = offset + data.len() as u64;
        if end - self.flushed >= WRITE_BEHIND {
            start_writeback(&self.file, self.flushed, end - self.flushed);
            self.flushed = end;
        }
        Ok(())
    }
}

/// A file writer that keeps the md5 of everything written (for checklist.chk without a second read)
/// and its position.
///
/// md5 is the slowest step of streaming a checkpoint (about 750 MB/s, one core) and cannot be
/// split within a file, so the caller's thread only gathers bytes into aligned blocks; a thread
/// of its own hashes them and a third writes them. Writes bypass the page cache (`O_DIRECT`): a
/// buffered write costs a kernel copy plus fresh page-cache pages for every byte, more CPU than
/// the md5 it competes with, and leaves the whole file dirty for the fsync the rename needs.
pub struct HashingFile {
    block: Block,
    filled: usize,
    /// File offset of `block`'s first byte.
    block_at: u64,
    tx: Option<mpsc::SyncSender<(Block, usize, u64)>>,
    free: mpsc::Receiver<Block>,
    spare: usize,
    workers: Vec<thread::JoinHandle<io::Result<Option<super::md5::Md5>>>>,
    file: File,
    path: PathBuf,
}

impl HashingFile {
    pub fn create(path: &Path) -> Result<Self> {
        let file =
            File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
        let mut sink = Sink {
            file: file
                .try_clone()
                .with_context(|| format!("{}: cannot open", path.display()))?,
            direct: open_direct(path),
            flushed: 0,
        };
        let (tx, to_md5) = mpsc::sync_channel::<(Block, usize, u64)>(BLOCKS_IN_FLIGHT);
        let (hashed, to_disk) = mpsc::sync_channel::<(Block, usize, u64)>(BLOCKS_IN_FLIGHT);
        let (back, free) = mpsc::channel::<Block>();
        let spawn = |name: &str, f: Box<dyn FnOnce() -> _ + Send>| {
            thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .with_context(|| format!("{}: cannot start a writer thread", path.display()))
        };
        let md5 = spawn(
            "md5",
            Box::new(move || {
                let mut md5 = super::md5::Md5::new();
                for (block, n, at) in to_md5 {
                    md5.update(&block.bytes()[..n]);
                    if hashed.send((block, n, at)).is_err() {
                        break; // the disk thread failed; its error is the one reported
                    }
                }
                Ok(Some(md5))
            }),
        )?;
        let disk = spawn(
            "writer",
            Box::new(move || {
                for (block, n, at) in to_disk {
                    sink.write_block(&block.bytes()[..n], at)?;
                    let _ = back.send(block);
                }
                Ok(None)
            }),
        )?;
        Ok(Self {
            block: Block::new(),
            filled: 0,
            block_at: 0,
            tx: Some(tx),
            free,
            spare: BLOCKS_IN_FLIGHT - 1,
            workers: vec![md5, disk],
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn position(&self) -> u64 {
        self.block_at + self.filled as u64
    }

    /// Hand the current block (full, or the last one) to the md5 thread and take a free one.
    fn send_block(&mut self) -> io::Result<()> {
        crate::signal::check()?;
        let next = if self.spare > 0 {
            self.spare -= 1;
            Some(Block::new())
        } else {
            self.free.recv().ok()
        };
        let Some(next) = next else {
            return Err(self.join_error());
        };
        let block = std::mem::replace(&mut self.block, next);
        let job = (block, self.filled, self.block_at);
        if self.tx.as_ref().is_none_or(|tx| tx.send(job).is_err()) {
            return Err(self.join_error());
        }
        self.block_at += self.filled as u64;
        self.filled = 0;
        Ok(())
    }

    /// Stop the threads and return the md5, or the first error one of them hit.
    fn join(&mut self) -> io::Result<super::md5::Md5> {
        self.tx = None;
        let mut md5 = None;
        let mut err = None;
        for w in self.workers.drain(..) {
            match w.join() {
                Ok(Ok(Some(m))) => md5 = Some(m),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => err = err.or(Some(e)),
                Err(_) => err = err.or(Some(io::Error::other("writer thread panicked"))),
            }
        }
        match (err, md5) {
            (Some(e), _) => Err(e),
            (None, Some(m)) => Ok(m),
            (None, None) => Err(io::Error::other("writer threads already finished")),
        }
    }

    /// Why a worker stopped early: its own error.
    fn join_error(&mut self) -> io::Error {
        self.join()
            .err()
            .unwrap_or_else(|| io::Error::other("writer thread stopped"))
    }

    /// Write out, fsync, and return the md5 as lowercase hex.
    pub fn finish(mut self) -> Result<String> {
        let done = (if self.filled > 0 {
            self.send_block()
        } else {
            Ok(())
        })
        .and_then(|_| self.join());
        let md5 = done.with_context(|| format!("{}: cannot write", self.path.display()))?;
        self.file
            .sync_all()
            .with_context(|| format!("{}: cannot fsync", self.path.display()))?;
        Ok(md5.hex())
    }
}

impl Drop for HashingFile {
    fn drop(&mut self) {
        // Unfinished (an error elsewhere): let the threads end before the file's dir may go away.
        if !self.workers.is_empty() {
            let _ = self.join();
        }
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.filled);
        self.block.bytes_mut()[self.filled..self.filled + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == BLOCK {
            self.send_block()?;
        }
        Ok(n)
    }
    /// A no-op: blocks must stay whole for direct I/O; [`HashingFile::finish`] writes the rest.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
        for (i, n) in [3, CHUNK - 1, BLOCK - 5, 2 * BLOCK + 7, 1, 0, 100]
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
    fn sink_without_direct_io_writes_through_the_page_cache() {
        // The path taken where the file system refuses O_DIRECT: whole blocks and the tail go
        // through the ordinary descriptor, at their offsets, in any order.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut sink = Sink {
            file: File::create(&p).unwrap(),
            direct: None,
            flushed: 0,
        };
        let a: Vec<u8> = (0..BLOCK).map(|i| (i % 251) as u8).collect();
        let tail = [7u8; 10];
        sink.write_block(&tail, 2 * BLOCK as u64).unwrap();
        sink.write_block(&a, BLOCK as u64).unwrap();
        sink.write_block(&a, 0).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 2 * BLOCK + 10);
        assert!(got[..BLOCK] == a[..] && got[BLOCK..2 * BLOCK] == a[..]);
        assert_eq!(got[2 * BLOCK..], tail);
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
