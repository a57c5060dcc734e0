//! Meta directories: params.json, the shards and their numbering, every tensor's per-shard shape and
//! dtype, byte-identical replicas.
use super::{check_tensors, fp8, join, tokenizer, CheckState, Kind, Report, Stored};
use crate::checkpoint::layout::{self, Role, Split, Weight};
use crate::checkpoint::meta::shard_name;
use crate::checkpoint::tensors::{Naming, Part};
use crate::checkpoint::Params;
use crate::error::one_line;
use crate::formats::pth::PthFile;
use crate::formats::{DType, TensorInfo};
use crate::ops::stats::ScanItem;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `consolidated.NN.pth` files by rank (gaps are None); an unreadable dir has none.
fn meta_shards(dir: &Path) -> Vec<Option<PathBuf>> {
    crate::checkpoint::meta::shards_by_rank(dir).unwrap_or_default()
}

/// The shards of a Meta directory, one slot per rank (None where missing or unreadable).
struct Shards {
    files: Vec<Option<PthFile>>,
}

impl Shards {
    fn mp(&self) -> usize {
        self.files.len()
    }

    fn good(&self) -> impl Iterator<Item = (usize, &PthFile)> {
        self.files
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }
}

/// The weights params.json implies at an MP, with the vocabulary they were derived with.
struct Expected {
    weights: Vec<Weight>,
    vocab: usize,
    mp: usize,
}

pub(super) fn structure(dir: &Path, r: &mut Report) -> Vec<Stored> {
    let params = check_params(dir, r);
    let mark = r.problems.len();
    let mut shards = open_shards(dir, r);
    let expected = params.as_ref().and_then(|p| settle_mp(p, &mut shards, r));
    let mp = shards.mp();
    r.settle(
        "shards",
        mark,
        format!("{mp} shard{} (MP {mp})", if mp == 1 { "" } else { "s" }),
    );
    let fp8_dir = fp8::present(dir, shards.good().map(|(_, s)| s));
    match (&expected, &params) {
        (Some(e), Some(p)) => {
            check_shard_tensors(r, &shards, p, e, fp8_dir);
            check_all_replicas(r, &shards, p, e);
        }
        _ => {
            let why = "needs valid params.json that agrees with a readable shard, and a valid shard count";
            r.check("tensors", CheckState::Skipped, why.into());
            r.check("replicas", CheckState::Skipped, why.into());
        }
    }
    let scales = match (&params, fp8_dir) {
        (Some(p), true) => fp8::check_scales(dir, p, shards.mp(), shards.good(), r),
        _ => HashMap::new(),
    };
    tokenizer::tokenizer_model(dir, params.as_ref(), r);
    stored(&shards, &scales)
}

fn check_params(dir: &Path, r: &mut Report) -> Option<Params> {
    let mark = r.problems.len();
    let params = Params::read(&dir.join("params.json"))
        .map_err(|e| r.problem(Kind::InvalidParams, Some("params.json"), None, one_line(&e)))
        .ok();
    let pdetail = params.as_ref().map_or(String::new(), |p| {
        format!(
            "dim {}, {} layers, {} heads / {} kv, ffn {}, vocab {}",
            p.dim,
            p.n_layers,
            p.n_heads,
            p.kv_heads(),
            p.ffn_hidden(),
            p.vocab()
                .map_or("-1 (from weights)".into(), |v| v.to_string())
        )
    });
    r.settle("params", mark, pdetail);
    params
}

/// Every `consolidated.NN.pth`: present, numbered without gaps, each opens.
fn open_shards(dir: &Path, r: &mut Report) -> Shards {
    let paths = meta_shards(dir);
    if paths.is_empty() {
        r.problem(
            Kind::MissingShard,
            None,
            None,
            format!("{}: no consolidated.NN.pth shards", dir.display()),
        );
    }
    let last = paths.len().saturating_sub(1);
    let mut files = Vec::with_capacity(paths.len());
    for (rank, p) in paths.iter().enumerate() {
        let name = shard_name(rank);
        let file = match p {
            None => {
                let detail = format!("{name} is missing (shards up to rank {last} exist)");
                r.problem(Kind::MissingShard, Some(&name), None, detail);
                None
            }
            Some(p) => PthFile::open(p)
                .map_err(|e| r.problem(Kind::CorruptShard, Some(&name), None, one_line(&e)))
                .ok(),
        };
        files.push(file);
    }
    Shards { files }
}

/// The weights params.json implies at `mp`, the embedding split and (Llama 2's vocab_size -1) the
/// vocabulary read from the first readable shard.
fn expected_at(p: &Params, shards: &Shards, mp: usize) -> Option<Expected> {
    let first = shards.good().next()?.1;
    let emb = first
        .get(Part::Embedding.meta_name())
        .map(|t| t.shape.clone());
    let split = match emb.as_deref() {
        Some([_, d]) if mp > 1 && *d != p.dim && d * mp == p.dim => Split::Cols,
        _ => Split::Rows,
    };
    let vocab = p.vocab().or_else(|| {
        let rows = *emb.as_ref()?.first()?;
        Some(if split == Split::Rows {
            rows * mp
        } else {
            rows
        })
    })?;
    let rope = shards
        .good()
        .any(|(_, s)| s.get(Part::RopeFreqs.meta_name()).is_some());
    let weights = layout::meta_weights(p, vocab, split, rope);
    Some(Expected { weights, vocab, mp })
}

/// How many weights of the first readable shard have another shape than `e` implies.
fn misfits(p: &Params, shards: &Shards, e: &Expected) -> usize {
    let Some((_, first)) = shards.good().next() else {
        return 0;
    };
    e.weights
        .iter()
        .filter_map(|w| Some((w, first.get(&w.name)?)))
        .filter(|(w, t)| t.shape != layout::shard_shape(w, p, e.mp))
        .count()
}

/// Decide the model-parallel size the shards were written with, and whether params.json describes
/// them at all. Losing the last shards leaves no gap in the numbering, but the per-shard shapes
/// still tell the MP; shapes that fit no MP mean params.json and the shards disagree, which is
/// one problem, not a missing shard and a wrong shape per tensor.
fn settle_mp(p: &Params, shards: &mut Shards, r: &mut Report) -> Option<Expected> {
    let present = shards.mp();
    let here = expected_at(p, shards, present)?;
    let wrong = misfits(p, shards, &here);
    if wrong == 0 && p.is_valid_mp(present, here.vocab) {
        return Some(here);
    }
    let first = shards.good().next()?.1;
    let implied = first
        .get(&Part::Wq.at(0))
        .and_then(|t| t.shape.first().copied())
        .filter(|&rows| rows > 0 && (p.n_heads * p.head_dim()).is_multiple_of(rows))
        .map(|rows| p.n_heads * p.head_dim() / rows);
    if let Some(m) = implied.filter(|&m| m > present) {
        let there = expected_at(p, shards, m)?;
        if misfits(p, shards, &there) == 0 && p.is_valid_mp(m, there.vocab) {
            let from = first
                .path()
                .file_name()
                .map_or(String::new(), |f| f.to_string_lossy().into_owned());
            for rank in present..m {
                let name = shard_name(rank);
                let detail = format!("{name} is missing: the shapes in {from} are those of MP {m}");
                r.problem(Kind::MissingShard, Some(&name), None, detail);
                shards.files.push(None);
            }
            return Some(there);
        }
    }
    if !p.is_valid_mp(present, here.vocab) {
        let detail = format!(
            "{present} shards is not a model-parallel size these params allow (valid: {})",
            join(&p.valid_mps(here.vocab))
        );
        r.problem(Kind::InvalidMp, None, None, detail);
        return None;
    }
    let known = here
        .weights
        .iter()
        .filter(|w| first.get(&w.name).is_some())
        .count();
    if wrong * 2 > known {
        params_disagree(p, first, &here, r);
        return None;
    }
    // A few odd tensors: each is reported as a wrong shape.
    Some(here)
}

/// One problem naming the dims on both sides: what params.json implies and what the shard holds.
fn params_disagree(p: &Params, first: &PthFile, e: &Expected, r: &mut Report) {
    const PROBES: [(&str, Part); 5] = [
        ("norm", Part::Norm),
        ("wq", Part::Wq),
        ("wk", Part::Wk),
        ("w1", Part::W1),
        ("output", Part::Output),
    ];
    let side = |shape: &dyn Fn(&Weight) -> Option<Vec<usize>>| -> String {
        PROBES
            .iter()
            .filter_map(|(short, part)| {
                let w = e.weights.iter().find(|w| w.name == part.at(0))?;
                Some(format!("{short} {:?}", shape(w)?))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let want = side(&|w| Some(layout::shard_shape(w, p, e.mp)));
    let have = side(&|w| first.get(&w.name).map(|t| t.shape.clone()));
    let layers = first
        .tensors()
        .iter()
        .filter_map(|t| Naming::Meta.layer_of(&t.name))
        .max()
        .map_or(0, |l| l + 1);
    let file = first
        .path()
        .file_name()
        .map_or(String::new(), |f| f.to_string_lossy().into_owned());
    let detail = format!(
        "params.json and the shards disagree: params.json (dim {}, {} layers, {} heads / {} kv, ffn {}, vocab {}) implies at MP {} {want}, {} layers; {file} holds {have}, {layers} layers",
        p.dim,
        p.n_layers,
        p.n_heads,
        p.kv_heads(),
        p.ffn_hidden(),
        e.vocab,
        e.mp,
        p.n_layers
    );
    r.problem(Kind::ParamsMismatch, Some("params.json"), None, detail);
}

/// Every expected weight in every shard with its per-shard shape and the model's dtype (fp8 where
/// Meta's fp8 release puts it), and nothing else.
fn check_shard_tensors(r: &mut Report, shards: &Shards, p: &Params, e: &Expected, fp8_dir: bool) {
    let mark = r.problems.len();
    let model_dtype = super::model_dtype(shards.good().flat_map(|(_, s)| s.tensors()));
    let plain = super::same_dtype(model_dtype);
    let rule = |w: &Weight, d: DType| {
        if fp8_dir {
            fp8::dtype_rule(p, model_dtype, w, d)
        } else {
            plain(w, d)
        }
    };
    let want = |w: &Weight| layout::shard_shape(w, p, e.mp);
    for (rank, s) in shards.good() {
        check_tensors(
            r,
            &shard_name(rank),
            s.tensors(),
            &e.weights,
            &want,
            &rule,
            false,
        );
    }
    let mp = e.mp;
    let dtype = model_dtype.map_or("-", |d| d.name());
    r.settle(
        "tensors",
        mark,
        format!(
            "{} tensors x {mp} shard{}, {dtype}{}",
            e.weights.len(),
            if mp == 1 { "" } else { "s" },
            if fp8_dir {
                " (FFN of layers 1..n-2 in F8_E4M3)"
            } else {
                ""
            }
        ),
    );
}

/// Byte-identical copies of replicated tensors (and of shared kv heads) across shards.
fn check_all_replicas(r: &mut Report, shards: &Shards, p: &Params, e: &Expected) {
    if e.mp == 1 {
        r.check("replicas", CheckState::Skipped, "single shard".into());
        return;
    }
    let mark = r.problems.len();
    let mut compared = 0;
    for w in &e.weights {
        for set in replica_sets(w, p, e.mp) {
            compared += compare_replicas(r, &shards.files, &w.name, &set);
        }
    }
    r.settle(
        "replicas",
        mark,
        format!("{compared} replicated copies identical"),
    );
}

/// Every stored tensor for the deep pass; fp8 weights carry their row scales.
fn stored(shards: &Shards, scales: &fp8::ScalesByRank) -> Vec<Stored> {
    let mut out = Vec::new();
    for (rank, s) in shards.good() {
        let file = shard_name(rank);
        for t in s.tensors() {
            let item = s.data_offset(t).ok().map(|offset| ScanItem {
                src: s.source().clone(),
                offset,
                nbytes: t.nbytes() as u64,
                dtype: t.dtype,
                scales: scales.get(&(rank, t.name.clone())).cloned(),
            });
            out.push(Stored {
                file: file.clone(),
                info: t.clone(),
                item,
            });
        }
    }
    out
}

/// Groups of ranks that must hold identical copies of `w`: all ranks for replicated tensors, the
/// ranks sharing a kv head when there are more shards than kv heads.
fn replica_sets(w: &Weight, p: &Params, mp: usize) -> Vec<Vec<usize>> {
    if w.split == Split::Replicated {
        return vec![(0..mp).collect()];
    }
    if !(matches!(w.role, Role::Key | Role::Value) && mp > p.kv_heads()) {
        return Vec::new();
    }
    let mut sets: Vec<(std::ops::Range<usize>, Vec<usize>)> = Vec::new();
    for rank in 0..mp {
        let range = layout::shard_range(w, p, mp, rank);
        match sets.iter_mut().find(|(rg, _)| *rg == range) {
            Some((_, v)) => v.push(rank),
            None => sets.push((range, vec![rank])),
        }
    }
    sets.into_iter()
        .map(|(_, v)| v)
        .filter(|v| v.len() > 1)
        .collect()
}

/// Compare the copies of `name` in `set` against the first readable one with pread; returns how
/// many copies were compared.
fn compare_replicas(
    r: &mut Report,
    shards: &[Option<PthFile>],
    name: &str,
    set: &[usize],
) -> usize {
    // Only copies that exist with matching shape and dtype; the tensor check reports the rest.
    let copies: Vec<(usize, u64, &PthFile, &TensorInfo)> = set
        .iter()
        .filter_map(|&rank| {
            let s = shards.get(rank)?.as_ref()?;
            let t = s.get(name)?;
            Some((rank, s.data_offset(t).ok()?, s, t))
        })
        .collect();
    let Some(&(base_rank, base_off, base, bt)) = copies.first() else {
        return 0;
    };
    let mut compared = 0;
    let size = bt.nbytes().min(crate::formats::copy::CHUNK);
    let (mut a, mut b) = (vec![0u8; size], vec![0u8; size]);
    for &(rank, off, s, t) in &copies[1..] {
        if t.shape != bt.shape || t.dtype != bt.dtype {
            continue;
        }
        compared += 1;
        let len = bt.nbytes() as u64;
        let mut done = 0u64;
        let mut same = true;
        while done < len && same {
            let n = (len - done).min(a.len() as u64) as usize;
            let ra = base.source().read_exact_at(&mut a[..n], base_off + done);
            let rb = s.source().read_exact_at(&mut b[..n], off + done);
            if let Err(e) = ra.and(rb) {
                r.problem(Kind::Unreadable, None, Some(name), one_line(&e));
                break;
            }
            same = a[..n] == b[..n];
            done += n as u64;
        }
        if !same {
            let (fa, fb) = (shard_name(base_rank), shard_name(rank));
            r.problem(
                Kind::ReplicaMismatch,
                Some(&fb),
                Some(name),
                format!(
                    "{name} differs between {fa} and {fb}; every shard must hold the same copy"
                ),
            );
        }
    }
    compared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_replicas_past_n_kv() {
        let p: Params = serde_json::from_value(serde_json::json!({"dim": 32, "n_layers": 1,
            "n_heads": 8, "n_kv_heads": 2, "vocab_size": 64, "multiple_of": 32, "norm_eps": 1e-5}))
        .unwrap();
        let ws = layout::meta_weights(&p, 64, Split::Rows, false);
        let wk = ws.iter().find(|w| w.role == Role::Key).unwrap();
        assert_eq!(replica_sets(wk, &p, 4), vec![vec![0, 1], vec![2, 3]]);
        assert!(replica_sets(wk, &p, 2).is_empty());
        let norm = ws
            .iter()
            .find(|w| w.name == Part::Norm.meta_name())
            .unwrap();
        assert_eq!(replica_sets(norm, &p, 2), vec![vec![0, 1]]);
    }
}
