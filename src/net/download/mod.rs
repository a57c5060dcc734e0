//! A download engine for large files over flaky links: every byte llamactl fetches (Meta's CDN,
//! the Hugging Face Hub and the CDNs it redirects to) comes through [`Http::download_to_file`].
//!
//! It writes a part (`DEST.part` unless the caller names another), hashes the bytes as they stream
//! in (after hashing any prefix kept from an earlier run), resumes with `Range` + `If-Range`,
//! retries 5xx / resets / stalls / truncated bodies with exponential backoff and jitter from the
//! current offset (`net::retry`), verifies the digest, and only then renames the part to
//! `DEST`. The validator of the first response (ETag or Last-Modified, and the size) is kept in
//! `PART.meta` so a later run, even with a fresh signed link, can ask for the rest with `If-Range`
//! and gets the whole file instead if the object changed.
//!
//! Data flows one way inside: this file decides single or segmented transfer; `single` and
//! `segmented` build on `client` (sending), `range` (every Range header), `part` (the part and
//! its record), `hash` and `response`; none of them uses this file.
//!
//! Every URL that appears in an error or log line goes through
//! `net::signed_url::redact` first; reqwest errors are stripped of their URL.
mod client;
mod error;
mod hash;
mod part;
mod range;
mod request;
mod response;
mod segmented;
mod single;

pub use client::Http;
pub use error::HttpError;
pub use hash::HashKind;
pub use part::{part_path, Segment};
pub use request::{Downloaded, FileRequest};
pub(crate) use response::describe;

use crate::progress::Task;
use error::io_err;
use part::PartMeta;
use request::PartDone;
use segmented::{Probe, SegError};
use std::fs::{File, OpenOptions};
use std::path::Path;

impl Http {
    /// Fetch `req.url` into `req.dest` with resume, retries, in-stream hashing and verification.
    /// SIGINT/SIGTERM (see [`crate::signal`]) stops the transfer between reads; the part is kept
    /// unless it is still empty.
    pub fn download_to_file(
        &self,
        req: &FileRequest,
        progress: &dyn Task,
    ) -> Result<Downloaded, HttpError> {
        let mut fetched = 0;
        let mut first_kept = None;
        for round in 0..2 {
            let done = self.fetch_part(req, progress);
            if done.is_err() {
                part::remove_if_empty(&req.part);
            }
            let done = done?;
            fetched += done.fetched;
            first_kept.get_or_insert(done.kept);
            if let (Some(want), Some(got)) = (&req.expected_digest, &done.digest) {
                if !want.eq_ignore_ascii_case(got) {
                    part::discard(&req.part);
                    progress.set_position(0);
                    if round == 0 {
                        progress.note("checksum mismatch, fetching again");
                        continue;
                    }
                    return Err(HttpError::Mismatch {
                        path: req.dest.display().to_string(),
                        kind: req.hash.name(),
                        expected: want.to_ascii_lowercase(),
                        actual: got.clone(),
                    });
                }
            }
            std::fs::rename(&req.part, &req.dest).map_err(|e| io_err(&req.dest, e))?;
            crate::util::sync_dir(crate::util::parent_or_dot(&req.dest));
            part::forget(&req.part);
            return Ok(Downloaded {
                size: done.size,
                digest: done.digest,
                fetched,
                resumed_from: first_kept.unwrap_or(0),
            });
        }
        unreachable!("the loop returns on its second round")
    }

    /// Bring the part to completion: go on with the segments a record names, else one stream,
    /// split into segments when the file is new, large and the server answers ranges.
    fn fetch_part(&self, req: &FileRequest, progress: &dyn Task) -> Result<PartDone, HttpError> {
        let mut file = open_part(&req.part)?;
        let len = file.metadata().map_err(|e| io_err(&req.part, e))?.len();
        let mut meta = PartMeta::load(&req.part, len).unwrap_or_default();
        if meta.segments.is_some() {
            match segmented::run(self, req, &file, &mut meta, None, progress) {
                Ok(done) => return Ok(done),
                Err(SegError::Http(e)) => return Err(e),
                Err(SegError::Fallback(why)) => {
                    progress.note(&format!("one connection: {why}"));
                    meta = part::abandon_segments(&mut file, &req.part)?;
                }
            }
        }
        let mut stream = single::Stream::open(self, req, file, meta, progress)?;
        if stream.offset() > 0 || req.connections < 2 {
            return stream.run(None);
        }
        match segmented::probe(self, req) {
            Ok(Probe::Single(resp)) => stream.run(Some(resp)),
            Ok(Probe::Split(resp, mut meta)) => {
                match segmented::run(self, req, stream.file(), &mut meta, Some(resp), progress) {
                    Ok(done) => Ok(done),
                    Err(SegError::Http(e)) => Err(e),
                    Err(SegError::Fallback(why)) => {
                        stream.abandon_segments(&why)?;
                        stream.run(None)
                    }
                }
            }
            Err(failed) => {
                stream.pause(failed.reason, failed.connect.as_ref())?;
                stream.run(None)
            }
        }
    }
}

/// Open (or create) the part and lock it: two processes appending to one part would interleave
/// garbage, so the second one is refused. The lock goes with the file handle (also when the
/// process is killed).
fn open_part(part: &Path) -> Result<File, HttpError> {
    if let Some(dir) = part.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)
        .map_err(|e| io_err(part, e))?;
    // A file system without flock support must not block a download.
    if let Ok(false) = crate::util::flock_exclusive(&file, false) {
        return Err(io_err(
            part,
            std::io::Error::other("another process is downloading this file"),
        ));
    }
    Ok(file)
}

/// One line for an interrupted command: the partial files (named `*SUFFIX`) under `dir` that
/// the next run resumes, or `None` when there are none.
pub fn kept_parts_note(dir: &Path, suffix: &str) -> Option<String> {
    fn walk(dir: &Path, suffix: &str, n: &mut u64, bytes: &mut u64) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                walk(&e.path(), suffix, n, bytes);
            } else if e.file_name().to_string_lossy().ends_with(suffix) {
                *n += 1;
                *bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    let (mut n, mut bytes) = (0, 0);
    walk(dir, suffix, &mut n, &mut bytes);
    (n > 0).then(|| {
        format!(
            "kept {n} partial download(s) ({}) under {} for the next run to resume",
            crate::human::human_bytes(bytes),
            dir.display()
        )
    })
}
