//! The GGUF metadata of a Llama model, derived from its Hugging Face JSON files the way llama.cpp's
//! converter derives it, key for key and in the same order: architecture and naming, sampling
//! defaults (generation_config.json), hyper-parameters (config.json), file type, then the
//! tokenizer (tokenizer.json vocabulary and merges; special ids, add-bos/eos/sep flags and chat
//! template from tokenizer_config.json, the post-processor and config.json).
use super::docs::HfDocs;
use super::types::FileType;
use crate::checkpoint::rope::rope_from_config;
use crate::formats::gguf::Value;
use anyhow::{anyhow, bail, Result};
use serde_json::Value as Json;

/// `tokenizer.ggml.token_type` values.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Every key/value of the file, in the converter's order.
pub(super) fn metadata(
    docs: &HfDocs,
    ft: FileType,
    name: &str,
    params: u64,
    pre: &str,
) -> Result<Vec<(String, Value)>> {
    let mut kv: Vec<(String, Value)> = Vec::new();
    let mut put = |k: &str, v: Value| kv.push((k.to_string(), v));
    put("general.architecture", Value::Str("llama".into()));
    put("general.type", Value::Str("model".into()));
    for (k, v) in sampling(docs.generation.as_ref()) {
        put(&k, v);
    }
    if !name.is_empty() {
        put("general.name", Value::Str(name.into()));
    }
    put("general.size_label", Value::Str(size_label(params)));
    for (k, v) in hyper_params(&docs.config, ft)? {
        put(&k, v);
    }
    put("general.quantization_version", Value::U32(2));
    put("tokenizer.ggml.model", Value::Str("gpt2".into()));
    put("tokenizer.ggml.pre", Value::Str(pre.into()));
    let vocab_size = u_field(&docs.config, "vocab_size")?;
    let (tokens, types) = vocabulary(&docs.tokenizer, vocab_size as usize)?;
    put("tokenizer.ggml.tokens", Value::strings(tokens));
    put("tokenizer.ggml.token_type", Value::i32s(types));
    let merges = merges(&docs.tokenizer)?;
    if !merges.is_empty() {
        put("tokenizer.ggml.merges", Value::strings(merges));
    }
    for (k, v) in special_vocab(docs)? {
        put(&k, v);
    }
    Ok(kv)
}

fn u_field(c: &Json, key: &str) -> Result<u64> {
    c.get(key)
        .and_then(Json::as_u64)
        .ok_or_else(|| anyhow!("config.json: `{key}` is missing or not a positive integer"))
}

/// `general.sampling.*` from generation_config.json, in the converter's order and types.
fn sampling(gen: Option<&Json>) -> Vec<(String, Value)> {
    let Some(g) = gen else { return Vec::new() };
    let f = |k: &str| {
        g.get(k)
            .and_then(Json::as_f64)
            .map(|v| Value::F32(v as f32))
    };
    let i = |k: &str| {
        g.get(k)
            .and_then(Json::as_i64)
            .map(|v| Value::I32(v as i32))
    };
    let s = |k: &str| {
        g.get(k)
            .and_then(Json::as_str)
            .map(|v| Value::Str(v.into()))
    };
    let fields = [
        ("sequence", s("sequence")),
        ("top_k", i("top_k")),
        ("top_p", f("top_p")),
        ("min_p", f("min_p")),
        ("xtc_probability", f("xtc_probability")),
        ("xtc_threshold", f("xtc_threshold")),
        ("temp", f("temperature")),
        ("penalty_last_n", i("penalty_last_n")),
        (
            "penalty_repeat",
            f("penalty_repeat").or_else(|| f("repetition_penalty")),
        ),
        ("mirostat", i("mirostat")),
        ("mirostat_tau", f("mirostat_tau")),
        ("mirostat_eta", f("mirostat_eta")),
    ];
    fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (format!("general.sampling.{k}"), v)))
        .collect()
}

/// The parameter count as the converter labels it ("8.0B", "1.2B", "4.2M").
fn size_label(n: u64) -> String {
    let x = n as f64;
    let (scaled, suffix) = if x > 1e12 {
        (x * 1e-12, "T")
    } else if x > 1e9 {
        (x * 1e-9, "B")
    } else if x > 1e6 {
        (x * 1e-6, "M")
    } else {
        (x * 1e-3, "K")
    };
    // Two significant digits at least: one decimal for 1-9, none from 10 up.
    let int_digits = format!("{}", scaled.round_ties_even() as u64)
        .trim_start_matches('0')
        .len();
    let fix = 2usize.saturating_sub(int_digits);
    format!("{scaled:.fix$}{suffix}")
}

/// `llama.*` hyper-parameters and `general.file_type`.
fn hyper_params(c: &Json, ft: FileType) -> Result<Vec<(String, Value)>> {
    let u = |k: &str| -> Result<Value> { Ok(Value::U32(u_field(c, k)? as u32)) };
    let heads = u_field(c, "num_attention_heads")?;
    let head_dim = match c.get("head_dim").and_then(Json::as_u64) {
        Some(d) => d,
        None => u_field(c, "hidden_size")? / heads.max(1),
    };
    let eps = c
        .get("rms_norm_eps")
        .and_then(Json::as_f64)
        .ok_or_else(|| anyhow!("config.json: `rms_norm_eps` is missing"))?;
    let kv_heads = c
        .get("num_key_value_heads")
        .and_then(Json::as_u64)
        .unwrap_or(heads);
    let (theta, _) = rope_from_config(c);
    Ok(vec![
        ("llama.block_count".into(), u("num_hidden_layers")?),
        ("llama.context_length".into(), u("max_position_embeddings")?),
        ("llama.embedding_length".into(), u("hidden_size")?),
        ("llama.feed_forward_length".into(), u("intermediate_size")?),
        (
            "llama.attention.head_count".into(),
            Value::U32(heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(kv_heads as u32),
        ),
        ("llama.rope.freq_base".into(), Value::F32(theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(eps as f32),
        ),
        (
            "llama.attention.key_length".into(),
            Value::U32(head_dim as u32),
        ),
        (
            "llama.attention.value_length".into(),
            Value::U32(head_dim as u32),
        ),
        ("general.file_type".into(), Value::U32(ft.code())),
        ("llama.vocab_size".into(), u("vocab_size")?),
        (
            "llama.rope.dimension_count".into(),
            Value::U32(head_dim as u32),
        ),
    ])
}

/// True for added tokens llama.cpp treats as control tokens even when not marked special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Token strings and types for ids 0..vocab_size: the BPE vocabulary (normal), added tokens
/// (control when special), and `[PAD{i}]` (unused) for ids nothing names.
fn vocabulary(tok: &Json, vocab_size: usize) -> Result<(Vec<String>, Vec<i32>)> {
    let mut slots: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let vocab = tok["model"]["vocab"]
        .as_object()
        .ok_or_else(|| anyhow!("tokenizer.json: model.vocab is not an object"))?;
    let mut put = |id: u64, text: &str, ty: i32| -> Result<()> {
        let slot = slots.get_mut(id as usize).ok_or_else(|| {
            anyhow!("tokenizer.json: token {text:?} has id {id}, beyond vocab_size {vocab_size}")
        })?;
        *slot = Some((text.to_string(), ty));
        Ok(())
    };
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| anyhow!("tokenizer.json: token {text:?} has no integer id"))?;
        put(id, text, NORMAL)?;
    }
    for a in tok["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (a["id"].as_u64(), a["content"].as_str()) else {
            bail!("tokenizer.json: an added token lacks an id or content");
        };
        let special = a["special"].as_bool().unwrap_or(false);
        if special || looks_special(text) {
            put(id, text, CONTROL)?;
        } else {
            put(id, &text.replace('\u{2581}', " "), USER_DEFINED)?;
        }
    }
    Ok(slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED)))
        .unzip())
}

/// BPE merges as "left right" strings (pairs from newer tokenizer.json files are joined, with a
/// space inside a part written as U+0120, as the converter does).
fn merges(tok: &Json) -> Result<Vec<String>> {
    let Some(list) = tok["model"]["merges"].as_array() else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => {
                let part = |v: &Json| -> Result<String> {
                    let s = v
                        .as_str()
                        .ok_or_else(|| anyhow!("tokenizer.json: bad merge"))?;
                    Ok(s.replace(' ', "\u{120}"))
                };
                Ok(format!("{} {}", part(&p[0])?, part(&p[1])?))
            }
            _ => bail!("tokenizer.json: unknown merges format"),
        })
        .collect()
}

/// The special-token types llama.cpp's converter looks for, and the GGUF key of each.
const SPECIAL_TYPES: [(&str, &str); 7] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("cls", ""),
    ("mask", "tokenizer.ggml.mask_token_id"),
];

/// An ordered map where re-setting a key keeps its place (a Python dict).
#[derive(Default)]
struct Ordered<V>(Vec<(String, V)>);

impl<V: Clone> Ordered<V> {
    fn get(&self, k: &str) -> Option<&V> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v)
    }
    fn set(&mut self, k: &str, v: V) {
        match self.0.iter_mut().find(|(x, _)| x == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k.to_string(), v)),
        }
    }
    fn set_default(&mut self, k: &str, v: V) {
        if self.get(k).is_none() {
            self.0.push((k.to_string(), v));
        }
    }
}

/// The text of a `*_token` entry in tokenizer_config.json (a string or `{"content": ...}`).
fn token_text(v: &Json) -> Option<&str> {
    v.as_str().or_else(|| v["content"].as_str())
}

/// Special ids, add-token flags and the chat template.
fn special_vocab(docs: &HfDocs) -> Result<Vec<(String, Value)>> {
    let tc = docs.tokenizer_config.clone().unwrap_or(Json::Null);
    let text = |typ: &str| {
        tc.get(format!("{typ}_token"))
            .and_then(token_text)
            .map(str::to_string)
    };
    let add = add_flags(&docs.tokenizer, text("bos"), text("eos"), text("sep"))?;
    let mut ids: Ordered<u32> = Ordered::default();
    let added = docs.tokenizer["added_tokens"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (typ, _) in SPECIAL_TYPES {
        let id = text(typ).and_then(|t| {
            added
                .iter()
                .find(|a| a["content"].as_str() == Some(t.as_str()))
                .and_then(|a| a["id"].as_u64())
        });
        if let Some(id) = id {
            ids.set_default(typ, id as u32);
        }
    }
    for (typ, _) in SPECIAL_TYPES {
        if let Some(id) = docs
            .config
            .get(format!("{typ}_token_id"))
            .and_then(Json::as_u64)
        {
            ids.set_default(typ, id as u32);
        }
    }
    let mut out = Vec::new();
    for (typ, id) in &ids.0 {
        let key = SPECIAL_TYPES
            .iter()
            .find(|(t, _)| t == typ)
            .map_or("", |(_, k)| *k);
        if !key.is_empty() {
            out.push((key.to_string(), Value::U32(*id)));
        }
    }
    let mut flags = add;
    for (typ, _) in SPECIAL_TYPES {
        if let Some(b) = tc.get(format!("add_{typ}_token")).and_then(Json::as_bool) {
            flags.set_default(typ, b);
        }
    }
    for (typ, b) in flags.0 {
        if matches!(typ.as_str(), "bos" | "eos" | "sep") {
            out.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(b)));
        }
    }
    match tc
        .get("chat_template")
        .or(docs.chat_template_files.as_ref())
    {
        None | Some(Json::Null) => {}
        Some(Json::String(t)) if t.is_empty() => {}
        Some(Json::String(t)) => {
            out.push(("tokenizer.chat_template".into(), Value::Str(t.clone())))
        }
        Some(Json::Array(list)) => out.extend(named_templates(list)),
        Some(_) => bail!("tokenizer_config.json: chat_template is neither a string nor a list"),
    }
    Ok(out)
}

/// A list of `{name, template}` chat templates, keyed as llama.cpp reads them: one
/// `tokenizer.chat_template.NAME` per named template (NAME with every character outside [A-Za-z0-9]
/// as `_`), their names in `tokenizer.chat_templates`, then the one named `default` as
/// `tokenizer.chat_template`. Entries without a name or template are skipped, as the converter does.
fn named_templates(list: &[Json]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut default = None;
    for entry in list {
        let name: String = entry["name"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let Some(template) = entry["template"].as_str() else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        if name == "default" {
            default = Some(template.to_string());
            continue;
        }
        out.push((
            format!("tokenizer.chat_template.{name}"),
            Value::Str(template.to_string()),
        ));
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if !names.is_empty() {
        out.push(("tokenizer.chat_templates".into(), Value::strings(names)));
    }
    if let Some(t) = default {
        out.push(("tokenizer.chat_template".into(), Value::Str(t)));
    }
    out
}

/// add_bos/eos/sep as the converter reads them off tokenizer.json's post-processor: ByteLevel
/// defaults bos/eos to false; a TemplateProcessing that starts with the bos token adds bos, one
/// that ends with the eos token adds eos, and a pair template with a separator adds sep.
fn add_flags(
    tok: &Json,
    bos: Option<String>,
    eos: Option<String>,
    sep: Option<String>,
) -> Result<Ordered<bool>> {
    let mut add = Ordered::default();
    let pp = &tok["post_processor"];
    let procs: Vec<&Json> = match pp["processors"].as_array() {
        Some(list) => list.iter().collect(),
        None if pp.is_object() => vec![pp],
        None => Vec::new(),
    };
    let special = |v: &Json| v["SpecialToken"]["id"].as_str().map(str::to_string);
    for p in procs {
        match p["type"].as_str() {
            Some("ByteLevel") => {
                add.set_default("bos", false);
                add.set_default("eos", false);
            }
            Some("RobertaProcessing") => {
                for k in ["bos", "eos", "sep"] {
                    add.set(k, true);
                }
            }
            Some("TemplateProcessing") => {
                let single = p["single"].as_array().cloned().unwrap_or_default();
                let pair = p["pair"].as_array().cloned().unwrap_or_default();
                let mut first = None;
                let mut last = None;
                if single.len() > 1 {
                    first = special(&single[0]);
                    if let Some(f) = &first {
                        add.set("bos", Some(f) == bos.as_ref());
                    }
                    last = special(&single[single.len() - 1]);
                    if let Some(l) = &last {
                        if Some(l) != eos.as_ref() {
                            bail!("tokenizer.json: the post-processor ends with {l}, not the eos token; not supported");
                        }
                        add.set("eos", true);
                    }
                }
                if let Some(flag) = pair_sep(&pair, &first, &last, &[&sep, &eos]) {
                    add.set("sep", flag);
                }
            }
            _ => {}
        }
    }
    Ok(add)
}

/// Whether a TemplateProcessing pair template puts a separator between A and B (None when the
/// template has no middle to judge).
fn pair_sep(
    pair: &[Json],
    first: &Option<String>,
    last: &Option<String>,
    seps: &[&Option<String>],
) -> Option<bool> {
    let special = |v: &Json| v["SpecialToken"]["id"].as_str().map(str::to_string);
    if pair.is_empty() {
        return None;
    }
    let start = usize::from(first.is_some() && special(&pair[0]) == *first);
    let stop = if last.is_some() && special(&pair[pair.len() - 1]) == *last {
        pair.len() - 1
    } else {
        pair.len()
    };
    let inner = pair.get(start..stop).filter(|s| !s.is_empty())?;
    let seq = |v: &Json| v["Sequence"]["id"].as_str().map(str::to_string);
    if seq(&inner[0]).as_deref() != Some("A")
        || seq(&inner[inner.len() - 1]).as_deref() != Some("B")
    {
        return None;
    }
    let middle = inner.get(1..inner.len() - 1).filter(|m| !m.is_empty())?;
    let is_sep = |v: &Json| special(v).is_some_and(|s| seps.iter().any(|x| x.as_ref() == Some(&s)));
    let mut add_sep = is_sep(&middle[0]) && last.is_none();
    if middle.len() == 2 && is_sep(&middle[1]) {
        add_sep = true;
    }
    Some(add_sep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn size_labels_round_like_the_converter() {
        assert_eq!(size_label(8_030_261_248), "8.0B");
        assert_eq!(size_label(1_235_814_400), "1.2B");
        assert_eq!(size_label(70_553_706_496), "71B");
        assert_eq!(size_label(4_200_000), "4.2M");
    }

    #[test]
    fn llama3_post_processor_adds_bos_only() {
        let tok = json!({"post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel"},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>"}}, {"Sequence": {"id": "A"}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>"}}, {"Sequence": {"id": "A"}},
                      {"SpecialToken": {"id": "<|begin_of_text|>"}}, {"Sequence": {"id": "B"}}]}]}});
        let add = add_flags(
            &tok,
            Some("<|begin_of_text|>".into()),
            Some("<|eot_id|>".into()),
            None,
        )
        .unwrap();
        assert_eq!(
            add.0,
            vec![
                ("bos".to_string(), true),
                ("eos".to_string(), false),
                ("sep".to_string(), false)
            ]
        );
    }

    #[test]
    fn vocabulary_marks_specials_and_pads() {
        let tok = json!({"model": {"vocab": {"a": 0, "b": 1}},
            "added_tokens": [{"id": 2, "content": "<|x|>", "special": true}]});
        let (t, ty) = vocabulary(&tok, 4).unwrap();
        assert_eq!(t, vec!["a", "b", "<|x|>", "[PAD3]"]);
        assert_eq!(ty, vec![NORMAL, NORMAL, CONTROL, UNUSED]);
        assert!(vocabulary(&tok, 2).is_err());
    }
}
