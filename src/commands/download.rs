//! `llamactl download` (see CLI.md): Meta's signed-URL download, done as download.sh does it
//! (same prompts, same layout) but with md5 checked while streaming, resume, expiry and parallelism.
//!
//! Order of work: every input is validated before the first request; the link's expiry is printed
//! (an expired link is refused); `LICENSE`, `USE_POLICY` and each model's `checklist.chk` come first;
//! then every other file, `--jobs` at a time, each verified against the checklist before it gets its
//! final name. A 403 stops new transfers (the link is spent) and keeps every part for the next run.
use super::reporters::{ProgressReporter, Shown};
use crate::checkpoint::hashing::md5_file;
use crate::cli::DownloadArgs;
use crate::error::{self, Fail};
use crate::human::{human_bytes, human_duration};
use crate::net::config::NetConfig;
use crate::net::download::{kept_parts_note, part_path, FileRequest, HashKind, Http, HttpError};
use crate::net::signed_url::{self, redact, SignedUrl};
use crate::progress::{Reporter, Task};
use crate::store::catalog::{self, Model};
use crate::util::work_queue;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where each file's URL comes from.
enum Links {
    /// One signed URL; `*` becomes the remote path.
    Signed(SignedUrl),
    /// A manifest: explicit URLs per file, optionally a `*` URL for the rest.
    Manifest {
        files: BTreeMap<String, String>,
        fallback: Option<SignedUrl>,
        expires_on: Option<SystemTime>,
        sizes: BTreeMap<String, u64>,
    },
}

impl Links {
    /// URL for a file known locally as `local` and remotely as `remote`.
    fn url(&self, local: &str, remote: &str) -> Result<String> {
        match self {
            Links::Signed(u) => Ok(u.for_path(remote)),
            Links::Manifest {
                files, fallback, ..
            } => files
                .get(local)
                .or_else(|| files.get(remote))
                .cloned()
                .or_else(|| fallback.as_ref().map(|u| u.for_path(remote)))
                .ok_or_else(|| anyhow!("the manifest has no URL for {local}")),
        }
    }

    /// The size a file must have, when the manifest says.
    fn size(&self, local: &str, remote: &str) -> Option<u64> {
        match self {
            Links::Signed(_) => None,
            Links::Manifest { sizes, .. } => {
                sizes.get(local).or_else(|| sizes.get(remote)).copied()
            }
        }
    }

    /// The earliest expiry among the links.
    fn expiry(&self) -> Result<Option<SystemTime>> {
        match self {
            Links::Signed(u) => u.expiry(),
            Links::Manifest {
                files,
                fallback,
                expires_on,
                ..
            } => {
                if expires_on.is_some() {
                    return Ok(*expires_on);
                }
                let mut earliest: Option<SystemTime> = None;
                for u in files.values() {
                    if let Some(t) = signed_url::policy_expiry(u)? {
                        earliest = Some(earliest.map_or(t, |e| e.min(t)));
                    }
                }
                if let Some(t) = fallback.as_ref().map(|f| f.expiry()).transpose()?.flatten() {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                }
                Ok(earliest)
            }
        }
    }

    fn display(&self) -> String {
        match self {
            Links::Signed(u) => u.display(),
            Links::Manifest { files, .. } => format!("manifest with {} file URLs", files.len()),
        }
    }
}

/// The manifest file (`--manifest`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestDoc {
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// A signed URL with `*` for files not listed in `files`.
    #[serde(default)]
    url: Option<String>,
    /// Epoch seconds or an RFC 3339 UTC time (`2026-05-01T12:00:00Z`).
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
    /// Optional exact sizes per file (same keys as `files`): a body far smaller is an error page.
    #[serde(default)]
    sizes: BTreeMap<String, u64>,
}

pub(crate) fn run(args: &DownloadArgs) -> Result<i32> {
    if args.jobs == 0 || args.connections == 0 {
        bail!("--jobs and --connections must be at least 1");
    }
    let (links, models) = inputs(args)?;
    let dest = Dest::new(args.dir.as_deref())?;
    // Every URL must exist before the first request, so a bad manifest fails early.
    let plan = plan(&links, &models, &dest)?;
    eprintln!("link: {}", links.display());
    announce_expiry(&links)?;

    let folders: Vec<PathBuf> = models.iter().map(|m| dest.folder(m)).collect();
    // Folders this run makes go again if it ends with nothing in them (declared before the
    // locks, so it acts after they are released).
    let _made = NewFolders::before(folders.iter().chain([&dest.models]));
    std::fs::create_dir_all(&dest.models)
        .with_context(|| format!("{}: cannot create", dest.models.display()))?;
    // `rm` and `prune` leave these folders alone while this runs.
    let _locks =
        crate::store::lock::hold_all(&folders.iter().map(|f| f.as_path()).collect::<Vec<_>>());
    // On SIGINT/SIGTERM the parts stay (a re-run resumes them); say so in the one line.
    let parts_dir = dest.models.clone();
    let _kept = crate::signal::register_kept(move || kept_parts_note(&parts_dir, ".part"));
    space_estimate(&models, &dest);
    let n_files = plan.first.len() + plan.rest.iter().map(|v| v.len()).sum::<usize>();
    // More workers than files would only idle (each holds a client and its I/O thread).
    let jobs = args.jobs.min(n_files.max(1));
    eprintln!(
        "downloading {} into {} ({} at a time)",
        models.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
        dest.models.display(),
        jobs
    );

    // One client per worker: each has its own I/O thread, so parallel streams do not share one.
    let cfg = NetConfig::from_env()?;
    let clients = (0..jobs)
        .map(|_| Http::new(cfg.clone()))
        .collect::<Result<Vec<_>>>()?;
    let mut progress = ProgressReporter::stderr(Shown::new("progress").count(n_files, "files"));
    let state = RunState {
        clients,
        progress: &progress,
        verify: !args.no_verify,
        connections: args.connections,
        stop: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
    };
    // Phase 1: top-level files and every checklist; phase 2: the rest of each model whose
    // checklist arrived.
    let checklists = state.fetch_checklists(&plan.first, models.len());
    let jobs = state.checked_jobs(&plan.rest, &checklists);
    let ok = state.run_pool(&jobs);
    let verified = state.record_verified(&models, &dest, &checklists, &jobs, &ok);

    let failures = state
        .failures
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let (fetched, elapsed) = (progress.fetched(), progress.elapsed());
    progress.finish();
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = human_bytes((fetched as f64 / secs) as u64);
    eprintln!("fetched {} in {secs:.1}s ({rate}/s)", human_bytes(fetched));
    for folder in &verified {
        println!("{}", folder.display());
    }
    outcome(&failures, verified.len(), !args.no_verify)
}

/// Folders (and their missing parents) that did not exist before the run; on drop, those left
/// empty are removed, deepest first, so a failed first download leaves no empty model folder.
struct NewFolders(Vec<PathBuf>);

impl NewFolders {
    fn before<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> NewFolders {
        let mut missing = Vec::new();
        for p in paths {
            let mut cur = Some(p.as_path());
            while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
                missing.push(d.to_path_buf());
                cur = d.parent();
            }
        }
        missing.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        missing.dedup();
        NewFolders(missing)
    }
}

impl Drop for NewFolders {
    fn drop(&mut self) {
        for d in &self.0 {
            // Fails, as it should, on a folder that holds anything.
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The links and the models, from the flags, the manifest or (on a terminal) prompts.
fn inputs(args: &DownloadArgs) -> Result<(Links, Vec<&'static Model>)> {
    let tty = std::io::stdin().is_terminal();
    let (links, manifest_models) = match &args.manifest {
        Some(path) => read_manifest(path)?,
        None => {
            let raw = match &args.url {
                Some(u) => u.clone(),
                None if tty => prompt("Enter the URL from email: ")?,
                None => bail!(
                    "no download URL: pass --url or set LLAMA_DOWNLOAD_URL (stdin is not a terminal, so there is no prompt)"
                ),
            };
            (Links::Signed(SignedUrl::parse(&raw)?), Vec::new())
        }
    };
    let names = match (&args.models, manifest_models.is_empty()) {
        (Some(m), _) => m.clone(),
        (None, false) => manifest_models.join(","),
        (None, true) if tty => {
            let all: Vec<&str> = catalog::signed_url_models().map(|m| m.name).collect();
            let answer = prompt(&format!(
                "Enter the list of models to download without spaces ({}), or press Enter for all: ",
                all.join(",")
            ))?;
            if answer.trim().is_empty() {
                all.join(",")
            } else {
                answer
            }
        }
        (None, true) => bail!(
            "no models chosen: pass --models (e.g. --models 8B-instruct); stdin is not a terminal, so there is no prompt"
        ),
    };
    Ok((links, resolve_models(&names)?))
}

/// Say when the link expires; an expired link is refused before any request.
fn announce_expiry(links: &Links) -> Result<()> {
    match links.expiry() {
        Ok(Some(t)) => {
            let when = httpdate::fmt_http_date(t);
            match t.duration_since(SystemTime::now()) {
                Ok(left) => eprintln!("link expires {when} (in {})", human_duration(left)),
                Err(ago) => {
                    return Err(error::refused(format!(
                        "the download link expired {when} ({} ago); request a new one from Meta (files already here are kept and the new link resumes them)",
                        human_duration(ago.duration())
                    )))
                }
            }
        }
        Ok(None) => eprintln!("link expiry unknown (no CloudFront Policy in the URL)"),
        Err(e) => eprintln!("link expiry unknown: {e}"),
    }
    Ok(())
}

/// Exit 0 when nothing failed; else every failure said once, and the most serious one (a
/// refusal, then the network, then usage) decides the exit code.
fn outcome(failures: &[Failure], complete: usize, verify: bool) -> Result<i32> {
    if failures.is_empty() {
        eprintln!(
            "done: {complete} model(s) complete{}",
            if verify {
                ", every file matches checklist.chk"
            } else {
                " (not verified: --no-verify)"
            }
        );
        return Ok(error::OK);
    }
    let rank = |c: i32| match c {
        error::REFUSED => 0,
        error::NETWORK => 1,
        error::USAGE => 2,
        _ => 3,
    };
    let primary = failures
        .iter()
        .enumerate()
        .min_by_key(|(_, f)| rank(f.code))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let mut said = std::collections::HashSet::new();
    said.insert(failures[primary].message.as_str());
    for f in failures {
        if said.insert(f.message.as_str()) {
            eprintln!("error: {}", f.message);
        }
    }
    let f = &failures[primary];
    Err(Fail::error(f.code, f.message.clone()))
}

#[derive(Clone, Debug)]
struct Job {
    /// Path relative to the download dir, as shown to the user.
    label: String,
    url: String,
    dest: PathBuf,
    md5: Option<String>,
    /// Exact size, when the manifest gives it.
    size: Option<u64>,
    /// Index into the chosen models (None for top-level files).
    model: Option<usize>,
}

impl Job {
    fn file_name(&self) -> String {
        self.dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

struct Plan {
    /// Top-level files, then each model's checklist.chk.
    first: Vec<Job>,
    /// Per model: shards, params.json, tokenizer.model.
    rest: Vec<Vec<Job>>,
}

/// Where the files go. `--dir DIR` is download.sh's layout (`DIR/LICENSE`,
/// `DIR/Meta-Llama-3-8B/...`); without it, Meta's store, as `llama download` fills it:
/// `{llama_home}/checkpoints/{descriptor}/...`, with the license files in `{llama_home}` (Meta's
/// CLI lists every entry of `checkpoints/` as a model).
struct Dest {
    top: PathBuf,
    models: PathBuf,
    store: bool,
}

impl Dest {
    fn new(dir: Option<&Path>) -> Result<Dest> {
        Ok(match dir {
            Some(d) => Dest {
                top: d.to_path_buf(),
                models: d.to_path_buf(),
                store: false,
            },
            None => {
                let roots = crate::store::Roots::from_env()?;
                Dest {
                    top: roots.llama_home,
                    models: roots.checkpoints,
                    store: true,
                }
            }
        })
    }

    fn folder(&self, m: &Model) -> PathBuf {
        match self.store {
            true => self.models.join(m.store_folder()),
            false => self.models.join(m.local_folder),
        }
    }
}

fn plan(links: &Links, models: &[&'static Model], dest: &Dest) -> Result<Plan> {
    let mut first = Vec::new();
    for name in catalog::TOP_LEVEL_FILES {
        first.push(Job {
            label: name.to_string(),
            url: links.url(name, name)?,
            dest: dest.top.join(name),
            md5: None,
            size: links.size(name, name),
            model: None,
        });
    }
    let mut rest = Vec::new();
    for (mi, m) in models.iter().enumerate() {
        let remote = m
            .remote_folder()
            .ok_or_else(|| anyhow!("{}: not offered through Meta's signed URL", m.name))?;
        let mut files = Vec::new();
        for f in m.files() {
            let local = format!("{}/{f}", m.local_folder);
            let remote_path = format!("{remote}/{f}");
            let job = Job {
                url: links.url(&local, &remote_path)?,
                size: links.size(&local, &remote_path),
                dest: dest.folder(m).join(&f),
                label: local,
                md5: None,
                model: Some(mi),
            };
            if f == "checklist.chk" {
                first.push(job);
            } else {
                files.push(job);
            }
        }
        rest.push(files);
    }
    Ok(Plan { first, rest })
}

fn resolve_models(names: &str) -> Result<Vec<&'static Model>> {
    let mut out: Vec<&'static Model> = Vec::new();
    for raw in names.split(',') {
        let name = raw.trim();
        if name.is_empty() {
            continue;
        }
        let known: Vec<&str> = catalog::signed_url_models().map(|m| m.name).collect();
        let m = catalog::find(name)
            .ok_or_else(|| anyhow!("unknown model {name:?}; choose from {}", known.join(",")))?;
        if m.remote_folder().is_none() {
            bail!(
                "{}: not offered through a Llama 3 download link; use `llamactl pull {} --include 'original/*'`",
                m.name,
                m.hf_repo
            );
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        bail!("no models chosen");
    }
    Ok(out)
}

fn read_manifest(path: &Path) -> Result<(Links, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    // serde quotes offending values, which may be signed URLs: redact its message.
    let doc: ManifestDoc = serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{}: not a download manifest: {}",
            path.display(),
            redact(&e.to_string())
        )
    })?;
    let expires_on = match &doc.expires_on {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(parse_time(v).ok_or_else(|| {
            anyhow!(
                "{}: expires_on {v} is not epoch seconds or RFC 3339",
                path.display()
            )
        })?),
    };
    for (k, u) in &doc.files {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            bail!("{}: files.{k}: not an http(s) URL", path.display());
        }
    }
    let fallback = match &doc.url {
        Some(u) => Some(SignedUrl::parse(u).with_context(|| format!("{}: url", path.display()))?),
        None => None,
    };
    if doc.files.is_empty() && fallback.is_none() {
        bail!("{}: neither files nor url given", path.display());
    }
    Ok((
        Links::Manifest {
            files: doc.files,
            fallback,
            expires_on,
            sizes: doc.sizes,
        },
        doc.models,
    ))
}

/// Epoch seconds (number or string) or `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn parse_time(v: &serde_json::Value) -> Option<SystemTime> {
    if let Some(n) = v.as_u64() {
        return Some(UNIX_EPOCH + Duration::from_secs(n));
    }
    let s = v.as_str()?.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(UNIX_EPOCH + Duration::from_secs(n));
    }
    if let Ok(t) = httpdate::parse_http_date(s) {
        return Some(t);
    }
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (clock, offset_s) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else {
        let pos = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let mut t = clock.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next().unwrap_or("0").parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 {
        return None;
    }
    let epoch = days_from_civil(y, mo, da) * 86400 + h * 3600 + mi * 60 + sec as i64 - offset_s;
    u64::try_from(epoch)
        .ok()
        .map(|e| UNIX_EPOCH + Duration::from_secs(e))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn prompt(question: &str) -> Result<String> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the answer from stdin")?;
    Ok(line.trim().to_string())
}

/// Warn early when the catalog's sizes exceed the free space; each file re-checks with its real
/// size before its first byte (see `FileRequest::check_space`), which is the check that refuses.
fn space_estimate(models: &[&'static Model], dest: &Dest) {
    let dir = &dest.models;
    let need: u64 = models
        .iter()
        .map(|m| {
            m.approx_bytes
                .saturating_sub(catalog::folder_status(m, &dest.folder(m)).bytes_on_disk)
        })
        .sum();
    if let Ok(free) = crate::util::free_disk_bytes(dir) {
        if free < need {
            eprintln!(
                "warning: these models take about {} and {} has {} free",
                human_bytes(need),
                dir.display(),
                human_bytes(free)
            );
        }
    }
}

struct Failure {
    code: i32,
    message: String,
    /// The link was refused (401/403) or the network is gone after retries: every other file
    /// would fail the same way, so no new transfer starts (running ones finish or fail alone).
    stops_all: bool,
}

struct RunState<'a> {
    /// One per worker.
    clients: Vec<Http>,
    progress: &'a ProgressReporter,
    verify: bool,
    connections: usize,
    /// Set by a failure that dooms the rest (see `Failure::stops_all`).
    stop: AtomicBool,
    failures: Mutex<Vec<Failure>>,
}

impl RunState<'_> {
    fn fail(&self, f: Failure) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    /// Run the jobs one per client at a time; returns per job whether its file is complete (and
    /// verified).
    fn run_pool(&self, list: &[Job]) -> Vec<bool> {
        let client = |worker: usize| &self.clients[worker];
        let one = |http: &mut &Http, i: usize| self.one(&list[i], http);
        let stop = || self.stop.load(Ordering::SeqCst) || crate::signal::received().is_some();
        work_queue(list.len(), self.clients.len(), client, one, stop)
            .into_iter()
            .map(|ok| ok.unwrap_or(false))
            .collect()
    }

    /// Fetch the top-level files and each model's checklist; a checklist that does not parse is
    /// removed (never kept under its final name) and its model skipped.
    fn fetch_checklists(
        &self,
        first: &[Job],
        n_models: usize,
    ) -> Vec<Option<BTreeMap<String, String>>> {
        let ok = self.run_pool(first);
        let mut checklists = vec![None; n_models];
        for (job, ok) in first.iter().zip(ok) {
            let (Some(mi), true) = (job.model, ok) else {
                continue;
            };
            match std::fs::read_to_string(&job.dest)
                .map_err(anyhow::Error::from)
                .and_then(|t| catalog::parse_checklist(&t))
            {
                Ok(list) => checklists[mi] = Some(list),
                Err(e) => {
                    let _ = std::fs::remove_file(&job.dest);
                    self.fail(Failure {
                        code: error::REFUSED,
                        message: format!("{}: not a checklist ({e}); removed", job.label),
                        stops_all: false,
                    });
                }
            }
        }
        checklists
    }

    /// The files of every model whose checklist arrived, each with its md5 from the checklist.
    fn checked_jobs(
        &self,
        rest: &[Vec<Job>],
        checklists: &[Option<BTreeMap<String, String>>],
    ) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (files, list) in rest.iter().zip(checklists) {
            let Some(list) = list else { continue };
            for job in files {
                let mut job = job.clone();
                job.md5 = list.get(&job.file_name()).cloned();
                if job.md5.is_none() && self.verify {
                    self.progress.message(&format!(
                        "warning: {}: not listed in checklist.chk, so it cannot be verified",
                        job.label
                    ));
                }
                jobs.push(job);
            }
        }
        jobs
    }

    /// Record what verified, per model, for `list` and for skipping it next time; returns the
    /// folders of the models that are complete.
    fn record_verified(
        &self,
        models: &[&'static Model],
        dest: &Dest,
        checklists: &[Option<BTreeMap<String, String>>],
        jobs: &[Job],
        ok: &[bool],
    ) -> Vec<PathBuf> {
        let mut complete = Vec::new();
        for (mi, model) in models.iter().enumerate() {
            let Some(list) = &checklists[mi] else {
                continue;
            };
            let folder = dest.folder(model);
            let mut marker = catalog::read_marker(&folder);
            let mut all_ok = true;
            for (job, ok) in jobs.iter().zip(ok).filter(|(j, _)| j.model == Some(mi)) {
                if !*ok {
                    all_ok = false;
                } else if let (Some(md5), true) = (&job.md5, self.verify) {
                    if let Ok(v) = catalog::VerifiedFile::of(&job.dest, md5) {
                        marker.insert(job.file_name(), v);
                    }
                }
            }
            if self.verify {
                marker.retain(|name, _| list.contains_key(name));
                if let Err(e) = catalog::write_marker(&folder, &marker) {
                    self.progress.message(&format!("warning: {e:#}"));
                }
            }
            if all_ok && (!self.verify || catalog::is_verified(&folder)) {
                complete.push(folder);
            }
        }
        complete
    }

    fn one(&self, job: &Job, http: &Http) -> bool {
        let fp = self.progress.task(&job.label, None);
        let result = self.fetch(job, fp.as_ref(), http);
        fp.finish();
        match result {
            Ok(line) => {
                self.progress.message(&line);
                true
            }
            Err(f) => {
                if f.stops_all && !self.stop.swap(true, Ordering::SeqCst) {
                    self.progress.message(&format!(
                        "{}: failed; no new transfers will start (running ones go on)",
                        job.label
                    ));
                }
                self.fail(f);
                false
            }
        }
    }

    fn fetch(&self, job: &Job, fp: &dyn Task, http: &Http) -> Result<String, Failure> {
        let md5 = job.md5.as_ref().filter(|_| self.verify);
        if job.dest.exists() {
            match self.existing(job, md5) {
                Ok(Some(line)) => return Ok(line),
                Ok(None) => {}
                Err(e) => {
                    return Err(Failure {
                        code: error::USAGE,
                        message: format!("{}: {e}", job.dest.display()),
                        stops_all: false,
                    })
                }
            }
        }
        let mut req = FileRequest::new(job.url.clone(), job.dest.clone());
        req.hash = if md5.is_some() {
            HashKind::Md5
        } else {
            HashKind::None
        };
        req.expected_digest = md5.cloned();
        req.expected_size = job.size;
        req.connections = self.connections;
        // No file behind a download link is a web page (LICENSE and USE_POLICY are plain
        // text): an HTML/XML body is the CDN's error page, never saved under the file's name.
        req.reject_markup = true;
        match http.download_to_file(&req, fp) {
            Ok(d) => {
                let mut line = format!("ok    {} ({})", job.label, human_bytes(d.size));
                if md5.is_some() {
                    line.push_str(", md5 ok");
                }
                if d.resumed_from > 0 {
                    line.push_str(&format!(", resumed at {}", human_bytes(d.resumed_from)));
                }
                Ok(line)
            }
            Err(e) => Err(self.explain(job, e)),
        }
    }

    /// A file already under its final name: keep it if it is known good, else fetch it again.
    fn existing(&self, job: &Job, md5: Option<&String>) -> Result<Option<String>> {
        let Some(md5) = md5 else {
            return Ok(Some(format!("ok    {} (already here)", job.label)));
        };
        let folder = job.dest.parent().unwrap_or(Path::new("."));
        let marker = catalog::read_marker(folder);
        if marker
            .get(&job.file_name())
            .is_some_and(|v| &v.md5 == md5 && v.matches(&job.dest))
        {
            return Ok(Some(format!("ok    {} (already verified)", job.label)));
        }
        let got = md5_file(&job.dest, &|_| {})?;
        if &got == md5 {
            return Ok(Some(format!("ok    {} (already here, md5 ok)", job.label)));
        }
        self.progress.message(&format!(
            "{}: already here but its md5 {got} is not the checklist's {md5}; fetching it again",
            job.label
        ));
        std::fs::remove_file(&job.dest)?;
        Ok(None)
    }

    /// One line saying what went wrong with a file, and the exit code it implies. A kept part is
    /// mentioned only when there is one (the engine removes a part that stayed empty).
    fn explain(&self, job: &Job, e: HttpError) -> Failure {
        let code = e.exit_code();
        let stops_all = matches!(
            e,
            HttpError::Refused { .. } | HttpError::Network { .. } | HttpError::Unreachable(_)
        );
        let message = match &e {
            HttpError::Refused { status, detail, .. } => format!(
                "{}: HTTP {status}{detail}: the download link has expired or its download count is used up; {}",
                job.label,
                match kept_part(job) {
                    Some(n) => format!(
                        "its part ({}) is kept, and re-running with a new link from Meta resumes it",
                        human_bytes(n)
                    ),
                    None => "re-run with a new link from Meta".to_string(),
                }
            ),
            HttpError::NotFound { .. } => match job.model {
                Some(_) => format!(
                    "{}: HTTP 404: this model is not part of this download link",
                    job.label
                ),
                None => format!("{}: HTTP 404: not found behind this download link", job.label),
            },
            // The same for every file: no file name, so it is said once.
            HttpError::Unreachable(u) => u.to_string(),
            HttpError::Network { attempts, last, .. } => format!(
                "{}: network failure after {attempts} attempts ({last}); {}",
                job.label,
                match kept_part(job) {
                    Some(n) => format!("its part ({}) is kept, re-run to resume", human_bytes(n)),
                    None => "nothing of it was kept".to_string(),
                }
            ),
            HttpError::Mismatch {
                expected, actual, ..
            } => format!(
                "{}: md5 mismatch after fetching it twice: checklist.chk says {expected}, the download is {actual}; removed",
                job.label
            ),
            other => format!("{}: {}", job.label, redact(&other.to_string())),
        };
        Failure {
            code,
            message,
            stops_all,
        }
    }
}

/// The size of the part a failed file left for the next run, if it left one.
fn kept_part(job: &Job) -> Option<u64> {
    std::fs::metadata(part_path(&job.dest))
        .ok()
        .map(|m| m.len())
        .filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_epoch() {
        let t = |s: &str| parse_time(&serde_json::Value::String(s.into()));
        let e = |n: u64| Some(UNIX_EPOCH + Duration::from_secs(n));
        assert_eq!(t("1970-01-02T00:00:00Z"), e(86400));
        assert_eq!(t("2024-05-31T12:00:00Z"), e(1717156800));
        assert_eq!(t("2024-05-31T14:00:00+02:00"), e(1717156800));
        assert_eq!(t("1717156800"), e(1717156800));
        assert_eq!(parse_time(&serde_json::json!(5)), e(5));
        assert_eq!(t("tomorrow"), None);
    }

    #[test]
    fn model_names() {
        let m = resolve_models("8b, 70B-INSTRUCT,8B").unwrap();
        assert_eq!(
            m.iter().map(|m| m.name).collect::<Vec<_>>(),
            ["8B", "70B-instruct"]
        );
        assert!(resolve_models("8B,13B").is_err());
        assert!(resolve_models("Llama3.2-1B").is_err());
        assert!(resolve_models(" , ").is_err());
    }
}
