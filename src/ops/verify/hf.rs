//! Hugging Face directories: config.json, the index and its shards, every tensor against the config,
//! and the tokenizer files (see `tokenizer`).
use super::{check_tensors, tokenizer, CheckState, Kind, Report, Stored};
use crate::checkpoint::hf as hf_dir;
use crate::checkpoint::layout::{self, Split, Weight};
use crate::checkpoint::tensors::Part;
use crate::checkpoint::Params;
use crate::error::one_line;
use crate::formats::safetensors::SafetensorsFile;
use crate::ops::stats::ScanItem;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

const INDEX: &str = "model.safetensors.index.json";

/// `model.safetensors.index.json`, its weight_map read as a list of pairs so that a tensor listed
/// twice is seen (a JSON object parser keeps only the last).
#[derive(Debug)]
struct Index {
    pairs: Vec<(String, String)>,
    total_size: Option<u64>,
}

fn read_index(text: &str) -> std::result::Result<Index, String> {
    struct Pairs(Vec<(String, String)>);
    impl<'de> serde::Deserialize<'de> for Pairs {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Pairs;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of tensor name -> file name")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> std::result::Result<Pairs, A::Error> {
                    let mut v = Vec::new();
                    while let Some(kv) = m.next_entry::<String, String>()? {
                        v.push(kv);
                    }
                    Ok(Pairs(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(serde::Deserialize)]
    struct Metadata {
        total_size: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct IndexDoc {
        metadata: Option<Metadata>,
        weight_map: Pairs,
    }
    serde_json::from_str::<IndexDoc>(text)
        .map(|d| Index {
            pairs: d.weight_map.0,
            total_size: d.metadata.and_then(|m| m.total_size),
        })
        .map_err(|e| e.to_string())
}

/// The safetensors files that opened, and which file holds each tensor.
struct Opened {
    files: Vec<(String, SafetensorsFile)>,
    /// How many files were named (opened or not).
    attempted: usize,
    holder: HashMap<String, String>,
}

pub(super) fn structure(dir: &Path, r: &mut Report) -> Vec<Stored> {
    let (config, params) = check_config(dir, r);
    let mark = r.problems.len();
    let index = load_index(dir, r);
    let names = weight_files(dir, index.as_ref(), r);
    let opened = open_files(dir, names, r);
    if let Some(ix) = &index {
        check_index(ix, &opened, r);
    }
    let n = opened.files.len();
    r.settle(
        "shards",
        mark,
        format!(
            "{n} safetensors file{}{}",
            if n == 1 { "" } else { "s" },
            if index.is_some() {
                ", index covers every tensor once"
            } else {
                ""
            }
        ),
    );
    match (&params, &config) {
        (Some(p), Some(c)) => check_hf_tensors(p, c, index.as_ref(), &opened, r),
        _ => r.check(
            "tensors",
            CheckState::Skipped,
            "needs a valid config.json".into(),
        ),
    }
    tokenizer::hf_tokenizer(dir, config.as_ref(), r);
    stored(&opened)
}

/// config.json parses and describes a Llama model.
fn check_config(dir: &Path, r: &mut Report) -> (Option<Value>, Option<Params>) {
    let mark = r.problems.len();
    let config: Option<Value> = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|e| {
            let detail = format!("config.json: {e}");
            r.problem(Kind::InvalidConfig, Some("config.json"), None, detail)
        })
        .ok();
    let params = config.as_ref().and_then(|c| {
        hf_dir::params_from_config(c)
            .map_err(|e| r.problem(Kind::InvalidConfig, Some("config.json"), None, one_line(&e)))
            .ok()
    });
    let pdetail = params.as_ref().map_or(String::new(), |p| {
        format!(
            "hidden {}, {} layers, {} heads / {} kv, intermediate {}, vocab {}",
            p.dim,
            p.n_layers,
            p.n_heads,
            p.kv_heads(),
            p.ffn_hidden(),
            p.vocab_size
        )
    });
    r.settle("config", mark, pdetail);
    (config, params)
}

fn load_index(dir: &Path, r: &mut Report) -> Option<Index> {
    if !dir.join(INDEX).exists() {
        return None;
    }
    std::fs::read_to_string(dir.join(INDEX))
        .map_err(|e| e.to_string())
        .and_then(|t| read_index(&t))
        .map_err(|e| {
            r.problem(
                Kind::InvalidIndex,
                Some(INDEX),
                None,
                format!("{INDEX}: {e}"),
            )
        })
        .ok()
}

/// The weight files to open: those the index names (each must exist, and every file on disk must
/// be named), or without an index the single `model.safetensors`.
fn weight_files(dir: &Path, index: Option<&Index>, r: &mut Report) -> Vec<String> {
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect()
        })
        .unwrap_or_default();
    match index {
        Some(ix) => indexed_files(ix, &on_disk, r),
        None if dir.join(INDEX).exists() => on_disk.into_iter().collect(),
        None => unindexed_files(dir, on_disk, r),
    }
}

fn indexed_files(ix: &Index, on_disk: &BTreeSet<String>, r: &mut Report) -> Vec<String> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (t, f) in &ix.pairs {
        if let Some(prev) = seen.insert(t, f) {
            let detail = format!("{INDEX}: {t} is listed twice ({prev}, {f})");
            r.problem(Kind::IndexDuplicate, Some(INDEX), Some(t), detail);
        }
    }
    let named: BTreeSet<&String> = ix.pairs.iter().map(|(_, f)| f).collect();
    let mut files = Vec::new();
    for f in &named {
        if f.contains('/') || f.contains('\\') || *f == ".." {
            let detail =
                format!("{INDEX}: shard name {f:?} is not a plain file name; not followed");
            r.problem(Kind::InvalidIndex, Some(INDEX), None, detail);
        } else if !on_disk.contains(*f) {
            let detail = format!("{f} is named by {INDEX} but absent");
            r.problem(Kind::MissingShard, Some(f), None, detail);
        } else {
            files.push((*f).clone());
        }
    }
    for f in on_disk.iter().filter(|f| !named.contains(f)) {
        let detail = format!("{f} is not referenced by {INDEX}");
        r.problem(Kind::DanglingShard, Some(f), None, detail);
    }
    files
}

fn unindexed_files(dir: &Path, on_disk: BTreeSet<String>, r: &mut Report) -> Vec<String> {
    if on_disk.contains("model.safetensors") {
        for f in on_disk.iter().filter(|f| *f != "model.safetensors") {
            let detail = format!("{f} sits beside model.safetensors without an index");
            r.problem(Kind::DanglingShard, Some(f), None, detail);
        }
        return vec!["model.safetensors".to_string()];
    }
    if on_disk.is_empty() {
        let detail = format!("{}: no model.safetensors or {INDEX}", dir.display());
        r.problem(Kind::MissingShard, None, None, detail);
    } else {
        let detail = format!(
            "{INDEX} is missing but the weights are split over {} files",
            on_disk.len()
        );
        r.problem(Kind::InvalidIndex, Some(INDEX), None, detail);
    }
    on_disk.into_iter().collect()
}

/// Open every file (the header parser also refuses a file shorter than its tensors) and note which
/// file holds each tensor; a tensor in two files is a problem.
fn open_files(dir: &Path, names: Vec<String>, r: &mut Report) -> Opened {
    let attempted = names.len();
    let mut files = Vec::new();
    for f in names {
        match SafetensorsFile::open(&dir.join(&f)) {
            Ok(s) => files.push((f, s)),
            Err(e) => r.problem(Kind::CorruptShard, Some(&f), None, one_line(&e)),
        }
    }
    let mut holder: HashMap<String, String> = HashMap::new();
    for (f, s) in &files {
        for t in s.tensors() {
            if let Some(prev) = holder.insert(t.name.clone(), f.clone()) {
                let detail = format!("{} is stored in both {prev} and {f}", t.name);
                r.problem(Kind::DuplicateTensor, Some(f), Some(&t.name), detail);
            }
        }
    }
    Opened {
        files,
        attempted,
        holder,
    }
}

/// The index maps every stored tensor to the file holding it, lists no other, and its total_size
/// is the tensors' bytes.
fn check_index(ix: &Index, opened: &Opened, r: &mut Report) {
    let listed: HashMap<&str, &str> = ix
        .pairs
        .iter()
        .map(|(t, f)| (t.as_str(), f.as_str()))
        .collect();
    let readable: BTreeSet<&str> = opened.files.iter().map(|(f, _)| f.as_str()).collect();
    for (t, f) in &ix.pairs {
        let detail = match opened.holder.get(t) {
            Some(h) if h == f => continue,
            Some(h) => format!("{INDEX}: {t} is mapped to {f} but stored in {h}"),
            None if readable.contains(f.as_str()) => {
                format!("{INDEX}: {t} is mapped to {f}, which does not hold it")
            }
            // A missing or corrupt shard is reported already; don't repeat it per tensor.
            None => continue,
        };
        r.problem(Kind::IndexWrongFile, Some(INDEX), Some(t), detail);
    }
    let mut unlisted: Vec<(&String, &String)> = opened
        .holder
        .iter()
        .filter(|(t, _)| !listed.contains_key(t.as_str()))
        .collect();
    unlisted.sort();
    for (t, f) in unlisted {
        let detail = format!("{f}: tensor {t} is not listed in {INDEX}");
        r.problem(Kind::IndexUnlistedTensor, Some(f), Some(t), detail);
    }
    // Only a complete set of files can be summed.
    let all_read = listed.values().all(|f| readable.contains(f));
    let bytes: u64 = opened
        .files
        .iter()
        .flat_map(|(_, s)| s.tensors())
        .map(|t| t.nbytes() as u64)
        .sum();
    match ix.total_size {
        Some(total) if all_read && total != bytes => {
            let detail = format!(
                "{INDEX}: metadata.total_size is {total}, but the tensors hold {bytes} bytes"
            );
            r.problem(Kind::IndexTotalSize, Some(INDEX), None, detail);
        }
        _ => {}
    }
}

/// Every weight config.json implies, in some file, with the full shape and the model's dtype.
fn check_hf_tensors(p: &Params, c: &Value, index: Option<&Index>, opened: &Opened, r: &mut Report) {
    let mark = r.problems.len();
    let model_dtype = super::model_dtype(opened.files.iter().flat_map(|(_, s)| s.tensors()));
    let vocab = p.vocab().unwrap_or(0);
    let tied = c
        .get("tie_word_embeddings")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let weights: Vec<Weight> = layout::meta_weights(p, vocab, Split::Rows, false)
        .into_iter()
        .filter_map(|w| {
            Some(Weight {
                name: layout::meta_to_hf(&w.name)?,
                ..w
            })
        })
        .collect();
    // Older transformers saved rotary inverse frequencies; they are recomputed on load.
    let is_buffer = |n: &str| n.ends_with("rotary_emb.inv_freq");
    let rule = super::same_dtype(model_dtype);
    for (f, s) in &opened.files {
        let infos = s.tensors().filter(|t| !is_buffer(&t.name));
        check_tensors(
            r,
            f,
            infos,
            &weights,
            &|w| w.full_shape.clone(),
            &rule,
            true,
        );
    }
    // A weight whose file is missing or corrupt was reported with that file.
    let readable: BTreeSet<&str> = opened.files.iter().map(|(f, _)| f.as_str()).collect();
    let lost = |name: &str| match index {
        Some(ix) => ix
            .pairs
            .iter()
            .any(|(t, f)| t == name && !readable.contains(f.as_str())),
        None => opened.files.len() < opened.attempted,
    };
    for w in &weights {
        let optional = tied && w.name == Part::Output.hf_name();
        if !optional && !opened.holder.contains_key(&w.name) && !lost(&w.name) {
            let detail = format!("tensor {} is in no safetensors file", w.name);
            r.problem(Kind::MissingTensor, None, Some(&w.name), detail);
        }
    }
    r.settle(
        "tensors",
        mark,
        format!(
            "{} tensors{}, {}",
            opened.holder.len(),
            if tied { " (embeddings tied)" } else { "" },
            model_dtype.map_or("-", |d| d.name())
        ),
    );
}

fn stored(opened: &Opened) -> Vec<Stored> {
    let mut out = Vec::new();
    for (f, s) in &opened.files {
        for t in s.tensors() {
            let item = s.data_offset(&t.name).ok().map(|offset| ScanItem {
                src: s.source().clone(),
                offset,
                nbytes: t.nbytes() as u64,
                dtype: t.dtype,
                scales: None,
            });
            out.push(Stored {
                file: f.clone(),
                info: t.clone(),
                item,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_duplicates_are_seen() {
        let t = r#"{"metadata": {"total_size": 1}, "weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}"#;
        let ix = read_index(t).unwrap();
        assert_eq!((ix.pairs.len(), ix.total_size), (2, Some(1)));
        assert!(read_index("{}").is_err());
    }
}
