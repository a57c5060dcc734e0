//! Every network setting in one place, for the Meta CDN and the Hub alike: timeouts, the retry
//! policy and segmenting. Tests (and users on odd links) override them through the environment:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `LLAMACTL_NET_RETRIES` | tries after a failure, counted since the last try that moved bytes at the floor rate | 8 |
//! | `LLAMACTL_NET_TIMEOUT_S` | no byte for this long (or no response headers) is a stall, retried | 60 |
//! | `LLAMACTL_NET_CONNECT_TIMEOUT_S` | a connection not made within this long failed | 10 |
//! | `LLAMACTL_NET_BACKOFF_MS` | first wait before a retry; doubled per failure, ±50 % jitter | 1000 |
//! | `LLAMACTL_NET_BACKOFF_MAX_MS` | longest wait between retries | 60000 |
//! | `LLAMACTL_NET_SEGMENT_MIN_BYTES` | smallest segment of a file fetched over several connections | 64 MiB |
//! | `LLAMACTL_NET_MIN_RATE_BYTES` | floor rate in bytes per second: a try slower than this counts as failed (0: none) | 16384 |
//! | `LLAMACTL_NET_MIN_RATE_WINDOW_S` | the span over which a running transfer is held to the floor rate | 60 |
//!
//! The names used before these (`LLAMACTL_RETRIES`, `LLAMACTL_READ_TIMEOUT_MS`,
//! `LLAMACTL_CONNECT_TIMEOUT_MS`, `LLAMACTL_RETRY_BASE_MS`, `LLAMACTL_RETRY_MAX_MS`,
//! `LLAMACTL_SEGMENT_MIN_BYTES`) still work when the new one is not set.
use anyhow::{anyhow, Result};
use std::time::Duration;

/// Timeouts and the retry policy of every transfer.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// A read (or the response headers) taking longer than this is a stall: retried.
    pub read_timeout: Duration,
    /// Also bounds the first-contact budget (see `reach`).
    pub connect_timeout: Duration,
    /// Consecutive failed attempts without progress before giving up.
    pub retries: u32,
    /// First backoff; doubled per consecutive failure, with ±50 % jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Smallest segment when a file is fetched over several connections.
    pub segment_min: u64,
    /// Floor rate in bytes per second (0: none). A try whose bytes came slower than this, its
    /// waits included, is a failure towards `retries` rather than progress; a transfer that stays
    /// below it for `rate_window` is cut and retried.
    pub min_rate: u64,
    pub rate_window: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            retries: 8,
            retry_base: Duration::from_millis(1000),
            retry_max: Duration::from_secs(60),
            segment_min: 64 << 20,
            min_rate: 16 << 10,
            rate_window: Duration::from_secs(60),
        }
    }
}

/// How a variable's text becomes a value.
enum Unit {
    Seconds,
    Millis,
    Count,
}

/// The value of `name`, else of its old alias; a value that does not parse is an error.
fn read(name: &str, alias: &str, unit: Unit) -> Result<Option<f64>> {
    // An empty alias: the setting has no older name.
    let get = |k: &str| {
        (!k.is_empty())
            .then(|| std::env::var(k).ok())
            .flatten()
            .filter(|v| !v.trim().is_empty())
    };
    let (key, unit, text) = match (get(name), get(alias)) {
        (Some(v), _) => (name, unit, v),
        // The old names held milliseconds for every duration.
        (None, Some(v)) => match unit {
            Unit::Count => (alias, Unit::Count, v),
            _ => (alias, Unit::Millis, v),
        },
        (None, None) => return Ok(None),
    };
    let n: f64 = text
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| anyhow!("{key}={text}: not a non-negative number"))?;
    if matches!(unit, Unit::Count) && n.fract() != 0.0 {
        return Err(anyhow!("{key}={text}: not a whole number"));
    }
    Ok(Some(match unit {
        Unit::Millis => n / 1000.0,
        _ => n,
    }))
}

impl NetConfig {
    /// Defaults, overridden by the variables in the module docs.
    pub fn from_env() -> Result<Self> {
        let d = Self::default();
        // `read` gives durations in seconds whatever unit the variable is written in.
        let dur = |name, alias, unit, default: Duration| -> Result<Duration> {
            Ok(read(name, alias, unit)?.map_or(default, Duration::from_secs_f64))
        };
        let count = |name, alias, default: u64| -> Result<u64> {
            Ok(read(name, alias, Unit::Count)?.map_or(default, |n| n as u64))
        };
        let cfg = Self {
            read_timeout: dur(
                "LLAMACTL_NET_TIMEOUT_S",
                "LLAMACTL_READ_TIMEOUT_MS",
                Unit::Seconds,
                d.read_timeout,
            )?,
            connect_timeout: dur(
                "LLAMACTL_NET_CONNECT_TIMEOUT_S",
                "LLAMACTL_CONNECT_TIMEOUT_MS",
                Unit::Seconds,
                d.connect_timeout,
            )?,
            retries: count("LLAMACTL_NET_RETRIES", "LLAMACTL_RETRIES", d.retries.into())?
                .min(u32::MAX.into()) as u32,
            retry_base: dur(
                "LLAMACTL_NET_BACKOFF_MS",
                "LLAMACTL_RETRY_BASE_MS",
                Unit::Millis,
                d.retry_base,
            )?,
            retry_max: dur(
                "LLAMACTL_NET_BACKOFF_MAX_MS",
                "LLAMACTL_RETRY_MAX_MS",
                Unit::Millis,
                d.retry_max,
            )?,
            segment_min: count(
                "LLAMACTL_NET_SEGMENT_MIN_BYTES",
                "LLAMACTL_SEGMENT_MIN_BYTES",
                d.segment_min,
            )?
            .max(1),
            min_rate: count("LLAMACTL_NET_MIN_RATE_BYTES", "", d.min_rate)?,
            rate_window: dur(
                "LLAMACTL_NET_MIN_RATE_WINDOW_S",
                "",
                Unit::Seconds,
                d.rate_window,
            )?,
        };
        if cfg.read_timeout.is_zero() || cfg.connect_timeout.is_zero() {
            return Err(anyhow!("LLAMACTL_NET_*TIMEOUT*: a timeout must be above 0"));
        }
        if cfg.min_rate > 0 && cfg.rate_window.is_zero() {
            return Err(anyhow!(
                "LLAMACTL_NET_MIN_RATE_WINDOW_S: must be above 0 (set LLAMACTL_NET_MIN_RATE_BYTES=0 for no floor rate)"
            ));
        }
        Ok(cfg)
    }

    /// Backoff before retry number `n` (1-based): base·2^(n-1), capped, times a jitter in [0.5, 1.5).
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .retry_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16));
        let capped = exp.min(self.retry_max);
        capped.mul_f64(0.5 + rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_win_and_old_names_are_milliseconds() {
        std::env::set_var("LLAMACTL_TEST_CFG_NEW", "0.5");
        std::env::set_var("LLAMACTL_TEST_CFG_OLD", "250");
        let r = |n, a, u| read(n, a, u).unwrap();
        let (new, old, none) = (
            "LLAMACTL_TEST_CFG_NEW",
            "LLAMACTL_TEST_CFG_OLD",
            "LLAMACTL_TEST_CFG_NONE",
        );
        assert_eq!(r(new, old, Unit::Seconds), Some(0.5));
        assert_eq!(r(none, old, Unit::Seconds), Some(0.25));
        assert_eq!(r(none, old, Unit::Count), Some(250.0));
        assert_eq!(r(none, none, Unit::Count), None);
        assert!(read(new, none, Unit::Count).is_err(), "0.5 is not a count");
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let cfg = NetConfig {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(1000),
            ..NetConfig::default()
        };
        for n in 1..20 {
            let d = cfg.backoff(n);
            let nominal = (100u64 << (n - 1).min(16)).min(1000) as f64;
            let ms = d.as_secs_f64() * 1000.0;
            assert!(
                ms >= nominal * 0.5 - 1e-6 && ms < nominal * 1.5,
                "{n}: {ms}"
            );
        }
    }
}
