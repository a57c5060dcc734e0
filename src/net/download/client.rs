//! The blocking HTTP client under the engine: one way to send a request (with its range, if any),
//! one way to wait after a failure, and small in-memory GETs under the same policy.
use super::error::{interruptible_sleep, HttpError};
use super::range::{self, Ranged};
use super::response::{classify_status, describe};
use crate::net::config::NetConfig;
use crate::net::reach::{self, ConnectFailure};
use crate::net::retry::{Next, Tries};
use crate::net::signed_url::redact;
use crate::progress::Task;
use reqwest::header::HeaderMap;
use std::io::Read;

/// A request that got no response.
pub(crate) struct SendFailed {
    pub reason: String,
    /// Set when no connection was made at all (see [`reach`]).
    pub connect: Option<ConnectFailure>,
}

/// A blocking HTTP client with the download engine on top. Cheap to share across threads.
#[derive(Clone)]
pub struct Http {
    client: reqwest::blocking::Client,
    cfg: NetConfig,
}

impl Http {
    /// A client that follows redirects (a CDN may send the bytes from elsewhere).
    pub fn new(cfg: NetConfig) -> anyhow::Result<Self> {
        Self::build(cfg, reqwest::redirect::Policy::default())
    }

    /// A client that follows no redirect: the caller decides where a credential may go (reqwest
    /// would keep an `Authorization` header across a change of scheme).
    pub fn without_redirects(cfg: NetConfig) -> anyhow::Result<Self> {
        Self::build(cfg, reqwest::redirect::Policy::none())
    }

    fn build(cfg: NetConfig, redirects: reqwest::redirect::Policy) -> anyhow::Result<Self> {
        let client = reqwest::blocking::Client::builder()
            .user_agent(concat!("llamactl/", env!("CARGO_PKG_VERSION")))
            .redirect(redirects)
            // In the blocking client this bounds every wait (headers, each read): a stall detector.
            .timeout(cfg.read_timeout)
            .connect_timeout(cfg.connect_timeout.min(cfg.read_timeout))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {}", e.without_url()))?;
        Ok(Self { client, cfg })
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// The underlying client, for small API calls that need no resume.
    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// GET a small document into memory (≤ `max_bytes`), with the same retry policy.
    pub fn get_small(
        &self,
        url: &str,
        headers: &[(String, String)],
        max_bytes: u64,
    ) -> Result<(HeaderMap, Vec<u8>), HttpError> {
        let shown = redact(url);
        let mut tries = Tries::new(&self.cfg);
        loop {
            let (reason, connect) = match self.send(url, headers, None) {
                Ok(resp) if resp.status().is_success() => {
                    let h = resp.headers().clone();
                    let mut body = Vec::new();
                    match resp.take(max_bytes + 1).read_to_end(&mut body) {
                        Ok(_) if body.len() as u64 > max_bytes => {
                            return Err(HttpError::ErrorBody {
                                url: shown,
                                what: format!("larger than {max_bytes} bytes"),
                            })
                        }
                        Ok(_) => return Ok((h, body)),
                        Err(e) => (redact(&e.to_string()), None),
                    }
                }
                Ok(resp) => (classify_status(resp.status(), resp, &shown)?, None),
                Err(failed) => (failed.reason, failed.connect),
            };
            pause_or_stop(&mut tries, &shown, reason, connect.as_ref(), None)?;
        }
    }

    /// Send a GET with `headers` and, when resuming or fetching a segment, its range; record
    /// that the host answered, or say why nothing came back.
    pub(crate) fn send(
        &self,
        url: &str,
        headers: &[(String, String)],
        ranged: Option<Ranged>,
    ) -> Result<reqwest::blocking::Response, SendFailed> {
        let mut req = self.client.get(url);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(r) = ranged {
            req = range::add(req, r);
        }
        match req.send() {
            Ok(resp) => {
                reach::mark_reached(url);
                Ok(resp)
            }
            Err(e) => {
                let reason = describe(&e);
                let connect = reach::connect_failure(&e, &reason);
                Err(SendFailed { reason, connect })
            }
        }
    }
}

/// After a failed try: pause before the next one (saying why on the file's bar), or end with the
/// error that stops the transfer. A signal cuts the pause short with [`HttpError::Cancelled`].
pub(crate) fn pause_or_stop(
    tries: &mut Tries,
    shown: &str,
    reason: String,
    connect: Option<&ConnectFailure>,
    progress: Option<&dyn Task>,
) -> Result<(), HttpError> {
    match tries.failed(connect)? {
        Next::Quick(pause) => interruptible_sleep(pause),
        Next::GiveUp { attempts } => Err(HttpError::Network {
            url: shown.to_string(),
            attempts,
            last: reason,
        }),
        Next::Backoff { pause, attempt } => {
            let note = |msg: &str| {
                if let Some(p) = progress {
                    p.note(msg);
                }
            };
            note(&format!(
                "retry {attempt} of {} in {:.1}s: {reason}",
                tries.limit(),
                pause.as_secs_f64()
            ));
            let slept = interruptible_sleep(pause);
            note("");
            slept
        }
    }
}
