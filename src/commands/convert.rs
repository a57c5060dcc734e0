//! `llamactl convert --to hf|meta SRC_DIR DST_DIR` (see CLI.md): the weights stream through
//! `ops::convert`; this adds the tokenizer files, checklist, atomic output and the report.
use super::reporters::{Options as Shown, ProgressReporter};
use crate::checkpoint::tensors::Part;
use crate::checkpoint::{fp8, hf_config, Params};
use crate::cli::{ConvertArgs, ConvertTo};
use crate::human::human_bytes;
use crate::ops::convert::{self, Options, Summary};
use crate::output::{check_dst_outside_src, AtomicDir};
use crate::store::{lock, resolve, resolve::Want};
use crate::tokenizer::hf_files::{tiktoken_model_from_tokenizer_json, write_hf_tokenizer_files};
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use std::time::Instant;

mod gguf;

const HF_TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

pub fn run(args: &ConvertArgs) -> Result<i32> {
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
    let summary = match args.to {
        ConvertTo::Hf => to_hf(args, &out, &opts, &progress)?,
        ConvertTo::Meta => to_meta(args, &out, &opts, &progress)?,
        ConvertTo::Gguf => unreachable!("handled above"),
    };
    progress.finish();
    let dst = out.commit()?;
    report(&summary, &dst, args.to, start.elapsed().as_secs_f64());
    Ok(0)
}

/// Meta -> HF: the weights and, beside them, the tokenizer files.
fn to_hf(
    args: &ConvertArgs,
    out: &AtomicDir,
    opts: &Options,
    progress: &ProgressReporter,
) -> Result<Summary> {
    let src = &args.src_dir;
    if !src.join("params.json").exists() {
        bail!(
            "{}: no params.json; --to hf needs a Meta checkpoint directory",
            src.display()
        );
    }
    let instruct = opts.instruct;
    eprintln!(
        "converting {} (Meta) -> {} (Hugging Face), {} model",
        src.display(),
        args.dst_dir.display(),
        if instruct { "instruct" } else { "base" }
    );
    let tok = src.join("tokenizer.model");
    let max_len = hf_config::max_position_embeddings(&Params::read(&src.join("params.json"))?);
    // The tokenizer files are CPU work and the weights mostly I/O: do them side by side.
    let (weights, tokenizer) = std::thread::scope(|scope| {
        let tok_job = tok.exists().then(|| {
            let (tok, dir) = (tok.clone(), out.path().to_path_buf());
            scope.spawn(move || write_hf_tokenizer_files(&tok, &dir, instruct, max_len))
        });
        let weights = convert::meta_to_hf(src, out.path(), opts, progress);
        let tokenizer = tok_job.map(|j| {
            j.join()
                .unwrap_or_else(|_| Err(anyhow!("writing the tokenizer files panicked")))
        });
        (weights, tokenizer)
    });
    let mut s = weights?;
    match tokenizer {
        Some(result) => {
            result?;
            for f in HF_TOKENIZER_FILES {
                let size = std::fs::metadata(out.path().join(f))?.len();
                s.files.push((f.to_string(), size));
            }
        }
        None => eprintln!(
            "warning: {}: not found; the output has no tokenizer files",
            tok.display()
        ),
    }
    Ok(s)
}

/// HF -> Meta (MP 1): the weights, tokenizer.model rebuilt from tokenizer.json, the checklist.
fn to_meta(
    args: &ConvertArgs,
    out: &AtomicDir,
    opts: &Options,
    progress: &ProgressReporter,
) -> Result<Summary> {
    let src = &args.src_dir;
    if !src.join("config.json").exists() {
        bail!(
            "{}: no config.json; --to meta needs a Hugging Face model directory",
            src.display()
        );
    }
    eprintln!(
        "converting {} (Hugging Face) -> {} (Meta, MP 1)",
        src.display(),
        args.dst_dir.display()
    );
    let mut s = convert::hf_to_meta(src, out.path(), opts, progress)?;
    let tok = src.join("tokenizer.json");
    if tok.exists() {
        let model = tiktoken_model_from_tokenizer_json(&tok)?;
        convert::write_small(out.path(), "tokenizer.model", &model, &mut s)?;
    } else {
        eprintln!(
            "warning: {}: not found; the output has no tokenizer.model",
            tok.display()
        );
    }
    convert::write_checklist(out.path(), &s.md5)?;
    Ok(s)
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
