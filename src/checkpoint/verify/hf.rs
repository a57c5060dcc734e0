//! Hugging Face directories: config.json, the index and its shards, every tensor against the config.
use super::{check_tensors, CheckState, Kind, Report, Stored};
use crate::checkpoint::hf as hf_dir;
use crate::checkpoint::layout::{self, Split, Weight};
use crate::checkpoint::stats::ScanItem;
use crate::error::one_line;
use crate::formats::safetensors::SafetensorsFile;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Index json whose weight_map is read as a list of pairs, so a tensor listed twice is seen
/// (a JSON object parser keeps only the last).
fn read_index_pairs(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
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
    struct IndexDoc {
        weight_map: Pairs,
    }
    serde_json::from_str::<IndexDoc>(text)
        .map(|d| d.weight_map.0)
        .map_err(|e| e.to_string())
}

pub(super) fn structure(dir: &Path, r: &mut Report) -> Vec<Stored> {
    // config.json
    let mark = r.problems.len();
    let config: Option<Value> = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|e| {
            r.problem(
                Kind::InvalidConfig,
                Some("config.json"),
                None,
                format!("config.json: {e}"),
            )
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

    // index and shard files
    let mark = r.problems.len();
    let index_name = "model.safetensors.index.json";
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect()
        })
        .unwrap_or_default();
    let mut index: Option<Vec<(String, String)>> = None;
    if dir.join(index_name).exists() {
        match std::fs::read_to_string(dir.join(index_name))
            .map_err(|e| e.to_string())
            .and_then(|t| read_index_pairs(&t))
        {
            Ok(pairs) => index = Some(pairs),
            Err(e) => r.problem(
                Kind::InvalidIndex,
                Some(index_name),
                None,
                format!("{index_name}: {e}"),
            ),
        }
    }
    let files: Vec<String> = match &index {
        Some(pairs) => {
            let mut seen: HashMap<&str, &str> = HashMap::new();
            for (t, f) in pairs {
                if let Some(prev) = seen.insert(t, f) {
                    r.problem(
                        Kind::IndexDuplicate,
                        Some(index_name),
                        Some(t),
                        format!("{index_name}: {t} is listed twice ({prev}, {f})"),
                    );
                }
            }
            let named: BTreeSet<String> = pairs.iter().map(|(_, f)| f.clone()).collect();
            let mut files = Vec::new();
            for f in named {
                if f.contains('/') || f.contains('\\') || f == ".." {
                    r.problem(
                        Kind::InvalidIndex,
                        Some(index_name),
                        None,
                        format!(
                            "{index_name}: shard name {f:?} is not a plain file name; not followed"
                        ),
                    );
                } else if !on_disk.contains(&f) {
                    r.problem(
                        Kind::MissingShard,
                        Some(&f),
                        None,
                        format!("{f} is named by {index_name} but absent"),
                    );
                } else {
                    files.push(f);
                }
            }
            for f in &on_disk {
                if !pairs.iter().any(|(_, g)| g == f) {
                    r.problem(
                        Kind::DanglingShard,
                        Some(f),
                        None,
                        format!("{f} is not referenced by {index_name}"),
                    );
                }
            }
            files
        }
        None if dir.join(index_name).exists() => on_disk.iter().cloned().collect(),
        None => {
            if on_disk.contains("model.safetensors") {
                for f in on_disk.iter().filter(|f| *f != "model.safetensors") {
                    r.problem(
                        Kind::DanglingShard,
                        Some(f),
                        None,
                        format!("{f} sits beside model.safetensors without an index"),
                    );
                }
                vec!["model.safetensors".to_string()]
            } else if on_disk.is_empty() {
                r.problem(
                    Kind::MissingShard,
                    None,
                    None,
                    format!("{}: no model.safetensors or {index_name}", dir.display()),
                );
                Vec::new()
            } else {
                r.problem(
                    Kind::InvalidIndex,
                    Some(index_name),
                    None,
                    format!(
                        "{index_name} is missing but the weights are split over {} files",
                        on_disk.len()
                    ),
                );
                on_disk.iter().cloned().collect()
            }
        }
    };
    let attempted = files.len();
    let mut opened: Vec<(String, SafetensorsFile)> = Vec::new();
    for f in files {
        match SafetensorsFile::open(&dir.join(&f)) {
            // The header parser also refuses a file shorter than its tensors (truncation).
            Ok(s) => opened.push((f, s)),
            Err(e) => r.problem(Kind::CorruptShard, Some(&f), None, one_line(&e)),
        }
    }
    // Which file holds each tensor; the index must agree.
    let mut holder: HashMap<String, String> = HashMap::new();
    for (f, s) in &opened {
        for t in s.tensors() {
            if let Some(prev) = holder.insert(t.name.clone(), f.clone()) {
                r.problem(
                    Kind::DuplicateTensor,
                    Some(f),
                    Some(&t.name),
                    format!("{} is stored in both {prev} and {f}", t.name),
                );
            }
        }
    }
    if let Some(pairs) = &index {
        let listed: HashMap<&str, &str> = pairs
            .iter()
            .map(|(t, f)| (t.as_str(), f.as_str()))
            .collect();
        let readable: BTreeSet<&str> = opened.iter().map(|(f, _)| f.as_str()).collect();
        for (t, f) in pairs {
            match holder.get(t) {
                Some(h) if h == f => {}
                Some(h) => r.problem(
                    Kind::IndexWrongFile,
                    Some(index_name),
                    Some(t),
                    format!("{index_name}: {t} is mapped to {f} but stored in {h}"),
                ),
                // A missing or corrupt shard is reported already; don't repeat it per tensor.
                None if readable.contains(f.as_str()) => r.problem(
                    Kind::IndexWrongFile,
                    Some(index_name),
                    Some(t),
                    format!("{index_name}: {t} is mapped to {f}, which does not hold it"),
                ),
                None => {}
            }
        }
        let mut unlisted: Vec<(&String, &String)> = holder
            .iter()
            .filter(|(t, _)| !listed.contains_key(t.as_str()))
            .collect();
        unlisted.sort();
        for (t, f) in unlisted {
            r.problem(
                Kind::IndexUnlistedTensor,
                Some(f),
                Some(t),
                format!("{f}: tensor {t} is not listed in {index_name}"),
            );
        }
    }
    let n_files = opened.len();
    r.settle(
        "shards",
        mark,
        format!(
            "{n_files} safetensors file{}{}",
            if n_files == 1 { "" } else { "s" },
            if index.is_some() {
                ", index covers every tensor once"
            } else {
                ""
            }
        ),
    );

    // tensors against config.json
    let mark = r.problems.len();
    let model_dtype = super::model_dtype(opened.iter().flat_map(|(_, s)| s.tensors()));
    match (&params, &config) {
        (Some(p), Some(c)) => {
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
            for (f, s) in &opened {
                let infos = s.tensors().filter(|t| !is_buffer(&t.name));
                check_tensors(
                    r,
                    f,
                    infos,
                    &weights,
                    &|w| w.full_shape.clone(),
                    &super::same_dtype(model_dtype),
                    true,
                );
            }
            // A weight whose file is missing or corrupt was reported with that file.
            let readable: BTreeSet<&str> = opened.iter().map(|(f, _)| f.as_str()).collect();
            let lost = |name: &str| match &index {
                Some(pairs) => pairs
                    .iter()
                    .any(|(t, f)| t == name && !readable.contains(f.as_str())),
                None => opened.len() < attempted,
            };
            for w in &weights {
                let optional = tied && w.name == "lm_head.weight";
                if !optional && !holder.contains_key(&w.name) && !lost(&w.name) {
                    r.problem(
                        Kind::MissingTensor,
                        None,
                        Some(&w.name),
                        format!("tensor {} is in no safetensors file", w.name),
                    );
                }
            }
            r.settle(
                "tensors",
                mark,
                format!(
                    "{} tensors{}, {}",
                    holder.len(),
                    if tied { " (embeddings tied)" } else { "" },
                    model_dtype.map_or("-", |d| d.name())
                ),
            );
        }
        _ => r.check(
            "tensors",
            CheckState::Skipped,
            "needs a valid config.json".into(),
        ),
    }

    let mut stored = Vec::new();
    for (f, s) in &opened {
        for t in s.tensors() {
            let item = s.data_offset(&t.name).ok().map(|offset| ScanItem {
                src: s.source().clone(),
                offset,
                nbytes: t.nbytes() as u64,
                dtype: t.dtype,
                scales: None,
            });
            stored.push(Stored {
                file: f.clone(),
                info: t.clone(),
                item,
            });
        }
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_duplicates_are_seen() {
        let t = r#"{"metadata": {"total_size": 1}, "weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}"#;
        let pairs = read_index_pairs(t).unwrap();
        assert_eq!(pairs.len(), 2);
        assert!(read_index_pairs("{}").is_err());
    }
}
