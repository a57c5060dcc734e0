//! What a caller asks the engine for, and what it gets back.
use super::hash::HashKind;
use std::path::PathBuf;

/// One file to fetch.
#[derive(Clone)]
pub struct FileRequest {
    /// The full URL (may carry credentials; it is never printed unredacted).
    pub url: String,
    /// Final path: the part is renamed to it once complete and verified.
    pub dest: PathBuf,
    /// Where the bytes collect until then (default `DEST.part`), with its record beside it
    /// (`PART.meta`). A cache with its own naming (the Hub's `blobs/ETAG.incomplete`) sets it.
    pub part: PathBuf,
    /// Size the file must have, when known beforehand (a body far smaller is an error page).
    pub expected_size: Option<u64>,
    pub hash: HashKind,
    /// Lower-case hex digest the file must have; on mismatch the part is deleted and fetched once
    /// more from scratch before [`HttpError::Mismatch`](super::error::HttpError::Mismatch).
    pub expected_digest: Option<String>,
    /// Extra request headers (e.g. `Authorization`), never printed.
    pub headers: Vec<(String, String)>,
    /// Refuse bodies that look like an HTML/XML page (for files that can never be markup).
    pub reject_markup: bool,
    /// Before the first byte of a body, check that the disk holds the rest of this file plus what
    /// other downloads in this process still have to write.
    pub check_space: bool,
    /// Ranged connections for one large file (1: a single stream). A file is split only when
    /// each segment gets at least [`NetConfig::segment_min`](crate::net::config::NetConfig)
    /// bytes and the server answers ranges.
    pub connections: usize,
}

impl FileRequest {
    pub fn new(url: impl Into<String>, dest: impl Into<PathBuf>) -> Self {
        let dest = dest.into();
        Self {
            url: url.into(),
            part: super::part::part_path(&dest),
            dest,
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

/// The URL redacted and the headers named only: a request may carry credentials.
impl std::fmt::Debug for FileRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("FileRequest")
            .field("url", &crate::net::signed_url::redact(&self.url))
            .field("dest", &self.dest)
            .field("part", &self.part)
            .field("expected_size", &self.expected_size)
            .field("hash", &self.hash)
            .field("expected_digest", &self.expected_digest)
            .field("headers", &headers)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
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

/// A part brought to completion (not yet verified against the expected digest, nor renamed).
pub(crate) struct PartDone {
    pub size: u64,
    pub digest: Option<String>,
    /// Bytes fetched over the network in this call.
    pub fetched: u64,
    /// Bytes kept from an earlier run.
    pub kept: u64,
}
