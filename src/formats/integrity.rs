//! Checking a file's bytes against the checksums it carries while they are read for other work.
//!
//! A torch zip stores a CRC-32 per record, and a Meta directory's `checklist.chk` an md5 per file.
//! Reshard and convert read every tensor byte anyway, so [`Expect`] attached to a
//! [`super::copy::Source`] sees each read as it passes and checks it there: a corrupt shard fails
//! the command instead of being rearranged into a fresh-looking output with a fresh checklist.
//!
//! Reads arrive in any order (a split reads half of every row, two threads read one file) and may
//! repeat (replicated kv heads), so each record keeps the byte ranges seen so far with their CRC
//! states and joins neighbours with `crc32fast`'s combine; a record is judged the moment it is
//! covered. md5 cannot be combined and costs ten times a CRC, so it runs beside the work on a
//! thread of its own that reads the file in order (mostly from the page cache the work fills);
//! [`Expect::finish`] reads whatever records the work did not cover and gives the verdicts.
use super::md5::Md5;
use crate::error::check_failed;
use anyhow::Result;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One checksummed byte range of a file (a zip record).
#[derive(Debug, Clone)]
pub struct Record {
    pub start: u64,
    pub len: u64,
    pub crc: u32,
    /// What the bytes are, for the error: `record data/3 (tensor layers.0.attention.wq.weight)`.
    pub label: String,
}

struct RecordState {
    rec: Record,
    /// Covered ranges: start -> (end, CRC state of start..end). `None` once judged.
    seen: Option<BTreeMap<u64, (u64, crc32fast::Hasher)>>,
}

/// The whole file's md5, computed by a thread of its own, and what it must be.
struct Md5Check {
    want: String,
    /// Where the md5 was listed, for the error.
    origin: PathBuf,
    job: Option<JoinHandle<Result<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Md5Check {
    fn drop(&mut self) {
        // An abandoned run need not read the rest of the file.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The checksums of one file and what has been checked of them so far.
pub struct Expect {
    path: PathBuf,
    len: u64,
    records: Vec<RecordState>,
    md5: Option<Md5Check>,
}

impl Expect {
    /// `records` may be given in any order; they must not overlap.
    pub fn new(path: &Path, len: u64, mut records: Vec<Record>) -> Self {
        records.sort_by_key(|r| r.start);
        Self {
            path: path.to_path_buf(),
            len,
            records: records
                .into_iter()
                .map(|rec| RecordState {
                    rec,
                    seen: Some(BTreeMap::new()),
                })
                .collect(),
            md5: None,
        }
    }

    /// Also check the whole file's md5 against `want` (hex), as listed in `origin`: starts reading
    /// `file` (this file) in order on a thread of its own.
    pub fn with_md5(mut self, file: &File, want: &str, origin: &Path) -> Result<Self> {
        use anyhow::Context;
        let file = file
            .try_clone()
            .with_context(|| format!("{}: cannot reopen", self.path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (path, len, halt) = (self.path.clone(), self.len, stop.clone());
        let job = std::thread::Builder::new()
            .name("md5-check".into())
            .spawn(move || md5_of(&file, &path, len, &halt))
            .context("cannot start a thread")?;
        self.md5 = Some(Md5Check {
            want: want.to_ascii_lowercase(),
            origin: origin.to_path_buf(),
            job: Some(job),
            stop,
        });
        Ok(self)
    }

    /// `bytes` were read at `offset` of this file: fold them into every record they touch. An
    /// error names the file and the record whose bytes do not match.
    pub fn observe(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = offset + bytes.len() as u64;
        let first = self
            .records
            .partition_point(|r| r.rec.start + r.rec.len <= offset);
        for i in first..self.records.len() {
            if self.records[i].rec.start >= end {
                break;
            }
            let r = &mut self.records[i];
            let (a, b) = (offset.max(r.rec.start), end.min(r.rec.start + r.rec.len));
            let slice = &bytes[(a - offset) as usize..(b - offset) as usize];
            r.add(a, slice);
            r.judge(&self.path)?;
        }
        Ok(())
    }

    /// Read what the work did not (records never or partly read, the md5's remainder), then give
    /// the verdicts: every record's CRC-32 and the file's md5.
    pub fn finish(&mut self, file: &File) -> Result<()> {
        let mut buf = vec![0u8; super::copy::CHUNK];
        for i in 0..self.records.len() {
            for (a, b) in self.records[i].gaps() {
                let mut at = a;
                while at < b {
                    crate::signal::check()?;
                    let n = (b - at).min(buf.len() as u64) as usize;
                    self.read(file, &mut buf[..n], at)?;
                    self.records[i].add(at, &buf[..n]);
                    at += n as u64;
                }
            }
            self.records[i].judge(&self.path)?;
        }
        let Some(mut m) = self.md5.take() else {
            return Ok(());
        };
        let got = match m.job.take().map(JoinHandle::join) {
            Some(Ok(r)) => r?,
            _ => anyhow::bail!("{}: the md5 check stopped", self.path.display()),
        };
        if got != m.want {
            return Err(check_failed(format!(
                "{}: md5 {got} does not match {} ({}): the file is corrupt or was changed",
                self.path.display(),
                m.want,
                m.origin.display()
            )));
        }
        Ok(())
    }

    fn read(&self, file: &File, buf: &mut [u8], at: u64) -> Result<()> {
        use anyhow::Context;
        file.read_exact_at(buf, at).with_context(|| {
            format!(
                "{}: cannot read {} bytes at offset {at} (truncated?)",
                self.path.display(),
                buf.len()
            )
        })
    }
}

/// The md5 of `file`'s first `len` bytes, read in order; stops early when `stop` is set.
fn md5_of(file: &File, path: &Path, len: u64, stop: &AtomicBool) -> Result<String> {
    use anyhow::Context;
    let mut buf = vec![0u8; super::copy::CHUNK];
    let mut md5 = Md5::new();
    let mut at = 0u64;
    while at < len {
        if stop.load(Ordering::Relaxed) {
            anyhow::bail!("{}: md5 check abandoned", path.display());
        }
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at).with_context(|| {
            format!(
                "{}: cannot read {n} bytes at offset {at} (truncated?)",
                path.display()
            )
        })?;
        md5.update(&buf[..n]);
        at += n as u64;
    }
    Ok(md5.hex())
}

impl RecordState {
    /// Fold in the bytes `data` at file offset `at` (inside this record), skipping any part
    /// already seen, and join the new range with its neighbours.
    fn add(&mut self, at: u64, data: &[u8]) {
        let Some(seen) = &mut self.seen else {
            return;
        };
        let end = at + data.len() as u64;
        // The uncovered parts of at..end.
        let mut parts = Vec::new();
        let mut pos = at;
        let before = seen.range(..=at).next_back().map(|(&s, &(e, _))| (s, e));
        if let Some((_, e)) = before {
            pos = pos.max(e);
        }
        for (&s, &(e, _)) in seen.range(at..end) {
            if s > pos {
                parts.push((pos, s));
            }
            pos = pos.max(e);
        }
        if pos < end {
            parts.push((pos, end));
        }
        for (a, b) in parts {
            let mut h = crc32fast::Hasher::new();
            h.update(&data[(a - at) as usize..(b - at) as usize]);
            insert(seen, a, b, h);
        }
    }

    /// Ranges of the record not seen yet.
    fn gaps(&self) -> Vec<(u64, u64)> {
        let Some(seen) = &self.seen else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut pos = self.rec.start;
        for (&s, &(e, _)) in seen {
            if s > pos {
                out.push((pos, s));
            }
            pos = pos.max(e);
        }
        let end = self.rec.start + self.rec.len;
        if pos < end {
            out.push((pos, end));
        }
        out
    }

    /// Once the record is covered, compare its CRC-32 (and forget the ranges).
    fn judge(&mut self, path: &Path) -> Result<()> {
        let Some(seen) = &self.seen else {
            return Ok(());
        };
        let (start, len) = (self.rec.start, self.rec.len);
        let crc = match seen.iter().next() {
            None if len == 0 => crc32fast::Hasher::new().finalize(),
            Some((&s, (e, h))) if s == start && *e == start + len => h.clone().finalize(),
            _ => return Ok(()),
        };
        self.seen = None;
        if crc != self.rec.crc {
            return Err(check_failed(format!(
                "{}: {}: CRC-32 {crc:08x} does not match the zip's {:08x}: the shard is corrupt",
                path.display(),
                self.rec.label,
                self.rec.crc
            )));
        }
        Ok(())
    }
}

/// Insert the disjoint range a..b and merge it with the ranges that end at `a` or start at `b`.
fn insert(
    seen: &mut BTreeMap<u64, (u64, crc32fast::Hasher)>,
    a: u64,
    b: u64,
    h: crc32fast::Hasher,
) {
    let (mut start, mut end, mut h) = (a, b, h);
    if let Some((&ps, (pe, _))) = seen.range(..a).next_back() {
        if *pe == a {
            let (_, mut prev) = seen.remove(&ps).expect("just seen");
            prev.combine(&h);
            (start, h) = (ps, prev);
        }
    }
    if let Some((ne, next)) = seen.remove(&b) {
        h.combine(&next);
        end = ne;
    }
    seen.insert(start, (end, h));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let file = File::open(f.path()).unwrap();
        (f, file)
    }

    fn expect_for(path: &Path, data: &[u8], recs: &[(u64, u64)]) -> Expect {
        let records = recs
            .iter()
            .map(|&(s, l)| Record {
                start: s,
                len: l,
                crc: crc32fast::hash(&data[s as usize..(s + l) as usize]),
                label: format!("record at {s}"),
            })
            .collect();
        Expect::new(path, data.len() as u64, records)
    }

    #[test]
    fn out_of_order_and_repeated_reads_check_every_record() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (tmp, file) = file_with(&data);
        let md5 = {
            let mut m = Md5::new();
            m.update(&data);
            m.hex()
        };
        let mut e = expect_for(tmp.path(), &data, &[(100, 3000), (3100, 4000)])
            .with_md5(&file, &md5, tmp.path())
            .unwrap();
        // Second half of each "row" first, then the first halves, one read twice.
        for (a, b) in [
            (1600, 3100),
            (100, 1600),
            (5100, 7100),
            (3100, 5100),
            (3100, 4000),
        ] {
            e.observe(a, &data[a as usize..b as usize]).unwrap();
        }
        assert!(e.records.iter().all(|r| r.seen.is_none()), "both judged");
        e.finish(&file).unwrap();
    }

    #[test]
    fn a_flipped_byte_fails_on_the_read_that_completes_its_record() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 256) as u8).collect();
        let (tmp, _file) = file_with(&data);
        let mut e = expect_for(tmp.path(), &data, &[(0, 4096)]);
        let mut bad = data.clone();
        bad[1234] ^= 0x10;
        e.observe(2048, &bad[2048..]).unwrap();
        let err = e.observe(0, &bad[..2048]).unwrap_err().to_string();
        assert!(
            err.contains("record at 0") && err.contains("CRC-32"),
            "{err}"
        );
    }

    #[test]
    fn finish_reads_what_was_not_read_and_checks_the_md5() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8).collect();
        let (tmp, file) = file_with(&data);
        let mut e = expect_for(tmp.path(), &data, &[(10, 2000)])
            .with_md5(
                &file,
                "00000000000000000000000000000000",
                Path::new("checklist.chk"),
            )
            .unwrap();
        e.observe(500, &data[500..800]).unwrap();
        let err = e.finish(&file).unwrap_err().to_string();
        assert!(
            err.contains("md5") && err.contains("checklist.chk"),
            "{err}"
        );
        let mut ok = expect_for(tmp.path(), &data, &[(10, 2000)]);
        ok.finish(&file).unwrap();
    }
}
