//! Reading a server's answer: which statuses are worth another try, what an error body says, what
//! looks like an error page instead of a file, and failure texts with every URL redacted.
use super::error::HttpError;
use crate::net::signed_url::redact;
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
use std::io::Read;

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

/// The content type when it is HTML or XML: an error page, never a weight file.
pub(crate) fn markup_type(h: &HeaderMap) -> Option<&str> {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.contains("html") || ct.contains("xml")
        })
}

pub(crate) fn looks_like_markup(chunk: &[u8]) -> bool {
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

pub(crate) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A reqwest error as one line: its URL (with its signature) dropped, the rest redacted.
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

/// A failed body read as one line; a timeout is called a stall.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup() {
        assert!(looks_like_markup(b"\n <?xml version=\"1.0\"?><Error>"));
        assert!(looks_like_markup(b"<!DOCTYPE html><html>"));
        assert!(!looks_like_markup(b"PK\x03\x04"));
        assert!(!looks_like_markup(b"{\"dim\": 4096}"));
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "text/HTML; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(markup_type(&h), Some("text/HTML; charset=utf-8"));
        h.insert(
            header::CONTENT_TYPE,
            "application/octet-stream".parse().unwrap(),
        );
        assert_eq!(markup_type(&h), None);
    }

    #[test]
    fn xml_detail_is_redacted() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Bad https://h/x?Signature=SEKRIT</Message></Error>";
        let d = error_detail(body);
        assert!(d.starts_with(" (AccessDenied: Bad"), "{d}");
        assert!(!d.contains("SEKRIT"));
    }
}
