//! Checks a CI pipeline can gate a deployment on: checksums, structure against the hyper-parameters,
//! and (deep) the values themselves. Every problem is collected, none aborts the run; only an
//! unusable input (not a directory, not a model directory) is an error.
//!
//! One file per part: `report` (the JSON report and its problem kinds), `checksums`
//! (checklist.chk), `meta` and `hf` (structure of each layout), `fp8` (Meta's fp8 release),
//! `tokenizer`, `deep` (values), `gguf` (a GGUF file's layout).
mod checksums;
mod deep;
mod fp8;
mod gguf;
mod hf;
mod meta;
mod report;
mod tokenizer;

pub(crate) use report::{CheckState, FileState, FileStatus, Kind, Report, TensorReport};

use super::stats::ScanItem;
use crate::checkpoint::layout::Weight;
use crate::checkpoint::DirKind;
use crate::formats::{DType, TensorInfo};
use crate::progress::Reporter;
use anyhow::Result;
use std::collections::HashMap;
use std::path::Path;

/// What to check.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Hash every checklist.chk entry.
    pub md5: bool,
    /// Scan every value for NaN/Inf and collect per-tensor statistics.
    pub deep: bool,
    /// Files hashed / pieces scanned at once.
    pub jobs: usize,
}

/// A stored tensor that the deep pass will scan.
struct Stored {
    file: String,
    info: TensorInfo,
    item: Option<ScanItem>,
}

/// Verify a Meta or HF model directory, or a GGUF file. Err only when `dir` is not usable as a
/// model directory (or GGUF file). The md5 and scan passes report to `progress` as tasks "md5"
/// and "scan".
pub(crate) fn verify(dir: &Path, opts: &Options, progress: &dyn Reporter) -> Result<Report> {
    if dir.is_file() && crate::formats::gguf::is_gguf(dir) {
        return gguf::gguf_report(dir);
    }
    let kind = crate::checkpoint::detect(dir)?;
    let format = match kind {
        DirKind::Meta => "meta",
        DirKind::Hf => "hf",
    };
    let mut r = Report::new(format, dir);
    if opts.md5 {
        checksums::checksums(dir, kind, opts.jobs, progress, &mut r);
    } else {
        r.check("checksums", CheckState::Skipped, "--no-md5".into());
    }
    let stored = match kind {
        DirKind::Meta => meta::structure(dir, &mut r),
        DirKind::Hf => hf::structure(dir, &mut r),
    };
    if opts.deep {
        deep::deep(&stored, opts.jobs, progress, &mut r)?;
    } else {
        r.check("values", CheckState::Skipped, "without --deep".into());
    }
    r.ok = r.problems.is_empty();
    Ok(r)
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The dtype most weights have (floats win ties); fp8 weights are the exception, never the rule.
fn model_dtype<'a>(tensors: impl IntoIterator<Item = &'a TensorInfo>) -> Option<DType> {
    let mut counts: HashMap<DType, usize> = HashMap::new();
    for t in tensors.into_iter().filter(|t| !t.dtype.is_fp8()) {
        *counts.entry(t.dtype).or_default() += 1;
    }
    counts
        .iter()
        .max_by_key(|(d, n)| (**n, d.is_float()))
        .map(|(d, _)| *d)
}

/// Says why a weight's stored dtype is wrong (None when it is right).
type DtypeRule<'a> = &'a dyn Fn(&Weight, DType) -> Option<String>;

/// One dtype for the whole model.
fn same_dtype(model: Option<DType>) -> impl Fn(&Weight, DType) -> Option<String> {
    move |_, d| match model {
        Some(m) if m != d => Some(format!("the rest of the model is {m}")),
        _ => None,
    }
}

/// Compare stored tensors of one file against the expected weights.
fn check_tensors<'a>(
    r: &mut Report,
    file: &str,
    stored: impl IntoIterator<Item = &'a TensorInfo>,
    weights: &[Weight],
    want_shape: &dyn Fn(&Weight) -> Vec<usize>,
    dtype_rule: DtypeRule,
    // HF: a weight need only be present in one of the files, so absence is checked by the caller.
    partial: bool,
) {
    let stored: Vec<&TensorInfo> = stored.into_iter().collect();
    let by_name: HashMap<&str, &TensorInfo> =
        stored.iter().map(|t| (t.name.as_str(), *t)).collect();
    let known: HashMap<&str, &Weight> = weights.iter().map(|w| (w.name.as_str(), w)).collect();
    for w in weights {
        match by_name.get(w.name.as_str()) {
            None if !partial => r.problem(
                Kind::MissingTensor,
                Some(file),
                Some(&w.name),
                format!("{file}: tensor {} is missing", w.name),
            ),
            None => {}
            Some(t) => {
                let want = want_shape(w);
                if t.shape != want {
                    r.problem(
                        Kind::WrongShape,
                        Some(file),
                        Some(&w.name),
                        format!(
                            "{file}: {} has shape {:?}, expected {want:?}",
                            w.name, t.shape
                        ),
                    );
                }
                if let Some(why) = dtype_rule(w, t.dtype) {
                    r.problem(
                        Kind::WrongDtype,
                        Some(file),
                        Some(&w.name),
                        format!("{file}: {} is {}, {why}", w.name, t.dtype),
                    );
                }
            }
        }
    }
    for t in stored {
        if !known.contains_key(t.name.as_str()) {
            r.problem(
                Kind::UnexpectedTensor,
                Some(file),
                Some(&t.name),
                format!(
                    "{file}: unexpected tensor {} ({} {:?}) is not a weight of this model",
                    t.name, t.dtype, t.shape
                ),
            );
        }
    }
}
