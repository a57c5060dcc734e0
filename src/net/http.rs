//! A download engine for large files over flaky links.
//!
//! [`Http::download_to_file`] writes `DEST.part`, hashes the bytes as they stream in (after hashing any
//! prefix kept from an earlier run), resumes with `Range` + `If-Range`, retries 5xx / resets / stalls /
//! truncated bodies with exponential backoff and jitter from the current offset, verifies the digest,
//! and only then renames the part to `DEST`. The validator of the first response (ETag or
//! Last-Modified, and the size) is kept in `DEST.part.meta` so a later run, even with a fresh signed
//! link, can ask for the rest with `If-Range` and gets the whole file instead if the object changed.
//!
//! Every URL that appears in an error or log line goes through [`redact`] first; reqwest errors are
//! stripped of their URL.
use crate::net::progress::FileProgress;
use crate::net::reach::{self, ConnectFailure, FirstContact, Unreachable};
use crate::net::segmented::{self, SegError};
use crate::net::signed_url::redact;
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Timeouts and retry policy. Tests shrink them through the environment.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A read (or the response headers) taking longer than this is a stall: retried.
    pub read_timeout: Duration,
    pub connect_timeout: Duration,
    /// Consecutive failed attempts without progress before giving up.
    pub retries: u32,
    /// First backoff; doubled per consecutive failure, with ±50 % jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Smallest segment when a file is fetched over several connections.
    pub segment_min: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(60),
            // A connect that takes longer is a dead host; this also bounds the first-contact
            // budget (see `reach`).
            connect_timeout: Duration::from_secs(10),
            retries: 8,
            retry_base: Duration::from_millis(1000),
            retry_max: Duration::from_secs(60),
            segment_min: 64 << 20,
        }
    }
}

impl HttpConfig {
    /// Defaults, overridden by `LLAMACTL_READ_TIMEOUT_MS`, `LLAMACTL_CONNECT_TIMEOUT_MS`,
    /// `LLAMACTL_RETRIES`, `LLAMACTL_RETRY_BASE_MS`, `LLAMACTL_RETRY_MAX_MS`,
    /// `LLAMACTL_SEGMENT_MIN_BYTES`.
    pub fn from_env() -> Self {
        fn ms(name: &str, default: Duration) -> Duration {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
                .unwrap_or(default)
        }
        let d = Self::default();
        Self {
            read_timeout: ms("LLAMACTL_READ_TIMEOUT_MS", d.read_timeout),
            connect_timeout: ms("LLAMACTL_CONNECT_TIMEOUT_MS", d.connect_timeout),
            retries: std::env::var("LLAMACTL_RETRIES")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(d.retries),
            retry_base: ms("LLAMACTL_RETRY_BASE_MS", d.retry_base),
            retry_max: ms("LLAMACTL_RETRY_MAX_MS", d.retry_max),
            segment_min: std::env::var("LLAMACTL_SEGMENT_MIN_BYTES")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|&n: &u64| n > 0)
                .unwrap_or(d.segment_min),
        }
    }

    /// Backoff before retry number `n` (1-based): base·2^(n-1), capped, times a jitter in [0.5, 1.5).
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .retry_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16));
        let capped = exp.min(self.retry_max);
        capped.mul_f64(0.5 + rand::random::<f64>())
    }
}

/// Which digest to compute while the bytes stream in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    None,
    Md5,
    Sha256,
}

/// One file to fetch.
#[derive(Debug, Clone)]
pub struct FileRequest {
    /// The full URL (may carry credentials; it is never printed unredacted).
    pub url: String,
    /// Final path; the engine writes `dest.part` and `dest.part.meta` beside it.
    pub dest: PathBuf,
    /// Size the file must have, when known beforehand (a body far smaller is an error page).
    pub expected_size: Option<u64>,
    pub hash: HashKind,
    /// Lower-case hex digest the file must have; on mismatch the part is deleted and fetched once
    /// more from scratch before [`HttpError::Mismatch`].
    pub expected_digest: Option<String>,
    /// Extra request headers (e.g. `Authorization`), never printed.
    pub headers: Vec<(String, String)>,
    /// Refuse bodies that look like an HTML/XML page (for files that can never be markup).
    pub reject_markup: bool,
    /// Before the first byte of a body, check that the disk holds the rest of this file plus what
    /// other downloads in this process still have to write.
    pub check_space: bool,
    /// Ranged connections for one large file (1: a single stream). A file is split only when
    /// each segment gets at least [`HttpConfig::segment_min`] bytes and the server answers ranges.
    pub connections: usize,
}

impl FileRequest {
    pub fn new(url: impl Into<String>, dest: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            dest: dest.into(),
            expected_size: None,
            hash: HashKind::None,
            expected_digest: None,
            headers: Vec::new(),
            reject_markup: false,
            check_space: true,
            connections: 1,
        }
    }
}

/// What a finished download produced.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub size: u64,
    /// Lower-case hex digest of the whole file (`None` for [`HashKind::None`]).
    pub digest: Option<String>,
    /// Bytes that came over the network in this call.
    pub fetched: u64,
    /// Bytes reused from an earlier partial download.
    pub resumed_from: u64,
}

/// Why a download stopped. Every variant's text is one line with credentials redacted.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// 401 / 403: an expired or used-up signed link, a gated repo, a bad token. Not retried.
    #[error("{url}: HTTP {status} refused{detail}")]
    Refused {
        status: u16,
        url: String,
        detail: String,
    },
    #[error("{url}: HTTP 404 not found")]
    NotFound { url: String },
    #[error("{url}: HTTP {status}")]
    Status { status: u16, url: String },
    /// The server answered with something that is not the file (an error page, a tiny body).
    #[error("{url}: {what}; not saved")]
    ErrorBody { url: String, what: String },
    #[error("{path}: {kind} mismatch after a second fetch: expected {expected}, got {actual} (part deleted)")]
    Mismatch {
        path: String,
        kind: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{url}: network failure after {attempts} attempts: {last}")]
    Network {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{path}: not enough disk space: {need} more bytes needed, {free} free")]
    NoSpace { path: String, need: u64, free: u64 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The host never answered (DNS, refused, TLS, timeout) after a few quick tries.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// SIGINT/SIGTERM; the part is kept for the next run.
    #[error("interrupted")]
    Cancelled,
}

impl HttpError {
    /// The exit code this failure maps to (CLI.md).
    pub fn exit_code(&self) -> i32 {
        use crate::error::*;
        match self {
            HttpError::Refused { .. } | HttpError::NotFound { .. } => REFUSED,
            HttpError::Status { status, .. } if *status >= 500 => NETWORK,
            HttpError::Status { .. } | HttpError::ErrorBody { .. } => REFUSED,
            HttpError::Mismatch { .. } => CHECK_FAILED,
            HttpError::Network { .. } | HttpError::Unreachable(_) => NETWORK,
            HttpError::Io { .. } | HttpError::NoSpace { .. } | HttpError::Cancelled => USAGE,
        }
    }
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> HttpError {
    HttpError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The `.part` file beside a destination.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

fn meta_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part.meta");
    PathBuf::from(s)
}

/// What we learned about the remote object from the response that started the part.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct PartMeta {
    etag: Option<String>,
    last_modified: Option<String>,
    size: Option<u64>,
    /// Present when the part is being filled over several connections (it then has holes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) segments: Option<Vec<crate::net::segmented::Segment>>,
}

impl PartMeta {
    fn load(dest: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(meta_path(dest)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Written beside and renamed over, so a kill never leaves a torn record.
    pub(crate) fn save(&self, dest: &Path) -> Result<(), HttpError> {
        let p = meta_path(dest);
        let mut tmp = p.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_string(self).unwrap_or_default();
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|e| io_err(&p, e))
    }

    fn from_headers(h: &HeaderMap, size: Option<u64>) -> Self {
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

pub(crate) enum Hasher {
    None,
    Md5(crate::formats::md5::Md5),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub(crate) fn new(kind: HashKind) -> Self {
        match kind {
            HashKind::None => Hasher::None,
            HashKind::Md5 => Hasher::Md5(crate::formats::md5::Md5::new()),
            HashKind::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
        }
    }
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => sha2::Digest::update(h, data),
        }
    }
    pub(crate) fn finish(self) -> Option<String> {
        match self {
            Hasher::None => None,
            Hasher::Md5(h) => Some(hex::encode(h.finalize())),
            Hasher::Sha256(h) => Some(hex::encode(sha2::Digest::finalize(h))),
        }
    }
}

/// A hasher on its own thread, so hashing overlaps the network and the disk. Buffers are hashed in
/// the order they are submitted, then handed back for reuse, so bytes are never copied on their way
/// to the hasher; `reset` starts over (the file was restarted from byte 0).
struct HashPipe {
    tx: Option<std::sync::mpsc::SyncSender<HashMsg>>,
    recycled: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
    /// Without a hasher, the one buffer the reader keeps reusing.
    spare: Option<Vec<u8>>,
}

enum HashMsg {
    /// A buffer and how many of its bytes to hash.
    Data(Vec<u8>, usize),
    Reset,
}

impl HashPipe {
    fn new(kind: HashKind) -> Self {
        if kind == HashKind::None {
            return Self {
                tx: None,
                recycled: None,
                thread: None,
                spare: None,
            };
        }
        // Bounded, so a slow hasher slows the download instead of buffering the file in memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashMsg>(4);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let thread = std::thread::spawn(move || {
            let mut h = Hasher::new(kind);
            for msg in rx {
                match msg {
                    HashMsg::Data(buf, n) => {
                        h.update(&buf[..n]);
                        let _ = back_tx.send(buf);
                    }
                    HashMsg::Reset => h = Hasher::new(kind),
                }
            }
            h.finish()
        });
        Self {
            tx: Some(tx),
            recycled: Some(back_rx),
            thread: Some(thread),
            spare: None,
        }
    }

    /// A buffer of `BUF` bytes to read into (recycled when one is free).
    fn buffer(&mut self) -> Vec<u8> {
        self.spare
            .take()
            .or_else(|| self.recycled.as_ref().and_then(|r| r.try_recv().ok()))
            .unwrap_or_else(|| vec![0u8; BUF])
    }

    /// Hash the first `n` bytes of `buf` (after everything submitted before).
    fn submit(&mut self, buf: Vec<u8>, n: usize) {
        match &self.tx {
            Some(tx) if n > 0 => {
                let _ = tx.send(HashMsg::Data(buf, n));
            }
            _ => self.spare = Some(buf),
        }
    }

    fn reset(&mut self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(HashMsg::Reset);
        }
    }

    fn finish(mut self) -> Option<String> {
        self.tx.take();
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }
}

fn hash_name(kind: HashKind) -> &'static str {
    match kind {
        HashKind::None => "digest",
        HashKind::Md5 => "md5",
        HashKind::Sha256 => "sha256",
    }
}

/// A request that got no response.
pub(crate) struct SendFailed {
    pub(crate) reason: String,
    /// Set when no connection was made at all (see [`reach`]).
    pub(crate) connect: Option<ConnectFailure>,
}

/// Outcome of one HTTP attempt.
enum Attempt {
    /// The part is complete at this size.
    Complete(u64),
    /// Transient trouble; `progressed` when bytes were written in this attempt; `connect` when
    /// the request got no answer at all.
    Retry {
        reason: String,
        progressed: bool,
        connect: Option<ConnectFailure>,
    },
}

pub(crate) const BUF: usize = 1 << 20;

/// Bytes that running downloads in this process have announced but not yet written.
static RESERVED: AtomicU64 = AtomicU64::new(0);

/// A claim on [`RESERVED`], released as bytes land and when dropped.
pub(crate) struct Reservation(u64);

impl Reservation {
    pub(crate) fn claim(dir: &Path, need: u64) -> Result<Self, HttpError> {
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
            _ => Ok(Self(need)),
        }
    }

    fn wrote(&mut self, n: u64) {
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

/// A blocking HTTP client with the download engine on top. Cheap to share across threads.
#[derive(Clone)]
pub struct Http {
    client: reqwest::blocking::Client,
    cfg: HttpConfig,
}

impl Http {
    pub fn new(cfg: HttpConfig) -> anyhow::Result<Self> {
        let client = reqwest::blocking::Client::builder()
            .user_agent(concat!("llamactl/", env!("CARGO_PKG_VERSION")))
            // In the blocking client this bounds every wait (headers, each read): a stall detector.
            .timeout(cfg.read_timeout)
            .connect_timeout(cfg.connect_timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {}", e.without_url()))?;
        Ok(Self { client, cfg })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.cfg
    }

    /// The underlying client, for small API calls that need no resume.
    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// GET a small document into memory (≤ `max_bytes`), with the same retry policy.
    pub fn get_small(
        &self,
        url: &str,
        headers: &[(String, String)],
        max_bytes: u64,
    ) -> Result<(HeaderMap, Vec<u8>), HttpError> {
        let shown = redact(url);
        let mut failures = 0;
        let mut fc = FirstContact::new();
        loop {
            let reason = match self.send(url, headers, None) {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        let h = resp.headers().clone();
                        let mut body = Vec::new();
                        match resp.take(max_bytes + 1).read_to_end(&mut body) {
                            Ok(_) if body.len() as u64 > max_bytes => {
                                return Err(HttpError::ErrorBody {
                                    url: shown,
                                    what: format!("larger than {max_bytes} bytes"),
                                })
                            }
                            Ok(_) => return Ok((h, body)),
                            Err(e) => redact(&e.to_string()),
                        }
                    } else {
                        classify_status(status, resp, &shown)?
                    }
                }
                Err(failed) => {
                    if let Some(wait) = self.first_contact(&mut fc, failed.connect.as_ref())? {
                        interruptible_sleep(wait)?;
                        continue;
                    }
                    failed.reason
                }
            };
            failures += 1;
            if failures > self.cfg.retries {
                return Err(HttpError::Network {
                    url: shown,
                    attempts: failures,
                    last: reason,
                });
            }
            interruptible_sleep(self.cfg.backoff(failures))?;
        }
    }

    pub(crate) fn send(
        &self,
        url: &str,
        headers: &[(String, String)],
        range: Option<(u64, Option<&str>)>,
    ) -> Result<reqwest::blocking::Response, SendFailed> {
        let mut req = self.client.get(url);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some((from, validator)) = range {
            req = req.header(header::RANGE, format!("bytes={from}-"));
            if let Some(v) = validator {
                req = req.header(header::IF_RANGE, v);
            }
        }
        match req.send() {
            Ok(resp) => {
                reach::mark_reached(url);
                Ok(resp)
            }
            Err(e) => {
                let reason = describe(&e);
                let connect = reach::connect_failure(&e, &reason);
                Err(SendFailed { reason, connect })
            }
        }
    }

    /// For a request that got no answer from a host that never answered in this run: how long
    /// to wait before the next quick try, or the error that ends the transfer. `None` when the
    /// patient policy applies.
    pub(crate) fn first_contact(
        &self,
        fc: &mut FirstContact,
        connect: Option<&ConnectFailure>,
    ) -> Result<Option<Duration>, HttpError> {
        match connect {
            Some(c) => Ok(fc.failed(c, self.cfg.connect_timeout)?),
            None => Ok(None),
        }
    }

    /// Fetch `req.url` into `req.dest` with resume, retries, in-stream hashing and verification.
    /// SIGINT/SIGTERM (see [`crate::signal`]) stops the transfer between reads; the part is kept
    /// unless it is still empty.
    pub fn download_to_file(
        &self,
        req: &FileRequest,
        progress: &FileProgress,
    ) -> Result<Downloaded, HttpError> {
        let mut fetched_total = 0;
        let mut first_resumed = None;
        for round in 0..2 {
            let fetched = self.fetch_part(req, progress);
            if fetched.is_err() {
                remove_if_empty(&req.dest);
            }
            let (size, digest, fetched, resumed_from) = fetched?;
            fetched_total += fetched;
            first_resumed.get_or_insert(resumed_from);
            let part = part_path(&req.dest);
            if let (Some(want), Some(got)) = (&req.expected_digest, &digest) {
                if !want.eq_ignore_ascii_case(got) {
                    let _ = std::fs::remove_file(&part);
                    let _ = std::fs::remove_file(meta_path(&req.dest));
                    progress.set_position(0);
                    if round == 0 {
                        progress.note("checksum mismatch, fetching again");
                        continue;
                    }
                    return Err(HttpError::Mismatch {
                        path: req.dest.display().to_string(),
                        kind: hash_name(req.hash),
                        expected: want.to_ascii_lowercase(),
                        actual: got.clone(),
                    });
                }
            }
            std::fs::rename(&part, &req.dest).map_err(|e| io_err(&req.dest, e))?;
            sync_parent(&req.dest);
            let _ = std::fs::remove_file(meta_path(&req.dest));
            return Ok(Downloaded {
                size,
                digest,
                fetched: fetched_total,
                resumed_from: first_resumed.unwrap_or(0),
            });
        }
        unreachable!("the loop returns on its second round")
    }

    /// Bring `dest.part` to completion; returns (size, digest, bytes fetched, bytes reused).
    fn fetch_part(
        &self,
        req: &FileRequest,
        progress: &FileProgress,
    ) -> Result<(u64, Option<String>, u64, u64), HttpError> {
        let part = part_path(&req.dest);
        if let Some(dir) = req.dest.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(|e| io_err(&part, e))?;
        lock_exclusive(&file, &part)?;
        let mut meta = PartMeta::load(&req.dest).unwrap_or_default();
        if meta.segments.is_some() {
            match segmented::run(self, req, &file, &part, &mut meta, None, progress) {
                Ok(done) => return Ok(done),
                Err(SegError::Http(e)) => return Err(e),
                Err(SegError::Fallback(why)) => {
                    progress.note(&format!("one connection: {why}"));
                    meta = abandon_segments(&mut file, &part, &req.dest)?;
                }
            }
        }
        let mut offset = file.metadata().map_err(|e| io_err(&part, e))?.len();
        let known_size = req.expected_size.or(meta.size);
        if offset > 0 && known_size.is_some_and(|s| offset > s) {
            offset = 0;
        }
        if offset > 0 && meta == PartMeta::default() && req.expected_digest.is_none() {
            // Nothing ties these bytes to the remote object and nothing will check them: start over.
            offset = 0;
        }
        file.set_len(offset).map_err(|e| io_err(&part, e))?;
        let mut hasher = HashPipe::new(req.hash);
        if offset > 0 {
            progress.note("hashing kept part");
            hash_prefix(&mut file, offset, &mut hasher).map_err(|e| io_err(&part, e))?;
            progress.note("");
        }
        let resumed_from = offset;
        if let Some(s) = known_size {
            progress.set_len(s);
        }
        progress.set_position(offset);
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err(&part, e))?;

        let shown = redact(&req.url);
        let mut fetched = 0u64;
        let mut failures = 0u32;
        let mut fc = FirstContact::new();
        let mut first = None;
        if offset == 0 && req.connections > 1 {
            // Ask for a range from the start: a 206 proves ranges work and tells the size.
            match self.send(&req.url, &req.headers, Some((0, None))) {
                Ok(resp) => {
                    let total = (resp.status() == StatusCode::PARTIAL_CONTENT)
                        .then(|| parse_content_range(resp.headers()))
                        .flatten()
                        .and_then(|(start, total)| (start == 0).then_some(total).flatten());
                    let n = total
                        .map(|t| (t / self.cfg.segment_min.max(1)).min(req.connections as u64))
                        .unwrap_or(0);
                    let page = req.reject_markup && is_markup_type(resp.headers());
                    match total {
                        Some(t) if n >= 2 && !page && req.expected_size.is_none_or(|e| e == t) => {
                            meta = PartMeta::from_headers(resp.headers(), Some(t));
                            meta.segments = Some(segmented::plan(t, n as usize));
                            meta.save(&req.dest)?;
                            match segmented::run(
                                self,
                                req,
                                &file,
                                &part,
                                &mut meta,
                                Some(resp),
                                progress,
                            ) {
                                Ok(done) => return Ok(done),
                                Err(SegError::Http(e)) => return Err(e),
                                Err(SegError::Fallback(why)) => {
                                    progress.note(&format!("one connection: {why}"));
                                    meta = abandon_segments(&mut file, &part, &req.dest)?;
                                }
                            }
                        }
                        _ => first = Some(resp),
                    }
                }
                Err(failed) => match self.first_contact(&mut fc, failed.connect.as_ref())? {
                    Some(wait) => interruptible_sleep(wait)?,
                    None => {
                        failures += 1;
                        backoff_sleep(&self.cfg, failures, progress, &failed.reason);
                    }
                },
            }
        }
        loop {
            interrupted()?;
            let attempt = self.attempt(
                first.take(),
                req,
                &shown,
                &mut file,
                &part,
                &mut offset,
                &mut hasher,
                &mut meta,
                &mut fetched,
                progress,
            )?;
            match attempt {
                Attempt::Complete(size) => {
                    file.sync_all().map_err(|e| io_err(&part, e))?;
                    if let Some(want) = req.expected_size {
                        if size != want {
                            let _ = std::fs::remove_file(&part);
                            let _ = std::fs::remove_file(meta_path(&req.dest));
                            return Err(HttpError::ErrorBody {
                                url: shown,
                                what: format!("{size} bytes where {want} were expected"),
                            });
                        }
                    }
                    return Ok((size, hasher.finish(), fetched, resumed_from));
                }
                Attempt::Retry {
                    reason,
                    progressed,
                    connect,
                } => {
                    if let Some(wait) = self.first_contact(&mut fc, connect.as_ref())? {
                        interruptible_sleep(wait)?;
                        continue;
                    }
                    // A link that keeps delivering is not failing: count only stuck attempts.
                    if progressed {
                        failures = 0;
                    }
                    failures += 1;
                    if failures > self.cfg.retries {
                        return Err(HttpError::Network {
                            url: shown,
                            attempts: failures,
                            last: reason,
                        });
                    }
                    backoff_sleep(&self.cfg, failures, progress, &reason);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        pre: Option<reqwest::blocking::Response>,
        req: &FileRequest,
        shown: &str,
        file: &mut File,
        part: &Path,
        offset: &mut u64,
        hasher: &mut HashPipe,
        meta: &mut PartMeta,
        fetched: &mut u64,
        progress: &FileProgress,
    ) -> Result<Attempt, HttpError> {
        let range = (*offset > 0).then(|| (*offset, meta.if_range()));
        let sent = match pre {
            Some(r) => Ok(r),
            None => self.send(&req.url, &req.headers, range),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(failed) => {
                return Ok(Attempt::Retry {
                    reason: failed.reason,
                    progressed: false,
                    connect: failed.connect,
                })
            }
        };
        let status = resp.status();
        let restart = |file: &mut File, offset: &mut u64, hasher: &mut HashPipe| {
            *offset = 0;
            hasher.reset();
            progress.set_position(0);
            file.set_len(0)
                .and_then(|_| file.seek(SeekFrom::Start(0)).map(|_| ()))
                .map_err(|e| io_err(part, e))
        };
        let body_len = content_length(resp.headers());
        match status {
            StatusCode::OK => {
                if *offset > 0 {
                    // The server ignored the range (or If-Range said the object changed).
                    restart(file, offset, hasher)?;
                }
                *meta = PartMeta::from_headers(resp.headers(), body_len);
            }
            StatusCode::PARTIAL_CONTENT => match parse_content_range(resp.headers()) {
                Some((start, total)) if start == *offset => {
                    if meta.size.is_some_and(|s| total.is_some_and(|t| t != s)) {
                        restart(file, offset, hasher)?;
                        return Ok(Attempt::Retry {
                            reason: "the remote file changed size".into(),
                            progressed: false,
                            connect: None,
                        });
                    }
                    if meta.size.is_none() {
                        meta.size = total;
                    }
                }
                _ => {
                    restart(file, offset, hasher)?;
                    return Ok(Attempt::Retry {
                        reason: "the server answered a different range".into(),
                        progressed: false,
                        connect: None,
                    });
                }
            },
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let total = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.strip_prefix("bytes */"))
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if total == Some(*offset) {
                    return Ok(Attempt::Complete(*offset));
                }
                restart(file, offset, hasher)?;
                return Ok(Attempt::Retry {
                    reason: "the kept part does not fit the remote file".into(),
                    progressed: false,
                    connect: None,
                });
            }
            s => {
                return classify_status(s, resp, shown).map(|reason| Attempt::Retry {
                    reason,
                    progressed: false,
                    connect: None,
                })
            }
        }
        if meta.size.is_some() {
            meta.save(&req.dest)?;
        }
        let total = meta.size.or(req.expected_size);
        if let Some(t) = total {
            progress.set_len(t);
        }
        if req.reject_markup && is_markup_type(resp.headers()) {
            let ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            return Err(HttpError::ErrorBody {
                url: shown.to_string(),
                what: format!("the server sent a {ct} page instead of the file"),
            });
        }
        if *offset == 0 {
            if let (Some(want), Some(got)) = (req.expected_size, body_len) {
                if got < want / 2 {
                    return Err(HttpError::ErrorBody {
                        url: shown.to_string(),
                        what: format!("the server sent {got} bytes where {want} were expected"),
                    });
                }
            }
        }

        let mut reservation = match total {
            Some(t) if req.check_space => {
                let dir = part.parent().unwrap_or(Path::new("."));
                Some(Reservation::claim(dir, t.saturating_sub(*offset))?)
            }
            _ => None,
        };
        let mut resp = resp;
        let start = *offset;
        // Reads land directly in a hasher buffer; each piece is written to the part at once (so
        // a killed run keeps it) and the full buffer then moves to the hasher without a copy.
        let mut buf = hasher.buffer();
        let mut filled = 0;
        let stopped = loop {
            interrupted()?;
            if filled == buf.len() {
                hasher.submit(buf, filled);
                buf = hasher.buffer();
                filled = 0;
            }
            let n = match resp.read(&mut buf[filled..]) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) => break Some(io_reason(&e)),
            };
            let chunk = &buf[filled..filled + n];
            if *offset == 0 && req.reject_markup && looks_like_markup(chunk) {
                restart(file, offset, hasher)?;
                return Err(HttpError::ErrorBody {
                    url: shown.to_string(),
                    what: "the server sent an HTML/XML page instead of the file".into(),
                });
            }
            file.write_all(chunk).map_err(|e| io_err(part, e))?;
            if let Some(r) = reservation.as_mut() {
                r.wrote(n as u64);
            }
            filled += n;
            *offset += n as u64;
            *fetched += n as u64;
            progress.inc(n as u64);
        };
        hasher.submit(buf, filled);
        let progressed = *offset > start;
        match (stopped, total) {
            (Some(reason), _) => Ok(Attempt::Retry {
                reason,
                progressed,
                connect: None,
            }),
            (None, Some(t)) if *offset < t => Ok(Attempt::Retry {
                reason: format!("connection closed at byte {} of {t}", *offset),
                progressed,
                connect: None,
            }),
            (None, _) => Ok(Attempt::Complete(*offset)),
        }
    }
}

/// Wait before retry number `n`, saying why on the file's progress bar. A signal cuts the wait
/// short; the caller's next [`interrupted`] check then stops.
pub(crate) fn backoff_sleep(cfg: &HttpConfig, n: u32, progress: &FileProgress, reason: &str) {
    let wait = cfg.backoff(n);
    progress.note(&format!("retry in {:.1}s: {reason}", wait.as_secs_f64()));
    let _ = crate::signal::sleep(wait);
    progress.note("");
}

/// Sleep, or stop with [`HttpError::Cancelled`] when SIGINT/SIGTERM arrives.
pub(crate) fn interruptible_sleep(d: Duration) -> Result<(), HttpError> {
    crate::signal::sleep(d).map_err(|_| HttpError::Cancelled)
}

/// [`HttpError::Cancelled`] once SIGINT/SIGTERM arrived.
pub(crate) fn interrupted() -> Result<(), HttpError> {
    crate::signal::check().map_err(|_| HttpError::Cancelled)
}

/// A part that never received a byte is not worth keeping (nor its record).
fn remove_if_empty(dest: &Path) {
    let part = part_path(dest);
    if std::fs::metadata(&part).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(meta_path(dest));
    }
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
            crate::util::human_bytes(bytes),
            dir.display()
        )
    })
}

/// Turn a non-2xx status into an error, or a retry reason for transient ones.
pub(crate) fn classify_status(
    status: StatusCode,
    resp: reqwest::blocking::Response,
    shown: &str,
) -> Result<String, HttpError> {
    let code = status.as_u16();
    match code {
        401 | 403 => {
            let mut body = Vec::new();
            let _ = resp.take(4096).read_to_end(&mut body);
            Err(HttpError::Refused {
                status: code,
                url: shown.to_string(),
                detail: error_detail(&body),
            })
        }
        404 => Err(HttpError::NotFound {
            url: shown.to_string(),
        }),
        408 | 429 | 500..=599 => Ok(format!("HTTP {code}")),
        _ => Err(HttpError::Status {
            status: code,
            url: shown.to_string(),
        }),
    }
}

/// The `<Code>`/`<Message>` of an S3/CloudFront XML error body, as " (Code: Message)".
fn error_detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let s = text.find(&open)? + open.len();
        let e = text[s..].find(&close)? + s;
        Some(text[s..e].trim().to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!(" ({})", redact(&format!("{c}: {m}"))),
        (Some(c), None) => format!(" ({})", redact(&c)),
        _ => String::new(),
    }
}

/// An HTML or XML content type: an error page, never a weight file.
fn is_markup_type(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.contains("html") || ct.contains("xml")
        })
        .unwrap_or(false)
}

/// Drop a segmented part (it has holes) so a single stream can start it afresh.
fn abandon_segments(file: &mut File, part: &Path, dest: &Path) -> Result<PartMeta, HttpError> {
    file.set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .map_err(|e| io_err(part, e))?;
    let _ = std::fs::remove_file(meta_path(dest));
    Ok(PartMeta::default())
}

fn looks_like_markup(chunk: &[u8]) -> bool {
    let head = chunk
        .iter()
        .skip_while(|b| b.is_ascii_whitespace() || **b == 0xEF || **b == 0xBB || **b == 0xBF)
        .take(16)
        .copied()
        .collect::<Vec<u8>>()
        .to_ascii_lowercase();
    head.starts_with(b"<?xml")
        || head.starts_with(b"<!doctype")
        || head.starts_with(b"<html")
        || head.starts_with(b"<error")
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL if not `*`).
pub(crate) fn parse_content_range(h: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

pub(crate) fn describe(e: &reqwest::Error) -> String {
    // reqwest puts the full URL (with its signature) into Display; drop it and redact the rest.
    let mut msg = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let part = err.to_string();
        if !msg.contains(&part) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&part);
        }
        cur = err.source();
    }
    let stripped = match e.url() {
        Some(u) => msg.replace(u.as_str(), "<url>"),
        None => msg,
    };
    redact(&stripped)
}

pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let inner = e
        .get_ref()
        .and_then(|r| r.downcast_ref::<reqwest::Error>())
        .map(describe);
    let text = inner.unwrap_or_else(|| e.to_string());
    if e.kind() == std::io::ErrorKind::TimedOut || text.contains("timed out") {
        format!("stalled (no data for the read timeout): {}", redact(&text))
    } else {
        redact(&text)
    }
}

fn hash_prefix(file: &mut File, len: u64, hasher: &mut impl Update) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; BUF];
    let mut left = len;
    while left > 0 {
        let want = left.min(BUF as u64) as usize;
        file.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(())
}

trait Update {
    fn update(&mut self, data: &[u8]);
}

impl Update for Hasher {
    fn update(&mut self, data: &[u8]) {
        Hasher::update(self, data)
    }
}

impl Update for HashPipe {
    fn update(&mut self, data: &[u8]) {
        for piece in data.chunks(BUF) {
            let mut buf = self.buffer();
            buf[..piece.len()].copy_from_slice(piece);
            self.submit(buf, piece.len());
        }
    }
}

/// Two processes appending to one part would interleave garbage; the second one is refused.
/// The lock goes with the file handle (also when the process is killed).
fn lock_exclusive(file: &File, path: &Path) -> Result<(), HttpError> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            return Err(io_err(
                path,
                std::io::Error::other("another process is downloading this file"),
            ));
        }
    }
    Ok(())
}

/// Make a rename durable.
pub fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(parent) {
        let _ = d.sync_all();
    }
}

/// Hash a local file (e.g. to check a file left by an earlier run).
pub fn hash_file(path: &Path, kind: HashKind) -> std::io::Result<Option<String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = Hasher::new(kind);
    hash_prefix(&mut f, len, &mut h)?;
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let cfg = HttpConfig {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(1000),
            ..HttpConfig::default()
        };
        for n in 1..20 {
            let d = cfg.backoff(n);
            let nominal = (100u64 << (n - 1).min(16)).min(1000) as f64;
            let ms = d.as_secs_f64() * 1000.0;
            assert!(
                ms >= nominal * 0.5 - 1e-6 && ms < nominal * 1.5,
                "{n}: {ms}"
            );
        }
    }

    #[test]
    fn content_range_and_markup() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 100-199/200".parse().unwrap());
        assert_eq!(parse_content_range(&h), Some((100, Some(200))));
        h.insert(header::CONTENT_RANGE, "bytes 0-9/*".parse().unwrap());
        assert_eq!(parse_content_range(&h), Some((0, None)));
        assert!(looks_like_markup(b"\n <?xml version=\"1.0\"?><Error>"));
        assert!(looks_like_markup(b"<!DOCTYPE html><html>"));
        assert!(!looks_like_markup(b"PK\x03\x04"));
        assert!(!looks_like_markup(b"{\"dim\": 4096}"));
    }

    #[test]
    fn xml_detail_is_redacted() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Bad https://h/x?Signature=SEKRIT</Message></Error>";
        let d = error_detail(body);
        assert!(d.starts_with(" (AccessDenied: Bad"), "{d}");
        assert!(!d.contains("SEKRIT"));
    }
}
