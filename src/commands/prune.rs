//! `llamactl prune [--partials] [--revisions] [--dir DIR]... [--dry-run] [--json]`: removes what
//! interrupted runs and old revisions leave (`store::remove::plan_prune`), never a live run's.
use crate::cli::PruneArgs;
use crate::human::human_bytes;
use crate::store::remove::{plan_prune, Plan, PruneOptions};
use crate::store::Roots;
use anyhow::Result;
use std::path::PathBuf;

pub(crate) fn run(args: &PruneArgs) -> Result<i32> {
    let roots = Roots::from_env()?;
    let opts = PruneOptions {
        partials: args.partials,
        revisions: args.revisions,
        dirs: args.dir.clone(),
    };
    let plan = plan_prune(&roots, &opts);
    for s in &plan.skipped {
        eprintln!("skipped: {s}");
    }
    let freed = match args.dry_run {
        true => plan.bytes(),
        false => plan.execute()?,
    };
    if args.json {
        let doc = serde_json::json!({
            "dry_run": args.dry_run,
            "items": plan.items,
            "skipped": plan.skipped,
            "freed_bytes": freed,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print(&plan, args.dry_run, freed);
    }
    if !args.partials {
        note_parts(&roots, &args.dir);
    }
    Ok(0)
}

fn print(plan: &Plan, dry_run: bool, freed: u64) {
    let (verb, total) = match dry_run {
        true => ("would remove", "would free"),
        false => ("removed", "freed"),
    };
    for i in &plan.items {
        let bytes = human_bytes(i.bytes);
        println!("{verb}  {bytes:>10}  {}  {}", i.what, i.path.display());
    }
    match plan.items.len() {
        0 => println!("nothing to prune"),
        n => println!("{total} {} in {n} item(s)", human_bytes(freed)),
    }
}

/// Say how many resumable parts stay when `--partials` was not given.
fn note_parts(roots: &Roots, dirs: &[PathBuf]) {
    let inv = crate::store::scan::scan(roots, dirs);
    let parts: usize = inv.entries.iter().map(|e| e.partial_files).sum();
    if parts > 0 {
        eprintln!(
            "note: {parts} unfinished download file(s) kept (they resume); --partials removes \
             those no run holds"
        );
    }
}
