//! Why a transfer stopped: one typed error whose every text is one line with credentials redacted.
use crate::net::reach::Unreachable;
use std::path::Path;

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

/// Sleep, or stop with [`HttpError::Cancelled`] when SIGINT/SIGTERM arrives.
pub(crate) fn interruptible_sleep(d: std::time::Duration) -> Result<(), HttpError> {
    crate::signal::sleep(d).map_err(|_| HttpError::Cancelled)
}

/// [`HttpError::Cancelled`] once SIGINT/SIGTERM arrived.
pub(crate) fn interrupted() -> Result<(), HttpError> {
    crate::signal::check().map_err(|_| HttpError::Cancelled)
}
