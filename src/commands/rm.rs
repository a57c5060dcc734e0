//! `llamactl rm MODEL [--revision REV] [--dry-run] [--yes] [--json]`: finds the model
//! (`store::scan`), plans its removal and carries it out (`store::remove`).
use crate::cli::RmArgs;
use crate::error::{Fail, USAGE};
use crate::human::human_bytes;
use crate::store::remove::{self, Item, Plan};
use crate::store::scan::{self, Entry, Place, RepoScan};
use crate::store::Roots;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

pub(crate) fn run(args: &RmArgs) -> Result<i32> {
    let roots = Roots::from_env()?;
    let (entry, rev) = find(&roots, args)?;
    let lock = remove::lock_for_removal(&roots, &entry.path, &entry.name)?;
    let items = match entry.place {
        Place::HfCache => {
            let s = RepoScan::read(&entry.path);
            let commits: BTreeSet<String> = match &rev {
                Some(r) => {
                    [remove::find_revision(&s, r).with_context(|| entry.name.clone())?].into()
                }
                None => s.snapshots.keys().cloned().collect(),
            };
            remove::plan_revisions(&roots, &entry.path, &s, &commits)
        }
        _ if entry.path.is_dir() => vec![Item::tree(
            entry.path.clone(),
            format!("{} folder", entry.formats_label()),
            entry.bytes,
            crate::util::parent_or_dot(&entry.path),
        )],
        _ => vec![Item::file(entry.path.clone(), "GGUF file", entry.bytes)],
    };
    let plan = Plan {
        items,
        skipped: Vec::new(),
        locks: vec![lock],
    };
    if args.dry_run {
        report(args, &plan, true, plan.bytes());
        return Ok(0);
    }
    if !args.yes && std::io::stdin().is_terminal() && !confirm(&entry, &plan)? {
        eprintln!("nothing removed");
        return Ok(0);
    }
    let freed = plan.execute()?;
    report(args, &plan, false, freed);
    Ok(0)
}

/// The one model `args.model` names, and the revision asked for.
fn find(roots: &Roots, args: &RmArgs) -> Result<(Entry, Option<String>)> {
    let arg = args.model.as_str();
    let (entry, at_rev) = if std::fs::symlink_metadata(arg).is_ok() {
        by_path(roots, Path::new(arg))?
    } else {
        by_name(roots, arg)?
    };
    let rev = args.revision.clone().or(at_rev);
    if rev.is_some() && entry.place != Place::HfCache {
        bail!(
            "{}: --revision is for HF cache repos; this is {}",
            entry.name,
            entry.path.display()
        );
    }
    Ok((entry, rev))
}

fn not_a_model(path: &Path) -> anyhow::Error {
    Fail::error(
        USAGE,
        format!(
            "{}: not a model llamactl recognizes (a Meta or HF folder, a GGUF file, or an HF cache \
             repo or snapshot); not removing it",
            path.display()
        ),
    )
}

fn by_path(roots: &Roots, path: &Path) -> Result<(Entry, Option<String>)> {
    let abs = std::fs::canonicalize(path)
        .with_context(|| format!("{}: cannot resolve", path.display()))?;
    let cache = std::fs::canonicalize(&roots.hf_cache).unwrap_or_else(|_| roots.hf_cache.clone());
    if let Ok(rel) = abs.strip_prefix(&cache) {
        return hf_by_path(&cache, rel).ok_or_else(|| not_a_model(path));
    }
    scan::model_in(&abs, Place::Dir)
        .map(|(e, _)| (e, None))
        .ok_or_else(|| not_a_model(path))
}

/// A path inside the HF cache: a repo folder, or a snapshot (that revision).
fn hf_by_path(cache: &Path, rel: &Path) -> Option<(Entry, Option<String>)> {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let repo = parts.first().filter(|p| p.starts_with("models--"))?;
    let inv = scan_repo(cache, repo)?;
    match parts.as_slice() {
        [_] => Some((inv, None)),
        [_, snaps, commit] if snaps == "snapshots" => Some((inv, Some(commit.clone()))),
        _ => None,
    }
}

fn scan_repo(cache: &Path, folder: &str) -> Option<Entry> {
    let roots = Roots {
        llama_home: PathBuf::new(),
        checkpoints: PathBuf::new(),
        hf_cache: cache.to_path_buf(),
    };
    let id = scan::repo_id_of(folder)?;
    scan::scan(&roots, &[])
        .entries
        .into_iter()
        .find(|e| e.name == id)
}

/// A name from `ls` (descriptor, repo id, file name), a catalog name, or `REPO@REV`.
fn by_name(roots: &Roots, arg: &str) -> Result<(Entry, Option<String>)> {
    let inv = scan::scan(roots, &[]);
    let (name, rev) = match arg.split_once('@') {
        Some((n, r)) if n.contains('/') => (n, Some(r.to_string())),
        _ => (arg, None),
    };
    let hits: Vec<&Entry> = inv
        .entries
        .iter()
        .filter(|e| {
            e.name.eq_ignore_ascii_case(name)
                || e.catalog.is_some_and(|c| c.eq_ignore_ascii_case(name))
        })
        .collect();
    match hits.as_slice() {
        [one] => Ok(((*one).clone(), rev)),
        [] => Err(Fail::error(
            USAGE,
            format!("{arg}: no model of that name on disk (see `llamactl ls`); give a path to remove one elsewhere"),
        )),
        many => Err(Fail::error(
            USAGE,
            format!(
                "{arg}: names {} models: {}; give the one to remove by its path or repo id",
                many.len(),
                many.iter().map(|e| e.path.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn confirm(entry: &Entry, plan: &Plan) -> Result<bool> {
    for i in &plan.items {
        eprintln!(
            "  {:>10}  {}  {}",
            human_bytes(i.bytes),
            i.what,
            i.path.display()
        );
    }
    eprint!(
        "remove {} ({} freed)? [y/N] ",
        entry.name,
        human_bytes(plan.bytes())
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn report(args: &RmArgs, plan: &Plan, dry_run: bool, freed: u64) {
    if args.json {
        let doc =
            serde_json::json!({"dry_run": dry_run, "items": plan.items, "freed_bytes": freed});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for i in &plan.items {
        println!(
            "{verb}  {:>10}  {}  {}",
            human_bytes(i.bytes),
            i.what,
            i.path.display()
        );
    }
    let total = if dry_run { "would free" } else { "freed" };
    println!("{total} {}", human_bytes(freed));
}
