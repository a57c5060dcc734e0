//! The partial file and its record. `PART` holds the bytes received so far; `PART.meta` what is
//! known of the remote object (validator, size, and per-segment progress when several connections
//! fill it), so a later run, even with a fresh signed link, can ask for the rest with `If-Range`
//! and gets the whole object instead if it changed. Free disk space is claimed here too.
use super::error::{io_err, HttpError};
use reqwest::header::{self, HeaderMap};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The default part beside a destination: `DEST.part`.
pub fn part_path(dest: &Path) -> PathBuf {
    with_suffix(dest, ".part")
}

/// The record beside a part: `PART.meta`.
fn meta_path(part: &Path) -> PathBuf {
    with_suffix(part, ".meta")
}

/// A byte range `[start, end)` of the file, of which `[start, done)` is on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub done: u64,
}

/// Split `[0, total)` into `n` near-equal segments.
pub(crate) fn plan(total: u64, n: usize) -> Vec<Segment> {
    let n = n.max(1) as u64;
    (0..n)
        .map(|i| {
            let start = total * i / n;
            Segment {
                start,
                end: total * (i + 1) / n,
                done: start,
            }
        })
        .collect()
}

/// What we learned about the remote object from the response that started the part.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct PartMeta {
    etag: Option<String>,
    last_modified: Option<String>,
    pub size: Option<u64>,
    /// Present when the part is being filled over several connections (it then has holes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<Segment>>,
}

impl PartMeta {
    /// The record of `part` when it fits a part of `len` bytes: segments claim no byte beyond
    /// the file's end (a record left beside a part that was removed or replaced is ignored).
    pub(crate) fn load(part: &Path, len: u64) -> Option<Self> {
        let text = std::fs::read_to_string(meta_path(part)).ok()?;
        let meta: Self = serde_json::from_str(&text).ok()?;
        let segments = meta.segments.iter().flatten();
        let claimed = segments.filter(|s| s.done > s.start).map(|s| s.done).max();
        claimed.is_none_or(|c| c <= len).then_some(meta)
    }

    /// Written beside and renamed over, so a kill never leaves a torn record.
    pub(crate) fn save(&self, part: &Path) -> Result<(), HttpError> {
        let p = meta_path(part);
        let tmp = with_suffix(&p, ".tmp");
        let text = serde_json::to_string(self).unwrap_or_default();
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|e| io_err(&p, e))
    }

    pub(crate) fn from_headers(h: &HeaderMap, size: Option<u64>) -> Self {
        let get = |name: header::HeaderName| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.to_string())
        };
        // A weak ETag cannot be used with If-Range (RFC 9110 13.1.5).
        let etag = get(header::ETAG).filter(|e| !e.starts_with("W/"));
        Self {
            etag,
            last_modified: get(header::LAST_MODIFIED),
            size,
            segments: None,
        }
    }

    pub(crate) fn if_range(&self) -> Option<&str> {
        self.etag.as_deref().or(self.last_modified.as_deref())
    }
}

/// Remove the part and its record.
pub(crate) fn discard(part: &Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(meta_path(part));
}

/// Remove the record alone (the part became the final file).
pub(crate) fn forget(part: &Path) {
    let _ = std::fs::remove_file(meta_path(part));
}

/// A part that never received a byte is not worth keeping (nor its record).
pub(crate) fn remove_if_empty(part: &Path) {
    if std::fs::metadata(part).is_ok_and(|m| m.len() == 0) {
        discard(part);
    }
}

/// Empty the part to start the object over from byte 0.
pub(crate) fn truncate(file: &mut File, part: &Path) -> Result<(), HttpError> {
    file.set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .map_err(|e| io_err(part, e))
}

/// Drop a segmented part (it has holes) so a single stream can start it afresh.
pub(crate) fn abandon_segments(file: &mut File, part: &Path) -> Result<PartMeta, HttpError> {
    truncate(file, part)?;
    forget(part);
    Ok(PartMeta::default())
}

/// Bytes that running downloads in this process have announced but not yet written.
static RESERVED: AtomicU64 = AtomicU64::new(0);

/// A claim on [`RESERVED`], released as bytes land and when dropped.
pub(crate) struct Reservation(u64);

impl Reservation {
    /// Claim `need` bytes for the part `part` when `check` is set (else claim nothing).
    pub(crate) fn claim(part: &Path, need: u64, check: bool) -> Result<Option<Self>, HttpError> {
        if !check {
            return Ok(None);
        }
        let dir = part.parent().unwrap_or(Path::new("."));
        let others = RESERVED.fetch_add(need, Ordering::SeqCst);
        match crate::util::free_disk_bytes(dir) {
            Ok(free) if free < need.saturating_add(others) => {
                RESERVED.fetch_sub(need, Ordering::SeqCst);
                Err(HttpError::NoSpace {
                    path: dir.display().to_string(),
                    need: need.saturating_add(others),
                    free,
                })
            }
            // An unreadable free-space figure must not block a download.
            _ => Ok(Some(Self(need))),
        }
    }

    pub(crate) fn wrote(&mut self, n: u64) {
        let n = n.min(self.0);
        self.0 -= n;
        RESERVED.fetch_sub(n, Ordering::SeqCst);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        RESERVED.fetch_sub(self.0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_the_file() {
        let p = plan(10, 3);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].start, 0);
        assert_eq!(p[2].end, 10);
        for w in p.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(p.iter().all(|s| s.done == s.start));
    }

    #[test]
    fn a_record_that_claims_more_than_the_part_holds_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("x.part");
        let mut meta = PartMeta {
            size: Some(10),
            segments: Some(plan(10, 2)),
            ..PartMeta::default()
        };
        meta.save(&part).unwrap();
        assert_eq!(PartMeta::load(&part, 0), Some(meta.clone()));
        meta.segments.as_mut().unwrap()[1].done = 8;
        meta.save(&part).unwrap();
        assert_eq!(PartMeta::load(&part, 8), Some(meta.clone()));
        assert_eq!(PartMeta::load(&part, 7), None);
        discard(&part);
        assert_eq!(PartMeta::load(&part, 8), None);
    }
}
