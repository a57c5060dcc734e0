//! `llamactl ls` (and `list --downloaded`): one table of every model on disk, from
//! `store::scan`; `--verify` re-checks each through `store::check`.
use crate::cli::LsArgs;
use crate::human::human_bytes;
use crate::store::scan::{self, Entry, Inventory, Place};
use crate::store::{check, Roots};
use anyhow::Result;
use serde_json::json;

pub(crate) fn run(args: &LsArgs) -> Result<i32> {
    let roots = Roots::from_env()?;
    let mut inv = scan::scan(&roots, &args.dir);
    if args.verify {
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        for e in &mut inv.entries {
            eprintln!("verifying {} ...", e.name);
            check::verify(e, jobs);
        }
    }
    for w in &inv.warnings {
        eprintln!("warning: {w}");
    }
    let stale: Vec<_> = [roots.checkpoints.clone(), roots.hf_cache.join(".locks")]
        .iter()
        .chain(args.dir.iter())
        .flat_map(|d| crate::output::stale_temps(d, None))
        .collect();
    if !stale.is_empty() {
        let bytes = stale.iter().map(|s| s.bytes).sum();
        eprintln!(
            "note: {} temp dir(s) of interrupted runs ({}); `llamactl prune` removes them",
            stale.len(),
            human_bytes(bytes)
        );
    }
    if args.json {
        let doc = json!({
            "store": roots.checkpoints,
            "hf_cache": roots.hf_cache,
            "models": inv.entries,
            "total_bytes": inv.total_bytes,
            "warnings": inv.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_table(&inv, args.revisions);
    }
    let failed = inv.entries.iter().any(|e| e.verified == "failed");
    Ok(if failed { 1 } else { 0 })
}

fn place_label(e: &Entry) -> String {
    match e.place {
        Place::Store => "store".into(),
        Place::HfCache => {
            let mut refs: Vec<String> = e.revisions.iter().flat_map(|r| r.refs.clone()).collect();
            refs.sort();
            match refs.is_empty() {
                true => "hf cache".into(),
                false => format!("hf cache ({})", refs.join(", ")),
            }
        }
        Place::Dir => e.path.display().to_string(),
    }
}

/// "3 days ago", as `ollama list` and `hf cache scan` say it.
fn ago(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let d = now.saturating_sub(secs);
    let (n, unit) = match d {
        0..=59 => return "just now".into(),
        60..=3599 => (d / 60, "minute"),
        3600..=86399 => (d / 3600, "hour"),
        86400..=2_591_999 => (d / 86400, "day"),
        2_592_000..=31_535_999 => (d / 2_592_000, "month"),
        _ => (d / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

fn row(e: &Entry) -> [String; 9] {
    [
        e.name.clone(),
        e.formats_label(),
        e.dtype.clone().unwrap_or_else(|| "-".into()),
        e.mp.map_or("-".into(), |m| m.to_string()),
        human_bytes(e.bytes),
        e.files.to_string(),
        format!(
            "{}{}",
            e.verified,
            if e.partial_files > 0 { "*" } else { "" }
        ),
        ago(e.modified),
        place_label(e),
    ]
}

const HEAD: [&str; 9] = [
    "NAME", "FORMAT", "DTYPE", "MP", "SIZE", "FILES", "VERIFIED", "MODIFIED", "WHERE",
];

/// Columns padded to the widest cell; numbers right-aligned.
fn line(w: &[usize], c: &[String]) -> String {
    let mut out = String::new();
    for (i, cell) in c.iter().enumerate() {
        let pad = w[i].saturating_sub(cell.chars().count());
        let right = matches!(i, 3..=5);
        if right {
            out.push_str(&" ".repeat(pad));
        }
        out.push_str(cell);
        if !right && i + 1 < c.len() {
            out.push_str(&" ".repeat(pad));
        }
        if i + 1 < c.len() {
            out.push_str("  ");
        }
    }
    out.trim_end().to_string()
}

fn print_revisions(e: &Entry) {
    for rev in &e.revisions {
        let refs = match rev.refs.is_empty() {
            true => "detached".to_string(),
            false => rev.refs.join(", "),
        };
        println!(
            "  @{}  {}  {} files  {}  ({refs})",
            rev.commit,
            human_bytes(rev.bytes),
            rev.files,
            ago(rev.modified)
        );
    }
}

fn print_table(inv: &Inventory, revisions: bool) {
    let rows: Vec<[String; 9]> = inv.entries.iter().map(row).collect();
    let mut w: Vec<usize> = HEAD.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    println!("{}", line(&w, &HEAD.map(String::from)));
    for (e, r) in inv.entries.iter().zip(&rows) {
        println!("{}", line(&w, r));
        if revisions {
            print_revisions(e);
        }
    }
    let n = inv.entries.len();
    println!(
        "{n} model{}, {} on disk (shared files counted once)",
        if n == 1 { "" } else { "s" },
        human_bytes(inv.total_bytes)
    );
    if inv.entries.iter().any(|e| e.partial_files > 0) {
        println!("* unfinished downloads inside: run the download again to resume, or `llamactl prune --partials`");
    }
}
