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

/// One step: what it shows, its command line (`{mp1}`, `{mp2}`, `{hf}` and `{gguf}` stand for the
/// work dir's models), and which of those an earlier step must have produced (else it is skipped).
struct Step<'a> {
    what: &'a str,
    args: &'a [&'a str],
    needs: &'a [&'a str],
}

const fn step<'a>(what: &'a str, args: &'a [&'a str], needs: &'a [&'a str]) -> Step<'a> {
    Step { what, args, needs }
}

/// Meta checkpoint -> resharded -> HF and quantized GGUF, each verified or checked by running it.
const STEPS: &[Step] = &[
    step("inspect: what the checkpoint holds (params, tensors, dtypes, shards)", &["inspect", "{mp1}"], &[]),
    step("verify: checklist.chk md5s, params, every tensor's shape and dtype", &["verify", "{mp1}"], &[]),
    step(
        "reshard: model-parallel 1 -> 2 shards, streamed, with a new checklist",
        &["reshard", "--mp", "2", "{mp1}", "{mp2}"],
        &[],
    ),
    step("verify the resharded copy", &["verify", "{mp2}"], &["{mp2}"]),
    step(
        "convert: the 2-shard Meta checkpoint to a Hugging Face safetensors dir",
        &["convert", "--to", "hf", "{mp2}", "{hf}"],
        &["{mp2}"],
    ),
    step(
        "convert: the Meta checkpoint to one Q4_K_M GGUF file for llama.cpp and Ollama, by llama-quantize's \
         rules (this tiny model's rows are too short for k-quants: its tensors take the fallback types)",
        &["convert", "--to", "gguf", "--dtype", "q4_k_m", "{mp1}", "{gguf}"],
        &[],
    ),
    step("show: the GGUF file in detail", &["show", "{gguf}"], &["{gguf}"]),
    step("run --check on the original: greedy twice, identical and finite", &["run", "{mp1}", "--check"], &[]),
    step("run --check on the resharded checkpoint", &["run", "{mp2}", "--check"], &["{mp2}"]),
    step("run --check on the converted HF dir", &["run", "{hf}", "--check"], &["{hf}"]),
    step("run --check on the quantized GGUF", &["run", "{gguf}", "--check"], &["{gguf}"]),
];

fn run_step(exe: &Path, n: usize, total: usize, what: &str, args: &[String]) -> Result<Outcome> {
    println!("[{n}/{total}] {what}");
    println!("    $ llamactl {}", args.join(" "));
    let started = Instant::now();
    let out = Command::new(exe)
        .args(args)
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
    let work = tmp.path();
    // The models the steps' `{placeholders}` stand for, in the work dir.
    let path = |arg: &str| {
        let name = match arg {
            "{mp1}" => "tiny-mp1",
            "{mp2}" => "tiny-mp2",
            "{hf}" => "tiny-hf",
            "{gguf}" => "tiny-q4_k_m.gguf",
            _ => return None,
        };
        Some(work.join(name))
    };
    let mp1 = path("{mp1}").expect("{mp1} is a placeholder");
    copy_fixture(&fixture, &mp1)?;
    println!(
        "llamactl demo: a tiny Llama 3 checkpoint (random weights, the real tokenizer) from {}, copied to {}\n",
        fixture.display(),
        mp1.display()
    );
    let (mut done, mut skipped, mut failed) = (0, 0, 0);
    for (i, step) in STEPS.iter().enumerate() {
        // A step whose input was never produced is skipped, not failed.
        if step
            .needs
            .iter()
            .any(|k| path(k).is_some_and(|p| !p.exists()))
        {
            println!("[{}/{}] {}", i + 1, STEPS.len(), step.what);
            println!("    skipped: its input was not produced by an earlier step\n");
            skipped += 1;
            continue;
        }
        let argv: Vec<String> = step
            .args
            .iter()
            .map(|a| path(a).map_or_else(|| a.to_string(), |p| p.display().to_string()))
            .collect();
        match run_step(&exe, i + 1, STEPS.len(), step.what, &argv)? {
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
