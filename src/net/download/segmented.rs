//! One large file over several ranged connections, with the digest still computed in file order.
//!
//! The part is split into contiguous segments; each worker fetches `bytes=done-(end-1)` of its
//! segment and writes at its offset. The calling thread hashes the file front to back, reading
//! bytes back (from the page cache) as soon as every byte before them is on disk, so hashing
//! overlaps the transfer. Progress per segment is kept in the part's record (saved after the bytes
//! it claims were written), so a killed run resumes each segment where it stood.
use super::client::{pause_or_stop, Http, SendFailed};
use super::error::{io_err, HttpError};
use super::hash::{Hasher, BUF};
use super::part::{self, PartMeta, Reservation, Segment};
use super::range::{self, Ranged, Span};
use super::request::{FileRequest, PartDone};
use super::response::{classify_status, io_reason, markup_type};
use crate::net::retry::{Pace, Tries};
use crate::net::signed_url::redact;
use crate::progress::Task;
use reqwest::blocking::Response;
use reqwest::StatusCode;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why segmented mode gave up.
pub(crate) enum SegError {
    /// The server ignored a range or the object changed: start over with one stream.
    Fallback(String),
    Http(HttpError),
}

impl From<HttpError> for SegError {
    fn from(e: HttpError) -> Self {
        SegError::Http(e)
    }
}

/// How a ranged request from byte 0 was answered.
pub(crate) enum Probe {
    /// Ranges work and the file is large enough: the part is planned in segments.
    Split(Response, PartMeta),
    /// One stream it is, starting with this response.
    Single(Response),
}

/// Ask for the file as a range from its start: a 206 proves ranges work and tells the size, and
/// the file is split when each of up to `req.connections` segments gets `segment_min` bytes.
pub(crate) fn probe(http: &Http, req: &FileRequest) -> Result<Probe, SendFailed> {
    let from_start = Ranged {
        span: Span::From(0),
        validator: None,
    };
    let resp = http.send(&req.url, &req.headers, Some(from_start))?;
    let total = (resp.status() == StatusCode::PARTIAL_CONTENT)
        .then(|| range::content_range(resp.headers()))
        .flatten()
        .and_then(|(start, total)| (start == 0).then_some(total).flatten());
    let n = total
        .map(|t| (t / http.config().segment_min.max(1)).min(req.connections as u64))
        .unwrap_or(0);
    let page = req.reject_markup && markup_type(resp.headers()).is_some();
    match total {
        Some(t) if n >= 2 && !page && req.expected_size.is_none_or(|e| e == t) => {
            let mut meta = PartMeta::from_headers(resp.headers(), Some(t));
            meta.segments = Some(part::plan(t, n as usize));
            Ok(Probe::Split(resp, meta))
        }
        _ => Ok(Probe::Single(resp)),
    }
}

/// What every segment worker shares.
struct Shared<'a> {
    http: &'a Http,
    req: &'a FileRequest,
    file: &'a File,
    progress: &'a dyn Task,
    shown: String,
    validator: Option<String>,
    fetched: AtomicU64,
    /// Set when one worker failed: the others stop too.
    stop: AtomicBool,
}

impl Shared<'_> {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || crate::signal::received().is_some()
    }

    /// Ask for `[from, end)`, if the object is still the one the part holds.
    fn ask(&self, from: u64, end: u64) -> Result<Response, SendFailed> {
        let ranged = Ranged {
            span: Span::Between(from, end),
            validator: self.validator.as_deref(),
        };
        self.http
            .send(&self.req.url, &self.req.headers, Some(ranged))
    }
}

/// Bring a segmented part to completion. `first` is an already-open response for segment 0
/// starting at its `done`.
pub(crate) fn run(
    http: &Http,
    req: &FileRequest,
    file: &File,
    meta: &mut PartMeta,
    first: Option<Response>,
    progress: &dyn Task,
) -> Result<PartDone, SegError> {
    meta.save(&req.part)?;
    let segs = meta.segments.clone().unwrap_or_default();
    let total = segs.last().map(|s| s.end).unwrap_or(0);
    progress.set_len(total);
    let done: Vec<AtomicU64> = segs.iter().map(|s| AtomicU64::new(s.done)).collect();
    let kept = on_disk(&segs, &done);
    progress.set_position(kept);
    let _space = Reservation::claim(&req.part, total - kept, req.check_space)?;
    let sh = Shared {
        http,
        req,
        file,
        progress,
        shown: redact(&req.url),
        validator: meta.if_range().map(str::to_string),
        fetched: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let (digest, outcome) = transfer(&sh, &segs, &done, meta, first);
    outcome?;
    file.sync_all().map_err(|e| io_err(&req.part, e))?;
    Ok(PartDone {
        size: total,
        digest,
        fetched: sh.fetched.load(Ordering::SeqCst),
        kept,
    })
}

/// One worker per unfinished segment while this thread hashes in file order; the digest and how
/// the transfer ended.
fn transfer(
    sh: &Shared,
    segs: &[Segment],
    done: &[AtomicU64],
    meta: &mut PartMeta,
    mut first: Option<Response>,
) -> (Option<String>, Result<(), SegError>) {
    let total = segs.last().map_or(0, |s| s.end);
    std::thread::scope(|s| {
        let workers: Vec<_> = segs
            .iter()
            .zip(done)
            .enumerate()
            .filter(|(_, (seg, _))| seg.done < seg.end)
            .map(|(i, (seg, d))| {
                let pre = if i == 0 { first.take() } else { None };
                s.spawn(move || {
                    let r = fetch_segment(sh, seg, d, pre);
                    if r.is_err() {
                        sh.stop.store(true, Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        let all_done = || workers.iter().all(|w| w.is_finished());
        let (hasher, hashed, hash_err) = hash_in_order(sh, segs, done, meta, all_done);
        let mut outcome = join_all(workers, hash_err);
        if outcome.is_ok() && hashed < total {
            outcome = Err(SegError::Http(HttpError::Network {
                url: sh.shown.clone(),
                attempts: 0,
                last: "segments stopped before the end of the file".into(),
            }));
        }
        (hasher.finish(), outcome)
    })
}

/// Wait for every worker. The first real error wins (`first`, a read error of the hasher, comes
/// before the workers'); a fallback request beats an error caused by stopping.
fn join_all(
    workers: Vec<std::thread::ScopedJoinHandle<'_, Result<(), SegError>>>,
    first: Option<HttpError>,
) -> Result<(), SegError> {
    let mut outcome = first.map_or(Ok(()), |e| Err(SegError::Http(e)));
    for w in workers {
        let r = w
            .join()
            .unwrap_or_else(|_| Err(SegError::Fallback("a worker panicked".into())));
        if let Err(e) = r {
            if outcome.is_ok() || matches!(outcome, Err(SegError::Http(HttpError::Cancelled))) {
                outcome = Err(e);
            }
        }
    }
    outcome
}

/// Bytes of the segments on disk.
fn on_disk(segs: &[Segment], done: &[AtomicU64]) -> u64 {
    segs.iter()
        .zip(done)
        .map(|(s, d)| d.load(Ordering::SeqCst) - s.start)
        .sum()
}

/// Hash the file front to back while the workers fill it, each pass up to the first byte not yet
/// on disk, saving the segments' progress to the record every 200 ms; returns once `finished()`
/// (every worker ended) with the hasher, the bytes hashed and a read error, if any.
fn hash_in_order(
    sh: &Shared,
    segs: &[Segment],
    done: &[AtomicU64],
    meta: &mut PartMeta,
    finished: impl Fn() -> bool,
) -> (Hasher, u64, Option<HttpError>) {
    let mut hasher = Hasher::new(sh.req.hash);
    let mut hashed = 0u64;
    let mut buf = vec![0u8; BUF];
    let mut last_save = Instant::now();
    let mut hash_err = None;
    loop {
        // Read before the counters: once every worker is done, this pass sees final values.
        let finished = finished();
        let mut contiguous = 0;
        for (seg, d) in segs.iter().zip(done) {
            contiguous = d.load(Ordering::SeqCst);
            if contiguous < seg.end {
                break;
            }
        }
        while hash_err.is_none() && hashed < contiguous {
            let n = (contiguous - hashed).min(BUF as u64) as usize;
            match sh.file.read_exact_at(&mut buf[..n], hashed) {
                Ok(()) => {
                    hasher.update(&buf[..n]);
                    hashed += n as u64;
                }
                Err(e) => {
                    hash_err = Some(io_err(&sh.req.part, e));
                    sh.stop.store(true, Ordering::SeqCst);
                }
            }
        }
        if finished || last_save.elapsed() > Duration::from_millis(200) {
            save_progress(meta, segs, done, sh.req);
            last_save = Instant::now();
        }
        if finished {
            return (hasher, hashed, hash_err);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
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
    let _ = meta.save(&req.part);
}

/// Fill one segment, resuming from its `done` after each failure.
fn fetch_segment(
    sh: &Shared,
    seg: &Segment,
    done: &AtomicU64,
    mut pre: Option<Response>,
) -> Result<(), SegError> {
    let mut tries = Tries::new(sh.http.config());
    let mut buf = vec![0u8; BUF];
    loop {
        let from = done.load(Ordering::SeqCst);
        if from >= seg.end {
            return Ok(());
        }
        if sh.stopping() {
            return Err(SegError::Http(HttpError::Cancelled));
        }
        let mut pace = Pace::start(sh.http.config());
        let sent = pre.take().map_or_else(|| sh.ask(from, seg.end), Ok);
        let (reason, connect) = match sent {
            Err(failed) => (failed.reason, failed.connect),
            Ok(resp) if resp.status() == StatusCode::PARTIAL_CONTENT => {
                match range::content_range(resp.headers()) {
                    Some((start, _)) if start == from => {}
                    _ => {
                        return Err(SegError::Fallback(
                            "the server answered a different range".into(),
                        ))
                    }
                }
                let stopped = read_segment(sh, seg, done, resp, &mut buf, &mut pace)?;
                if pace.progressed() {
                    tries.progressed();
                }
                match stopped {
                    None => continue,
                    Some(reason) => (pace.explain(reason), None),
                }
            }
            Ok(resp) if resp.status() == StatusCode::OK => {
                return Err(SegError::Fallback(
                    "the server sent the whole file instead of a range".into(),
                ))
            }
            Ok(resp) => (classify_status(resp.status(), resp, &sh.shown)?, None),
        };
        pause_or_stop(
            &mut tries,
            &sh.shown,
            reason,
            connect.as_ref(),
            Some(sh.progress),
        )?;
    }
}

/// Write a 206 body at its offset until the segment is full (`None`), the workers stop (`None`;
/// the caller's loop sees why), the connection fails or the bytes come slower than the floor
/// rate (the reason).
fn read_segment(
    sh: &Shared,
    seg: &Segment,
    done: &AtomicU64,
    mut resp: Response,
    buf: &mut [u8],
    pace: &mut Pace,
) -> Result<Option<String>, SegError> {
    let mut pos = done.load(Ordering::SeqCst);
    while pos < seg.end {
        if sh.stopping() {
            return Ok(None);
        }
        let want = (seg.end - pos).min(buf.len() as u64) as usize;
        match resp.read(&mut buf[..want]) {
            Ok(0) => return Ok(Some(format!("connection closed at byte {pos}"))),
            Ok(n) => {
                sh.file
                    .write_all_at(&buf[..n], pos)
                    .map_err(|e| SegError::Http(io_err(&sh.req.part, e)))?;
                pos += n as u64;
                done.store(pos, Ordering::SeqCst);
                sh.fetched.fetch_add(n as u64, Ordering::SeqCst);
                sh.progress.advance(n as u64);
                if let Some(slow) = pace.add(n as u64) {
                    return Ok(Some(slow));
                }
            }
            Err(e) => return Ok(Some(io_reason(&e))),
        }
    }
    Ok(None)
}
