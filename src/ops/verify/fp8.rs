//! Meta's fp8 release (see `checkpoint::fp8`): fp8 exactly where Meta puts it, and beside each shard
//! a scales file with one f32 scale per row of each of that rank's fp8 matrices.
use super::{Kind, Report};
use crate::checkpoint::fp8::{self, scale_key, scales_name};
use crate::checkpoint::layout::Weight;
use crate::checkpoint::meta::shard_name;
use crate::checkpoint::Params;
use crate::error::one_line;
use crate::formats::pth::PthFile;
use crate::formats::{DType, TensorInfo};
use crate::ops::stats::RowScales;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// Row scales by (rank, tensor name), for the deep pass.
pub(super) type ScalesByRank = HashMap<(usize, String), Arc<RowScales>>;

/// A directory is treated as fp8 when it has scales files or any shard holds an fp8 tensor.
pub(super) fn present<'a>(dir: &Path, mut shards: impl Iterator<Item = &'a PthFile>) -> bool {
    !fp8::scale_files(dir).is_empty()
        || shards.any(|s| s.tensors().iter().any(|t| t.dtype.is_fp8()))
}

/// The dtype a weight of an fp8 directory must have: F8_E4M3 for FFN w1/w2/w3 of layers 1..n-2,
/// the model's dtype for everything else.
pub(super) fn dtype_rule(p: &Params, model: Option<DType>, w: &Weight, d: DType) -> Option<String> {
    let last = p.n_layers.saturating_sub(2);
    if fp8::is_fp8_weight(&w.name, p.n_layers) {
        return (d != fp8::DTYPE).then(|| {
            format!(
                "but Meta's fp8 release stores FFN w1/w2/w3 of layers 1..{last} as {}",
                fp8::DTYPE
            )
        });
    }
    match model {
        Some(m) if m != d && d.is_fp8() => Some(format!(
            "but only FFN w1/w2/w3 of layers 1..{last} are fp8; the rest of the model is {m}"
        )),
        Some(m) if m != d => Some(format!("the rest of the model is {m}")),
        _ => None,
    }
}

/// Check `fp8_scales_{rank}.pt` of every readable shard; returns the scales that fit, for `--deep`.
pub(super) fn check_scales<'a>(
    dir: &Path,
    p: &Params,
    mp: usize,
    shards: impl Iterator<Item = (usize, &'a PthFile)>,
    r: &mut Report,
) -> ScalesByRank {
    let mark = r.problems.len();
    for name in fp8::scale_files(dir) {
        let rank = name
            .strip_prefix("fp8_scales_")
            .and_then(|n| n.strip_suffix(".pt"))
            .and_then(|n| n.parse::<usize>().ok());
        if rank.is_none_or(|k| k >= mp) {
            let detail = format!("{name} belongs to no shard of this MP {mp} checkpoint");
            r.problem(Kind::InvalidFp8Scales, Some(&name), None, detail);
        }
    }
    let mut out = ScalesByRank::new();
    for (rank, shard) in shards {
        let name = scales_name(rank);
        let path = dir.join(&name);
        if !path.exists() {
            let detail = format!(
                "{name} is missing: {} holds fp8 weights, which are unusable without their row scales",
                shard_name(rank)
            );
            r.problem(Kind::MissingFp8Scales, Some(&name), None, detail);
            continue;
        }
        match fp8::read_scales(&path) {
            Ok(entries) => one_rank(p, rank, shard, &name, entries, &mut out, r),
            Err(e) => r.problem(Kind::InvalidFp8Scales, Some(&name), None, one_line(&e)),
        }
    }
    let n = out.len();
    r.settle(
        "fp8 scales",
        mark,
        format!("{n} fp8 matrices, one f32 scale per row"),
    );
    out
}

/// Every fp8 position of one shard has its key, an f32 vector as long as the matrix has rows;
/// no other keys.
fn one_rank(
    p: &Params,
    rank: usize,
    shard: &PthFile,
    file: &str,
    entries: Vec<(TensorInfo, Option<Vec<f32>>)>,
    out: &mut ScalesByRank,
    r: &mut Report,
) {
    let mut by_key: BTreeMap<String, (TensorInfo, Option<Vec<f32>>)> = entries
        .into_iter()
        .map(|(t, v)| (t.name.clone(), (t, v)))
        .collect();
    let shard_file = shard_name(rank);
    for t in shard
        .tensors()
        .iter()
        .filter(|t| fp8::is_fp8_weight(&t.name, p.n_layers))
    {
        let key = scale_key(&t.name, rank).expect("fp8 weights are FFN weights");
        let rows = t.shape.first().copied().unwrap_or(0);
        match by_key.remove(&key) {
            None => {
                let detail = format!("{file}: no entry {key} for {} of {shard_file}", t.name);
                r.problem(Kind::InvalidFp8Scales, Some(file), Some(&t.name), detail);
            }
            Some((_, Some(v))) if v.len() == rows => {
                if t.dtype.is_fp8() {
                    let row_len = t.shape.iter().skip(1).product();
                    out.insert(
                        (rank, t.name.clone()),
                        Arc::new(RowScales { row_len, scales: v }),
                    );
                }
            }
            Some((s, _)) => {
                let detail = format!(
                    "{file}: {key} is {} {:?}, but {} in {shard_file} has {rows} rows and needs F32 [{rows}]",
                    s.dtype, s.shape, t.name
                );
                r.problem(Kind::InvalidFp8Scales, Some(file), Some(&t.name), detail);
            }
        }
    }
    for key in by_key.keys() {
        let detail =
            format!("{file}: unexpected entry {key} (no fp8 weight of {shard_file} has that key)");
        r.problem(Kind::InvalidFp8Scales, Some(file), None, detail);
    }
}
