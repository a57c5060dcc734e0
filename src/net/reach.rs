//! Failures before the first byte: a host that does not resolve, refuses the connection, fails
//! the TLS handshake or never answers. Until a host has answered once in this run, such a failure
//! is most likely permanent (offline, a typo, a firewall), so it gets [`FirstContact::TRIES`] quick
//! tries (fewer when `LLAMACTL_NET_RETRIES` allows fewer tries in all) within
//! [`FirstContact::BUDGET`] and then one line naming the host, the cause and the tries (exit 4).
//! Once bytes have flowed from a host, the engine's patient retry and resume apply instead.
use crate::net::signed_url::redact;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Dns,
    Refused,
    Tls,
    Timeout,
    Other,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::Dns => "DNS lookup failed",
            Cause::Refused => "connection refused",
            Cause::Tls => "TLS handshake failed",
            Cause::Timeout => "timed out",
            Cause::Other => "cannot connect",
        })
    }
}

/// A request that got no answer at all from `host`.
#[derive(Debug, Clone)]
pub(crate) struct ConnectFailure {
    /// `host` or `host:port`; never carries a path or query.
    host: String,
    cause: Cause,
    /// The lower layers' words, URL removed and secrets redacted.
    detail: String,
    /// `host:port` with the scheme's default port, the key of [`mark_reached`].
    origin: String,
}

/// The request failed before any answer: which host and why. `None` for failures after the
/// response began (those are not first-contact failures).
pub(crate) fn connect_failure(e: &reqwest::Error, detail: &str) -> Option<ConnectFailure> {
    let url = e.url()?;
    let no_answer = e.is_connect() || (e.is_timeout() && !e.is_body() && !e.is_decode());
    if !no_answer {
        return None;
    }
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return None,
    };
    // The innermost error says it best ("Connection refused (os error 111)", "failed to lookup
    // address information: ..."); the layers above only repeat the URL and "error sending".
    let mut innermost = None;
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        innermost = Some(err.to_string());
        cur = err.source();
    }
    let shown = innermost
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| detail.to_string());
    Some(ConnectFailure {
        host,
        cause: cause_of(e, detail),
        detail: redact(&shown),
        origin: host_key(url.as_str())?,
    })
}

fn cause_of(e: &reqwest::Error, detail: &str) -> Cause {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Cause::Refused;
            }
        }
        cur = err.source();
    }
    let d = detail.to_ascii_lowercase();
    if d.contains("dns error") || d.contains("lookup address") || d.contains("name or service") {
        Cause::Dns
    } else if d.contains("refused") {
        Cause::Refused
    } else if d.contains("certificate") || d.contains("tls") || d.contains("handshake") {
        Cause::Tls
    } else if e.is_timeout() || d.contains("timed out") {
        Cause::Timeout
    } else {
        Cause::Other
    }
}

static REACHED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn host_key(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    Some(format!(
        "{}:{}",
        u.host_str()?,
        u.port_or_known_default().unwrap_or(0)
    ))
}

/// Record that `url`'s host answered (any HTTP status): from now on its failures are patient.
pub(crate) fn mark_reached(url: &str) {
    if let Some(k) = host_key(url) {
        let mut set = REACHED.lock().unwrap_or_else(|e| e.into_inner());
        set.get_or_insert_with(HashSet::new).insert(k);
    }
}

fn origin_reached(origin: &str) -> bool {
    let set = REACHED.lock().unwrap_or_else(|e| e.into_inner());
    set.as_ref().is_some_and(|s| s.contains(origin))
}

/// Gave up on a host that never answered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot reach {}: {} ({}); gave up after {} in {:.1}s", .failure.host, .failure.cause, .failure.detail, tries_phrase(*.tries), .elapsed.as_secs_f64())]
pub struct Unreachable {
    failure: ConnectFailure,
    tries: u32,
    elapsed: Duration,
}

fn tries_phrase(n: u32) -> String {
    match n {
        1 => "1 try".to_string(),
        n => format!("{n} tries"),
    }
}

/// The quick retry policy for a host that has not answered yet.
#[derive(Debug)]
pub(crate) struct FirstContact {
    tries: u32,
    limit: u32,
    started: Instant,
}

impl Default for FirstContact {
    fn default() -> Self {
        Self::new()
    }
}

impl FirstContact {
    /// Tries in all before giving up.
    const TRIES: u32 = 3;
    /// Giving up must happen within this long of the first try.
    const BUDGET: Duration = Duration::from_secs(15);

    fn new() -> Self {
        Self::at_most(Self::TRIES)
    }

    /// At most `tries` tries (at least one; never more than [`Self::TRIES`]).
    pub(crate) fn at_most(tries: u32) -> Self {
        Self {
            tries: 0,
            limit: tries.clamp(1, Self::TRIES),
            started: Instant::now(),
        }
    }

    /// Count one failed try. `Err` when it is time to give up, else how long to wait first;
    /// `None` when the host answered earlier in this run (the caller's patient policy applies).
    /// A try that could take `connect_timeout` is not started when it would end past the budget.
    pub(crate) fn failed(
        &mut self,
        f: &ConnectFailure,
        connect_timeout: Duration,
    ) -> Result<Option<Duration>, Unreachable> {
        if origin_reached(&f.origin) {
            return Ok(None);
        }
        self.tries += 1;
        let wait = Duration::from_millis(250 << (self.tries - 1).min(4));
        let elapsed = self.started.elapsed();
        if self.tries >= self.limit || elapsed + wait + connect_timeout > Self::BUDGET {
            return Err(Unreachable {
                failure: f.clone(),
                tries: self.tries,
                elapsed,
            });
        }
        Ok(Some(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_after_three_quick_tries() {
        let f = ConnectFailure {
            host: "nonexistent.invalid".into(),
            cause: Cause::Dns,
            detail: "dns error".into(),
            origin: "nonexistent.invalid:443".into(),
        };
        let mut fc = FirstContact::new();
        assert!(fc.failed(&f, Duration::from_secs(1)).unwrap().is_some());
        assert!(fc.failed(&f, Duration::from_secs(1)).unwrap().is_some());
        let e = fc.failed(&f, Duration::from_secs(1)).unwrap_err();
        let line = e.to_string();
        assert!(line.starts_with("cannot reach nonexistent.invalid: DNS lookup failed (dns error); gave up after 3 tries"), "{line}");
        // A slow connect timeout leaves no room for another try.
        let mut fc = FirstContact::new();
        assert!(fc.failed(&f, Duration::from_secs(20)).is_err());
        // Once the host answered, the patient policy takes over.
        mark_reached("https://nonexistent.invalid/x");
        assert!(fc.failed(&f, Duration::from_secs(1)).unwrap().is_none());
    }

    /// Whether `url`'s host has answered in this run.
    fn reached(url: &str) -> bool {
        host_key(url).is_some_and(|k| origin_reached(&k))
    }

    #[test]
    fn reached_hosts_by_origin() {
        assert!(!reached("http://127.0.0.1:1/x"));
        mark_reached("http://127.0.0.1:1/a?Signature=s");
        assert!(reached("http://127.0.0.1:1/b"));
        assert!(!reached("http://127.0.0.1:2/b"));
    }
}
