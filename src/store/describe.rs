//! One model in detail, for `show`: hyper-parameters, dtype per tensor group, shards and files,
//! tokenizer and stop tokens, chat template, generation defaults. Reads headers and small JSON
//! files only (no tensor bytes), so it answers at once on any size.
use crate::checkpoint::tensors::{part_of, Naming, Part, GGUF_ROPE_FACTORS};
use crate::checkpoint::{hf, hf_config, rope, Params};
use crate::formats::gguf::GgufFile;
use crate::formats::pth::PthFile;
use crate::formats::safetensors::SafetensorsFile;
use crate::tokenizer::{Tokenizer, TokenizerKind};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Meta's generation defaults (llama-models' `generation.py` and example scripts).
const META_TEMPERATURE: f64 = 0.6;
const META_TOP_P: f64 = 0.9;

/// What `show` prints, as one JSON document (the table is drawn from it).
pub fn describe(path: &Path) -> Result<Value> {
    let mut doc = if path.is_file() {
        gguf(path)?
    } else if super::scan::has_meta_files(path) {
        meta(path)?
    } else if path.join("config.json").is_file() {
        hf_dir(path)?
    } else {
        bail!(
            "{}: not a model (no params.json, config.json or GGUF header)",
            path.display()
        );
    };
    doc["path"] = json!(path.display().to_string());
    doc["files"] = files(path);
    Ok(doc)
}

/// Which part of the model a tensor belongs to, from its Meta, HF or GGUF name.
fn group(name: &str) -> &'static str {
    let part = [Naming::Meta, Naming::Hf, Naming::Gguf]
        .into_iter()
        .find_map(|naming| part_of(naming, name));
    match part {
        Some(Part::Embedding) => "embedding",
        Some(p) if p.is_norm() => "norm",
        Some(Part::Wq | Part::Wk | Part::Wv | Part::Wo) => "attention",
        Some(Part::W1 | Part::W2 | Part::W3) => "feed_forward",
        Some(Part::Output) => "output",
        _ => "other",
    }
}

/// group -> the dtypes its tensors have.
fn dtypes<'a>(tensors: impl Iterator<Item = (&'a str, String)>) -> Value {
    let mut by: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for (name, dtype) in tensors {
        by.entry(group(name)).or_default().insert(dtype);
    }
    json!(by)
}

fn params_json(p: &Params, vocab: Option<usize>, context: Option<usize>, scaling: Value) -> Value {
    json!({
        "dim": p.dim,
        "n_layers": p.n_layers,
        "n_heads": p.n_heads,
        "n_kv_heads": p.kv_heads(),
        "vocab_size": vocab.or(p.vocab()),
        "context_length": context,
        "rope_theta": p.rope_theta(),
        "rope_scaling": scaling,
    })
}

fn meta(dir: &Path) -> Result<Value> {
    let p = Params::read(&dir.join("params.json"))?;
    let shards = crate::checkpoint::meta::shard_paths(dir).unwrap_or_default();
    let mut tensors = Vec::new();
    if let Some(first) = shards.first() {
        let f = PthFile::open(first)?;
        tensors.extend(
            f.tensors()
                .iter()
                .map(|t| (t.name.clone(), t.dtype.name().to_string())),
        );
    }
    let tok = Tokenizer::from_model_dir(dir).ok();
    let vocab = p.vocab().or_else(|| tok.as_ref().map(Tokenizer::n_vocab));
    Ok(json!({
        "format": "meta",
        "mp": shards.len(),
        "params": params_json(&p, vocab, Some(hf_config::max_position_embeddings(&p)), hf_config::rope_scaling(&p)),
        "dtypes": dtypes(tensors.iter().map(|(n, d)| (n.as_str(), d.clone()))),
        "tokenizer": tokenizer_json(tok.as_ref()),
        "chat_template": "built in (Meta's Llama 3 dialog format)",
        "generation": {"temperature": META_TEMPERATURE, "top_p": META_TOP_P, "source": "Meta's defaults"},
        "verified": super::catalog::verified_state(dir),
    }))
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn hf_dir(dir: &Path) -> Result<Value> {
    let cfg = read_json(&dir.join("config.json"))
        .with_context(|| format!("{}: not valid JSON", dir.join("config.json").display()))?;
    let p = hf::params_from_config(&cfg).ok();
    let (_, scaling) = rope::rope_from_config(&cfg);
    let mut tensors = Vec::new();
    for f in files_with(dir, ".safetensors") {
        let st = SafetensorsFile::open(&f)?;
        tensors.extend(
            st.tensors()
                .map(|t| (t.name.clone(), t.dtype.name().to_string())),
        );
    }
    let tok = Tokenizer::from_model_dir(dir).ok();
    let tok_cfg = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Value::Null);
    let template = !tok_cfg["chat_template"].is_null() || dir.join("chat_template.jinja").is_file();
    let generation = read_json(&dir.join("generation_config.json"));
    let context = cfg["max_position_embeddings"].as_u64().map(|v| v as usize);
    let vocab = cfg["vocab_size"].as_u64().map(|v| v as usize);
    Ok(json!({
        "format": "hf",
        "mp": null,
        "params": p.map(|p| params_json(&p, vocab, context, scaling.cloned().unwrap_or(Value::Null))),
        "dtypes": dtypes(tensors.iter().map(|(n, d)| (n.as_str(), d.clone()))),
        "tokenizer": tokenizer_json(tok.as_ref()),
        "chat_template": if template { "present (tokenizer_config.json)" } else { "none" },
        "generation": generation.map(|mut g| { g["source"] = json!("generation_config.json"); g }),
        "verified": "never",
    }))
}

fn tokenizer_json(tok: Option<&Tokenizer>) -> Value {
    let Some(t) = tok else {
        return Value::Null;
    };
    let text = |id: u32| {
        t.token_bytes(id)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let tokens = |ids: &[u32]| -> Vec<Value> {
        ids.iter()
            .map(|&id| json!({"id": id, "text": text(id)}))
            .collect()
    };
    json!({
        "kind": match t.kind() {
            TokenizerKind::Tiktoken => "tiktoken (tokenizer.model)",
            TokenizerKind::HuggingFace => "Hugging Face BPE (tokenizer.json)",
        },
        "vocab_size": t.n_vocab(),
        "bos": t.bos_id().map(|id| json!({"id": id, "text": text(id)})),
        "eos": t.eos_id().map(|id| json!({"id": id, "text": text(id)})),
        "stop_tokens": tokens(t.stop_ids()),
    })
}

fn gguf(path: &Path) -> Result<Value> {
    let g = GgufFile::open(path)?;
    let arch = g
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("llama")
        .to_string();
    let u = |k: &str| g.get(&format!("{arch}.{k}")).and_then(|v| v.as_u64());
    let f = |k: &str| g.get(&format!("{arch}.{k}")).map(number);
    let mut sampling = Map::new();
    for (k, v) in &g.kvs {
        if let Some(short) = k.strip_prefix("general.sampling.") {
            sampling.insert(short.to_string(), number(v));
        }
    }
    let has_scaling = g.tensors.iter().any(|t| t.name == GGUF_ROPE_FACTORS);
    Ok(json!({
        "format": "gguf",
        "mp": null,
        "file_type": super::scan::gguf_dtype(&g),
        "params": {
            "dim": u("embedding_length"),
            "n_layers": u("block_count"),
            "n_heads": u("attention.head_count"),
            "n_kv_heads": u("attention.head_count_kv"),
            "vocab_size": u("vocab_size").or(Some(gguf_tokens(&g).len() as u64).filter(|n| *n > 0)),
            "context_length": u("context_length"),
            "rope_theta": f("rope.freq_base"),
            "rope_scaling": if has_scaling { json!(format!("{GGUF_ROPE_FACTORS} (Llama 3.1 scaling)")) } else { Value::Null },
        },
        "dtypes": dtypes(g.tensors.iter().map(|t| (t.name.as_str(), t.ggml_type.name()))),
        "tokenizer": gguf_tokenizer(&g),
        "chat_template": if g.get("tokenizer.chat_template").is_some() { "present (tokenizer.chat_template)" } else { "none" },
        "generation": if sampling.is_empty() { Value::Null } else { sampling.insert("source".into(), json!("general.sampling.*")); Value::Object(sampling) },
        "verified": "never",
    }))
}

fn gguf_tokens(g: &GgufFile) -> &[crate::formats::gguf::Value] {
    match g.get("tokenizer.ggml.tokens") {
        Some(crate::formats::gguf::Value::Array(_, items)) => items,
        _ => &[],
    }
}

/// The tokenizer a GGUF file carries: kind, size, bos/eos and stop tokens with their text.
fn gguf_tokenizer(g: &GgufFile) -> Value {
    let tokens = gguf_tokens(g);
    let text = |id: u64| {
        tokens
            .get(id as usize)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let tok = |k: &str| {
        g.get(k)
            .and_then(|v| v.as_u64())
            .map(|id| json!({"id": id, "text": text(id)}))
    };
    let stop: Vec<Value> = ["eos", "eot", "eom"]
        .iter()
        .filter_map(|k| tok(&format!("tokenizer.ggml.{k}_token_id")))
        .collect();
    json!({
        "kind": g.get("tokenizer.ggml.model").and_then(|v| v.as_str()).map(|m| format!("GGUF {m}")),
        "vocab_size": tokens.len(),
        "bos": tok("tokenizer.ggml.bos_token_id"),
        "eos": tok("tokenizer.ggml.eos_token_id"),
        "stop_tokens": stop,
    })
}

/// A GGUF value as JSON; an f32 as the shortest decimal that reads back to it (0.9, not
/// 0.8999999761581421).
fn number(v: &crate::formats::gguf::Value) -> Value {
    match v {
        crate::formats::gguf::Value::F32(x) => x
            .to_string()
            .parse::<f64>()
            .map_or(Value::Null, |f| json!(f)),
        other => other.to_json(0),
    }
}

fn files_with(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// Every file of the model with its size (a folder's files, following snapshot links).
fn files(path: &Path) -> Value {
    if path.is_file() {
        let n = std::fs::metadata(path).map_or(0, |m| m.len());
        return json!([{"name": path.file_name().map(|n| n.to_string_lossy().into_owned()), "bytes": n}]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => {
                    let rel = p.strip_prefix(path).unwrap_or(&p).display().to_string();
                    out.push((rel, m.len()));
                }
                Err(_) => {}
            }
        }
    }
    out.sort();
    json!(out
        .into_iter()
        .map(|(n, b)| json!({"name": n, "bytes": b}))
        .collect::<Vec<_>>())
}
