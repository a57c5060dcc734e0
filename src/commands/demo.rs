//! `llamactl demo` (see CLI.md): the whole pipeline on the tiny checkpoint in testdata/, in a temp dir.
//!
//! Each step re-executes this binary with the step's own command line, so the demo shows exactly what
//! a user would type, and commands stay independent of each other.
use crate::cli::DemoArgs;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn find_fixture() -> Result<PathBuf> {
    let candidates = [
        PathBuf::from("testdata/tiny-mp1"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tiny-mp1"),
    ];
    for c in &candidates {
        if c.join("params.json").is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "cannot find the tiny checkpoint: looked for {} and {} (run the demo from the llamactl source tree)",
        candidates[0].display(),
        candidates[1].display()
    )
}

/// Copy the fixture's files (following the tokenizer.model link) into `dst`.
fn copy_fixture(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("{}: cannot create", dst.display()))?;
    let entries =
        std::fs::read_dir(src).with_context(|| format!("{}: cannot list", src.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("{}: cannot list", src.display()))?;
        let from = e.path();
        if from.is_file() {
            let to = dst.join(e.file_name());
            std::fs::copy(&from, &to)
                .with_context(|| format!("{}: cannot copy to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

enum Outcome {
    Done,
    Failed,
}

struct Step<'a> {
    what: &'a str,
    args: Vec<String>,
    /// Inputs an earlier step produces; without them the step is skipped.
    needs: Vec<&'a Path>,
}

fn run_step(exe: &Path, n: usize, total: usize, step: &Step) -> Result<Outcome> {
    println!("[{n}/{total}] {}", step.what);
    println!("    $ llamactl {}", step.args.join(" "));
    let started = Instant::now();
    let out = Command::new(exe)
        .args(&step.args)
        .output()
        .with_context(|| format!("{}: cannot run", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stdout.lines().take(12) {
        println!("    {line}");
    }
    if stdout.lines().count() > 12 {
        println!("    ... ({} more lines)", stdout.lines().count() - 12);
    }
    if out.status.success() {
        println!("    ok in {:.2} s\n", started.elapsed().as_secs_f64());
        Ok(Outcome::Done)
    } else {
        for line in stderr.lines() {
            println!("    ! {line}");
        }
        println!(
            "    FAILED (exit {})\n",
            out.status
                .code()
                .map_or("by signal".to_string(), |c| c.to_string())
        );
        Ok(Outcome::Failed)
    }
}

pub(crate) fn run(args: &DemoArgs) -> Result<i32> {
    let fixture = find_fixture()?;
    let exe = std::env::current_exe().context("cannot locate the llamactl binary")?;
    let tmp = tempfile::Builder::new()
        .prefix("llamactl-demo.")
        .tempdir()
        .context("cannot create a temp dir")?;
    let work = tmp.path().to_path_buf();
    let mp1 = work.join("tiny-mp1");
    let mp2 = work.join("tiny-mp2");
    let hf = work.join("tiny-hf");
    copy_fixture(&fixture, &mp1)?;
    println!(
        "llamactl demo: a tiny Llama 3 checkpoint (random weights, the real tokenizer) from {}, copied to {}\n",
        fixture.display(),
        mp1.display()
    );
    let s = |p: &Path| p.display().to_string();
    let steps = [
        Step {
            what: "inspect: what the checkpoint holds (params, tensors, dtypes, shards)",
            args: vec!["inspect".into(), s(&mp1)],
            needs: vec![],
        },
        Step {
            what: "verify: checklist.chk md5s, params, every tensor's shape and dtype",
            args: vec!["verify".into(), s(&mp1)],
            needs: vec![],
        },
        Step {
            what: "reshard: model-parallel 1 -> 2 shards, streamed, with a new checklist",
            args: vec![
                "reshard".into(),
                "--mp".into(),
                "2".into(),
                s(&mp1),
                s(&mp2),
            ],
            needs: vec![],
        },
        Step {
            what: "verify the resharded copy",
            args: vec!["verify".into(), s(&mp2)],
            needs: vec![&mp2],
        },
        Step {
            what: "convert: the 2-shard Meta checkpoint to a Hugging Face safetensors dir",
            args: vec![
                "convert".into(),
                "--to".into(),
                "hf".into(),
                s(&mp2),
                s(&hf),
            ],
            needs: vec![&mp2],
        },
        Step {
            what: "run --check on the original: greedy twice, identical and finite",
            args: vec!["run".into(), s(&mp1), "--check".into()],
            needs: vec![],
        },
        Step {
            what: "run --check on the resharded checkpoint",
            args: vec!["run".into(), s(&mp2), "--check".into()],
            needs: vec![&mp2],
        },
        Step {
            what: "run --check on the converted HF dir",
            args: vec!["run".into(), s(&hf), "--check".into()],
            needs: vec![&hf],
        },
    ];
    let (mut done, mut skipped, mut failed) = (0, 0, 0);
    for (i, step) in steps.iter().enumerate() {
        // A step whose input was never produced is skipped, not failed.
        if step.needs.iter().any(|p| !p.exists()) {
            println!("[{}/{}] {}", i + 1, steps.len(), step.what);
            println!("    skipped: its input was not produced by an earlier step\n");
            skipped += 1;
            continue;
        }
        match run_step(&exe, i + 1, steps.len(), step)? {
            Outcome::Done => done += 1,
            Outcome::Failed => failed += 1,
        }
    }
    println!("demo: {done} steps ok, {skipped} skipped, {failed} failed");
    if args.keep {
        let kept = tmp.keep();
        println!("kept the files in {}", kept.display());
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
