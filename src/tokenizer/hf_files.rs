//! Meta `tokenizer.model` <-> Hugging Face tokenizer files, for `convert`.
//!
//! Hugging Face stores a byte-level BPE as a vocabulary of strings in GPT-2's byte alphabet (each
//! byte mapped to a printable char) plus an ordered merge list. tiktoken stores only ranks; the
//! merges are rebuilt as transformers' converter does: for each token in rank order, every split
//! into two tokens whose parts and whole are all in the vocabulary, ordered by the parts' ranks.
use super::byte_alphabet::{to_unicode, unicode_to_byte};
use super::{special_names, SpecialNames, Tokenizer};
use crate::output::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use rustc_hash::FxHashMap;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::Path;

/// Meta's pre-split pattern, as written into tokenizer.json.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Llama 3 chat template as transformers' converter writes it for instruct models.
pub const LLAMA3_CHAT_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Merges rebuilt from tiktoken ranks (see the module comment), as (left, right) token bytes.
fn merges_from_ranks(tokens: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let rank: FxHashMap<&[u8], usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_slice(), i))
        .collect();
    let mut merges = Vec::new();
    let mut local = Vec::new();
    for tok in tokens {
        local.clear();
        for cut in 1..tok.len() {
            let (l, r) = tok.split_at(cut);
            if let (Some(&rl), Some(&rr)) = (rank.get(l), rank.get(r)) {
                local.push((rl, rr, cut));
            }
        }
        local.sort();
        merges.extend(
            local
                .iter()
                .map(|&(_, _, cut)| (tok[..cut].to_vec(), tok[cut..].to_vec())),
        );
    }
    merges
}

/// The special-token names Hugging Face's Llama repos use. For Llama 3 they are Meta's; for 3.1
/// Hugging Face kept 128005 and 128011.. as reserved tokens (reserved 2, then 3-247) where
/// llama-models later named `<|step_id|>` and `<|image|>`.
fn hf_special_names(names: SpecialNames) -> Vec<String> {
    let mut list = special_names(names);
    if names == SpecialNames::Llama31 {
        list[5] = "<|reserved_special_token_2|>".to_string();
        for (i, slot) in list.iter_mut().enumerate().skip(11) {
            *slot = format!("<|reserved_special_token_{}|>", i - 8);
        }
    }
    list
}

fn added_token(id: usize, content: &str) -> Value {
    json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": false,
        "special": true,
    })
}

/// `tokenizer.json` for a tiktoken model: byte-level BPE (whole pieces looked up before merging,
/// as tiktoken does), Meta's split regex, and a post-processor that prepends `<|begin_of_text|>`.
pub fn tokenizer_json(tok: &Tokenizer) -> Result<Value> {
    let (Some(tokens), Some(names)) = (tok.mergeable_tokens(), tok.special_names()) else {
        bail!(
            "{}: a tokenizer.json can only be built from a tiktoken tokenizer.model",
            tok.source().display()
        );
    };
    let specials = hf_special_names(names);
    let base = tokens.len();
    let mut vocab = Map::with_capacity(base);
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(to_unicode(t), json!(i));
    }
    let merges: Vec<Value> = merges_from_ranks(tokens)
        .iter()
        .map(|(l, r)| json!(format!("{} {}", to_unicode(l), to_unicode(r))))
        .collect();
    let bos = &specials[0];
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": specials.iter().enumerate().map(|(i, s)| added_token(base + i, s)).collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
                {
                    "type": "TemplateProcessing",
                    "single": [
                        {"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                    ],
                    "pair": [
                        {"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": bos, "type_id": 1}},
                        {"Sequence": {"id": "B", "type_id": 1}},
                    ],
                    "special_tokens": {bos.as_str(): {"id": bos, "ids": [base], "tokens": [bos]}},
                },
            ],
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": true,
            "vocab": vocab,
            "merges": merges,
        },
    }))
}

/// `tokenizer_config.json`: the special tokens, bos/eos (`<|eot_id|>` ends an instruct model's
/// turn), and for instruct models the Llama 3 chat template.
pub fn tokenizer_config_json(
    tok: &Tokenizer,
    instruct: bool,
    model_max_length: usize,
) -> Result<Value> {
    let (Some(tokens), Some(names)) = (tok.mergeable_tokens(), tok.special_names()) else {
        bail!("{}: not a tiktoken tokenizer.model", tok.source().display());
    };
    let base = tokens.len();
    let mut decoder = Map::new();
    for (i, s) in hf_special_names(names).iter().enumerate() {
        let mut t = added_token(base + i, s);
        if let Some(o) = t.as_object_mut() {
            o.remove("id");
        }
        decoder.insert((base + i).to_string(), t);
    }
    let mut cfg = Map::new();
    cfg.insert("added_tokens_decoder".into(), Value::Object(decoder));
    cfg.insert("bos_token".into(), json!("<|begin_of_text|>"));
    if instruct {
        cfg.insert("chat_template".into(), json!(LLAMA3_CHAT_TEMPLATE));
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(true));
    cfg.insert("eos_token".into(), json!(eos_name(instruct)));
    cfg.insert(
        "model_input_names".into(),
        json!(["input_ids", "attention_mask"]),
    );
    cfg.insert("model_max_length".into(), json!(model_max_length));
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(Value::Object(cfg))
}

fn eos_name(instruct: bool) -> &'static str {
    if instruct {
        "<|eot_id|>"
    } else {
        "<|end_of_text|>"
    }
}

fn special_tokens_map_json(instruct: bool) -> Value {
    json!({"bos_token": "<|begin_of_text|>", "eos_token": eos_name(instruct)})
}

/// Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` for the
/// tiktoken model at `tokenizer_model` into `dst_dir` (which must exist; e.g. the temp dir of an
/// `crate::output::AtomicDir`). Each file appears whole or not at all (`write_atomic`).
pub fn write_hf_tokenizer_files(
    tokenizer_model: &Path,
    dst_dir: &Path,
    instruct: bool,
    model_max_length: usize,
) -> Result<()> {
    let dir = tokenizer_model.parent().unwrap_or(Path::new("."));
    let names = SpecialNames::for_meta_dir(dir)?;
    let tok = Tokenizer::from_tiktoken_file(tokenizer_model, names)?;
    write_json(&dst_dir.join("tokenizer.json"), &tokenizer_json(&tok)?)?;
    write_json(
        &dst_dir.join("tokenizer_config.json"),
        &tokenizer_config_json(&tok, instruct, model_max_length)?,
    )?;
    write_json(
        &dst_dir.join("special_tokens_map.json"),
        &special_tokens_map_json(instruct),
    )?;
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v).context("serializing JSON")?;
    write_atomic(path, &bytes)
}

/// The tiktoken `tokenizer.model` text equivalent to a Hugging Face `tokenizer.json`: the BPE
/// vocabulary mapped back from GPT-2's byte alphabet, one `base64 rank` line per token. Refuses
/// tokenizers that tiktoken cannot express: not BPE, not byte-level, a normalizer, ids with
/// gaps, or merges that are not implied by the ranks.
pub fn tiktoken_model_from_tokenizer_json(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let v: Value = serde_json::from_slice(&data)
        .map_err(|e| anyhow!("{}: not valid JSON ({e})", path.display()))?;
    let refuse = Refuse(path);
    check_byte_level_llama3(&v, &refuse)?;
    let model = &v["model"];
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| refuse.because("model.vocab is not an object"))?;
    let tokens = tokens_by_id(vocab, &refuse)?;
    check_added_tokens(&v, tokens.len() as u64, &refuse)?;
    check_merges(model, vocab, &tokens, &refuse)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::with_capacity(tokens.len() * 16);
    for (i, t) in tokens.iter().enumerate() {
        writeln!(out, "{} {i}", b64.encode(t)).context("formatting")?;
    }
    // A model that could not round-trip would be worse than a refusal: check it parses.
    Tokenizer::from_tiktoken_bytes(&out, path, SpecialNames::Llama31)
        .with_context(|| format!("{}: the rebuilt tokenizer.model is invalid", path.display()))?;
    Ok(out)
}

/// Why a tokenizer.json cannot become a tokenizer.model, naming the file.
struct Refuse<'a>(&'a Path);

impl Refuse<'_> {
    fn because(&self, why: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{}: cannot express as a tiktoken tokenizer.model: {why}",
            self.0.display()
        )
    }
}

/// A BPE without normalizer, byte-level on both ends, pre-split with Llama 3's pattern.
fn check_byte_level_llama3(v: &Value, refuse: &Refuse) -> Result<()> {
    let model = &v["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(refuse.because(format!("model type is {}, not BPE", model["type"])));
    }
    if !v["normalizer"].is_null() {
        return Err(refuse.because("it has a normalizer"));
    }
    let has_type = |list: &Value, ty: &str| {
        list.as_array()
            .is_some_and(|a| a.iter().any(|p| p["type"].as_str() == Some(ty)))
    };
    let byte_level = |x: &Value| -> bool {
        x["type"].as_str() == Some("ByteLevel")
            || has_type(&x["pretokenizers"], "ByteLevel")
            || has_type(&x["decoders"], "ByteLevel")
    };
    if !byte_level(&v["pre_tokenizer"]) || !byte_level(&v["decoder"]) {
        return Err(refuse.because("not a byte-level BPE (no ByteLevel pre-tokenizer and decoder)"));
    }
    // A tokenizer.model carries no pattern: Meta's code always splits with Llama 3's.
    let pretok = &v["pre_tokenizer"];
    let splits: Vec<&Value> = match pretok["pretokenizers"].as_array() {
        Some(list) => list.iter().collect(),
        None => vec![pretok],
    };
    let pattern = splits
        .iter()
        .find(|p| p["type"].as_str() == Some("Split"))
        .and_then(|p| p["pattern"]["Regex"].as_str());
    if pattern != Some(LLAMA3_PATTERN) {
        return Err(refuse.because(
            "its pre-split pattern is not Llama 3's, and a tokenizer.model always gets Llama 3's",
        ));
    }
    Ok(())
}

/// Each id's bytes, mapped back from the byte-level alphabet; ids must be exactly 0..len.
fn tokens_by_id(vocab: &Map<String, Value>, refuse: &Refuse) -> Result<Vec<Vec<u8>>> {
    let mut tokens: Vec<Option<Vec<u8>>> = vec![None; vocab.len()];
    for (s, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| refuse.because(format!("token {s:?} has a non-integer id")))?
            as usize;
        let slot = tokens.get_mut(id).ok_or_else(|| {
            refuse.because(format!(
                "id {id} of {s:?} is beyond the vocabulary size {}",
                vocab.len()
            ))
        })?;
        if slot.is_some() {
            return Err(refuse.because(format!("id {id} is used twice")));
        }
        let bytes: Option<Vec<u8>> = s.chars().map(unicode_to_byte).collect();
        *slot = Some(bytes.ok_or_else(|| {
            refuse.because(format!("token {s:?} is not in the byte-level alphabet"))
        })?);
    }
    tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.ok_or_else(|| refuse.because(format!("no token has id {i}"))))
        .collect()
}

/// Meta's code puts exactly 256 special tokens right after the `n` ordinary ones.
fn check_added_tokens(v: &Value, n: u64, refuse: &Refuse) -> Result<()> {
    for t in v["added_tokens"].as_array().into_iter().flatten() {
        let id = t["id"].as_u64().unwrap_or(u64::MAX);
        if id < n || id >= n + 256 {
            return Err(refuse.because(format!(
                "added token {} has id {id}, outside the 256 special-token slots {n}..{}",
                t["content"],
                n + 256
            )));
        }
    }
    Ok(())
}

/// tiktoken merges by rank; that equals the BPE's merge order only if the merge list is the one
/// the ranks imply.
fn check_merges(
    model: &Value,
    vocab: &Map<String, Value>,
    tokens: &[Vec<u8>],
    refuse: &Refuse,
) -> Result<()> {
    let implied: FxHashMap<(String, String), usize> = merges_from_ranks(tokens)
        .into_iter()
        .enumerate()
        .map(|(i, (l, r))| ((to_unicode(&l), to_unicode(&r)), i))
        .collect();
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| refuse.because("model.merges is not a list"))?;
    let rank_of = |p: &(String, String)| {
        vocab
            .get(&format!("{}{}", p.0, p.1))
            .and_then(Value::as_u64)
    };
    let mut last = None;
    for (i, m) in merges.iter().enumerate() {
        let pair =
            merge_pair(m).ok_or_else(|| refuse.because(format!("merge {i} is malformed")))?;
        let Some(&at) = implied.get(&pair) else {
            return Err(refuse.because(format!(
                "merge {i} ({} + {}) does not follow from the ranks",
                pair.0, pair.1
            )));
        };
        if let (Some(prev), Some(now)) = (last, rank_of(&pair)) {
            if now < prev {
                return Err(refuse.because(format!(
                    "merge {i} ({} + {}) is out of rank order (at {at})",
                    pair.0, pair.1
                )));
            }
        }
        last = rank_of(&pair);
    }
    Ok(())
}

/// A merge as `"left right"` (older files) or `["left", "right"]`.
fn merge_pair(m: &Value) -> Option<(String, String)> {
    match m {
        Value::String(s) => s
            .split_once(' ')
            .map(|(a, b)| (a.to_string(), b.to_string())),
        Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
            (Some(l), Some(r)) => Some((l.to_string(), r.to_string())),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_for_llama31() {
        let n = hf_special_names(SpecialNames::Llama31);
        assert_eq!(n[4], "<|finetune_right_pad_id|>");
        assert_eq!(n[5], "<|reserved_special_token_2|>");
        assert_eq!(n[10], "<|python_tag|>");
        assert_eq!(n[11], "<|reserved_special_token_3|>");
        assert_eq!(n[255], "<|reserved_special_token_247|>");
        assert_eq!(
            hf_special_names(SpecialNames::Llama3),
            special_names(SpecialNames::Llama3)
        );
    }
}
