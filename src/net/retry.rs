//! The one retry policy of every request that crosses the network (Meta's CDN, the Hub's API, the
//! CDNs it redirects to). A host that never answered in this run gets the quick first-contact
//! tries of [`reach`](crate::net::reach); any other failure waits [`NetConfig::backoff`] and counts
//! towards [`NetConfig::retries`], a count that starts over whenever a try delivered bytes at the
//! floor rate or above ([`Pace`]): a flaky link is not a dead one, but a server that sends a few
//! bytes and then stalls, on every request, is. Callers keep their own words for the wait and the
//! final error.
use crate::human::human_bytes;
use crate::net::config::NetConfig;
use crate::net::reach::{ConnectFailure, FirstContact, Unreachable};
use std::time::{Duration, Instant};

/// The failed tries of one request or transfer.
pub(crate) struct Tries<'a> {
    cfg: &'a NetConfig,
    failures: u32,
    first: FirstContact,
}

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// A quick try of a host that has not answered yet, after this pause; not counted.
    Quick(Duration),
    /// Patient try number `attempt` (of [`Tries::limit`]) after this pause.
    Backoff { pause: Duration, attempt: u32 },
    /// No tries left after `attempts` failures in a row.
    GiveUp { attempts: u32 },
}

impl<'a> Tries<'a> {
    pub(crate) fn new(cfg: &'a NetConfig) -> Self {
        Self {
            cfg,
            failures: 0,
            // A first try and `retries` more is the most any request gets.
            first: FirstContact::at_most(cfg.retries.saturating_add(1)),
        }
    }

    /// Bytes arrived since the last failure: the count starts over.
    pub(crate) fn progressed(&mut self) {
        self.failures = 0;
    }

    /// How many patient tries follow a failure before giving up.
    pub(crate) fn limit(&self) -> u32 {
        self.cfg.retries
    }

    /// Count a failed try; `connect` when it got no answer at all. `Err` when first contact gave
    /// up on the host.
    pub(crate) fn failed(&mut self, connect: Option<&ConnectFailure>) -> Result<Next, Unreachable> {
        if let Some(c) = connect {
            if let Some(pause) = self.first.failed(c, self.cfg.connect_timeout)? {
                return Ok(Next::Quick(pause));
            }
        }
        self.failures += 1;
        if self.failures > self.cfg.retries {
            return Ok(Next::GiveUp {
                attempts: self.failures,
            });
        }
        Ok(Next::Backoff {
            pause: self.cfg.backoff(self.failures),
            attempt: self.failures,
        })
    }
}

/// The bytes of one try against [`NetConfig::min_rate`]: whether they were progress, and when a
/// running transfer has been too slow for [`NetConfig::rate_window`].
pub(crate) struct Pace<'a> {
    cfg: &'a NetConfig,
    started: Instant,
    bytes: u64,
    window_started: Instant,
    window_bytes: u64,
    /// Set when [`Pace::add`] ended the try: its reason already names the rate.
    cut: bool,
}

impl<'a> Pace<'a> {
    /// A try starts (before its request, so a slow answer counts too).
    pub(crate) fn start(cfg: &'a NetConfig) -> Self {
        let now = Instant::now();
        Self {
            cfg,
            started: now,
            bytes: 0,
            window_started: now,
            window_bytes: 0,
            cut: false,
        }
    }

    /// Count `n` bytes received; `Some(reason)` when the window that just ended moved less than
    /// the floor rate: the caller ends the try, which then counts as failed.
    pub(crate) fn add(&mut self, n: u64) -> Option<String> {
        self.bytes += n;
        self.window_bytes += n;
        let span = self.window_started.elapsed();
        if self.cfg.min_rate == 0 || span < self.cfg.rate_window {
            return None;
        }
        if rate(self.window_bytes, span) < self.cfg.min_rate as f64 {
            self.cut = true;
            return Some(format!("too slow: {}", self.below(self.window_bytes, span)));
        }
        self.window_started = Instant::now();
        self.window_bytes = 0;
        None
    }

    /// Whether the try restarts the count of failures: it delivered bytes, at the floor rate or
    /// above over the whole try (its final stall included).
    pub(crate) fn progressed(&self) -> bool {
        self.bytes > 0
            && (self.cfg.min_rate == 0
                || rate(self.bytes, self.started.elapsed()) >= self.cfg.min_rate as f64)
    }

    /// The reason a try failed, with its rate when its bytes were too slow to count as progress.
    pub(crate) fn explain(&self, reason: String) -> String {
        if self.bytes == 0 || self.cut || self.progressed() {
            return reason;
        }
        format!(
            "{reason}; {}",
            self.below(self.bytes, self.started.elapsed())
        )
    }

    fn below(&self, bytes: u64, span: Duration) -> String {
        format!(
            "{} in {:.1} s ({}/s) is below the floor rate of {}/s (LLAMACTL_NET_MIN_RATE_BYTES)",
            human_bytes(bytes),
            span.as_secs_f64(),
            human_bytes(rate(bytes, span) as u64),
            human_bytes(self.cfg.min_rate)
        )
    }
}

fn rate(bytes: u64, span: Duration) -> f64 {
    bytes as f64 / span.as_secs_f64().max(1e-3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_restarts_the_count() {
        let cfg = NetConfig {
            retries: 2,
            retry_base: Duration::from_millis(1),
            ..NetConfig::default()
        };
        let mut t = Tries::new(&cfg);
        for round in 0..2 {
            if round == 1 {
                t.progressed();
            }
            for n in 1..=2 {
                let next = t.failed(None).unwrap();
                assert!(
                    matches!(next, Next::Backoff { attempt, .. } if attempt == n),
                    "{round}: {next:?}"
                );
            }
        }
        assert_eq!(t.failed(None).unwrap(), Next::GiveUp { attempts: 3 });
    }

    #[test]
    fn slow_bytes_are_not_progress() {
        let cfg = NetConfig {
            min_rate: 1000,
            rate_window: Duration::from_millis(50),
            ..NetConfig::default()
        };
        let mut p = Pace::start(&cfg);
        assert!(p.add(10_000).is_none());
        assert!(p.progressed(), "10 kB at once is above 1 kB/s");
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            p.add(1).is_none(),
            "the first window held 10 kB: fast enough"
        );
        std::thread::sleep(Duration::from_millis(60));
        let why = p.add(1).expect("one byte in a window of 50 ms is too slow");
        assert!(why.contains("below the floor rate of 1000 B/s"), "{why}");

        let mut p = Pace::start(&cfg);
        p.add(10);
        std::thread::sleep(Duration::from_millis(30));
        assert!(!p.progressed());
        let why = p.explain("stalled".into());
        assert!(
            why.starts_with("stalled; 10 B in ") && why.contains("below the floor rate"),
            "{why}"
        );
        let off = NetConfig { min_rate: 0, ..cfg };
        let mut p = Pace::start(&off);
        p.add(1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(p.add(1).is_none() && p.progressed());
    }
}
