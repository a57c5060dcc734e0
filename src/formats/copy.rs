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

/// Bytes moved per read when streaming.
pub const CHUNK: usize = 8 << 20;

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

/// A file writer that keeps the md5 of everything written (for checklist.chk without a second read)
/// and its position.
pub struct HashingFile {
    inner: io::BufWriter<File>,
    md5: md5::Md5,
    pos: u64,
    path: PathBuf,
}

impl HashingFile {
    pub fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
        Ok(Self {
            inner: io::BufWriter::with_capacity(4 << 20, f),
            md5: <md5::Md5 as md5::Digest>::new(),
            pos: 0,
            path: path.to_path_buf(),
        })
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Flush, fsync, and return the md5 as lowercase hex.
    pub fn finish(mut self) -> Result<String> {
        self.inner
            .flush()
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        let f = self
            .inner
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        f.sync_all()
            .with_context(|| format!("{}: cannot fsync", self.path.display()))?;
        Ok(hex::encode(md5::Digest::finalize(self.md5)))
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        md5::Digest::update(&mut self.md5, &buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
