//! `llamactl pull` (see CLI.md): a repo from the Hugging Face Hub into the cache `huggingface_hub`
//! uses (or into `--local-dir`), files in parallel, LFS files sha256-checked while streaming.
use super::reporters::{ProgressReporter, Shown};
use crate::cli::PullArgs;
use crate::human::human_bytes;
use crate::net::config::NetConfig;
use crate::net::download::kept_parts_note;
use crate::net::hub::{
    list_local_files, resolve_token, validate_repo_id, validate_revision, Fetched, HubClient,
    HubEnv, RepoCache, RepoFile, TokenSource,
};
use crate::progress::Reporter;
use crate::util::work_queue;
use anyhow::{bail, Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub(crate) fn run(args: &PullArgs) -> Result<i32> {
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
    // Listing messages (retries) before the file count is known.
    let (commit, files) = list(&client, args, filter, &ProgressReporter::stderr(shown()))?;
    let cache = RepoCache::new(&env.cache_dir, &args.repo_id);
    // `rm` and `prune` leave the repo alone while this runs.
    let _lock = crate::store::lock::hold(local_dir.as_deref().unwrap_or(&cache.root()));
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
    let total: u64 = files.iter().map(|f| f.size.unwrap_or(0)).sum();
    // Files already in place count as done at once; the speed counts only bytes fetched.
    let mut reporter = ProgressReporter::stderr(shown().count(files.len(), "files").total(total));
    reporter.message(&format!(
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

/// How `pull` shows progress: every line tagged `pull: `.
fn shown() -> Shown {
    Shown::new("pull").tag_messages()
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
    reporter: &dyn Reporter,
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
    reporter: &ProgressReporter,
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
            Ok(outcome) => {
                if let Some(line) = done_line(&f.path, *outcome) {
                    reporter.message(&line);
                }
            }
            Err(e) => {
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

/// The line `pull` prints when a file is in place.
fn done_line(file: &str, outcome: Fetched) -> Option<String> {
    match outcome {
        Fetched::Downloaded {
            bytes,
            resumed_from,
        } if resumed_from > 0 => Some(format!(
            "{file}: done ({} fetched, {} resumed from disk)",
            human_bytes(bytes),
            human_bytes(resumed_from)
        )),
        Fetched::Downloaded { bytes, .. } => Some(format!("{file}: done ({})", human_bytes(bytes))),
        Fetched::Linked => Some(format!("{file}: linked to a blob already in the cache")),
        Fetched::Present => None,
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
