//! `llamactl convert --to hf|meta SRC_DIR DST_DIR` (see CLI.md): resolves the flags, runs
//! `ops::convert` (weights, tokenizer files, checklist) into an atomic output, and prints the report.
use super::reporters::{ProgressReporter, Shown};
use crate::checkpoint::fp8;
use crate::checkpoint::tensors::Part;
use crate::cli::{ConvertArgs, ConvertTo};
use crate::human::human_bytes;
use crate::ops::convert::{self, Options, Summary};
use crate::output::{check_dst_outside_src, AtomicDir};
use crate::store::{lock, resolve, resolve::Want};
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use std::time::Instant;

mod gguf;

pub(crate) fn run(args: &ConvertArgs) -> Result<i32> {
    let want = match args.to {
        ConvertTo::Hf => Want::Meta,
        ConvertTo::Meta => Want::Hf,
        ConvertTo::Gguf => Want::Any,
    };
    let args = &ConvertArgs {
        src_dir: resolve::model_path(&args.src_dir, want)?,
        ..args.clone()
    };
    // `rm` and `prune` leave both alone while this runs.
    let _locks = lock::hold_all(&[&args.src_dir, &args.dst_dir]);
    let src = &args.src_dir;
    if args.to == ConvertTo::Gguf && src.is_file() {
        return gguf::run_from_gguf(args);
    }
    crate::checkpoint::require_dir(src)?;
    // fp8 weights can be dequantized into a float or GGUF file; moved as they are, never.
    if args.to == ConvertTo::Meta || args.to == ConvertTo::Hf && args.dtype.is_none() {
        fp8::refuse(src, "convert without --dtype")
            .map_err(|e| anyhow!("{e}, or dequantize it: --to hf --dtype bf16, or --to gguf"))?;
    }
    let instruct = match (args.instruct, args.base) {
        (true, _) => true,
        (_, true) => false,
        _ => looks_instruct(src),
    };
    if args.to == ConvertTo::Gguf {
        return gguf::run(args, instruct);
    }
    check_dst_outside_src(src, &args.dst_dir)?;
    let opts = Options {
        dtype: match &args.dtype {
            None => None,
            Some(d) => Some(d.float().ok_or_else(|| {
                anyhow!(
                    "--dtype {}: --to hf and --to meta write bf16, f16 or f32; quantized types are for --to gguf",
                    d.0
                )
            })?),
        },
        instruct,
        max_shard_size: convert::parse_size(&args.max_shard_size)?,
    };
    let out = AtomicDir::new(&args.dst_dir, args.force)?;
    super::report_stale(&out);
    let start = Instant::now();
    let mut progress = ProgressReporter::stderr(Shown::new("progress"));
    let summary = convert_dir(args, &out, &opts, &progress)?;
    progress.finish();
    let dst = out.commit()?;
    report(&summary, &dst, args.to, start.elapsed().as_secs_f64());
    Ok(0)
}

/// Check the source has the layout `--to` converts from, say what is converted, and run the
/// operation: Meta -> HF (weights, tokenizer files) or HF -> Meta (weights, tokenizer.model,
/// checklist).
fn convert_dir(
    args: &ConvertArgs,
    out: &AtomicDir,
    opts: &Options,
    progress: &ProgressReporter,
) -> Result<Summary> {
    let (src, dst) = (&args.src_dir, args.dst_dir.display());
    let to_hf = args.to == ConvertTo::Hf;
    let (needs, want) = if to_hf {
        ("params.json", "--to hf needs a Meta checkpoint directory")
    } else {
        (
            "config.json",
            "--to meta needs a Hugging Face model directory",
        )
    };
    if !src.join(needs).exists() {
        bail!("{}: no {needs}; {want}", src.display());
    }
    if to_hf {
        let kind = if opts.instruct { "instruct" } else { "base" };
        eprintln!(
            "converting {} (Meta) -> {dst} (Hugging Face), {kind} model",
            src.display()
        );
        convert::to_hf(src, out.path(), opts, progress)
    } else {
        eprintln!(
            "converting {} (Hugging Face) -> {dst} (Meta, MP 1)",
            src.display()
        );
        convert::to_meta(src, out.path(), opts, progress)
    }
}

/// Meta names its chat models `Meta-Llama-3-8B-Instruct`, `Llama3.1-8B-Instruct`.
fn looks_instruct(src: &Path) -> bool {
    let name = src
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    name.to_ascii_lowercase().contains("instruct")
}

fn report(s: &Summary, dst: &Path, to: ConvertTo, secs: f64) {
    if s.tied {
        match to {
            ConvertTo::Gguf => {}
            ConvertTo::Hf => eprintln!(
                "{} equals {}: wrote tie_word_embeddings=true and no lm_head",
                Part::Output.meta_name(),
                Part::Embedding.meta_name()
            ),
            ConvertTo::Meta => eprintln!(
                "tied embeddings: wrote {} as a copy of embed_tokens",
                Part::Output.meta_name()
            ),
        }
    }
    if s.overflowed() > 0 {
        eprintln!(
            "warning: {} values were outside the float16 range and were clamped to +/-65504:",
            s.overflowed()
        );
        for (name, n) in s.overflow.iter().take(10) {
            eprintln!("  {name}: {n}");
        }
        if s.overflow.len() > 10 {
            eprintln!("  ... and {} more tensors", s.overflow.len() - 10);
        }
    }
    eprintln!(
        "wrote {} tensors ({}) in {:.1}s ({}/s)",
        s.tensors,
        human_bytes(s.bytes),
        secs,
        human_bytes((s.bytes as f64 / secs.max(1e-3)) as u64)
    );
    for (name, size) in &s.files {
        eprintln!("  {name}  {}", human_bytes(*size));
    }
    println!("{}", dst.display());
}
