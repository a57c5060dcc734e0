//! Meta's emailed download link: a CloudFront signed URL with a `*` where the object path goes.
//!
//! `https://HOST/*?Policy=B64&Signature=...&Key-Pair-Id=...&Download-Request-ID=...`
//!
//! The Policy is CloudFront's URL-safe base64 (`-`→`+`, `_`→`=`, `~`→`/`) of a JSON document whose
//! `Statement[0].Condition.DateLessThan."AWS:EpochTime"` is the expiry. Policy, Signature and
//! Key-Pair-Id are credentials: [`redact`] removes them from any text before it is shown.
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Query parameters whose values are credentials and must never be printed: CloudFront's, and
/// S3 presigned URLs' (where Hub downloads are redirected).
const SECRET_PARAMS: [&str; 6] = [
    "Policy",
    "Signature",
    "Key-Pair-Id",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
];

/// A signed link with a `*` placeholder for the object path.
#[derive(Clone)]
pub(crate) struct SignedUrl {
    raw: String,
}

impl std::fmt::Debug for SignedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignedUrl({})", redact(&self.raw))
    }
}

impl SignedUrl {
    /// Check the shape of a link as pasted from the email (surrounding whitespace and quotes are
    /// forgiven, since the prompt invites copy-paste).
    pub(crate) fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim().trim_matches(|c| c == '"' || c == '\'').trim();
        if raw.is_empty() {
            bail!("the download URL is empty");
        }
        if !(raw.starts_with("https://") || raw.starts_with("http://")) {
            bail!(
                "{}: not an http(s) URL (paste the link from Meta's email)",
                redact(raw)
            );
        }
        if !raw.contains('*') {
            bail!(
                "{}: the URL has no '*' where the file path goes (paste the whole link from Meta's email)",
                redact(raw)
            );
        }
        Ok(Self {
            raw: raw.to_string(),
        })
    }

    /// The URL of one object: the first `*` replaced by `path` (as download.sh does).
    pub(crate) fn for_path(&self, path: &str) -> String {
        self.raw.replacen('*', path, 1)
    }

    /// The link as it may be shown: credentials replaced.
    pub(crate) fn display(&self) -> String {
        redact(&self.raw)
    }

    /// Expiry from the CloudFront Policy; `Ok(None)` when the link carries no Policy.
    pub(crate) fn expiry(&self) -> Result<Option<SystemTime>> {
        policy_expiry(&self.raw)
    }
}

/// The value of a query parameter, if present (no percent-decoding: CloudFront values are URL-safe).
fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// Decode a CloudFront policy parameter to its JSON text.
fn decode_policy(policy: &str) -> Result<String> {
    let std_b64: String = policy
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '=',
            '~' => '/',
            c => c,
        })
        .collect();
    let trimmed = std_b64.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .map_err(|e| anyhow!("the link's Policy is not CloudFront base64 ({e})"))?;
    String::from_utf8(bytes).map_err(|_| anyhow!("the link's Policy does not decode to text"))
}

/// Expiry of a signed URL from its Policy; `Ok(None)` when the URL has no Policy parameter.
pub(crate) fn policy_expiry(url: &str) -> Result<Option<SystemTime>> {
    let Some(policy) = query_param(url, "Policy") else {
        return Ok(None);
    };
    let json = decode_policy(policy)?;
    let doc: serde_json::Value =
        serde_json::from_str(&json).context("the link's Policy is not JSON")?;
    let epoch = doc
        .pointer("/Statement/0/Condition/DateLessThan/AWS:EpochTime")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| {
            anyhow!("the link's Policy has no Statement[0].Condition.DateLessThan.AWS:EpochTime")
        })?;
    Ok(Some(UNIX_EPOCH + Duration::from_secs(epoch)))
}

/// Replace the values of credential parameters (`Policy=`, `Signature=`, `Key-Pair-Id=`, any
/// case) and the userinfo of any URL (`http://user:PASS@host/` becomes `http://REDACTED@host/`)
/// wherever they occur in `text`, including inside error messages that embed a URL.
pub(crate) fn redact(text: &str) -> String {
    redact_params(&redact_userinfo(text))
}

/// `scheme://USERINFO@host...` → `scheme://REDACTED@host...`, for every URL in `text`.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends where the path, query or fragment starts, or where the URL ends.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || is_value_end_char(c))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("REDACTED");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn redact_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let mut i = 0;
    'scan: while i < bytes.len() {
        for name in SECRET_PARAMS {
            let key = format!("{}=", name.to_ascii_lowercase());
            // Only at a parameter boundary, so e.g. "XPolicy=" is left alone.
            let at_boundary = i == 0 || matches!(bytes[i - 1], b'?' | b'&' | b' ' | b'"' | b'\'');
            if at_boundary && lower[i..].starts_with(&key) {
                out.push_str(&text[i..i + key.len()]);
                out.push_str("REDACTED");
                i += key.len();
                while i < bytes.len() && !is_value_end(bytes[i]) {
                    i += 1;
                }
                continue 'scan;
            }
        }
        let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

fn is_value_end_char(c: char) -> bool {
    c.is_ascii() && is_value_end(c as u8)
}

fn is_value_end(b: u8) -> bool {
    matches!(
        b,
        b'&' | b'#' | b'"' | b'\'' | b' ' | b'\t' | b'\n' | b'\r' | b')' | b'>' | b'<' | b','
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_from_policy() {
        // CloudFront's URL-safe alphabet: `+` `=` `/` become `-` `_` `~`.
        let standard = base64::engine::general_purpose::STANDARD.encode(
            r#"{"Statement":[{"Resource":"https://x/*","Condition":{"DateLessThan":{"AWS:EpochTime":1717171717}}}]}"#,
        );
        let policy = standard
            .replace('+', "-")
            .replace('=', "_")
            .replace('/', "~");
        let url = format!("https://h.example/*?Policy={policy}&Signature=abc~_-&Key-Pair-Id=K123&Download-Request-ID=9");
        let u = SignedUrl::parse(&url).unwrap();
        assert_eq!(
            u.expiry().unwrap(),
            Some(UNIX_EPOCH + Duration::from_secs(1717171717))
        );
        assert_eq!(
            u.for_path("8b_pre_trained/params.json"),
            url.replacen('*', "8b_pre_trained/params.json", 1)
        );
        let shown = u.display();
        assert!(!shown.contains(&policy) && !shown.contains("abc~") && !shown.contains("K123"));
        assert!(shown.contains("Download-Request-ID=9"), "{shown}");
    }

    #[test]
    fn bad_links() {
        assert!(SignedUrl::parse("https://h/file?Policy=x").is_err());
        assert!(SignedUrl::parse("ftp://h/*").is_err());
        let no_policy = SignedUrl::parse("https://h/*?a=1").unwrap();
        assert_eq!(no_policy.expiry().unwrap(), None);
        let junk = SignedUrl::parse("https://h/*?Policy=%%%%").unwrap();
        assert!(junk.expiry().is_err());
    }

    #[test]
    fn redaction_in_free_text() {
        let msg = "error sending request for url (https://h/a?policy=SECRET1&Signature=SECRET2&Key-Pair-Id=SECRET3): reset";
        let r = redact(msg);
        for s in ["SECRET1", "SECRET2", "SECRET3"] {
            assert!(!r.contains(s), "{r}");
        }
        assert!(r.ends_with("): reset"), "{r}");
        assert_eq!(redact("XPolicy=keep"), "XPolicy=keep");
        let s3 =
            redact("https://b.s3/x?X-Amz-Credential=AKIA1&X-Amz-Signature=f00d&x-id=GetObject");
        assert!(!s3.contains("AKIA1") && !s3.contains("f00d") && s3.contains("x-id=GetObject"));
        assert_eq!(redact("héllo"), "héllo");
    }

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            redact("GET http://alice:s3cr3t@h.example:8080/a/*?x=1 failed"),
            "GET http://REDACTED@h.example:8080/a/*?x=1 failed"
        );
        assert_eq!(
            redact("(https://TOKEN@h/x) and https://h/y"),
            "(https://REDACTED@h/x) and https://h/y"
        );
        assert_eq!(redact("mail alice@h.example"), "mail alice@h.example");
        assert_eq!(redact("https://h/a@b"), "https://h/a@b");
    }
}
