//! Every network setting in one place, for the Meta CDN and the Hub alike: timeouts, the retry
//! policy and segmenting. Tests (and users on odd links) override them through the environment
//! variables listed in `SETTINGS`; their defaults are [`NetConfig::default`], and both `--help` and the
//! table in docs/CLI.md are rendered from these two (a test holds the docs to them).
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
#[derive(Debug, Clone, Copy)]
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

/// The field of [`NetConfig`] a variable sets.
#[derive(Debug, Clone, Copy)]
enum Field {
    ReadTimeout,
    ConnectTimeout,
    Retries,
    RetryBase,
    RetryMax,
    SegmentMin,
    MinRate,
    RateWindow,
}

/// One environment variable: its names and unit, the field it sets, and how `--help` and
/// docs/CLI.md describe it.
struct Setting {
    name: &'static str,
    /// The older name, read when `name` is unset (empty: none).
    alias: &'static str,
    unit: Unit,
    field: Field,
    /// `--help`'s words before the default (`stall`), empty for none.
    hint: &'static str,
    /// Which `--help` line lists it; the last one only `download` shows.
    line: u8,
    /// docs/CLI.md's "meaning" column.
    meaning: &'static str,
}

const fn setting(
    name: &'static str,
    alias: &'static str,
    unit: Unit,
    field: Field,
    hint: &'static str,
    line: u8,
    meaning: &'static str,
) -> Setting {
    Setting {
        name,
        alias,
        unit,
        field,
        hint,
        line,
        meaning,
    }
}

/// The `--help` line that only `download` (the one command with `--connections`) shows.
const SEGMENT_LINE: u8 = 3;

/// Every network variable, in docs/CLI.md's order.
#[rustfmt::skip]
const SETTINGS: [Setting; 8] = [
    setting("LLAMACTL_NET_RETRIES", "LLAMACTL_RETRIES", Unit::Count, Field::Retries, "", 0,
        "tries after a failure, counted since the last try that moved bytes at the floor rate"),
    setting("LLAMACTL_NET_TIMEOUT_S", "LLAMACTL_READ_TIMEOUT_MS", Unit::Seconds, Field::ReadTimeout, "stall", 0,
        "no byte (or no response) for this long is a stall, retried"),
    setting("LLAMACTL_NET_CONNECT_TIMEOUT_S", "LLAMACTL_CONNECT_TIMEOUT_MS", Unit::Seconds, Field::ConnectTimeout, "", 0,
        "a connection not made within this long failed"),
    setting("LLAMACTL_NET_BACKOFF_MS", "LLAMACTL_RETRY_BASE_MS", Unit::Millis, Field::RetryBase, "", 1,
        "first wait before a retry; doubled per failure, ±50 % jitter"),
    setting("LLAMACTL_NET_BACKOFF_MAX_MS", "LLAMACTL_RETRY_MAX_MS", Unit::Millis, Field::RetryMax, "", 1,
        "longest wait between retries"),
    setting("LLAMACTL_NET_SEGMENT_MIN_BYTES", "LLAMACTL_SEGMENT_MIN_BYTES", Unit::Count, Field::SegmentMin,
        "smallest --connections segment", SEGMENT_LINE, "smallest segment with `download --connections N`"),
    setting("LLAMACTL_NET_MIN_RATE_BYTES", "", Unit::Count, Field::MinRate, "floor, bytes/s", 2,
        "floor rate, bytes per second; `0` turns it off"),
    setting("LLAMACTL_NET_MIN_RATE_WINDOW_S", "", Unit::Seconds, Field::RateWindow, "", 2,
        "how long a running transfer may stay below the floor rate"),
];

impl NetConfig {
    /// A field's value in its variable's unit (seconds, milliseconds or a count).
    fn get(&self, f: Field, unit: Unit) -> f64 {
        let d = |d: Duration| match unit {
            Unit::Millis => d.as_secs_f64() * 1000.0,
            _ => d.as_secs_f64(),
        };
        match f {
            Field::ReadTimeout => d(self.read_timeout),
            Field::ConnectTimeout => d(self.connect_timeout),
            Field::Retries => self.retries.into(),
            Field::RetryBase => d(self.retry_base),
            Field::RetryMax => d(self.retry_max),
            Field::SegmentMin => self.segment_min as f64,
            Field::MinRate => self.min_rate as f64,
            Field::RateWindow => d(self.rate_window),
        }
    }

    /// Set a field from [`read`]'s value (seconds for durations, whatever unit the variable is
    /// written in).
    fn set(&mut self, f: Field, v: f64) {
        let secs = Duration::from_secs_f64;
        match f {
            Field::ReadTimeout => self.read_timeout = secs(v),
            Field::ConnectTimeout => self.connect_timeout = secs(v),
            Field::Retries => self.retries = (v as u64).min(u32::MAX.into()) as u32,
            Field::RetryBase => self.retry_base = secs(v),
            Field::RetryMax => self.retry_max = secs(v),
            Field::SegmentMin => self.segment_min = (v as u64).max(1),
            Field::MinRate => self.min_rate = v as u64,
            Field::RateWindow => self.rate_window = secs(v),
        }
    }

    /// Defaults, overridden by the variables of `SETTINGS`.
    pub fn from_env() -> Result<Self> {
        let mut cfg = Self::default();
        for s in &SETTINGS {
            if let Some(v) = read(s.name, s.alias, s.unit)? {
                cfg.set(s.field, v);
            }
        }
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

    /// The `--help` lines naming each variable with its default; `segments` adds the line only
    /// `download` has.
    pub fn env_help(segments: bool) -> String {
        let d = Self::default();
        let lines = if segments {
            SEGMENT_LINE + 1
        } else {
            SEGMENT_LINE
        };
        (0..lines)
            .map(|line| {
                let items: Vec<String> = SETTINGS
                    .iter()
                    .filter(|s| s.line == line)
                    .map(|s| {
                        let hint = if s.hint.is_empty() {
                            String::new()
                        } else {
                            format!("{}, ", s.hint)
                        };
                        format!("{} ({hint}{})", s.name, d.get(s.field, s.unit))
                    })
                    .collect();
                format!("  {}", items.join("  "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// docs/CLI.md's table of the variables, their meaning and default.
    pub fn env_table() -> String {
        let d = Self::default();
        let mut out = String::from("| variable | meaning | default |\n|---|---|---|\n");
        for s in &SETTINGS {
            let v = d.get(s.field, s.unit);
            out.push_str(&format!("| `{}` | {} | {v} |\n", s.name, s.meaning));
        }
        out
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
    fn docs_list_every_variable_with_its_default() {
        let table = NetConfig::env_table();
        let docs = include_str!("../../docs/CLI.md");
        assert!(docs.contains(&table), "docs/CLI.md should hold:\n{table}");
        let help = NetConfig::env_help(true);
        assert!(SETTINGS.iter().all(|s| help.contains(s.name)), "{help}");
        assert!(!NetConfig::env_help(false).contains("SEGMENT"));
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
