//! Tokenizer files: Meta's tiktoken `tokenizer.model` against the vocabulary size; Hugging Face's
//! `tokenizer.json` against config.json and `tokenizer_config.json`'s chat template.
use super::{CheckState, Kind, Report};
use crate::checkpoint::Params;
use crate::tokenizer::{self, Format, SpecialNames, Tokenizer};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

/// Meta's tokenizer file.
const MODEL: &str = "tokenizer.model";

/// The ranks and special tokens of a tiktoken `tokenizer.model` (`Ok(Some)`), `Ok(None)` for a
/// SentencePiece model (Llama 2, not checked), or why it is not a valid tiktoken file. What the
/// file is and whether it parses are the tokenizer's own rules ([`tokenizer::sniff`], its tiktoken
/// parser), so verify passes exactly the files `run` and `tokenize` load.
fn tiktoken_sizes(bytes: &[u8]) -> std::result::Result<Option<(usize, usize)>, String> {
    match tokenizer::sniff(bytes) {
        Format::SentencePiece => Ok(None),
        Format::Json => Err("it is JSON (a tokenizer.json?)".into()),
        Format::Unknown => Err("neither tiktoken text nor a SentencePiece model".into()),
        Format::Tiktoken => {
            let names = SpecialNames::Llama31;
            let tok =
                Tokenizer::from_tiktoken_bytes(bytes, Path::new(MODEL), names).map_err(|e| {
                    let e = e.to_string();
                    let bare = e.strip_prefix(MODEL).and_then(|e| e.strip_prefix(": "));
                    bare.unwrap_or(&e).to_string()
                })?;
            let ranks = tok.mergeable_tokens().map_or(0, <[_]>::len);
            Ok(Some((ranks, tok.n_vocab() - ranks)))
        }
    }
}

/// Record the check `name` as skipped when `file` is not in `dir`; true when it is not.
fn skipped_when_absent(dir: &Path, file: &str, name: &'static str, r: &mut Report) -> bool {
    let absent = !dir.join(file).exists();
    if absent {
        let detail = format!("no {file} in the directory");
        r.check(name, CheckState::Skipped, detail);
    }
    absent
}

pub(super) fn tokenizer_model(dir: &Path, params: Option<&Params>, r: &mut Report) {
    let mark = r.problems.len();
    if skipped_when_absent(dir, MODEL, "tokenizer", r) {
        return;
    }
    let sizes = std::fs::read(dir.join(MODEL))
        .map_err(|e| (Kind::Unreadable, format!("{MODEL}: cannot read: {e}")))
        .and_then(|bytes| {
            tiktoken_sizes(&bytes).map_err(|why| {
                let detail = format!("{MODEL} is not a valid tiktoken file: {why}");
                (Kind::InvalidTokenizer, detail)
            })
        });
    let detail = match sizes {
        Err((kind, detail)) => {
            r.problem(kind, Some(MODEL), None, detail);
            String::new()
        }
        Ok(None) => {
            r.check(
                "tokenizer",
                CheckState::Skipped,
                "sentencepiece model (Llama 2): not checked".into(),
            );
            return;
        }
        Ok(Some((ranks, specials))) => match params.map(|p| p.vocab()) {
            Some(Some(vocab)) if ranks + specials != vocab => {
                let detail = format!(
                    "{MODEL} has {ranks} ranks + {specials} special tokens = {}, but params.json says vocab_size {vocab}",
                    ranks + specials
                );
                r.problem(Kind::VocabMismatch, Some(MODEL), None, detail);
                String::new()
            }
            Some(Some(vocab)) => {
                format!("{ranks} ranks + {specials} specials = vocab_size {vocab}")
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
    if skipped_when_absent(dir, FILE, "tokenizer", r) {
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
    if skipped_when_absent(dir, FILE, "chat template", r) {
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

    fn testdata(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name)
    }

    /// The report, and the tokenizer check's state and detail, of a directory holding `bytes` as
    /// tokenizer.model.
    fn check(bytes: &[u8]) -> (Report, CheckState, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MODEL), bytes).unwrap();
        let mut r = Report::new("meta", dir.path());
        tokenizer_model(dir.path(), None, &mut r);
        let c = r.checks.pop().unwrap();
        (r, c.status, c.detail)
    }

    #[test]
    fn tokenizer_files() {
        let real = std::fs::read(testdata(MODEL)).unwrap();
        assert_eq!(tiktoken_sizes(&real), Ok(Some((128_000, 256))));
        let gap = "IQ== 0\nIw== 2\n";
        assert!(tiktoken_sizes(gap.as_bytes())
            .unwrap_err()
            .contains("rank 1"));
        let bad = "IQ== 0\nnot-base64! 1\n";
        let why = tiktoken_sizes(bad.as_bytes()).unwrap_err();
        assert!(
            why.starts_with("line 2: ") && why.contains("base64"),
            "{why}"
        );
        let twice = "IQ== 0\nIQ== 1\n";
        assert!(tiktoken_sizes(twice.as_bytes())
            .unwrap_err()
            .contains("twice"));
        assert!(tiktoken_sizes(b"{\"model\": {}}")
            .unwrap_err()
            .contains("JSON"));
        assert!(tiktoken_sizes(b"\xff\xfe\x00").is_err());
    }

    /// verify takes a tokenizer.model for what `tokenizer::sniff` says it is: a SentencePiece
    /// model is skipped, a tiktoken file is counted, and a file that only starts like a protobuf
    /// (the rule verify used to have) is malformed tiktoken text, as the tokenizer reads it.
    #[test]
    fn verify_and_sniff_agree() {
        let sentencepiece = [
            0x0a, 0x09, b'<', b'u', b'n', b'k', b'>', 0x15, 0, 0, 0, 0, 0x18, 2, 0, 0, 0, 0, 0,
        ];
        assert_eq!(tokenizer::sniff(&sentencepiece), Format::SentencePiece);
        let (r, status, detail) = check(&sentencepiece);
        assert_eq!(status, CheckState::Skipped, "{detail}");
        assert!(detail.contains("sentencepiece"), "{detail}");
        assert!(r.problems.is_empty());

        let tiktoken = std::fs::read(testdata(MODEL)).unwrap();
        assert_eq!(tokenizer::sniff(&tiktoken), Format::Tiktoken);
        let (r, status, detail) = check(&tiktoken);
        assert_eq!(status, CheckState::Ok, "{detail}");
        assert!(detail.starts_with("128000 ranks"), "{detail}");
        assert!(r.problems.is_empty());

        let protobuf_start = b"\x0a\x05hello";
        assert_eq!(tokenizer::sniff(protobuf_start), Format::Tiktoken);
        let (r, status, detail) = check(protobuf_start);
        assert_eq!(status, CheckState::Failed, "{detail}");
        assert_eq!(r.problems[0].kind, Kind::InvalidTokenizer);
    }
}
