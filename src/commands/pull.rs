//! `llamactl pull` (see CLI.md): a repo from the Hugging Face Hub into the cache `huggingface_hub`
//! uses (or into `--local-dir`), files in parallel, LFS files sha256-checked while streaming.
use crate::cli::PullArgs;
use crate::net::config::NetConfig;
use crate::net::download::kept_parts_note;
use crate::net::hub::{
    list_local_files, resolve_token, validate_repo_id, validate_revision, Fetched, HubClient,
    HubEnv, Progress, RepoCache, RepoFile, TokenSource,
};
use crate::util::{human_bytes, work_queue};
use anyhow::{bail, Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub fn run(args: &PullArgs) -> Result<i32> {
    if args.jobs == 0 {
        bail!("--jobs 0: need at least one");
    }
    validate_repo_id(&args.repo_id)?;
    validate_revision(&args.revision)?;
    let filter = Filter::new(&args.include, &args.exclude)?;
    let env = HubEnv::from_env()?;
    let folder = if env.offline {
        offline(args, &env, &filter)?
    } else {
        online(args, &env, &filter)?
    };
    println!("{}", folder.display());
    Ok(0)
}

/// `--include` / `--exclude` with `huggingface_hub`'s semantics: fnmatch-style (`*` also crosses
/// `/`), and a pattern ending in `/` means everything under that folder.
struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    described: String,
}

impl Filter {
    fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        fn build(flag: &str, patterns: &[String]) -> Result<Option<GlobSet>> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut set = GlobSetBuilder::new();
            for p in patterns {
                let full = if p.ends_with('/') {
                    format!("{p}*")
                } else {
                    p.clone()
                };
                let glob = GlobBuilder::new(&full)
                    .literal_separator(false)
                    .build()
                    .with_context(|| format!("{flag} {p:?}: not a valid glob"))?;
                set.add(glob);
            }
            Ok(Some(
                set.build()
                    .with_context(|| format!("{flag}: invalid globs"))?,
            ))
        }
        let mut described = Vec::new();
        described.extend(include.iter().map(|p| format!("--include {p:?}")));
        described.extend(exclude.iter().map(|p| format!("--exclude {p:?}")));
        Ok(Self {
            include: build("--include", include)?,
            exclude: build("--exclude", exclude)?,
            described: described.join(" "),
        })
    }

    fn matches(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(path))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(path))
    }

    fn none_matched(&self, what: &str) -> anyhow::Error {
        if self.described.is_empty() {
            anyhow::anyhow!("{what}: no files")
        } else {
            anyhow::anyhow!("{what}: no file matches {}", self.described)
        }
    }
}

/// `HF_HUB_OFFLINE=1`: answer from disk alone.
fn offline(args: &PullArgs, env: &HubEnv, filter: &Filter) -> Result<PathBuf> {
    let (dir, what) = match &args.local_dir {
        Some(dir) => {
            if !dir.is_dir() {
                bail!(
                    "{}: --local-dir does not exist, and HF_HUB_OFFLINE is set so nothing can be fetched",
                    dir.display()
                );
            }
            (dir.clone(), format!("{} (offline)", dir.display()))
        }
        None => {
            let cache = RepoCache::new(&env.cache_dir, &args.repo_id);
            let commit = cache.resolve_offline(&args.revision)?;
            let snap = cache.snapshot_dir(&commit);
            if !snap.is_dir() {
                bail!(
                    "{}: commit {commit} of {} is not in the cache (HF_HUB_OFFLINE is set, so nothing can be fetched)",
                    snap.display(),
                    args.repo_id
                );
            }
            (
                snap,
                format!(
                    "{}@{} (offline, commit {commit})",
                    args.repo_id, args.revision
                ),
            )
        }
    };
    let files: Vec<String> = list_local_files(&dir)?
        .into_iter()
        .filter(|f| filter.matches(f))
        .collect();
    if files.is_empty() {
        return Err(filter.none_matched(&format!("{what}: in the cache")));
    }
    eprintln!("pull: {what}: {} files from the cache", files.len());
    Ok(dir)
}

fn online(args: &PullArgs, env: &HubEnv, filter: &Filter) -> Result<PathBuf> {
    let client = connect(args, env)?;
    let local_dir = match &args.local_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("{}: cannot create", d.display()))?;
            Some(
                d.canonicalize()
                    .with_context(|| format!("{}: cannot resolve", d.display()))?,
            )
        }
        None => None,
    };
    let reporter = Reporter::new();
    let (commit, files) = list(&client, args, filter, &reporter)?;
    let cache = RepoCache::new(&env.cache_dir, &args.repo_id);
    let folder = match &local_dir {
        Some(d) => d.clone(),
        None => {
            cache.tag_cache_dir();
            cache.write_ref(&args.revision, &commit)?;
            cache.snapshot_dir(&commit)
        }
    };
    // On SIGINT/SIGTERM the `.incomplete` parts stay (a re-run resumes them); say so.
    let parts_dir = match &local_dir {
        Some(d) => d.join(".cache"),
        None => cache.root().join("blobs"),
    };
    let _kept = crate::signal::register_kept(move || kept_parts_note(&parts_dir, ".incomplete"));
    let pending: u64 = files
        .iter()
        .filter(|f| local_dir.is_some() || !cache.pointer_path(&commit, &f.path).exists())
        .map(|f| f.size.unwrap_or(0))
        .sum();
    let total: u64 = files.iter().map(|f| f.size.unwrap_or(0)).sum();
    reporter.begin(pending);
    reporter.note(&format!(
        "{}@{} (commit {commit}): {} files, {}",
        args.repo_id,
        args.revision,
        files.len(),
        human_bytes(total)
    ));
    let started = Instant::now();
    let target = Target {
        client: &client,
        cache: &cache,
        local_dir: local_dir.as_deref(),
        repo_id: &args.repo_id,
        commit: &commit,
    };
    let results = fetch_all(&target, &files, args.jobs, &reporter);
    reporter.finish();
    summarize(files.len(), results, started)?;
    Ok(folder)
}

/// A Hub client with the token from `--token`, the environment or the token file (said, never
/// shown).
fn connect(args: &PullArgs, env: &HubEnv) -> Result<HubClient> {
    let token = resolve_token(args.token.as_deref(), env)?;
    if let Some((_, source)) = &token {
        let from = match source {
            TokenSource::Flag => "--token".to_string(),
            TokenSource::Env => "HF_TOKEN".to_string(),
            TokenSource::File => env.token_path.display().to_string(),
        };
        eprintln!("pull: using the token from {from}");
    }
    HubClient::new(
        &env.endpoint,
        token.as_ref().map(|t| &t.0),
        NetConfig::from_env()?,
    )
}

/// The commit the revision names and the files to fetch, largest first (so the last worker is
/// not left alone with the biggest file).
fn list(
    client: &HubClient,
    args: &PullArgs,
    filter: &Filter,
    reporter: &Reporter,
) -> Result<(String, Vec<RepoFile>)> {
    let listing = client.listing(&args.repo_id, &args.revision, reporter)?;
    let mut files: Vec<RepoFile> = listing
        .files
        .into_iter()
        .filter(|f| filter.matches(&f.path))
        .collect();
    if files.is_empty() {
        return Err(filter.none_matched(&format!("{}@{}", args.repo_id, args.revision)));
    }
    files.sort_by(|a, b| {
        b.size
            .unwrap_or(0)
            .cmp(&a.size.unwrap_or(0))
            .then(a.path.cmp(&b.path))
    });
    Ok((listing.commit, files))
}

/// Where the files of one commit go.
struct Target<'a> {
    client: &'a HubClient,
    cache: &'a RepoCache,
    local_dir: Option<&'a Path>,
    repo_id: &'a str,
    commit: &'a str,
}

/// Fetch `files`, `jobs` at a time; a refusal (gated repo, bad token) stops new ones, since it
/// will be the same for every file. Results of the files that started, in order.
fn fetch_all(
    t: &Target,
    files: &[RepoFile],
    jobs: usize,
    reporter: &Reporter,
) -> Vec<(String, Result<Fetched>)> {
    let abort = AtomicBool::new(false);
    let one = |_: &mut (), i: usize| {
        let f = &files[i];
        let r = match t.local_dir {
            Some(d) => t.client.fetch_to_dir(d, t.repo_id, t.commit, f, reporter),
            None => t
                .client
                .fetch_to_cache(t.cache, t.repo_id, t.commit, f, reporter),
        };
        match &r {
            Ok(outcome) => reporter.file_done(&f.path, f.size, *outcome),
            Err(e) => {
                reporter.file_failed(&f.path);
                if crate::error::exit_code(e) == crate::error::REFUSED {
                    abort.store(true, Ordering::Relaxed);
                }
            }
        }
        r
    };
    let stop = || abort.load(Ordering::Relaxed) || crate::signal::received().is_some();
    let results = work_queue(files.len(), jobs, |_| (), one, stop);
    files
        .iter()
        .zip(results)
        .filter_map(|(f, r)| Some((f.path.clone(), r?)))
        .collect()
}

/// The first error (each distinct one said once), or the one summary line.
fn summarize(
    n_files: usize,
    results: Vec<(String, Result<Fetched>)>,
    started: Instant,
) -> Result<()> {
    let mut first_err = None;
    // A refusal or an outage hits every file alike: say it once.
    let mut reported = std::collections::HashSet::new();
    let (mut downloaded, mut bytes, mut linked, mut present) = (0, 0u64, 0, 0);
    for (path, r) in results {
        match r {
            Ok(Fetched::Downloaded { bytes: b, .. }) => {
                downloaded += 1;
                bytes += b;
            }
            Ok(Fetched::Linked) => linked += 1,
            Ok(Fetched::Present) => present += 1,
            Err(e) => {
                if !reported.insert(crate::error::one_line(&e)) {
                    continue;
                }
                let e = e.context(path);
                if first_err.is_none() {
                    first_err = Some(e);
                } else {
                    eprintln!("error: {}", crate::error::one_line(&e));
                }
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "pull: {n_files} files: {downloaded} downloaded ({}, {}/s), {linked} linked from cached blobs, {present} already present; {secs:.1}s",
        human_bytes(bytes),
        human_bytes((bytes as f64 / secs.max(1e-3)) as u64)
    );
    Ok(())
}

/// Progress on stderr: bars on a terminal, a line every few seconds otherwise.
struct Reporter {
    bars: Option<(MultiProgress, ProgressBar)>,
    state: Mutex<ReportState>,
}

struct ReportState {
    total: u64,
    done: u64,
    /// Bytes counted so far per file, so restarts and retries never count twice.
    per_file: HashMap<String, u64>,
    file_bars: HashMap<String, ProgressBar>,
    last_line: Instant,
    started: Instant,
}

const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

impl Reporter {
    fn new() -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            overall.set_prefix("total");
            (multi, overall)
        });
        Self {
            bars,
            state: Mutex::new(ReportState {
                total: 0,
                done: 0,
                per_file: HashMap::new(),
                file_bars: HashMap::new(),
                last_line: Instant::now(),
                started: Instant::now(),
            }),
        }
    }

    fn begin(&self, total: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.total = total;
            st.started = Instant::now();
            st.last_line = Instant::now();
        }
        if let Some((_, overall)) = &self.bars {
            overall.set_length(total);
        }
    }

    fn line(&self, msg: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(format!("pull: {msg}"));
            }
            None => eprintln!("pull: {msg}"),
        }
    }

    /// Move the overall count of `file` to `to` bytes.
    /// Bytes shown so far for `file` (0 before its first report).
    fn shown(&self, file: &str) -> u64 {
        self.state
            .lock()
            .ok()
            .and_then(|st| st.per_file.get(file).copied())
            .unwrap_or(0)
    }

    fn set_file(&self, file: &str, to: u64) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let was = st.per_file.insert(file.to_string(), to).unwrap_or(0);
        st.done = (st.done + to).saturating_sub(was);
        if let Some(b) = st.file_bars.get(file) {
            b.set_position(to);
        }
        match &self.bars {
            Some((_, overall)) => overall.set_position(st.done),
            None => {
                if st.last_line.elapsed() >= PLAIN_INTERVAL {
                    st.last_line = Instant::now();
                    let secs = st.started.elapsed().as_secs_f64().max(1e-3);
                    let pct = (st.done * 100).checked_div(st.total).unwrap_or(0);
                    eprintln!(
                        "pull: {} of {} ({pct}%), {}/s",
                        human_bytes(st.done),
                        human_bytes(st.total),
                        human_bytes((st.done as f64 / secs) as u64)
                    );
                }
            }
        }
    }

    fn file_done(&self, file: &str, size: Option<u64>, outcome: Fetched) {
        let counted = self
            .state
            .lock()
            .ok()
            .and_then(|st| st.per_file.get(file).copied())
            .unwrap_or(0);
        if outcome != Fetched::Present {
            self.set_file(file, size.unwrap_or(counted).max(counted));
        }
        if let Ok(mut st) = self.state.lock() {
            if let Some(b) = st.file_bars.remove(file) {
                b.finish_and_clear();
            }
        }
        match outcome {
            Fetched::Downloaded {
                bytes,
                resumed_from,
            } if resumed_from > 0 => self.line(&format!(
                "{file}: done ({} fetched, {} resumed from disk)",
                human_bytes(bytes),
                human_bytes(resumed_from)
            )),
            Fetched::Downloaded { bytes, .. } => {
                self.line(&format!("{file}: done ({})", human_bytes(bytes)))
            }
            Fetched::Linked => self.line(&format!("{file}: linked to a blob already in the cache")),
            Fetched::Present => {}
        }
    }

    fn file_failed(&self, file: &str) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(b) = st.file_bars.remove(file) {
                b.abandon();
            }
        }
    }

    fn finish(&self) {
        if let Some((_, overall)) = &self.bars {
            overall.finish_and_clear();
        }
    }
}

impl Progress for Reporter {
    fn start(&self, file: &str, total: Option<u64>, done: u64) {
        if let Some((multi, _)) = &self.bars {
            if let Ok(mut st) = self.state.lock() {
                if !st.file_bars.contains_key(file) {
                    let b = multi.insert_from_back(1, ProgressBar::new(total.unwrap_or(0)));
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>12.dim} [{bar:30}] {bytes}/{total_bytes} {wide_msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    b.set_prefix(short(file, 12));
                    b.set_message(file.to_string());
                    st.file_bars.insert(file.to_string(), b);
                } else if let (Some(b), Some(t)) = (st.file_bars.get(file), total) {
                    b.set_length(t);
                }
            }
        } else if done > 0 {
            let already = self
                .state
                .lock()
                .ok()
                .and_then(|st| st.per_file.get(file).copied());
            if already.is_none() {
                self.line(&format!("{file}: resuming at {}", human_bytes(done)));
            }
        }
        self.set_file(file, done);
    }

    fn advance(&self, file: &str, bytes: u64) {
        self.set_file(file, self.shown(file) + bytes);
    }

    fn retry(&self, file: &str, why: &str, wait: Duration, attempt: u32, of: u32) {
        self.line(&format!(
            "{file}: {why}; retry {attempt} of {of} in {:.1}s",
            wait.as_secs_f64()
        ));
    }

    fn note(&self, msg: &str) {
        self.line(msg);
    }
}

/// The tail of a path, to fit a bar's label.
fn short(s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= n {
        s.to_string()
    } else {
        let tail: String = chars[chars.len() - (n - 1)..].iter().collect();
        format!("…{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_semantics_match_huggingface_hub() {
        let f = Filter::new(&["original/*".into()], &[]).unwrap();
        assert!(f.matches("original/params.json"));
        assert!(f.matches("original/sub/x.pth"));
        assert!(!f.matches("config.json"));
        let f = Filter::new(&["original/".into()], &["*.pth".into()]).unwrap();
        assert!(f.matches("original/params.json"));
        assert!(!f.matches("original/consolidated.00.pth"));
        let f = Filter::new(&[], &["*.safetensors".into()]).unwrap();
        assert!(f.matches("config.json"));
        assert!(!f.matches("model-00001-of-00004.safetensors"));
        assert!(Filter::new(&["[".into()], &[]).is_err());
    }
}
