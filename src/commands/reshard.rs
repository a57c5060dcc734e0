//! `llamactl reshard` (see CLI.md): argument checks, the output directory, progress; the work
//! (shards, params.json, tokenizer.model, checklist.chk) is `ops::reshard`.
use super::reporters::{FinishLines, ProgressReporter, Shown};
use crate::checkpoint::checklist::Entry;
use crate::checkpoint::fp8;
use crate::cli::ReshardArgs;
use crate::human::human_bytes;
use crate::ops::reshard::Plan;
use crate::output::{check_dst_outside_src, AtomicDir};
use crate::store::{lock, resolve, resolve::Want};
use crate::util::ensure_free_disk;
use anyhow::{bail, Result};
use std::time::Instant;

/// Default `--jobs` is the number of cores, at most this.
const MAX_DEFAULT_JOBS: usize = 6;

pub(crate) fn run(args: &ReshardArgs) -> Result<i32> {
    if args.mp == 0 {
        bail!("--mp must be at least 1");
    }
    if args.jobs == Some(0) {
        bail!("--jobs must be at least 1");
    }
    let args = &ReshardArgs {
        src_dir: resolve::model_path(&args.src_dir, Want::Meta)?,
        ..args.clone()
    };
    crate::checkpoint::require_dir(&args.src_dir)?;
    // `rm` and `prune` leave both alone while this runs.
    let _locks = lock::hold_all(&[&args.src_dir, &args.dst_dir]);
    check_dst_outside_src(&args.src_dir, &args.dst_dir)?;
    fp8::refuse(&args.src_dir, "reshard")?;
    let started = Instant::now();
    let plan = Plan::new(&args.src_dir, args.mp)?;
    let src = plan.src();
    ensure_free_disk(&args.dst_dir, plan.bytes_needed()?)?;

    let out = AtomicDir::new(&args.dst_dir, args.force)?;
    super::report_stale(&out);
    // Each shard being written holds about 25 MiB (its md5/disk pipeline blocks and read
    // buffers); 6 at a time keeps the default far under the 256 MiB budget on any machine,
    // and more parallel streams than that only queue on the disk.
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DEFAULT_JOBS))
    });
    eprintln!(
        "resharding {} (MP {}) to MP {} in {}: {} shards of about {} each, {} at a time",
        args.src_dir.display(),
        src.mp(),
        plan.mp(),
        args.dst_dir.display(),
        plan.mp(),
        human_bytes(plan.data_bytes(0)),
        jobs.min(plan.mp())
    );

    // Not a terminal: a status line now and then, and one line per finished shard.
    let mut progress = ProgressReporter::stderr(
        Shown::new("progress")
            .count(plan.mp(), "shards")
            .finish_lines(FinishLines::Always),
    );
    let entries = plan.write(out.path(), jobs, &progress);
    progress.finish();
    let entries = entries?;
    let dst = out.commit()?;
    let written: u64 = entries
        .iter()
        .filter_map(|e: &Entry| std::fs::metadata(dst.join(&e.name)).ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "wrote {} ({} shards, {}) in {:.1}s",
        dst.display(),
        plan.mp(),
        human_bytes(written),
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}
