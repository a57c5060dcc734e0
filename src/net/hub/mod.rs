//! The Hugging Face Hub: the few API calls `pull` needs, the cache layout shared with Python
//! `huggingface_hub`, and where a blob's bytes go. The bytes themselves move through the one
//! download engine ([`crate::net::download`]): resume, retries and the sha256 check are its job;
//! here the part is named as `huggingface_hub` names it and Hub errors are put in Hub words.
//!
//! Here: the environment (`HF_*`), the token, and the checks on repo ids, revisions, paths and
//! etags; [`cache`] is the cache layout below, [`api`] the HTTP calls and blob transfers.
//!
//! Cache layout (identical to `huggingface_hub`, so transformers finds what we fetched and we find
//! what it fetched):
//!
//! ```text
//! $HF_HUB_CACHE/models--{org}--{name}/
//!   blobs/{etag}                 file contents; etag = sha256 for LFS files, git blob id otherwise
//!   blobs/{etag}.incomplete      a partial download, resumed with a Range request
//!   refs/{branch-or-tag}         the commit hash it pointed at (no trailing newline)
//!   snapshots/{commit}/{path}    relative symlinks to ../../blobs/{etag}
//! $HF_HUB_CACHE/.locks/models--{org}--{name}/{etag}.lock   flock'ed while a blob is written
//! ```
mod api;
mod cache;

pub(crate) use api::{Fetched, HubClient, RepoFile};
pub(crate) use cache::{list_local_files, RepoCache};

use crate::net::signed_url::redact;
use anyhow::{anyhow, bail, Context, Result};
use reqwest::header::HeaderValue;
use reqwest::Url;
use std::fmt;
use std::path::PathBuf;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where the Hub and its cache are, from the same environment variables `huggingface_hub` reads.
#[derive(Debug, Clone)]
pub(crate) struct HubEnv {
    pub endpoint: String,
    /// `HF_HUB_CACHE` (default `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// `HF_TOKEN_PATH` (default `$HF_HOME/token`).
    pub token_path: PathBuf,
    /// `HF_HUB_OFFLINE=1`: no request at all, serve from the cache.
    pub offline: bool,
}

impl HubEnv {
    pub(crate) fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = || -> Result<PathBuf> {
            var("HOME").map(PathBuf::from).ok_or_else(|| {
                anyhow!("HOME is not set; set HF_HOME to say where the Hugging Face cache is")
            })
        };
        let hf_home = match var("HF_HOME") {
            Some(h) => expand_home(&h)?,
            None => match var("XDG_CACHE_HOME") {
                Some(x) => expand_home(&x)?.join("huggingface"),
                None => home()?.join(".cache").join("huggingface"),
            },
        };
        let cache_dir = match var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
            Some(c) => expand_home(&c)?,
            None => hf_home.join("hub"),
        };
        let token_path = match var("HF_TOKEN_PATH") {
            Some(t) => expand_home(&t)?,
            None => hf_home.join("token"),
        };
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        Url::parse(&endpoint)
            .with_context(|| format!("HF_ENDPOINT={}: not a URL", redact(&endpoint)))?;
        let offline = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
            .iter()
            .any(|k| var(k).is_some_and(|v| is_true(&v)));
        Ok(Self {
            endpoint,
            cache_dir,
            token_path,
            offline,
        })
    }
}

/// `huggingface_hub`'s reading of boolean environment variables.
fn is_true(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

fn expand_home(p: &str) -> Result<PathBuf> {
    match p.strip_prefix("~/") {
        Some(rest) => {
            let home = std::env::var("HOME")
                .map_err(|_| anyhow!("{p}: cannot expand ~ because HOME is not set"))?;
            Ok(PathBuf::from(home).join(rest))
        }
        None => Ok(PathBuf::from(p)),
    }
}

/// A Hugging Face token. It has no `Display`, and `Debug` hides it, so it cannot end up in a message.
#[derive(Clone)]
pub(crate) struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    fn header(&self) -> Result<HeaderValue> {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", self.0)).map_err(|_| {
            anyhow!("the Hugging Face token contains characters that cannot go in an HTTP header")
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// Where the token came from, for a message that names the source but never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSource {
    Flag,
    Env,
    File,
}

/// `--token`, then `HF_TOKEN` (or the legacy `HUGGING_FACE_HUB_TOKEN`), then the token file.
pub(crate) fn resolve_token(
    flag: Option<&str>,
    env: &HubEnv,
) -> Result<Option<(Token, TokenSource)>> {
    let clean = |s: &str| Some(s.trim().to_string()).filter(|t| !t.is_empty());
    if let Some(t) = flag.and_then(clean) {
        return Ok(Some((Token(t), TokenSource::Flag)));
    }
    for k in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
        if let Some(t) = std::env::var(k).ok().as_deref().and_then(clean) {
            return Ok(Some((Token(t), TokenSource::Env)));
        }
    }
    match std::fs::read_to_string(&env.token_path) {
        Ok(s) => Ok(clean(&s).map(|t| (Token(t), TokenSource::File))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e)
            .with_context(|| format!("{}: cannot read the token file", env.token_path.display())),
    }
}

/// `org/name` (or a bare `name`), as the Hub accepts them: letters, digits, `-`, `_`, `.`; no
/// `--` or `..` inside; not starting or ending with `-` or `.`; at most 96 characters each.
pub(crate) fn validate_repo_id(id: &str) -> Result<()> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !p.contains("--")
            && !p.contains("..")
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
    };
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 || !parts.iter().all(|p| ok_part(p)) {
        bail!("{id:?}: not a Hub repo id (expected ORG/NAME, e.g. meta-llama/Meta-Llama-3-8B)");
    }
    Ok(())
}

/// A full commit id, as `huggingface_hub` recognises one.
fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40
        && rev
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A `/`-separated relative path that stays inside the folder it is joined to: no empty, `.` or
/// `..` component, no leading `/`, no backslash or NUL.
fn is_safe_relative(path: &str) -> bool {
    !(path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.contains('\0')
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == ".."))
}

/// A revision is also a path under `refs/`, so it must stay inside it.
pub(crate) fn validate_revision(rev: &str) -> Result<()> {
    if !is_safe_relative(rev) {
        bail!("{rev:?}: not a valid revision (a branch, tag or commit)");
    }
    Ok(())
}

/// A file path from the Hub becomes a path on disk: refuse anything that could leave the folder.
fn validate_repo_path(path: &str) -> Result<()> {
    if !is_safe_relative(path) {
        bail!("{path:?}: the Hub listed a file name that is not a safe relative path");
    }
    Ok(())
}

/// An etag names a blob file: keep it a single plain path component.
fn validate_etag(etag: &str) -> Result<()> {
    if etag.is_empty()
        || etag.len() > 200
        || etag.starts_with('.')
        || !etag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("{etag:?}: the Hub sent an etag that cannot name a cache blob");
    }
    Ok(())
}

/// `ETag: W/"abc"` or `"abc"` -> `abc`.
fn normalize_etag(v: &str) -> String {
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Percent-encode like Python's `urllib.parse.quote` (`keep_slash` = its default `safe='/'`).
fn quote(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A URL for messages: the query (where signed CDN URLs keep their credentials) is cut off and
/// any userinfo redacted.
fn redact_url(url: &str) -> String {
    let url = redact(url);
    match url.find(['?', '#']) {
        Some(i) => format!("{}?…", &url[..i]),
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_forms() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert!(validate_etag("abc123").is_ok());
        assert!(validate_etag("../x").is_err());
        assert!(validate_etag("a/b").is_err());
    }

    #[test]
    fn quoting_matches_python() {
        assert_eq!(quote("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(quote("original/params.json", true), "original/params.json");
        assert_eq!(quote("a b+c", true), "a%20b%2Bc");
    }

    #[test]
    fn repo_ids_and_paths() {
        assert!(validate_repo_id("meta-llama/Meta-Llama-3-8B").is_ok());
        assert!(validate_repo_id("gpt2").is_ok());
        assert!(validate_repo_id("a/b/c").is_err());
        assert!(validate_repo_id("../x").is_err());
        assert!(validate_repo_id("meta-llama/Meta--Llama").is_err());
        assert!(validate_repo_id("meta-llama/x.").is_err());
        assert!(validate_repo_id("meta llama/x").is_err());
        assert!(validate_repo_id("meta-llama/Llama-3.2-1B").is_ok());
        assert!(validate_repo_path("original/params.json").is_ok());
        assert!(validate_repo_path("../etc/passwd").is_err());
        assert!(validate_repo_path("/abs").is_err());
        assert!(validate_revision("refs/pr/1").is_ok());
        assert!(validate_revision("../main").is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("https://cdn/x?X-Amz-Signature=s&Key-Pair-Id=k"),
            "https://cdn/x?…"
        );
        assert_eq!(
            format!("{:?}", Token("hf_secret".into())),
            "Token(<redacted>)"
        );
    }
}
