//! A small Hugging Face Hub on 127.0.0.1, for `pull`'s tests, its benchmark and the cache
//! compatibility script (through `examples/hub_server.rs`).
//!
//! Two listeners: the Hub itself and a "CDN" on another port (so another origin, as the real
//! Hub's LFS redirects are). It serves what `llamactl pull` and Python `huggingface_hub` call:
//! - `GET /api/models/{repo}/revision/{rev}[?blobs=true]`: `sha` and `siblings`
//! - `GET /api/models/{repo}/tree/{rev}?recursive=true`: the file list `snapshot_download` reads
//! - `HEAD|GET /{repo}/resolve/{rev}/{path}`: `X-Repo-Commit`, `ETag`; LFS files answer 302 to
//!   the CDN with `X-Linked-Etag` (the sha256) and `X-Linked-Size`
//! - gated repos answer 401/403 with `X-Error-Code: GatedRepo` unless the right token is sent
//! - the CDN refuses requests that carry an `Authorization` header (a token must never reach it)
//!   and can inject faults (status codes, cut connections, stalls) and throttle its bandwidth.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiny_http::{Header, Request, Response, Server, StatusCode};

/// The bytes of a file: in memory for tests, on disk for benchmarks.
#[derive(Clone)]
pub enum Data {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        }
    }

    fn sha256(&self) -> String {
        let mut h = Sha256::new();
        match self {
            Data::Bytes(b) => h.update(b.as_slice()),
            Data::File(p) => {
                let mut f = std::fs::File::open(p).expect("hub fixture file");
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).expect("hub fixture file");
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
        }
        hex(&h.finalize())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Clone)]
pub struct FileSpec {
    pub path: String,
    pub data: Data,
    pub lfs: bool,
    /// Listed with the true sha256 but served with one byte flipped.
    pub corrupt: bool,
}

impl FileSpec {
    pub fn small(path: &str, bytes: &[u8]) -> Self {
        Self {
            path: path.into(),
            data: Data::Bytes(Arc::new(bytes.to_vec())),
            lfs: false,
            corrupt: false,
        }
    }

    pub fn lfs(path: &str, bytes: Vec<u8>) -> Self {
        Self {
            path: path.into(),
            data: Data::Bytes(Arc::new(bytes)),
            lfs: true,
            corrupt: false,
        }
    }

    pub fn corrupted(mut self) -> Self {
        self.corrupt = true;
        self
    }
}

#[derive(Clone)]
pub struct CommitSpec {
    pub sha: String,
    pub files: Vec<FileSpec>,
}

#[derive(Clone)]
pub struct RepoSpec {
    pub id: String,
    pub commits: Vec<CommitSpec>,
    /// Branch or tag -> commit sha.
    pub refs: Vec<(String, String)>,
    /// Gated: only this token gets the files (the listing stays public, as on the Hub).
    pub gated_token: Option<String>,
}

/// Something to go wrong on the next CDN response, in order.
#[derive(Clone, Debug)]
pub enum Fault {
    Status(u16),
    /// Send this many body bytes, then drop the connection.
    CutAfter(u64),
    /// Send this many body bytes, then go silent for a while.
    StallAfter(u64, Duration),
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub server: &'static str,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: bool,
}

struct ServedFile {
    path: String,
    data: Data,
    len: u64,
    sha256: String,
    etag: String,
    lfs: bool,
    corrupt: bool,
}

struct Commit {
    sha: String,
    files: Vec<ServedFile>,
}

struct Repo {
    id: String,
    commits: Vec<Commit>,
    refs: Vec<(String, String)>,
    gated_token: Option<String>,
}

impl Repo {
    fn commit(&self, rev: &str) -> Option<&Commit> {
        let sha = self
            .refs
            .iter()
            .find(|(r, _)| r == rev)
            .map(|(_, c)| c.as_str())
            .unwrap_or(rev);
        self.commits.iter().find(|c| c.sha == sha)
    }
}

struct State {
    repos: Vec<Repo>,
    cdn: String,
    throttle_bps: AtomicU64,
    faults: Mutex<VecDeque<Fault>>,
    log: Mutex<Vec<Logged>>,
}

pub struct Hub {
    pub endpoint: String,
    pub cdn: String,
    state: Arc<State>,
    servers: Vec<Arc<Server>>,
}

impl Hub {
    pub fn start(repos: Vec<RepoSpec>) -> Hub {
        Self::start_on("127.0.0.1:0", "127.0.0.1:0", repos)
    }

    pub fn start_on(hub_addr: &str, cdn_addr: &str, repos: Vec<RepoSpec>) -> Hub {
        let hub = Arc::new(Server::http(hub_addr).expect("bind hub"));
        let cdn = Arc::new(Server::http(cdn_addr).expect("bind cdn"));
        let port = |s: &Server| s.server_addr().to_ip().expect("ip listener").port();
        let endpoint = format!("http://127.0.0.1:{}", port(&hub));
        let cdn_url = format!("http://127.0.0.1:{}", port(&cdn));
        let repos = repos
            .into_iter()
            .map(|r| Repo {
                id: r.id,
                refs: r.refs,
                gated_token: r.gated_token,
                commits: r
                    .commits
                    .into_iter()
                    .map(|c| Commit {
                        sha: c.sha,
                        files: c.files.into_iter().map(served).collect(),
                    })
                    .collect(),
            })
            .collect();
        let state = Arc::new(State {
            repos,
            cdn: cdn_url.clone(),
            throttle_bps: AtomicU64::new(0),
            faults: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
        });
        for (server, is_cdn) in [(hub.clone(), false), (cdn.clone(), true)] {
            let st = state.clone();
            std::thread::spawn(move || {
                for req in server.incoming_requests() {
                    let st = st.clone();
                    std::thread::spawn(move || {
                        if is_cdn {
                            serve_cdn(req, &st)
                        } else {
                            serve_hub(req, &st)
                        }
                    });
                }
            });
        }
        Hub {
            endpoint,
            cdn: cdn_url,
            state,
            servers: vec![hub, cdn],
        }
    }

    /// Bytes per second per CDN response; 0 = unlimited. Lifting it speeds up responses in flight.
    pub fn set_throttle(&self, bps: u64) {
        self.state.throttle_bps.store(bps, Ordering::SeqCst);
    }

    pub fn push_fault(&self, f: Fault) {
        self.state.faults.lock().unwrap().push_back(f);
    }

    pub fn faults_left(&self) -> usize {
        self.state.faults.lock().unwrap().len()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// The sha256 a file of a commit is listed with.
    pub fn sha256_of(&self, repo: &str, rev: &str, path: &str) -> String {
        let r = self
            .state
            .repos
            .iter()
            .find(|r| r.id == repo)
            .expect("repo");
        let c = r.commit(rev).expect("commit");
        c.files
            .iter()
            .find(|f| f.path == path)
            .expect("file")
            .sha256
            .clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for s in &self.servers {
            s.unblock();
        }
    }
}

fn served(f: FileSpec) -> ServedFile {
    let sha256 = f.data.sha256();
    let len = f.data.len();
    // Regular files carry a git blob id on the Hub; any stable 40-hex id does here.
    let etag = if f.lfs {
        sha256.clone()
    } else {
        sha256[..40].to_string()
    };
    ServedFile {
        path: f.path,
        data: f.data,
        len,
        sha256,
        etag,
        lfs: f.lfs,
        corrupt: f.corrupt,
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header")
}

fn request_header<'a>(req: &'a Request, name: &'static str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hexval = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn record(st: &State, server: &'static str, req: &Request, path: &str) {
    st.log.lock().unwrap().push(Logged {
        server,
        method: req.method().to_string(),
        path: path.to_string(),
        range: request_header(req, "Range").map(str::to_string),
        auth: request_header(req, "Authorization").is_some(),
    });
}

fn error(req: Request, status: u16, code: Option<&str>, msg: &str, extra: Vec<Header>) {
    let mut r = Response::from_string(msg).with_status_code(StatusCode(status));
    if let Some(code) = code {
        r = r.with_header(header("X-Error-Code", code));
    }
    r = r.with_header(header("X-Error-Message", msg));
    for h in extra {
        r = r.with_header(h);
    }
    let _ = req.respond(r);
}

fn json(req: Request, body: String) {
    let r = Response::from_string(body).with_header(header("Content-Type", "application/json"));
    let _ = req.respond(r);
}

/// Split `org/name/rest...` into a known repo and the rest.
fn find_repo<'a>(st: &'a State, rest: &'a str) -> Option<(&'a Repo, &'a str)> {
    st.repos.iter().find_map(|r| {
        rest.strip_prefix(r.id.as_str())
            .and_then(|t| t.strip_prefix('/'))
            .map(|t| (r, t))
    })
}

fn lfs_json(f: &ServedFile, sha_key: &str) -> String {
    if f.lfs {
        format!(
            ",\"lfs\":{{\"{sha_key}\":\"{}\",\"size\":{},\"pointerSize\":134}}",
            f.sha256, f.len
        )
    } else {
        String::new()
    }
}

/// The git blob id of a file (for LFS files, that of its pointer file; any stable id here).
fn blob_id(f: &ServedFile) -> &str {
    if f.lfs {
        &f.sha256[24..]
    } else {
        &f.etag
    }
}

fn serve_hub(req: Request, st: &Arc<State>) {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    record(st, "hub", &req, path);
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, tail)) = find_repo(st, rest) else {
            return error(
                req,
                404,
                Some("RepoNotFound"),
                "Repository not found",
                vec![],
            );
        };
        let (kind, rev) = tail.split_once('/').unwrap_or((tail, ""));
        // The tree endpoint may carry a sub-path after the revision; everything is listed.
        let rev = percent_decode(rev.split('/').next().unwrap_or(""));
        let Some(commit) = repo.commit(&rev) else {
            return error(req, 404, Some("RevisionNotFound"), "Invalid rev id", vec![]);
        };
        let blobs = query
            .split('&')
            .any(|kv| kv.eq_ignore_ascii_case("blobs=true"));
        match kind {
            "revision" => {
                let siblings: Vec<String> = commit
                    .files
                    .iter()
                    .map(|f| {
                        if blobs {
                            format!(
                                "{{\"rfilename\":{:?},\"size\":{},\"blobId\":\"{}\"{}}}",
                                f.path,
                                f.len,
                                blob_id(f),
                                lfs_json(f, "sha256")
                            )
                        } else {
                            format!("{{\"rfilename\":{:?}}}", f.path)
                        }
                    })
                    .collect();
                let gated = if repo.gated_token.is_some() {
                    "\"manual\""
                } else {
                    "false"
                };
                json(
                    req,
                    format!(
                        "{{\"id\":{:?},\"sha\":\"{}\",\"private\":false,\"gated\":{gated},\"siblings\":[{}]}}",
                        repo.id,
                        commit.sha,
                        siblings.join(",")
                    ),
                )
            }
            "tree" => {
                let entries: Vec<String> = commit
                    .files
                    .iter()
                    .map(|f| {
                        format!(
                            "{{\"type\":\"file\",\"oid\":\"{}\",\"size\":{},\"path\":{:?}{}}}",
                            blob_id(f),
                            f.len,
                            f.path,
                            lfs_json(f, "oid")
                        )
                    })
                    .collect();
                json(req, format!("[{}]", entries.join(",")))
            }
            _ => error(req, 404, None, "Not found", vec![]),
        }
    } else if let Some((repo, tail)) = find_repo(st, path.trim_start_matches('/')) {
        let Some(tail) = tail.strip_prefix("resolve/") else {
            return error(req, 404, None, "Not found", vec![]);
        };
        let (rev, file) = tail.split_once('/').unwrap_or((tail, ""));
        let (rev, file) = (percent_decode(rev), percent_decode(file));
        if let Some(token) = &repo.gated_token {
            let want = format!("Bearer {token}");
            let msg = format!(
                "Access to model {} is restricted. You must have access to it and be authenticated to access it. Please log in.",
                repo.id
            );
            match request_header(&req, "Authorization") {
                None => return error(req, 401, Some("GatedRepo"), &msg, vec![]),
                Some(got) if got != want => {
                    return error(req, 403, Some("GatedRepo"), &msg, vec![])
                }
                Some(_) => {}
            }
        }
        let Some(commit) = repo.commit(&rev) else {
            return error(req, 404, Some("RevisionNotFound"), "Invalid rev id", vec![]);
        };
        let commit_h = header("X-Repo-Commit", &commit.sha);
        let Some(f) = commit.files.iter().find(|f| f.path == file) else {
            return error(
                req,
                404,
                Some("EntryNotFound"),
                "Entry not found",
                vec![commit_h],
            );
        };
        if f.lfs {
            let location = format!(
                "{}/blobs/{}?X-Amz-Signature=test-signature-0123&Expires=9999999999",
                st.cdn, f.sha256
            );
            let r = Response::empty(StatusCode(302))
                .with_header(commit_h)
                .with_header(header("ETag", &format!("\"{}\"", blob_id(f))))
                .with_header(header("X-Linked-Etag", &format!("\"{}\"", f.sha256)))
                .with_header(header("X-Linked-Size", &f.len.to_string()))
                .with_header(header("Location", &location));
            let _ = req.respond(r);
        } else {
            let etag = header("ETag", &format!("\"{}\"", f.etag));
            send_body(req, st, f, vec![commit_h, etag], None);
        }
    } else {
        error(req, 404, None, "Not found", vec![])
    }
}

fn serve_cdn(req: Request, st: &Arc<State>) {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    record(st, "cdn", &req, path);
    if request_header(&req, "Authorization").is_some() {
        return error(
            req,
            400,
            None,
            "a Hub token was forwarded to the CDN",
            vec![],
        );
    }
    if !query.contains("X-Amz-Signature=test-signature-0123") {
        return error(req, 403, None, "missing signature", vec![]);
    }
    let Some(sha) = path.strip_prefix("/blobs/") else {
        return error(req, 404, None, "Not found", vec![]);
    };
    let found = st
        .repos
        .iter()
        .flat_map(|r| r.commits.iter())
        .flat_map(|c| c.files.iter())
        .find(|f| f.lfs && f.sha256 == sha);
    let Some(f) = found else {
        return error(req, 404, None, "Not found", vec![]);
    };
    let fault = st.faults.lock().unwrap().pop_front();
    if let Some(Fault::Status(code)) = fault {
        return error(req, code, None, "injected failure", vec![]);
    }
    send_body(req, st, f, vec![], fault);
}

/// A 200, or a 206 for a Range request, with the file's bytes, throttled and faulted as set.
fn send_body(
    req: Request,
    st: &Arc<State>,
    f: &ServedFile,
    mut headers: Vec<Header>,
    fault: Option<Fault>,
) {
    let mut start = 0u64;
    let mut end = f.len; // exclusive
    let mut status = 200;
    if let Some(range) = request_header(&req, "Range").and_then(|r| r.strip_prefix("bytes=")) {
        let (a, b) = range.split_once('-').unwrap_or((range, ""));
        let a: u64 = a.trim().parse().unwrap_or(0);
        if a >= f.len {
            headers.push(header("Content-Range", &format!("bytes */{}", f.len)));
            return error(req, 416, None, "range not satisfiable", headers);
        }
        start = a;
        if let Ok(b) = b.trim().parse::<u64>() {
            end = (b + 1).min(f.len);
        }
        status = 206;
        headers.push(header(
            "Content-Range",
            &format!("bytes {}-{}/{}", start, end - 1, f.len),
        ));
    }
    headers.push(header("Accept-Ranges", "bytes"));
    let body = Body {
        data: f.data.clone(),
        file: None,
        pos: start,
        end,
        corrupt_at: f.corrupt.then_some(f.len / 2),
        sent: 0,
        fault,
        throttled: st.throttle_bps.load(Ordering::SeqCst) > 0,
        started: Instant::now(),
        state: st.clone(),
    };
    let r = Response::new(
        StatusCode(status),
        headers,
        body,
        Some((end - start) as usize),
        None,
    )
    .with_chunked_threshold(usize::MAX);
    let _ = req.respond(r);
}

struct Body {
    data: Data,
    file: Option<std::fs::File>,
    pos: u64,
    end: u64,
    corrupt_at: Option<u64>,
    sent: u64,
    fault: Option<Fault>,
    throttled: bool,
    started: Instant,
    /// Read on every chunk, so a test can lift the throttle while a response is in flight.
    state: Arc<State>,
}

impl Read for Body {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.end {
            return Ok(0);
        }
        match self.fault.clone() {
            Some(Fault::CutAfter(n)) if self.sent >= n => {
                return Err(std::io::Error::other("injected cut"));
            }
            Some(Fault::StallAfter(n, d)) if self.sent >= n => {
                std::thread::sleep(d);
                self.fault = None;
            }
            _ => {}
        }
        let mut want = out.len().min((self.end - self.pos) as usize);
        if let Some(Fault::CutAfter(n)) | Some(Fault::StallAfter(n, _)) = &self.fault {
            want = want.min((n - self.sent).max(1) as usize);
        }
        if self.throttled {
            want = want.min(16 * 1024);
        }
        let n = match &self.data {
            Data::Bytes(b) => {
                out[..want].copy_from_slice(&b[self.pos as usize..self.pos as usize + want]);
                want
            }
            Data::File(p) => {
                if self.file.is_none() {
                    let mut f = std::fs::File::open(p)?;
                    f.seek(SeekFrom::Start(self.pos))?;
                    self.file = Some(f);
                }
                match self.file.as_mut() {
                    Some(f) => f.read(&mut out[..want])?,
                    None => 0,
                }
            }
        };
        if let Some(at) = self.corrupt_at {
            if at >= self.pos && at < self.pos + n as u64 {
                out[(at - self.pos) as usize] ^= 0xff;
            }
        }
        self.pos += n as u64;
        self.sent += n as u64;
        if self.throttled {
            let bps = self.state.throttle_bps.load(Ordering::SeqCst);
            if bps > 0 {
                let due = Duration::from_secs_f64(self.sent as f64 / bps as f64);
                if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                    std::thread::sleep(wait);
                }
            } else {
                self.throttled = false;
            }
        }
        Ok(n)
    }
}
