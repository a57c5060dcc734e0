//! One large file over several ranged connections, with the digest still computed in file order.
//!
//! The part is split into contiguous segments; each worker fetches `bytes=done-(end-1)` of its
//! segment and writes at its offset. The calling thread hashes the file front to back, reading
//! bytes back (from the page cache) as soon as every byte before them is on disk, so hashing
//! overlaps the transfer. Progress per segment is kept in `NAME.part.meta` (saved after the bytes
//! it claims were written), so a killed run resumes each segment where it stood.
use super::{
    backoff_sleep, classify_status, describe, io_err, io_reason, parse_content_range, FileRequest,
    Hasher, Http, HttpError, PartMeta, Reservation, BUF,
};
use crate::net::progress::FileProgress;
use crate::net::signed_url::redact;
use reqwest::StatusCode;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A byte range `[start, end)` of the file, of which `[start, done)` is on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub done: u64,
}

/// Split `[0, total)` into `n` near-equal segments.
pub fn plan(total: u64, n: usize) -> Vec<Segment> {
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

/// Why segmented mode gave up.
pub(super) enum SegError {
    /// The server ignored a range or the object changed: start over with one stream.
    Fallback(String),
    Http(HttpError),
}

impl From<HttpError> for SegError {
    fn from(e: HttpError) -> Self {
        SegError::Http(e)
    }
}

/// Bring a segmented part to completion. `first` is an already-open response for segment 0
/// starting at its `done`. Returns (size, digest, bytes fetched, bytes kept from before).
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    http: &Http,
    req: &FileRequest,
    file: &File,
    part: &Path,
    meta: &mut PartMeta,
    first: Option<reqwest::blocking::Response>,
    progress: &FileProgress,
) -> Result<(u64, Option<String>, u64, u64), SegError> {
    let segs = meta.segments.clone().unwrap_or_default();
    let total = segs.last().map(|s| s.end).unwrap_or(0);
    progress.set_len(total);
    let done: Vec<AtomicU64> = segs.iter().map(|s| AtomicU64::new(s.done)).collect();
    let on_disk = |done: &[AtomicU64]| -> u64 {
        segs.iter()
            .zip(done)
            .map(|(s, d)| d.load(Ordering::SeqCst) - s.start)
            .sum()
    };
    let kept = on_disk(&done);
    progress.set_position(kept);
    let _space = if req.check_space {
        let dir = part.parent().unwrap_or(Path::new("."));
        Some(Reservation::claim(dir, total - on_disk(&done))?)
    } else {
        None
    };
    let stop = AtomicBool::new(false);
    let fetched = AtomicU64::new(0);
    let shown = redact(&req.url);
    let validator = meta.if_range().map(str::to_string);
    let mut first = first;

    let (digest, outcome) = std::thread::scope(|s| {
        let mut workers = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            if seg.done >= seg.end {
                continue;
            }
            let pre = if i == 0 { first.take() } else { None };
            let (done, stop, fetched, shown, validator) =
                (&done[i], &stop, &fetched, &shown, &validator);
            workers.push(s.spawn(move || {
                let r = fetch_segment(
                    http,
                    req,
                    file,
                    part,
                    seg,
                    done,
                    pre,
                    validator.as_deref(),
                    shown,
                    fetched,
                    progress,
                    stop,
                );
                if r.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                r
            }));
        }

        // Hash in file order while the workers fill the segments.
        let mut hasher = Hasher::new(req.hash);
        let mut hashed = 0u64;
        let mut buf = vec![0u8; BUF];
        let mut last_save = Instant::now();
        let mut hash_err = None;
        loop {
            // Read before the counters: once every worker is done, this pass sees final values.
            let finished = workers.iter().all(|w| w.is_finished());
            let mut contiguous = 0;
            for (seg, d) in segs.iter().zip(&done) {
                contiguous = d.load(Ordering::SeqCst);
                if contiguous < seg.end {
                    break;
                }
            }
            while hash_err.is_none() && hashed < contiguous {
                let n = (contiguous - hashed).min(BUF as u64) as usize;
                match file.read_exact_at(&mut buf[..n], hashed) {
                    Ok(()) => {
                        hasher.update(&buf[..n]);
                        hashed += n as u64;
                    }
                    Err(e) => {
                        hash_err = Some(io_err(part, e));
                        stop.store(true, Ordering::SeqCst);
                    }
                }
            }
            if finished || last_save.elapsed() > Duration::from_millis(200) {
                save_progress(meta, &segs, &done, req);
                last_save = Instant::now();
            }
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut outcome: Result<(), SegError> = match hash_err {
            Some(e) => Err(SegError::Http(e)),
            None => Ok(()),
        };
        for w in workers {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(SegError::Fallback("a worker panicked".into())));
            // The first real error wins; a fallback request beats an error caused by stopping.
            if let Err(e) = r {
                if outcome.is_ok() || matches!(outcome, Err(SegError::Http(HttpError::Cancelled))) {
                    outcome = Err(e);
                }
            }
        }
        if outcome.is_ok() && hashed < total {
            outcome = Err(SegError::Http(HttpError::Network {
                url: shown.clone(),
                attempts: 0,
                last: "segments stopped before the end of the file".into(),
            }));
        }
        (hasher.finish(), outcome)
    });
    outcome?;
    file.sync_all().map_err(|e| io_err(part, e))?;
    Ok((total, digest, fetched.load(Ordering::SeqCst), kept))
}

fn save_progress(meta: &mut PartMeta, segs: &[Segment], done: &[AtomicU64], req: &FileRequest) {
    meta.segments = Some(
        segs.iter()
            .zip(done)
            .map(|(s, d)| Segment {
                done: d.load(Ordering::SeqCst),
                ..s.clone()
            })
            .collect(),
    );
    // Best effort: a stale record only means re-fetching a few bytes.
    let _ = meta.save(&req.dest);
}

#[allow(clippy::too_many_arguments)]
fn fetch_segment(
    http: &Http,
    req: &FileRequest,
    file: &File,
    part: &Path,
    seg: &Segment,
    done: &AtomicU64,
    mut pre: Option<reqwest::blocking::Response>,
    validator: Option<&str>,
    shown: &str,
    fetched: &AtomicU64,
    progress: &FileProgress,
    stop: &AtomicBool,
) -> Result<(), SegError> {
    let mut failures = 0u32;
    let mut buf = vec![0u8; BUF];
    loop {
        let pos0 = done.load(Ordering::SeqCst);
        if pos0 >= seg.end {
            return Ok(());
        }
        if stop.load(Ordering::SeqCst) || crate::signal::received().is_some() {
            return Err(SegError::Http(HttpError::Cancelled));
        }
        let resp = match pre.take() {
            Some(r) => Ok(r),
            None => {
                let mut rq = http.client().get(&req.url);
                for (k, v) in &req.headers {
                    rq = rq.header(k.as_str(), v.as_str());
                }
                rq = rq.header(
                    reqwest::header::RANGE,
                    format!("bytes={pos0}-{}", seg.end - 1),
                );
                if let Some(v) = validator {
                    rq = rq.header(reqwest::header::IF_RANGE, v);
                }
                rq.send().map_err(|e| describe(&e))
            }
        };
        let reason = match resp {
            Err(reason) => reason,
            Ok(resp) if resp.status() == StatusCode::PARTIAL_CONTENT => {
                match parse_content_range(resp.headers()) {
                    Some((start, _)) if start == pos0 => {}
                    _ => {
                        return Err(SegError::Fallback(
                            "the server answered a different range".into(),
                        ))
                    }
                }
                let mut resp = resp;
                let mut pos = pos0;
                let mut err = None;
                while pos < seg.end {
                    if stop.load(Ordering::SeqCst) || crate::signal::received().is_some() {
                        break;
                    }
                    let want = (seg.end - pos).min(BUF as u64) as usize;
                    match resp.read(&mut buf[..want]) {
                        Ok(0) => {
                            err = Some(format!("connection closed at byte {pos}"));
                            break;
                        }
                        Ok(n) => {
                            file.write_all_at(&buf[..n], pos)
                                .map_err(|e| SegError::Http(io_err(part, e)))?;
                            pos += n as u64;
                            done.store(pos, Ordering::SeqCst);
                            fetched.fetch_add(n as u64, Ordering::SeqCst);
                            progress.inc(n as u64);
                        }
                        Err(e) => {
                            err = Some(io_reason(&e));
                            break;
                        }
                    }
                }
                if pos > pos0 {
                    failures = 0;
                }
                match err {
                    None => continue,
                    Some(r) => r,
                }
            }
            Ok(resp) if resp.status() == StatusCode::OK => {
                return Err(SegError::Fallback(
                    "the server sent the whole file instead of a range".into(),
                ))
            }
            Ok(resp) => classify_status(resp.status(), resp, shown)?,
        };
        failures += 1;
        if failures > http.config().retries {
            return Err(SegError::Http(HttpError::Network {
                url: shown.to_string(),
                attempts: failures,
                last: reason,
            }));
        }
        backoff_sleep(http.config(), failures, progress, &reason);
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
}
