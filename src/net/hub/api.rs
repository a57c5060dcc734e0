//! The Hub's HTTP API: listing a revision, a file's metadata, and fetching blobs into the cache
//! through the download engine.
use super::cache::{lock_exclusive, RepoCache};
use super::{
    is_commit_hash, is_sha256_hex, normalize_etag, quote, redact_url, validate_etag,
    validate_repo_path, Token,
};
use crate::error::{check_failed, network, refused};
use crate::net::config::NetConfig;
use crate::net::download::{FileRequest, HashKind, Http, HttpError};
use crate::net::reach::{self, ConnectFailure};
use crate::net::retry::{Next, Tries};
use crate::net::signed_url::redact;
use crate::output::write_atomic;
use crate::progress::{Reporter, Task};
use anyhow::{anyhow, bail, Context, Result};
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, LOCATION};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub(crate) struct RepoFile {
    pub path: String,
    pub size: Option<u64>,
    blob_id: Option<String>,
    lfs_sha256: Option<String>,
}

impl RepoFile {
    /// The blob name the resolve endpoint will report, when the listing already tells it.
    fn expected_etag(&self) -> Option<&str> {
        self.lfs_sha256.as_deref().or(self.blob_id.as_deref())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RepoListing {
    pub commit: String,
    pub files: Vec<RepoFile>,
}

#[derive(Deserialize)]
struct ApiRepoInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<ApiSibling>,
}

#[derive(Deserialize)]
struct ApiSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<ApiLfs>,
}

#[derive(Deserialize)]
struct ApiLfs {
    sha256: Option<String>,
    size: Option<u64>,
}

/// What `HEAD .../resolve/{commit}/{path}` says about one file.
#[derive(Debug, Clone)]
struct FileMeta {
    etag: String,
    size: Option<u64>,
    /// For LFS files (`X-Linked-Etag`), checked while streaming.
    sha256: Option<String>,
    /// Where the bytes are: the resolve URL itself or the CDN URL it redirects to.
    url: String,
    /// False once the URL left the Hub's origin: the token must not travel to a CDN.
    send_auth: bool,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// Already in place; no request made.
    Present,
    /// The blob was in the cache (another revision had it); only linked.
    Linked,
    /// Bytes were transferred (`resumed_from` bytes were already on disk).
    Downloaded { bytes: u64, resumed_from: u64 },
}

/// One try's outcome that the retry loop acts on.
enum TryError {
    /// Worth another try after a pause (5xx, 429, reset, stall, short body).
    Transient(anyhow::Error),
    /// No answer at all: quick tries while the host never answered, else like `Transient`.
    NoAnswer(ConnectFailure, anyhow::Error),
    Fatal(anyhow::Error),
}

/// Send a request, recording that its host answered, or say why nothing came back.
fn send(rb: RequestBuilder, shown: &str) -> Result<Response, TryError> {
    match rb.send() {
        Ok(resp) => {
            reach::mark_reached(resp.url().as_str());
            Ok(resp)
        }
        Err(e) => {
            let detail = crate::net::download::describe(&e);
            let err = anyhow!("{shown}: {detail}");
            Err(match reach::connect_failure(&e, &detail) {
                Some(f) => TryError::NoAnswer(f, err),
                None => TryError::Transient(err),
            })
        }
    }
}

fn transient_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    header_str(h, name).and_then(|v| v.trim().parse().ok())
}

/// The origin (scheme, host, port) of a URL: the token is only sent within the Hub's own.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A client for one Hub endpoint.
pub(crate) struct HubClient {
    /// Follows no redirect: [`HubClient::file_meta`] follows them by hand, and a redirect to
    /// another origin (the CDN) must drop the token.
    http: Http,
    endpoint: String,
    auth: Option<HeaderValue>,
}

impl HubClient {
    pub(crate) fn new(endpoint: &str, token: Option<&Token>, net: NetConfig) -> Result<Self> {
        Ok(Self {
            http: Http::without_redirects(net)?,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            auth: token.map(Token::header).transpose()?,
        })
    }

    fn model_page(&self, repo_id: &str) -> String {
        redact(&format!("{}/{repo_id}", self.endpoint))
    }

    fn resolve_url(&self, repo_id: &str, revision: &str, path: &str) -> String {
        format!(
            "{}/{repo_id}/resolve/{}/{}",
            self.endpoint,
            quote(revision, false),
            quote(path, true)
        )
    }

    /// Retry `f` on transient failures with backoff; `what` names the thing in messages.
    fn with_retries<T>(
        &self,
        what: &str,
        progress: &dyn Reporter,
        mut f: impl FnMut() -> Result<T, TryError>,
    ) -> Result<T> {
        let mut tries = Tries::new(self.http.config());
        loop {
            crate::signal::check()?;
            let (e, connect) = match f() {
                Ok(v) => return Ok(v),
                Err(TryError::Fatal(e)) => return Err(e),
                Err(TryError::Transient(e)) => (e, None),
                Err(TryError::NoAnswer(c, e)) => (e, Some(c)),
            };
            let why = crate::error::one_line(&e);
            match tries
                .failed(connect.as_ref())
                .map_err(|u| network(u.to_string()))?
            {
                Next::Quick(pause) => crate::signal::sleep(pause)?,
                Next::GiveUp { attempts } => {
                    return Err(network(format!(
                        "{what}: giving up after {attempts} tries: {why}"
                    )));
                }
                Next::Backoff { pause, attempt } => {
                    progress.message(&format!(
                        "{what}: {why}; retry {attempt} of {} in {:.1}s",
                        tries.limit(),
                        pause.as_secs_f64()
                    ));
                    crate::signal::sleep(pause)?;
                }
            }
        }
    }

    fn refused_message(&self, repo_id: &str, status: StatusCode, h: &HeaderMap) -> anyhow::Error {
        let gated = header_str(h, "X-Error-Code") == Some("GatedRepo");
        let has_token = self.auth.is_some();
        let why = match (gated, has_token) {
            (true, false) => "is gated and no token was given",
            (true, true) => "is gated and this token has no access to it",
            (false, false) => "is private or gated and no token was given",
            (false, true) => "is private or gated and this token has no access to it",
        };
        refused(format!(
            "{repo_id}: HTTP {}: the repo {why}; accept the license on {} while logged in, then set a token \
             (--token, HF_TOKEN, or `huggingface-cli login`)",
            status.as_u16(),
            self.model_page(repo_id)
        ))
    }

    fn get(&self, url: &str, auth: bool) -> reqwest::blocking::RequestBuilder {
        let mut rb = self
            .http
            .client()
            .get(url)
            .header("Accept-Encoding", "identity");
        if auth {
            if let Some(a) = &self.auth {
                rb = rb.header(AUTHORIZATION, a.clone());
            }
        }
        rb
    }

    /// The commit a revision points at and the files it holds.
    pub(crate) fn listing(
        &self,
        repo_id: &str,
        revision: &str,
        progress: &dyn Reporter,
    ) -> Result<RepoListing> {
        let url = format!(
            "{}/api/models/{repo_id}/revision/{}?blobs=true",
            self.endpoint,
            quote(revision, false)
        );
        let shown = format!(
            "{}/api/models/{repo_id}/revision/{}",
            self.endpoint,
            quote(revision, false)
        );
        let what = format!("{repo_id}@{revision}: listing");
        let info: ApiRepoInfo = self.with_retries(&what, progress, || {
            let resp = send(self.get(&url, true), &shown)?;
            let status = resp.status();
            if status.is_success() {
                return resp.json().map_err(|e| {
                    TryError::Fatal(anyhow!(
                        "{}: not a Hub repo listing: {}",
                        redact_url(&url),
                        e.without_url()
                    ))
                });
            }
            Err(self.classify_api_error(repo_id, revision, &url, status, resp.headers()))
        })?;
        let commit = info.sha.filter(|s| is_commit_hash(s)).ok_or_else(|| {
            anyhow!(
                "{}: the listing has no commit hash (`sha`)",
                redact_url(&url)
            )
        })?;
        let mut files = Vec::with_capacity(info.siblings.len());
        for s in info.siblings {
            validate_repo_path(&s.rfilename)?;
            let lfs_sha256 = s
                .lfs
                .as_ref()
                .and_then(|l| l.sha256.clone())
                .filter(|h| is_sha256_hex(h))
                .map(|h| h.to_ascii_lowercase());
            files.push(RepoFile {
                path: s.rfilename,
                size: s.lfs.as_ref().and_then(|l| l.size).or(s.size),
                blob_id: s.blob_id.filter(|b| validate_etag(b).is_ok()),
                lfs_sha256,
            });
        }
        Ok(RepoListing { commit, files })
    }

    fn classify_api_error(
        &self,
        repo_id: &str,
        revision: &str,
        url: &str,
        status: StatusCode,
        h: &HeaderMap,
    ) -> TryError {
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return TryError::Fatal(self.refused_message(repo_id, status, h));
        }
        if transient_status(status) {
            return TryError::Transient(anyhow!("{}: HTTP {status}", redact_url(url)));
        }
        let code = header_str(h, "X-Error-Code").unwrap_or("");
        TryError::Fatal(match (status, code) {
            (_, "RevisionNotFound") => {
                anyhow!("{repo_id}: revision {revision:?} not found (a branch, tag or commit of the repo)")
            }
            (_, "EntryNotFound") => anyhow!("{}: no such file in {repo_id}", redact_url(url)),
            (StatusCode::NOT_FOUND, _) | (_, "RepoNotFound") => anyhow!(
                "{repo_id}: repository not found on {} (check the name)",
                redact(&self.endpoint)
            ),
            _ => anyhow!("{}: HTTP {status}", redact_url(url)),
        })
    }

    /// `HEAD` the resolve URL; redirects within the Hub are followed, one to another origin (the
    /// CDN) is not: its `Location` is where the bytes are, fetched without the token.
    fn file_meta(
        &self,
        repo_id: &str,
        commit: &str,
        path: &str,
        progress: &dyn Reporter,
    ) -> Result<FileMeta> {
        let start = self.resolve_url(repo_id, commit, path);
        self.with_retries(path, progress, || {
            self.file_meta_once(repo_id, commit, &start)
        })
    }

    fn file_meta_once(
        &self,
        repo_id: &str,
        commit: &str,
        start: &str,
    ) -> Result<FileMeta, TryError> {
        let fatal = |e: anyhow::Error| TryError::Fatal(e);
        let mut url = Url::parse(start).map_err(|e| fatal(anyhow!("{start}: {e}")))?;
        let origin = url.clone();
        for _ in 0..10 {
            let mut rb = self
                .http
                .client()
                .head(url.clone())
                .header("Accept-Encoding", "identity");
            if let Some(a) = &self.auth {
                rb = rb.header(AUTHORIZATION, a.clone());
            }
            let resp = send(rb, &redact_url(url.as_str()))?;
            let status = resp.status();
            let h = resp.headers();
            if status.is_redirection() {
                let loc = header_str(h, LOCATION.as_str()).ok_or_else(|| {
                    fatal(anyhow!(
                        "{}: HTTP {status} without a Location",
                        redact_url(url.as_str())
                    ))
                })?;
                let target = url.join(loc).map_err(|e| {
                    fatal(anyhow!("{}: bad redirect: {e}", redact_url(url.as_str())))
                })?;
                if same_origin(&origin, &target) {
                    url = target;
                    continue;
                }
                return self.meta_from(h, target.to_string(), false, true, url.as_str());
            }
            if status.is_success() {
                return self.meta_from(h, url.to_string(), true, false, url.as_str());
            }
            return Err(self.classify_api_error(repo_id, commit, url.as_str(), status, h));
        }
        Err(fatal(anyhow!("{}: too many redirects", redact_url(start))))
    }

    fn meta_from(
        &self,
        h: &HeaderMap,
        url: String,
        send_auth: bool,
        redirected: bool,
        asked: &str,
    ) -> Result<FileMeta, TryError> {
        let linked = header_str(h, "X-Linked-Etag").map(normalize_etag);
        let etag = linked
            .clone()
            .or_else(|| header_str(h, "ETag").map(normalize_etag))
            .ok_or_else(|| {
                TryError::Fatal(anyhow!(
                    "{}: no ETag in the answer; is HF_ENDPOINT a Hugging Face Hub?",
                    redact_url(asked)
                ))
            })?;
        validate_etag(&etag).map_err(TryError::Fatal)?;
        let size = header_u64(h, "X-Linked-Size").or_else(|| {
            if redirected {
                None
            } else {
                header_u64(h, CONTENT_LENGTH.as_str())
            }
        });
        Ok(FileMeta {
            sha256: linked
                .filter(|e| is_sha256_hex(e))
                .map(|e| e.to_ascii_lowercase()),
            etag,
            size,
            url,
            send_auth,
        })
    }

    /// Put one file of `commit` into the cache: link it if its blob is there, else download the blob.
    pub(crate) fn fetch_to_cache(
        &self,
        cache: &RepoCache,
        repo_id: &str,
        commit: &str,
        file: &RepoFile,
        progress: &dyn Reporter,
    ) -> Result<Fetched> {
        let task = progress.task(&file.path, file.size);
        let pointer = cache.pointer_path(commit, &file.path);
        if pointer.exists() {
            return Ok(in_place(task.as_ref(), file, Fetched::Present));
        }
        if let Some(etag) = file.expected_etag() {
            if cache.blob_path(etag).is_file() {
                cache.link(commit, &file.path, etag)?;
                return Ok(in_place(task.as_ref(), file, Fetched::Linked));
            }
        }
        let mut meta = self.file_meta(repo_id, commit, &file.path, progress)?;
        if meta.size.is_none() {
            meta.size = file.size;
        }
        let blob = cache.blob_path(&meta.etag);
        let mut outcome = Fetched::Linked;
        if !blob.is_file() {
            let _lock = lock_exclusive(&cache.lock_path(&meta.etag), &file.path, progress)?;
            if !blob.is_file() {
                let part = cache.incomplete_path(&meta.etag);
                let to = Blob {
                    repo_id,
                    commit,
                    path: &file.path,
                    dest: &blob,
                    part: &part,
                };
                outcome = self.download_with_refresh(&to, &mut meta, task.as_ref(), progress)?;
            }
        }
        cache.link(commit, &file.path, &meta.etag)?;
        Ok(match outcome {
            Fetched::Downloaded { .. } => {
                task.finish();
                outcome
            }
            _ => in_place(task.as_ref(), file, outcome),
        })
    }

    /// Put one file straight into `dir/{path}`, with the bookkeeping `huggingface_hub` keeps for
    /// local dirs (`.cache/huggingface/download/{path}.metadata`: commit, etag, timestamp).
    pub(crate) fn fetch_to_dir(
        &self,
        dir: &Path,
        repo_id: &str,
        commit: &str,
        file: &RepoFile,
        progress: &dyn Reporter,
    ) -> Result<Fetched> {
        let mut dest = dir.to_path_buf();
        dest.extend(file.path.split('/'));
        let mut book = dir.join(".cache").join("huggingface").join("download");
        book.extend(file.path.split('/'));
        let book_dir = book
            .parent()
            .ok_or_else(|| anyhow!("{}: no parent folder", book.display()))?
            .to_path_buf();
        let base = book
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let metadata_path = book_dir.join(format!("{base}.metadata"));
        let task = progress.task(&file.path, file.size);
        let recorded = read_local_metadata(&metadata_path, &dest);
        if let Some((c, e)) = &recorded {
            if c == commit || file.expected_etag() == Some(e.as_str()) {
                if c != commit {
                    write_local_metadata(dir, &metadata_path, commit, e)?;
                }
                return Ok(in_place(task.as_ref(), file, Fetched::Present));
            }
        }
        let mut meta = self.file_meta(repo_id, commit, &file.path, progress)?;
        if meta.size.is_none() {
            meta.size = file.size;
        }
        if recorded.as_ref().map(|(_, e)| e) == Some(&meta.etag) {
            write_local_metadata(dir, &metadata_path, commit, &meta.etag)?;
            return Ok(in_place(task.as_ref(), file, Fetched::Present));
        }
        let _lock = lock_exclusive(&book_dir.join(format!("{base}.lock")), &file.path, progress)?;
        let part = book_dir.join(format!("{base}.{}.incomplete", meta.etag));
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p)
                .with_context(|| format!("{}: cannot create", p.display()))?;
        }
        let to = Blob {
            repo_id,
            commit,
            path: &file.path,
            dest: &dest,
            part: &part,
        };
        let outcome = self.download_with_refresh(&to, &mut meta, task.as_ref(), progress)?;
        write_local_metadata(dir, &metadata_path, commit, &meta.etag)?;
        task.finish();
        Ok(outcome)
    }

    /// Download `meta.url` into `to.part`, then `to.dest`, reporting to `task`; when a CDN
    /// refuses its signed URL (expired while we waited), resolve the file again for a fresh one,
    /// a bounded number of times.
    fn download_with_refresh(
        &self,
        to: &Blob,
        meta: &mut FileMeta,
        task: &dyn Task,
        progress: &dyn Reporter,
    ) -> Result<Fetched> {
        let mut refreshes = 0;
        loop {
            let req = self.blob_request(to, meta);
            let e = match self.http.download_to_file(&req, task) {
                Ok(d) => {
                    return Ok(Fetched::Downloaded {
                        bytes: d.fetched,
                        resumed_from: d.resumed_from,
                    })
                }
                Err(e) => e,
            };
            // A 401/403 from a URL that carries no token is a signed CDN URL gone stale.
            let stale = matches!(e, HttpError::Refused { .. }) && !meta.send_auth;
            if !stale || refreshes == 3 {
                return Err(blob_error(to, meta.size, e, stale));
            }
            refreshes += 1;
            progress.message(&format!(
                "{}: download link refused; asking the Hub for a new one",
                to.path
            ));
            let fresh = self.file_meta(to.repo_id, to.commit, to.path, progress)?;
            if fresh.etag != meta.etag {
                bail!(
                    "{}: the Hub now reports a different file (etag changed) for commit {}",
                    to.path,
                    to.commit
                );
            }
            meta.url = fresh.url;
            meta.send_auth = fresh.send_auth;
        }
    }

    /// The engine's request for a blob: the part named as `huggingface_hub` names it, the sha256
    /// of an LFS file checked while streaming, the token only where `file_meta` allowed it.
    fn blob_request(&self, to: &Blob, meta: &FileMeta) -> FileRequest {
        let mut req = FileRequest::new(meta.url.clone(), to.dest);
        req.part = to.part.to_path_buf();
        req.expected_size = meta.size;
        if let Some(sha) = &meta.sha256 {
            req.hash = HashKind::Sha256;
            req.expected_digest = Some(sha.clone());
        }
        req.headers
            .push(("Accept-Encoding".into(), "identity".into()));
        let token = self.auth.as_ref().and_then(|a| a.to_str().ok());
        if let Some(t) = token.filter(|_| meta.send_auth) {
            req.headers.push((AUTHORIZATION.to_string(), t.to_string()));
        }
        req
    }
}

/// Where one blob goes.
struct Blob<'a> {
    repo_id: &'a str,
    commit: &'a str,
    /// The file's path in the repo, for messages.
    path: &'a str,
    /// The final file: `blobs/{etag}`, or the file in a local dir.
    dest: &'a Path,
    /// `blobs/{etag}.incomplete`, or `.cache/huggingface/download/{name}.{etag}.incomplete`.
    part: &'a Path,
}

/// A failed blob download in the words `pull` has always used, with its exit code: a refusal
/// (3), a network failure after retries (4, the part kept), a sha256 mismatch (1, nothing kept).
fn blob_error(to: &Blob, size: Option<u64>, e: HttpError, stale: bool) -> anyhow::Error {
    let path = to.path;
    match e {
        HttpError::Refused { .. } if stale => refused(format!(
            "{path}: the download URL keeps being refused: {e}"
        )),
        HttpError::Refused { .. } => refused(format!("{path}: {e}")),
        HttpError::Network { attempts, last, .. } => {
            let have = std::fs::metadata(to.part).map_or(0, |m| m.len());
            network(format!(
                "{path}: giving up after {attempts} tries ({have} of {} on disk in {}, resumable): {last}",
                size.map_or("?".to_string(), |s| s.to_string()),
                to.part.display(),
            ))
        }
        HttpError::Unreachable(u) => network(u.to_string()),
        HttpError::Mismatch {
            expected, actual, ..
        } => check_failed(format!(
            "{path}: sha256 mismatch after fetching it twice: expected {expected}, got {actual} ({} removed; nothing was stored)",
            to.part.display()
        )),
        e => anyhow!("{path}: {e}"),
    }
}

/// A file that needed no transfer (already there, or linked to a cached blob): its bytes count as
/// done.
fn in_place(task: &dyn Task, file: &RepoFile, outcome: Fetched) -> Fetched {
    task.set_position(file.size.unwrap_or(0));
    task.finish();
    outcome
}

fn read_local_metadata(metadata_path: &Path, dest: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(metadata_path).ok()?;
    let mut lines = text.lines();
    let commit = lines.next()?.trim().to_string();
    let etag = lines.next()?.trim().to_string();
    let ts: f64 = lines.next()?.trim().parse().ok()?;
    // Same rule as huggingface_hub: a file touched after its metadata was written is not trusted.
    let mtime = std::fs::metadata(dest).ok()?.modified().ok()?;
    let mtime = mtime.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    (mtime - 1.0 <= ts).then_some((commit, etag))
}

fn write_local_metadata(dir: &Path, metadata_path: &Path, commit: &str, etag: &str) -> Result<()> {
    let hf = dir.join(".cache").join("huggingface");
    let ignore = hf.join(".gitignore");
    if !ignore.exists() {
        std::fs::create_dir_all(&hf).with_context(|| format!("{}: cannot create", hf.display()))?;
        std::fs::write(&ignore, "*\n")
            .with_context(|| format!("{}: cannot write", ignore.display()))?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    write_atomic(
        metadata_path,
        format!("{commit}\n{etag}\n{now}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_includes_port() {
        let a = Url::parse("http://127.0.0.1:8000/x").unwrap();
        assert!(same_origin(
            &a,
            &Url::parse("http://127.0.0.1:8000/y").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("http://127.0.0.1:8001/y").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("https://127.0.0.1:8000/y").unwrap()
        ));
    }
}
