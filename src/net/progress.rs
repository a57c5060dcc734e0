//! Download progress: indicatif bars (one per file plus a total) when stderr is a terminal,
//! otherwise a plain status line every few seconds so logs and CI output stay readable.
use crate::net::signed_url::human_duration;
use crate::progress::Task;
use crate::util::human_bytes;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counters {
    /// Bytes on disk for all files, including prefixes kept from earlier runs.
    done: AtomicU64,
    /// Sum of the sizes of files whose size is known.
    total: AtomicU64,
    /// Bytes received over the network in this run (for the speed).
    fetched: AtomicU64,
    files_done: AtomicUsize,
    files: AtomicUsize,
    /// Files whose size is known or that finished: when it reaches `files`, the total is final.
    sized: AtomicUsize,
}

enum Mode {
    Bars {
        multi: MultiProgress,
        total: ProgressBar,
    },
    Plain {
        stop: Arc<(Mutex<bool>, Condvar)>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Hidden,
}

/// Progress of a whole run: many files, one total.
pub struct Progress {
    counters: Arc<Counters>,
    mode: Mode,
    started: Instant,
}

impl Progress {
    /// Bars on a terminal, plain lines every `LLAMACTL_PROGRESS_INTERVAL_MS` (default 10 s) otherwise.
    pub fn new(files: usize) -> Self {
        if std::io::stderr().is_terminal() {
            Self::bars(files)
        } else {
            let ms = std::env::var("LLAMACTL_PROGRESS_INTERVAL_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000);
            Self::plain(files, Duration::from_millis(ms))
        }
    }

    /// No output at all (for library callers that report on their own).
    pub fn hidden() -> Self {
        Self::with_mode(0, Mode::Hidden)
    }

    fn with_mode(files: usize, mode: Mode) -> Self {
        let counters = Arc::new(Counters::default());
        counters.files.store(files, Ordering::Relaxed);
        Self {
            counters,
            mode,
            started: Instant::now(),
        }
    }

    fn bars(files: usize) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        total.enable_steady_tick(Duration::from_millis(200));
        Self::with_mode(files, Mode::Bars { multi, total })
    }

    fn plain(files: usize, every: Duration) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let mut me = Self::with_mode(files, Mode::Hidden);
        let counters = me.counters.clone();
        let started = me.started;
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let (lock, cv) = &*stop2;
            let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let (guard, _) = cv
                    .wait_timeout(stopped, every)
                    .unwrap_or_else(|e| e.into_inner());
                stopped = guard;
                if *stopped {
                    break;
                }
                eprintln!("{}", status_line(&counters, started));
            }
        });
        me.mode = Mode::Plain {
            stop,
            thread: Some(thread),
        };
        me
    }

    /// A message line that does not tear the bars.
    pub fn println(&self, msg: &str) {
        match &self.mode {
            Mode::Bars { multi, .. } => {
                let _ = multi.println(msg);
            }
            _ => eprintln!("{msg}"),
        }
    }

    /// Start tracking one file.
    pub fn file(&self, label: &str) -> FileProgress {
        let bar = match &self.mode {
            Mode::Bars { multi, total } => {
                let bar = multi.insert_before(total, ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(short_label(label));
                Some((bar, total.clone()))
            }
            _ => None,
        };
        FileProgress {
            counters: self.counters.clone(),
            bar,
            len: AtomicU64::new(0),
            pos: AtomicU64::new(0),
            len_known: AtomicBool::new(false),
        }
    }

    /// Bytes received over the network so far in this run.
    pub fn fetched(&self) -> u64 {
        self.counters.fetched.load(Ordering::Relaxed)
    }

    /// Time since this run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stop drawing; the caller prints its own summary after this.
    pub fn finish(&mut self) {
        match &mut self.mode {
            Mode::Bars { total, .. } => total.finish_and_clear(),
            Mode::Plain { stop, thread } => {
                {
                    let (lock, cv) = &**stop;
                    *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
                    cv.notify_all();
                }
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            Mode::Hidden => {}
        }
        self.mode = Mode::Hidden;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

fn short_label(label: &str) -> String {
    // Keep the bar column aligned: the tail of the path is the informative part.
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= 28 {
        label.to_string()
    } else {
        let tail: String = chars[chars.len() - 27..].iter().collect();
        format!("…{tail}")
    }
}

fn status_line(c: &Counters, started: Instant) -> String {
    let done = c.done.load(Ordering::Relaxed);
    let total = c.total.load(Ordering::Relaxed);
    let fetched = c.fetched.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let rate = fetched as f64 / secs;
    let mut line = format!(
        "progress: {} of {} files, {}",
        c.files_done.load(Ordering::Relaxed),
        c.files.load(Ordering::Relaxed),
        human_bytes(done)
    );
    if total > 0 {
        line.push_str(&format!(
            " of {} known ({:.0}%)",
            human_bytes(total),
            100.0 * done as f64 / total as f64
        ));
    }
    line.push_str(&format!(", {}/s", human_bytes(rate as u64)));
    let total_final = c.sized.load(Ordering::Relaxed) >= c.files.load(Ordering::Relaxed);
    if total_final && total > done && rate > 1.0 {
        let eta = Duration::from_secs_f64((total - done) as f64 / rate);
        line.push_str(&format!(", ETA {}", human_duration(eta)));
    }
    line
}

/// The download engine reports through [`Task`].
impl Task for FileProgress {
    fn set_len(&self, len: u64) {
        FileProgress::set_len(self, len)
    }
    fn set_position(&self, pos: u64) {
        FileProgress::set_position(self, pos)
    }
    fn advance(&self, n: u64) {
        self.inc(n)
    }
    fn note(&self, msg: &str) {
        FileProgress::note(self, msg)
    }
    fn finish(&self) {
        FileProgress::finish(self)
    }
}

/// Progress of one file. Thread-safe; the engine reports positions, the caller reports the end.
pub struct FileProgress {
    counters: Arc<Counters>,
    bar: Option<(ProgressBar, ProgressBar)>,
    len: AtomicU64,
    pos: AtomicU64,
    len_known: AtomicBool,
}

impl FileProgress {
    /// A tracker that reports nowhere.
    pub fn hidden() -> Self {
        Progress::hidden().file("")
    }

    /// The file's full size, once known.
    pub fn set_len(&self, len: u64) {
        let old = self.len.swap(len, Ordering::Relaxed);
        if self.len_known.swap(true, Ordering::Relaxed) {
            self.counters.total.fetch_sub(old, Ordering::Relaxed);
        } else {
            self.counters.sized.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.total.fetch_add(len, Ordering::Relaxed);
        if let Some((bar, total)) = &self.bar {
            bar.set_length(len);
            total.set_length(self.counters.total.load(Ordering::Relaxed));
        }
    }

    /// Bytes of this file on disk (e.g. a kept prefix, or 0 after a restart).
    pub fn set_position(&self, pos: u64) {
        let old = self.pos.swap(pos, Ordering::Relaxed);
        if pos >= old {
            self.counters.done.fetch_add(pos - old, Ordering::Relaxed);
        } else {
            self.counters.done.fetch_sub(old - pos, Ordering::Relaxed);
        }
        if let Some((bar, total)) = &self.bar {
            bar.set_position(pos);
            total.set_position(self.counters.done.load(Ordering::Relaxed));
        }
    }

    /// `n` new bytes arrived over the network and were written.
    pub fn inc(&self, n: u64) {
        self.pos.fetch_add(n, Ordering::Relaxed);
        self.counters.done.fetch_add(n, Ordering::Relaxed);
        self.counters.fetched.fetch_add(n, Ordering::Relaxed);
        if let Some((bar, total)) = &self.bar {
            bar.inc(n);
            total.inc(n);
        }
    }

    /// A short note on the bar (e.g. "retry 2 in 1.3s", "verifying").
    pub fn note(&self, msg: &str) {
        if let Some((bar, _)) = &self.bar {
            bar.set_message(msg.to_string());
        }
    }

    /// The file is finished (verified, skipped or failed): count it and remove its bar.
    pub fn finish(&self) {
        self.counters.files_done.fetch_add(1, Ordering::Relaxed);
        if !self.len_known.swap(true, Ordering::Relaxed) {
            self.counters.sized.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((bar, _)) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
