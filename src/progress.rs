//! How long work says how far it has got. Library code (checkpoint/, net/, formats/) reports
//! through these traits and never draws or prints anything itself; what the user sees (bars on a
//! terminal, plain lines in a log, nothing) is decided by the one implementation in
//! `commands::reporters`.
//!
//! A [`Reporter`] hands out one [`Task`] per unit of work: a file being downloaded or hashed, a
//! shard being written, a pass over a model's tensors. Tasks count bytes.

/// Where a run reports. Shared by worker threads, hence `Sync`.
pub trait Reporter: Sync {
    /// A unit of work named `label` starts; `len` is its size in bytes when already known.
    fn task(&self, label: &str, len: Option<u64>) -> Box<dyn Task>;
    /// A message line for the user (a warning, a retry) that does not tear any bars.
    fn message(&self, msg: &str);
}

/// One unit of work. Thread-safe: several threads may advance the same task.
pub trait Task: Send + Sync {
    /// The full size in bytes, once known (or when it changes).
    fn set_len(&self, len: u64);
    /// Bytes done by other means than this run's work: a kept prefix, or 0 after a restart.
    fn set_position(&self, pos: u64);
    /// `n` more bytes done by this run (these count towards the speed).
    fn advance(&self, n: u64);
    /// A short note about the task, e.g. "retry 2 in 1.3s" or "verifying".
    fn note(&self, msg: &str);
    /// The task ended: done, skipped or failed.
    fn finish(&self);
}

/// Reports nowhere: for library callers and tests that want no progress.
pub struct Silent;

impl Reporter for Silent {
    fn task(&self, _: &str, _: Option<u64>) -> Box<dyn Task> {
        Box::new(Silent)
    }
    fn message(&self, _: &str) {}
}

impl Task for Silent {
    fn set_len(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn note(&self, _: &str) {}
    fn finish(&self) {}
}
