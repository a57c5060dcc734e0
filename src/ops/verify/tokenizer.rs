//! Tokenizer files: Meta's tiktoken `tokenizer.model` against the vocabulary size; Hugging Face's
//! `tokenizer.json` against config.json and `tokenizer_config.json`'s chat template.
use super::{CheckState, Kind, Report};
use crate::checkpoint::Params;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

/// What a tokenizer.model file turned out to be.
#[derive(Debug)]
enum TokenizerFile {
    /// tiktoken BPE ranks (Llama 3): base64 token, space, rank per line.
    Tiktoken { ranks: usize },
    /// A sentencepiece protobuf (Llama 2).
    SentencePiece,
}

fn parse_tokenizer(bytes: &[u8]) -> std::result::Result<TokenizerFile, String> {
    use base64::Engine;
    // A sentencepiece ModelProto starts with field 1 (pieces), length-delimited: tag byte 0x0a.
    if bytes.first() == Some(&0x0a) {
        return Ok(TokenizerFile::SentencePiece);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "neither tiktoken text nor sentencepiece".to_string())?;
    let mut ranks = 0usize;
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}", i + 1);
        let (tok, rank) = line
            .split_once(' ')
            .ok_or_else(|| bad("not \"<base64> <rank>\""))?;
        let token = base64::engine::general_purpose::STANDARD
            .decode(tok)
            .map_err(|_| bad("token is not base64"))?;
        let rank: usize = rank.parse().map_err(|_| bad("rank is not a number"))?;
        if rank != ranks {
            return Err(bad(&format!(
                "rank {rank}, expected {ranks} (ranks must run 0, 1, 2, ...)"
            )));
        }
        if !seen.insert(token) {
            return Err(bad("token listed twice"));
        }
        ranks += 1;
    }
    if ranks == 0 {
        return Err("no tokens".into());
    }
    Ok(TokenizerFile::Tiktoken { ranks })
}

/// Llama 3 adds 256 reserved special tokens after the BPE ranks.
const SPECIAL_TOKENS: usize = 256;

pub(super) fn tokenizer_model(dir: &Path, params: Option<&Params>, r: &mut Report) {
    let mark = r.problems.len();
    let path = dir.join("tokenizer.model");
    if !path.exists() {
        r.check(
            "tokenizer",
            CheckState::Skipped,
            "no tokenizer.model in the directory".into(),
        );
        return;
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            r.problem(
                Kind::Unreadable,
                Some("tokenizer.model"),
                None,
                format!("tokenizer.model: cannot read: {e}"),
            );
            r.settle("tokenizer", mark, String::new());
            return;
        }
    };
    let detail = match parse_tokenizer(&bytes) {
        Err(why) => {
            r.problem(
                Kind::InvalidTokenizer,
                Some("tokenizer.model"),
                None,
                format!("tokenizer.model is not a valid tiktoken file: {why}"),
            );
            String::new()
        }
        Ok(TokenizerFile::SentencePiece) => {
            r.check(
                "tokenizer",
                CheckState::Skipped,
                "sentencepiece model (Llama 2): not checked".into(),
            );
            return;
        }
        Ok(TokenizerFile::Tiktoken { ranks }) => match params.map(|p| p.vocab()) {
            Some(Some(vocab)) if ranks + SPECIAL_TOKENS != vocab => {
                r.problem(
                    Kind::VocabMismatch,
                    Some("tokenizer.model"),
                    None,
                    format!(
                        "tokenizer.model has {ranks} ranks + {SPECIAL_TOKENS} special tokens = {}, but params.json says vocab_size {vocab}",
                        ranks + SPECIAL_TOKENS
                    ),
                );
                String::new()
            }
            Some(Some(vocab)) => {
                format!("{ranks} ranks + {SPECIAL_TOKENS} specials = vocab_size {vocab}")
            }
            _ => format!("{ranks} ranks; vocab_size not known, size not compared"),
        },
    };
    r.settle("tokenizer", mark, detail);
}

/// tokenizer.json loads (with the same library transformers' fast tokenizers use) and agrees with
/// config.json: as many ids as vocab_size, and the bos/eos ids among them.
pub(super) fn hf_tokenizer(dir: &Path, config: Option<&Value>, r: &mut Report) {
    tokenizer_json(dir, config, r);
    tokenizer_config(dir, r);
}

fn tokenizer_json(dir: &Path, config: Option<&Value>, r: &mut Report) {
    const FILE: &str = "tokenizer.json";
    if !dir.join(FILE).exists() {
        r.check(
            "tokenizer",
            CheckState::Skipped,
            format!("no {FILE} in the directory"),
        );
        return;
    }
    let mark = r.problems.len();
    let loaded = std::fs::read(dir.join(FILE))
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|b| tokenizers::Tokenizer::from_bytes(b).map_err(|e| e.to_string()));
    let tok = match loaded {
        Ok(t) => t,
        Err(e) => {
            let detail = format!("{FILE} does not load: {e}");
            r.problem(Kind::InvalidTokenizer, Some(FILE), None, detail);
            r.settle("tokenizer", mark, String::new());
            return;
        }
    };
    let ids: HashSet<u64> = tok.get_vocab(true).into_values().map(u64::from).collect();
    let top = ids.iter().max().map_or(0, |m| m + 1);
    let config = config.unwrap_or(&Value::Null);
    if let Some(vocab) = config.get("vocab_size").and_then(Value::as_u64) {
        if top != vocab || ids.len() as u64 != vocab {
            let detail = format!(
                "{FILE} has {} tokens with ids up to {}, but config.json says vocab_size {vocab}",
                ids.len(),
                top.saturating_sub(1)
            );
            r.problem(Kind::VocabMismatch, Some(FILE), None, detail);
        }
    }
    for key in ["bos_token_id", "eos_token_id"] {
        let wanted: Vec<u64> = match config.get(key) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
            Some(v) => v.as_u64().into_iter().collect(),
            None => Vec::new(),
        };
        for id in wanted.into_iter().filter(|id| !ids.contains(id)) {
            let detail = format!("config.json {key} {id} is not a token of {FILE}");
            r.problem(Kind::MissingSpecialToken, Some(FILE), None, detail);
        }
    }
    r.settle("tokenizer", mark, format!("{FILE}: {} tokens", ids.len()));
}

/// tokenizer_config.json parses and its chat_template (a string, or a list of {name, template})
/// compiles with the Jinja dialect chat templates use.
fn tokenizer_config(dir: &Path, r: &mut Report) {
    const FILE: &str = "tokenizer_config.json";
    if !dir.join(FILE).exists() {
        r.check(
            "chat template",
            CheckState::Skipped,
            format!("no {FILE} in the directory"),
        );
        return;
    }
    let mark = r.problems.len();
    let templates = std::fs::read_to_string(dir.join(FILE))
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
        .and_then(|v| chat_templates(&v));
    let templates = match templates {
        Ok(t) => t,
        Err(e) => {
            let detail = format!("{FILE}: {e}");
            r.problem(Kind::InvalidTokenizerConfig, Some(FILE), None, detail);
            r.settle("chat template", mark, String::new());
            return;
        }
    };
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    for (name, source) in &templates {
        if let Err(e) = env.template_from_str(source) {
            let detail = format!("{FILE}: {name} does not compile: {e}");
            r.problem(Kind::InvalidChatTemplate, Some(FILE), None, detail);
        }
    }
    let detail = match templates.len() {
        0 => "no chat_template".to_string(),
        1 => "chat_template compiles".to_string(),
        n => format!("{n} chat templates compile"),
    };
    r.settle("chat template", mark, detail);
}

/// (name, source) of each chat template in a tokenizer_config.json document.
fn chat_templates(doc: &Value) -> std::result::Result<Vec<(String, String)>, String> {
    let named = |t: &Value| -> Option<(String, String)> {
        let name = t.get("name")?.as_str()?;
        Some((
            format!("chat_template {name:?}"),
            t.get("template")?.as_str()?.to_owned(),
        ))
    };
    match doc.get("chat_template") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![("chat_template".into(), s.clone())]),
        Some(Value::Array(list)) => list
            .iter()
            .map(|t| named(t).ok_or_else(|| "a chat_template entry is not {name, template}".into()))
            .collect(),
        Some(_) => Err("chat_template is neither a string nor a list of {name, template}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_files() {
        let ok = "IQ== 0\nIg== 1\nIw== 2\n";
        assert!(matches!(
            parse_tokenizer(ok.as_bytes()),
            Ok(TokenizerFile::Tiktoken { ranks: 3 })
        ));
        let gap = "IQ== 0\nIw== 2\n";
        assert!(parse_tokenizer(gap.as_bytes())
            .unwrap_err()
            .contains("line 2"));
        assert!(parse_tokenizer(b"!!! 0\n").unwrap_err().contains("base64"));
        assert!(parse_tokenizer(b"IQ== 0\nIQ== 1\n")
            .unwrap_err()
            .contains("twice"));
        assert!(matches!(
            parse_tokenizer(b"\x0a\x05hello"),
            Ok(TokenizerFile::SentencePiece)
        ));
    }
}
