//! The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`), as llama.cpp reads it:
//! a byte-level BPE (`model` = gpt2) over the file's tokens and merges, the pre-tokenizer named by
//! `tokenizer.ggml.pre`, control and user-defined tokens matched whole, and the special ids.
//!
//! It becomes a `tokenizer.json` document run by the `tokenizers` crate: llama.cpp applies each
//! split pattern of a pre-tokenizer in turn to the pieces of the previous one, keeping matches and
//! the text between them as pieces, which is a sequence of `Split` steps with the `Isolated`
//! behaviour, followed by the byte-to-unicode mapping.
use crate::formats::gguf::{GgufFile, Value};
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Map, Value as Json};

/// Llama 3's split pattern (llama-bpe), with the case-insensitive contractions spelled out.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's split pattern.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Qwen2's: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's tekken (lower/upper-case runs without case classes, as llama.cpp writes it).
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a named pre-tokenizer splits text, and whether a piece that is itself a token skips the
/// merges (`ignore_merges`).
struct Pre {
    patterns: &'static [&'static str],
    ignore_merges: bool,
}

/// The pre-tokenizer of a `tokenizer.ggml.pre` name, grouped as llama.cpp's `llama-vocab.cpp`
/// groups them; None for a name llamactl does not know.
fn pre_tokenizer(name: &str) -> Option<Pre> {
    let pre = |patterns, ignore_merges| {
        Some(Pre {
            patterns,
            ignore_merges,
        })
    };
    match name {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => pre(&[LLAMA3], true),
        "dbrx" | "smaug-bpe" => pre(&[LLAMA3], false),
        "gpt-2" | "phi-2" | "roberta-bpe" | "gigachat" | "mpt" | "olmo" | "jais" | "exaone4"
        | "a.x-4.0" | "mellum" | "trillion" | "granite-docling" => pre(&[GPT2], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => pre(&[r"\p{N}", GPT2], false),
        "qwen2" | "stablelm2" | "megrez" | "deepseek-r1-qwen" | "kormo" => pre(&[QWEN2], false),
        "tekken" => pre(&[TEKKEN], true),
        "default" => pre(
            &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            false,
        ),
        _ => None,
    }
}

/// The names [`pre_tokenizer`] knows, for the error message.
const KNOWN_PRE: &str = "llama-bpe, llama3, llama-v3, falcon3, falcon-h1, pixtral, midm-2.0, lfm2, dbrx, smaug-bpe, gpt-2, phi-2, roberta-bpe, gigachat, mpt, olmo, jais, exaone4, a.x-4.0, mellum, trillion, granite-docling, smollm, starcoder, refact, command-r, codeshell, exaone, minerva-7b, mellum2, qwen2, stablelm2, megrez, deepseek-r1-qwen, kormo, tekken, default";

/// `tokenizer.ggml.token_type` values.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Texts llama.cpp treats as end of generation wherever they appear in a vocabulary (those of the
/// model families that use the llama architecture).
const EOG_TEXTS: [&str; 11] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "_<EOT>",
    "</s>",
    "<｜end▁of▁sentence｜>",
];

/// A GGUF vocabulary, ready for the `tokenizers` crate.
pub(super) struct GgufVocab {
    /// The `tokenizer.json` document.
    pub json: Vec<u8>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Whether prompts start with `bos` (`tokenizer.ggml.add_bos_token`, default true).
    pub add_bos: bool,
    /// eos, eot, eom and every token whose text ends generation in llama.cpp.
    pub stop: Vec<u32>,
}

fn strings<'a>(f: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    match f.get(key) {
        Some(Value::Array(_, items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| anyhow!("{key} holds a non-string"))
            })
            .collect(),
        Some(_) => bail!("{key} is not an array of strings"),
        None => Ok(Vec::new()),
    }
}

fn ints(f: &GgufFile, key: &str) -> Vec<i64> {
    match f.get(key) {
        Some(Value::Array(_, items)) => items
            .iter()
            .map(|v| match *v {
                Value::I32(x) => x.into(),
                _ => v.as_u64().map_or(0, |x| x as i64),
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl GgufVocab {
    pub(super) fn read(f: &GgufFile) -> Result<GgufVocab> {
        match f.get("tokenizer.ggml.model").and_then(Value::as_str) {
            Some("gpt2") => {}
            Some("llama") => bail!("tokenizer.ggml.model is llama (SentencePiece, Llama 2 and older); llamactl reads byte-level BPE (gpt2) vocabularies"),
            Some(m) => bail!("tokenizer.ggml.model {m:?} is not supported (gpt2 is)"),
            None => bail!("metadata key tokenizer.ggml.model is missing"),
        }
        let pre_name = f
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let pre = pre_tokenizer(pre_name).ok_or_else(|| {
            anyhow!("tokenizer.ggml.pre {pre_name:?} is not a pre-tokenizer llamactl knows ({KNOWN_PRE})")
        })?;
        let tokens = strings(f, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            bail!("metadata key tokenizer.ggml.tokens is missing or empty");
        }
        let merges = strings(f, "tokenizer.ggml.merges")?;
        let types = ints(f, "tokenizer.ggml.token_type");
        let json = document(&tokens, &merges, &types, &pre);
        let id = |key: &str| -> Option<u32> {
            let v = f.get(&format!("tokenizer.ggml.{key}"))?.as_u64()?;
            (v < tokens.len() as u64).then_some(v as u32)
        };
        let (bos, eos) = (id("bos_token_id"), id("eos_token_id"));
        let mut stop: Vec<u32> = [eos, id("eot_token_id"), id("eom_token_id")]
            .into_iter()
            .flatten()
            .collect();
        for (i, t) in tokens.iter().enumerate() {
            if EOG_TEXTS.contains(t) && !stop.contains(&(i as u32)) {
                stop.push(i as u32);
            }
        }
        let add_bos = match f.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(b)) => *b,
            _ => true,
        };
        Ok(GgufVocab {
            json: serde_json::to_vec(&json)?,
            bos,
            eos,
            add_bos,
            stop,
        })
    }
}

/// The `tokenizer.json` of a byte-level BPE vocabulary.
fn document(tokens: &[&str], merges: &[&str], types: &[i64], pre: &Pre) -> Json {
    let vocab: Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let added: Vec<Json> = tokens
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let ty = types.get(i).copied()?;
            (ty == CONTROL || ty == USER_DEFINED).then(|| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": ty == CONTROL})
            })
        })
        .collect();
    let mut steps: Vec<Json> = pre
        .patterns
        .iter()
        .map(|p| json!({"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": false}))
        .collect();
    steps.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": pre.ignore_merges, "vocab": vocab, "merges": merges,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::byte_alphabet::byte_to_unicode;
    use super::super::{AllowedSpecial, Tokenizer};
    use crate::formats::gguf::{GgufFile, Header, Value};

    /// A GGUF holding only a vocabulary: the 256 byte tokens, a few merges, two control tokens.
    fn vocab_file(dir: &std::path::Path, pre: &str) -> GgufFile {
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| byte_to_unicode(b).to_string())
            .collect();
        tokens.extend(["Ġt", "he", "Ġthe", "Ġ1"].map(String::from));
        tokens.extend(["<|begin_of_text|>", "<|eot_id|>"].map(String::from));
        let mut types = vec![1; tokens.len()];
        types[260] = 3;
        types[261] = 3;
        let kvs = vec![
            (
                "general.architecture".to_string(),
                Value::Str("llama".into()),
            ),
            ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::Str(pre.into())),
            ("tokenizer.ggml.tokens".into(), Value::strings(tokens)),
            ("tokenizer.ggml.token_type".into(), Value::i32s(types)),
            (
                "tokenizer.ggml.merges".into(),
                Value::strings(["Ġ t", "h e", "Ġt he", "Ġ 1"].map(String::from).to_vec()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(260)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(260)),
        ];
        let path = dir.join(format!("{pre}.gguf"));
        let bytes = Header {
            kvs,
            tensors: vec![],
        }
        .encode()
        .unwrap();
        std::fs::write(&path, bytes).unwrap();
        GgufFile::open(&path).unwrap()
    }

    #[test]
    fn merges_specials_and_stop_ids_come_from_the_metadata() {
        let d = tempfile::tempdir().unwrap();
        let tok = Tokenizer::from_gguf(&vocab_file(d.path(), "llama-bpe")).unwrap();
        let ids = tok
            .encode(" the the", true, false, AllowedSpecial::None)
            .unwrap();
        assert_eq!(ids, vec![260, 258, 258]);
        assert_eq!(tok.decode(&ids[1..]).unwrap(), " the the");
        // Control-token text is plain text unless special tokens are allowed.
        let plain = tok
            .encode("<|eot_id|>", false, false, AllowedSpecial::None)
            .unwrap();
        assert!(plain.len() > 1);
        let special = tok
            .encode("<|eot_id|>", false, false, AllowedSpecial::All)
            .unwrap();
        assert_eq!(special, vec![261]);
        // eos, and <|eot_id|> found by its text as llama.cpp finds it.
        assert_eq!(tok.stop_ids(), &[260, 261]);
    }

    /// The named pre-tokenizer decides the pieces: smollm isolates every digit, gpt-2 keeps a
    /// space with the digits that follow it.
    #[test]
    fn pre_tokenizer_follows_the_name() {
        let d = tempfile::tempdir().unwrap();
        let enc = |pre: &str| {
            let tok = Tokenizer::from_gguf(&vocab_file(d.path(), pre)).unwrap();
            tok.encode(" 12", false, false, AllowedSpecial::None)
                .unwrap()
        };
        // Byte tokens sit at their byte's index; "Ġ1" (259) merges a space with a digit.
        assert_eq!(enc("gpt-2"), vec![259, b'2' as u32]);
        assert_eq!(enc("smollm"), vec![b' ' as u32, b'1' as u32, b'2' as u32]);
        assert_eq!(
            enc("llama-bpe"),
            vec![b' ' as u32, b'1' as u32, b'2' as u32]
        );
        let e = format!(
            "{:#}",
            Tokenizer::from_gguf(&vocab_file(d.path(), "nope")).unwrap_err()
        );
        assert!(
            e.contains("tokenizer.ggml.pre \"nope\" is not a pre-tokenizer"),
            "{e}"
        );
    }
}
