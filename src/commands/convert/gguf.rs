//! `llamactl convert --to gguf SRC DEST.gguf`: resolves the flags, plans the file with `ops::gguf`
//! (from a model directory, or re-quantizing an f32/f16/bf16 GGUF file), streams it into
//! `DEST.gguf.part`, renames it when complete, and prints what it holds.
use crate::checkpoint::DirKind;
use crate::cli::ConvertArgs;
use crate::commands::reporters::{ProgressReporter, Shown};
use crate::formats::gguf;
use crate::human::human_bytes;
use crate::ops::gguf::{self as export, FileType, Options};
use crate::output::AtomicFile;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Instant;

pub(super) fn run(args: &ConvertArgs, instruct: bool) -> Result<i32> {
    let src = &args.src_dir;
    let dst = &args.dst_dir;
    let opts = Options {
        file_type: args
            .dtype
            .as_ref()
            .map(|d| FileType::parse(&d.0))
            .transpose()?,
        instruct,
        instruct_given: args.instruct || args.base,
    };
    crate::output::check_file_dst_outside_src(src, dst)?;
    let out = AtomicFile::create(dst, args.force)?;
    let progress = ProgressReporter::stderr(Shown::new("progress"));
    let plan = export::plan_dir(src, &opts, &progress)?;
    write_plan(&plan, out, src, dst, progress)
}

/// `convert --to gguf IN.gguf OUT.gguf --dtype TYPE`: re-quantize an f32/f16/bf16 GGUF file.
pub(super) fn run_from_gguf(args: &ConvertArgs) -> Result<i32> {
    let (src, dst) = (&args.src_dir, &args.dst_dir);
    if !gguf::is_gguf(src) {
        bail!(
            "{}: a file, but not a GGUF file; the source is a model directory or a GGUF file",
            src.display()
        );
    }
    let Some(d) = &args.dtype else {
        bail!(
            "{}: a GGUF source needs --dtype (the type to quantize to)",
            src.display()
        );
    };
    let ft = FileType::parse(&d.0)?;
    crate::output::check_file_dst_outside_src(src, dst)?;
    let file = gguf::GgufFile::open(src)?;
    if let Some(p) = file.problems().first() {
        bail!("{}: {p}", src.display());
    }
    let out = AtomicFile::create(dst, args.force)?;
    let plan = export::plan_from_gguf(&file, ft).with_context(|| format!("{}", src.display()))?;
    let progress = ProgressReporter::stderr(Shown::new("progress"));
    write_plan(&plan, out, src, dst, progress)
}

/// Preflight free space, stream the file into `DEST.part`, rename, report.
fn write_plan(
    plan: &export::Plan,
    out: AtomicFile,
    src: &Path,
    dst: &Path,
    mut progress: ProgressReporter,
) -> Result<i32> {
    let kind = match plan.source {
        Some(DirKind::Meta) => "Meta",
        Some(DirKind::Hf) => "Hugging Face",
        None => "GGUF",
    };
    let size = plan.file_size()?;
    crate::util::ensure_free_disk(out.part_path(), size)?;
    eprintln!(
        "converting {} ({kind}) -> {} (GGUF {}, {})",
        src.display(),
        dst.display(),
        plan.file_type.name(),
        human_bytes(size)
    );
    let start = Instant::now();
    let clamped = export::write(plan, out.file(), &progress)
        .with_context(|| format!("{}", out.part_path().display()))?;
    progress.finish();
    let dst = out.commit()?;
    report_clamped(&clamped);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} tensors ({}) in {secs:.1}s ({}/s)",
        plan.header.tensors.len(),
        human_bytes(size),
        human_bytes((size as f64 / secs.max(1e-3)) as u64)
    );
    for line in type_summary(plan) {
        eprintln!("{line}");
    }
    println!("{}", dst.display());
    Ok(0)
}

/// How many tensors of each GGML type the file holds and, for every type but the file type's
/// own, why those tensors have it.
fn type_summary(plan: &export::Plan) -> Vec<String> {
    let base = plan.file_type.weight_type();
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut why: Vec<(String, String, Vec<&str>)> = Vec::new();
    for t in &plan.header.tensors {
        let name = t.ggml_type.name();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name.clone(), 1)),
        }
        if t.ggml_type == base {
            continue;
        }
        let reason = wider_reason(&t.shape, base, plan.file_type.name());
        match why.iter_mut().find(|(n, r, _)| *n == name && *r == reason) {
            Some((_, _, names)) => names.push(&t.name),
            None => why.push((name, reason, vec![&t.name])),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let list: Vec<String> = counts.iter().map(|(n, c)| format!("{c} {n}")).collect();
    let mut lines = vec![format!("tensor types: {}", list.join(", "))];
    for (name, reason, names) in why {
        let shown: Vec<&str> = names.iter().take(3).copied().collect();
        let more = match names.len() {
            n if n > 3 => format!(", and {} more", n - 3),
            _ => String::new(),
        };
        lines.push(format!(
            "  {} {name}: {reason} ({}{more})",
            names.len(),
            shown.join(", ")
        ));
    }
    lines
}

/// Why a tensor of this shape is not of the file type's own tensor type.
fn wider_reason(shape: &[u64], base: gguf::GgmlType, file_type: &str) -> String {
    let cols = shape.last().copied().unwrap_or(1);
    match base.block_size() {
        _ if shape.len() <= 1 => {
            "1-D tensors (norms, rope factors) are F32 in every GGUF file".into()
        }
        Some(b) if !cols.is_multiple_of(b) => format!(
            "rows of {cols} values are not whole {} blocks of {b}",
            base.name()
        ),
        _ => format!("llama-quantize's rule for {file_type} gives these more bits"),
    }
}

fn report_clamped(clamped: &[(String, u64)]) {
    let total: u64 = clamped.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return;
    }
    eprintln!(
        "warning: {total} values were outside the float16 range and were clamped to +/-65504:"
    );
    for (name, n) in clamped.iter().take(10) {
        eprintln!("  {name}: {n}");
    }
}
