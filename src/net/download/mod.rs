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
use crate::net::config::NetConfig;
use crate::net::progress::FileProgress;
use crate::net::reach::{self, ConnectFailure, FirstContact, Unreachable};
use crate::net::signed_url::redact;

mod segmented;
mod single;
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
pub use segmented::Segment;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// each segment gets at least [`NetConfig::segment_min`] bytes and the server answers ranges.
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

fn io_err(path: &Path, source: std::io::Error) -> HttpError {
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
struct PartMeta {
    etag: Option<String>,
    last_modified: Option<String>,
    size: Option<u64>,
    /// Present when the part is being filled over several connections (it then has holes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    segments: Option<Vec<segmented::Segment>>,
}

impl PartMeta {
    fn load(dest: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(meta_path(dest)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Written beside and renamed over, so a kill never leaves a torn record.
    fn save(&self, dest: &Path) -> Result<(), HttpError> {
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

    fn if_range(&self) -> Option<&str> {
        self.etag.as_deref().or(self.last_modified.as_deref())
    }
}

enum Hasher {
    None,
    Md5(crate::formats::md5::Md5),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(kind: HashKind) -> Self {
        match kind {
            HashKind::None => Hasher::None,
            HashKind::Md5 => Hasher::Md5(crate::formats::md5::Md5::new()),
            HashKind::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => sha2::Digest::update(h, data),
        }
    }
    fn finish(self) -> Option<String> {
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
struct SendFailed {
    reason: String,
    /// Set when no connection was made at all (see [`reach`]).
    connect: Option<ConnectFailure>,
}

const BUF: usize = 1 << 20;

/// Bytes that running downloads in this process have announced but not yet written.
static RESERVED: AtomicU64 = AtomicU64::new(0);

/// A claim on [`RESERVED`], released as bytes land and when dropped.
struct Reservation(u64);

impl Reservation {
    fn claim(dir: &Path, need: u64) -> Result<Self, HttpError> {
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
    cfg: NetConfig,
}

impl Http {
    pub fn new(cfg: NetConfig) -> anyhow::Result<Self> {
        let client = reqwest::blocking::Client::builder()
            .user_agent(concat!("llamactl/", env!("CARGO_PKG_VERSION")))
            // In the blocking client this bounds every wait (headers, each read): a stall detector.
            .timeout(cfg.read_timeout)
            .connect_timeout(cfg.connect_timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {}", e.without_url()))?;
        Ok(Self { client, cfg })
    }

    pub fn config(&self) -> &NetConfig {
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

    fn send(
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
    fn first_contact(
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
}

/// Wait before retry number `n`, saying why on the file's progress bar. A signal cuts the wait
/// short; the caller's next [`interrupted`] check then stops.
fn backoff_sleep(cfg: &NetConfig, n: u32, progress: &FileProgress, reason: &str) {
    let wait = cfg.backoff(n);
    progress.note(&format!("retry in {:.1}s: {reason}", wait.as_secs_f64()));
    let _ = crate::signal::sleep(wait);
    progress.note("");
}

/// Sleep, or stop with [`HttpError::Cancelled`] when SIGINT/SIGTERM arrives.
fn interruptible_sleep(d: Duration) -> Result<(), HttpError> {
    crate::signal::sleep(d).map_err(|_| HttpError::Cancelled)
}

/// [`HttpError::Cancelled`] once SIGINT/SIGTERM arrived.
fn interrupted() -> Result<(), HttpError> {
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
fn classify_status(
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
fn parse_content_range(h: &HeaderMap) -> Option<(u64, Option<u64>)> {
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

fn io_reason(e: &std::io::Error) -> String {
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
