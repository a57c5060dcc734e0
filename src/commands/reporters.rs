//! Every progress display of the CLI, behind [`crate::progress::Reporter`]: indicatif bars (one
//! per running task, plus a total when the command counts several) when stderr is a terminal,
//! otherwise one plain status line every `LLAMACTL_PROGRESS_INTERVAL_MS` (default 10 s) so logs
//! and CI output stay readable. Library code only reports; what the user sees is decided here.
//!
//! The status line: `HEAD: [N of M files, ][LABEL ]DONE of TOTAL[ known] (P%), RATE/s[, ETA T]`,
//! where the label of the one running task is shown when the command counts nothing. A task's
//! notes (a retry, a re-fetch) go on its bar, or become a line `LABEL: NOTE` without bars.
use crate::human::{human_bytes, human_duration};
use crate::progress::{Reporter, Task};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Default time between two plain status lines.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// When a finished task gets a line of its own in plain mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinishLines {
    /// Never: the command prints its own per-task outcome.
    Never,
    /// When the task took at least one status interval (a long pass deserves a closing line).
    Long,
    /// For every task that completed.
    Always,
}

/// How a command wants its progress shown.
pub(crate) struct Shown {
    /// Starts each status line, e.g. "progress", "verify", "pull".
    head: &'static str,
    /// How many tasks the run will have and what they are ("files", "shards"): adds an "N of M"
    /// count to the status line and a total bar under the task bars.
    count: Option<(usize, &'static str)>,
    /// The run's bytes, when known before any task starts (else the sum of the tasks' sizes).
    total: Option<u64>,
    finish_lines: FinishLines,
    /// Messages and notes start with `HEAD: ` too (for a command whose every line is tagged).
    tag_messages: bool,
}

impl Shown {
    pub(crate) fn new(head: &'static str) -> Self {
        Self {
            head,
            count: None,
            total: None,
            finish_lines: FinishLines::Never,
            tag_messages: false,
        }
    }

    pub(crate) fn total(mut self, bytes: u64) -> Self {
        self.total = Some(bytes);
        self
    }

    pub(crate) fn tag_messages(mut self) -> Self {
        self.tag_messages = true;
        self
    }

    pub(crate) fn count(mut self, n: usize, unit: &'static str) -> Self {
        self.count = Some((n, unit));
        self
    }

    pub(crate) fn finish_lines(mut self, when: FinishLines) -> Self {
        self.finish_lines = when;
        self
    }
}

/// Totals over every task of the run.
#[derive(Default)]
struct Counters {
    /// Bytes done over all tasks, including prefixes kept from earlier runs.
    done: AtomicU64,
    /// Sum of the sizes of tasks whose size is known.
    total: AtomicU64,
    /// Bytes done by this run (for the speed).
    fetched: AtomicU64,
    started: AtomicUsize,
    finished: AtomicUsize,
    /// Tasks whose size is known or that finished: when it reaches the expected count, the
    /// total is final.
    sized: AtomicUsize,
}

struct Shared {
    shown: Shown,
    interval: Duration,
    started: Instant,
    counters: Counters,
    /// Running tasks by id, with their labels (for the status line's label).
    running: Mutex<Vec<(usize, String)>>,
    /// Present in bar mode; the total bar when the command counts tasks.
    bars: Option<(MultiProgress, Option<ProgressBar>)>,
}

struct PlainThread {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: std::thread::JoinHandle<()>,
}

/// The CLI's reporter: bars on a terminal, plain lines otherwise.
pub(crate) struct ProgressReporter {
    shared: Arc<Shared>,
    plain: Option<PlainThread>,
}

impl ProgressReporter {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub(crate) fn stderr(shown: Shown) -> Self {
        let interval = std::env::var("LLAMACTL_PROGRESS_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(DEFAULT_INTERVAL, Duration::from_millis);
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = shown.count.map(|_| {
                let total = multi.add(ProgressBar::new(shown.total.unwrap_or(0)));
                total.set_style(style(
                    "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                ));
                total.set_prefix("total");
                total.enable_steady_tick(Duration::from_millis(200));
                total
            });
            (multi, total)
        });
        let plain = bars.is_none();
        let shared = Arc::new(Shared {
            shown,
            interval,
            started: Instant::now(),
            counters: Counters::default(),
            running: Mutex::new(Vec::new()),
            bars,
        });
        let plain = plain.then(|| PlainThread::start(shared.clone()));
        Self { shared, plain }
    }

    /// Bytes done by this run so far (not counting kept prefixes).
    pub(crate) fn fetched(&self) -> u64 {
        self.shared.counters.fetched.load(Ordering::Relaxed)
    }

    /// Time since the run started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Stop drawing; the command prints its own summary after this.
    pub(crate) fn finish(&mut self) {
        if let Some(p) = self.plain.take() {
            p.stop();
        }
        if let Some((_, Some(total))) = &self.shared.bars {
            total.finish_and_clear();
        }
    }
}

impl Drop for ProgressReporter {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Reporter for ProgressReporter {
    fn task(&self, label: &str, len: Option<u64>) -> Box<dyn Task> {
        let sh = &self.shared;
        let id = sh.counters.started.fetch_add(1, Ordering::Relaxed);
        lock(&sh.running).push((id, label.to_string()));
        let bar = sh.bars.as_ref().map(|(multi, total)| {
            let bar = ProgressBar::new(0);
            let bar = match total {
                Some(total) => multi.insert_before(total, bar),
                None => multi.add(bar),
            };
            bar.set_style(style(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            ));
            bar.set_prefix(short_label(label));
            bar
        });
        let task = TaskReport {
            shared: sh.clone(),
            id,
            label: label.to_string(),
            bar,
            started: Instant::now(),
            len: AtomicU64::new(0),
            pos: AtomicU64::new(0),
            len_known: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        };
        if let Some(len) = len {
            task.set_len(len);
        }
        Box::new(task)
    }

    fn message(&self, msg: &str) {
        self.shared.line(msg);
    }
}

impl PlainThread {
    fn start(shared: Arc<Shared>) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let (flag, cv) = &*stop2;
            let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                // The flag is read under the lock before every wait: a stop set before this
                // thread first waits (a command that fails at once) is seen at once, not after
                // an interval, and spurious wake-ups wait again.
                let (guard, _) = cv
                    .wait_timeout_while(stopped, shared.interval, |stop| !*stop)
                    .unwrap_or_else(|e| e.into_inner());
                stopped = guard;
                if *stopped {
                    break;
                }
                // Between passes (nothing running) there is nothing to say.
                if !lock(&shared.running).is_empty() {
                    eprintln!("{}", shared.status_line());
                }
            }
        });
        Self { stop, thread }
    }

    fn stop(self) {
        {
            let (flag, cv) = &*self.stop;
            *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        let _ = self.thread.join();
    }
}

impl Shared {
    /// A line for the user, above the bars when there are bars.
    fn line(&self, msg: &str) {
        let msg = if self.shown.tag_messages {
            format!("{}: {msg}", self.shown.head)
        } else {
            msg.to_string()
        };
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }

    /// The run's total bytes so far.
    fn total(&self) -> u64 {
        self.shown
            .total
            .unwrap_or_else(|| self.counters.total.load(Ordering::Relaxed))
    }

    fn status_line(&self) -> String {
        let c = &self.counters;
        let done = c.done.load(Ordering::Relaxed);
        let total = self.total();
        let fetched = c.fetched.load(Ordering::Relaxed);
        let rate = fetched as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let mut line = format!("{}: ", self.shown.head);
        let expected = match self.shown.count {
            Some((n, unit)) => {
                let finished = c.finished.load(Ordering::Relaxed);
                line.push_str(&format!("{finished} of {n} {unit}, "));
                n
            }
            None => {
                if let [(_, label)] = lock(&self.running).as_slice() {
                    line.push_str(&format!("{label} "));
                }
                c.started.load(Ordering::Relaxed)
            }
        };
        let total_final = self.shown.total.is_some() || c.sized.load(Ordering::Relaxed) >= expected;
        // A writer may count its container's own bytes (zip records) beyond the payload sizes.
        let done = if total_final { done.min(total) } else { done };
        line.push_str(&human_bytes(done));
        if total > 0 {
            line.push_str(&format!(
                " of {}{} ({:.0}%)",
                human_bytes(total),
                if total_final { "" } else { " known" },
                100.0 * done as f64 / total as f64
            ));
        }
        line.push_str(&format!(", {}/s", human_bytes(rate as u64)));
        if total_final && total > done && rate > 1.0 {
            let eta = Duration::from_secs_f64((total - done) as f64 / rate);
            line.push_str(&format!(", ETA {}", human_duration(eta)));
        }
        line
    }

    /// Keep the total bar in step with the counters.
    fn draw_total(&self) {
        if let Some((_, Some(total))) = &self.bars {
            total.set_length(self.total());
            total.set_position(self.counters.done.load(Ordering::Relaxed));
        }
    }
}

/// One task of a [`ProgressReporter`]; counted as ended when dropped, if not before.
struct TaskReport {
    shared: Arc<Shared>,
    id: usize,
    label: String,
    bar: Option<ProgressBar>,
    started: Instant,
    len: AtomicU64,
    pos: AtomicU64,
    len_known: AtomicBool,
    finished: AtomicBool,
}

impl Task for TaskReport {
    fn set_len(&self, len: u64) {
        let c = &self.shared.counters;
        let old = self.len.swap(len, Ordering::Relaxed);
        if self.len_known.swap(true, Ordering::Relaxed) {
            c.total.fetch_sub(old, Ordering::Relaxed);
        } else {
            c.sized.fetch_add(1, Ordering::Relaxed);
        }
        c.total.fetch_add(len, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(len);
            self.shared.draw_total();
        }
    }

    fn set_position(&self, pos: u64) {
        let c = &self.shared.counters;
        let old = self.pos.swap(pos, Ordering::Relaxed);
        if pos >= old {
            c.done.fetch_add(pos - old, Ordering::Relaxed);
        } else {
            c.done.fetch_sub(old - pos, Ordering::Relaxed);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            self.shared.draw_total();
        }
    }

    fn advance(&self, n: u64) {
        let c = &self.shared.counters;
        self.pos.fetch_add(n, Ordering::Relaxed);
        c.done.fetch_add(n, Ordering::Relaxed);
        c.fetched.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
            if let Some((_, Some(total))) = &self.shared.bars {
                total.inc(n);
            }
        }
    }

    fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(msg.to_string()),
            // An empty note only clears the bar's.
            None if !msg.is_empty() => self.shared.line(&format!("{}: {msg}", self.label)),
            None => {}
        }
    }

    fn finish(&self) {
        self.end(true);
    }
}

impl TaskReport {
    /// Count the task as ended; `finished` says it ended through [`Task::finish`] rather than
    /// being dropped on an error path, which gets no closing line.
    fn end(&self, finished: bool) {
        if self.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        let sh = &self.shared;
        sh.counters.finished.fetch_add(1, Ordering::Relaxed);
        if !self.len_known.swap(true, Ordering::Relaxed) {
            sh.counters.sized.fetch_add(1, Ordering::Relaxed);
        }
        lock(&sh.running).retain(|(id, _)| *id != self.id);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            return;
        }
        let (pos, len) = (
            self.pos.load(Ordering::Relaxed),
            self.len.load(Ordering::Relaxed),
        );
        let took = self.started.elapsed();
        let line = match sh.shown.finish_lines {
            FinishLines::Never => false,
            FinishLines::Long => took >= sh.interval,
            FinishLines::Always => true,
        };
        if line && finished && pos >= len {
            eprintln!(
                "{}: done, {} in {:.1} s",
                self.label,
                human_bytes(len.max(pos)),
                took.as_secs_f64()
            );
        }
    }
}

impl Drop for TaskReport {
    fn drop(&mut self) {
        self.end(false);
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Keep the bar column aligned: the tail of a path is the informative part.
fn short_label(label: &str) -> String {
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= 28 {
        label.to_string()
    } else {
        let tail: String = chars[chars.len() - 27..].iter().collect();
        format!("…{tail}")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking worker already fails the run; a list of labels is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(shown: Shown) -> Arc<Shared> {
        Arc::new(Shared {
            shown,
            interval: DEFAULT_INTERVAL,
            started: Instant::now(),
            counters: Counters::default(),
            running: Mutex::new(Vec::new()),
            bars: None,
        })
    }

    fn task(sh: &Arc<Shared>, label: &str, len: Option<u64>) -> Box<dyn Task> {
        let r = ProgressReporter {
            shared: sh.clone(),
            plain: None,
        };
        r.task(label, len)
    }

    #[test]
    fn status_line_counts_tasks_and_says_when_the_total_is_not_final() {
        let sh = plain(Shown::new("progress").count(2, "files"));
        let a = task(&sh, "a", Some(400));
        a.set_position(100);
        let line = sh.status_line();
        assert!(
            line.starts_with("progress: 0 of 2 files, 100 B of 400 B known (25%), "),
            "{line}"
        );
        assert!(!line.contains("ETA"), "{line}");
        a.finish();
        let _b = task(&sh, "b", Some(600));
        let line = sh.status_line();
        assert!(
            line.starts_with("progress: 1 of 2 files, 100 B of 1000 B (10%), "),
            "{line}"
        );
    }

    #[test]
    fn status_line_names_the_one_running_task() {
        let sh = plain(Shown::new("verify"));
        let t = task(&sh, "md5", Some(1000));
        t.advance(250);
        let line = sh.status_line();
        assert!(
            line.starts_with("verify: md5 250 B of 1000 B (25%), "),
            "{line}"
        );
        let _u = task(&sh, "scan", None);
        assert!(sh
            .status_line()
            .starts_with("verify: 250 B of 1000 B known"));
    }

    #[test]
    fn a_total_given_up_front_is_final_from_the_start() {
        let sh = plain(Shown::new("pull").count(3, "files").total(1000));
        let t = task(&sh, "a", Some(100));
        t.set_position(100);
        t.finish();
        let line = sh.status_line();
        assert!(
            line.starts_with("pull: 1 of 3 files, 100 B of 1000 B (10%), "),
            "{line}"
        );
    }

    #[test]
    fn a_dropped_task_counts_as_finished() {
        let sh = plain(Shown::new("progress"));
        drop(task(&sh, "x", None));
        assert_eq!(sh.counters.finished.load(Ordering::Relaxed), 1);
        assert!(lock(&sh.running).is_empty());
    }
}
