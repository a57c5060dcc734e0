//! Every HTTP `Range` request the engine makes is built here, and every answer to one is read
//! here: `bytes=FROM-` to resume a single stream, `bytes=START-END` for one segment, each with
//! `If-Range` when the part's record holds a validator (so a changed object comes back whole
//! instead of as a mismatched tail).
use reqwest::blocking::RequestBuilder;
use reqwest::header::{self, HeaderMap};

/// The bytes to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// From this offset to the end.
    From(u64),
    /// `[start, end)`; `end` is exclusive here, inclusive on the wire.
    Between(u64, u64),
}

/// A ranged request: the span, and the validator (ETag or Last-Modified) of the object the
/// bytes already on disk came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ranged<'a> {
    pub span: Span,
    pub validator: Option<&'a str>,
}

/// Add the `Range` (and `If-Range`) headers to a request.
pub(crate) fn add(rb: RequestBuilder, r: Ranged) -> RequestBuilder {
    let value = match r.span {
        Span::From(from) => format!("bytes={from}-"),
        Span::Between(start, end) => format!("bytes={start}-{}", end.saturating_sub(1)),
    };
    let rb = rb.header(header::RANGE, value);
    match r.validator {
        Some(v) => rb.header(header::IF_RANGE, v),
        None => rb,
    }
}

/// `Content-Range: bytes START-END/TOTAL` of a 206 → (START, TOTAL if not `*`).
pub(crate) fn content_range(h: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// `Content-Range: bytes */TOTAL` of a 416: the object's size.
pub(crate) fn unsatisfiable_total(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes */")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 100-199/200".parse().unwrap());
        assert_eq!(content_range(&h), Some((100, Some(200))));
        h.insert(header::CONTENT_RANGE, "bytes 0-9/*".parse().unwrap());
        assert_eq!(content_range(&h), Some((0, None)));
        h.insert(header::CONTENT_RANGE, "bytes */300".parse().unwrap());
        assert_eq!(unsatisfiable_total(&h), Some(300));
        assert_eq!(content_range(&h), None);
    }

    #[test]
    fn headers_on_the_wire() {
        let client = reqwest::blocking::Client::new();
        let req = |r| add(client.get("http://127.0.0.1/x"), r).build().unwrap();
        let whole = req(Ranged {
            span: Span::Between(10, 20),
            validator: Some("\"e1\""),
        });
        assert_eq!(whole.headers()[header::RANGE], "bytes=10-19");
        assert_eq!(whole.headers()[header::IF_RANGE], "\"e1\"");
        let tail = req(Ranged {
            span: Span::From(7),
            validator: None,
        });
        assert_eq!(tail.headers()[header::RANGE], "bytes=7-");
        assert!(tail.headers().get(header::IF_RANGE).is_none());
    }
}
