//! `llamactl prune [--partials] [--revisions] [--dir DIR]... [--dry-run] [--json]`: removes what
//! interrupted runs and old revisions leave (`store::remove::plan_prune`), never a live run's.
use crate::cli::PruneArgs;
use crate::store::remove::{plan_prune, PruneOptions};
use crate::store::Roots;
use crate::util::human_bytes;
use anyhow::Result;

pub fn run(args: &PruneArgs) -> Result<i32> {
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
    let freed = if args.dry_run {
        plan.bytes()
    } else {
        plan.execute()?
    };
    if args.json {
        let doc = serde_json::json!({
            "dry_run": args.dry_run,
            "items": plan.items,
            "skipped": plan.skipped,
            "freed_bytes": freed,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for i in &plan.items {
        println!(
            "{verb}  {:>10}  {}  {}",
            human_bytes(i.bytes),
            i.what,
            i.path.display()
        );
    }
    if plan.items.is_empty() {
        println!("nothing to prune");
    } else {
        let total = if args.dry_run { "would free" } else { "freed" };
        println!(
            "{total} {} in {} item(s)",
            human_bytes(freed),
            plan.items.len()
        );
    }
    if !args.partials {
        let parts = crate::store::scan::scan(&roots, &args.dir)
            .entries
            .iter()
            .map(|e| e.partial_files)
            .sum::<usize>();
        if parts > 0 {
            eprintln!("note: {parts} unfinished download file(s) kept (they resume); --partials removes those no run holds");
        }
    }
    Ok(0)
}
