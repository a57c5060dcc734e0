//! The one retry policy of every request that crosses the network (Meta's CDN, the Hub's API, the
//! CDNs it redirects to). A host that never answered in this run gets the quick first-contact
//! tries of [`reach`](crate::net::reach); any other failure waits [`NetConfig::backoff`] and counts
//! towards [`NetConfig::retries`], a count that starts over whenever a try delivered bytes (a flaky
//! link is not a dead one). Callers keep their own words for the wait and the final error.
use crate::net::config::NetConfig;
use crate::net::reach::{ConnectFailure, FirstContact, Unreachable};
use std::time::Duration;

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
            first: FirstContact::new(),
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
}
