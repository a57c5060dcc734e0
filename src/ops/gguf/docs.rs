//! The Hugging Face JSON files a GGUF file's metadata comes from ([`HfDocs`]): read as they are
//! from a Hugging Face directory, or built in memory from a Meta checkpoint exactly as `convert
//! --to hf` writes them; and the check that the tokenizer is Llama 3's (llama.cpp's `llama-bpe`
//! pre-tokenizer), since the metadata names that pre-tokenizer.
use crate::checkpoint::hf_config::{self, ModelKind};
use crate::checkpoint::Params;
use crate::formats::DType;
use crate::progress::Reporter;
use crate::tokenizer::hf_files::{tokenizer_config_json, tokenizer_json};
use crate::tokenizer::{AllowedSpecial, SpecialNames, Tokenizer};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The text llama.cpp's converter encodes to recognise a BPE pre-tokenizer, and the sha256 of
/// the ids (Python's `str(list)`) that identifies Llama 3's (`llama-bpe`).
const PRE_CHECK_TEXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫\u{fe0f} (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";
const LLAMA_BPE_HASH: &str = "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5";

/// `tokenizer.ggml.pre` of a tokenizer that passes [`check_llama3_pretokenizer`].
pub(super) const LLAMA3_PRE_TOKENIZER: &str = "llama-bpe";

/// The Hugging Face files the metadata comes from.
#[derive(Debug, Clone)]
pub(super) struct HfDocs {
    pub config: Json,
    pub generation: Option<Json>,
    pub tokenizer: Json,
    pub tokenizer_config: Option<Json>,
    /// The chat template(s) of the files beside tokenizer_config.json (`chat_template.jinja`, with
    /// `additional_chat_templates/*.jinja` as a list of `{name, template}`, or `chat_template.json`),
    /// used when tokenizer_config.json has no `chat_template`.
    pub chat_template_files: Option<Json>,
}

/// The HF files of a Meta checkpoint, as `convert --to hf` would write them, and its tokenizer.
/// Which kind of model it is (`instruct`) is said through `progress`.
pub(super) fn from_meta(
    src: &Path,
    instruct: bool,
    progress: &dyn Reporter,
) -> Result<(HfDocs, Tokenizer)> {
    let p = Params::read(&src.join("params.json"))?;
    let vocab = p.vocab().ok_or_else(|| {
        anyhow!(
            "{}: vocab_size -1 marks a Llama 2 checkpoint; GGUF export handles Llama 3 models only",
            src.join("params.json").display()
        )
    })?;
    let model = src.join("tokenizer.model");
    if !model.is_file() {
        bail!(
            "{}: not found; a GGUF file needs the tokenizer",
            model.display()
        );
    }
    let tok = Tokenizer::from_tiktoken_file(&model, SpecialNames::for_meta_dir(src)?)?;
    let kind = ModelKind {
        instruct,
        tied: false,
        dtype: DType::BF16,
    };
    let max_len = hf_config::max_position_embeddings(&p);
    let docs = HfDocs {
        config: hf_config::config_json(&p, vocab, &kind),
        generation: Some(hf_config::generation_config_json(&p, instruct)),
        tokenizer: tokenizer_json(&tok)?,
        tokenizer_config: Some(tokenizer_config_json(&tok, instruct, max_len)?),
        chat_template_files: None,
    };
    progress.message(&format!(
        "{} model (from {})",
        if instruct { "instruct" } else { "base" },
        if instruct {
            "--instruct or the directory name"
        } else {
            "--base or the directory name"
        }
    ));
    Ok((docs, tok))
}

/// The HF files of an HF directory, read as they are, and its tokenizer. `flag_given`: the caller
/// was told instruct or base, which such a directory's own files decide (a note through
/// `progress`).
pub(super) fn from_hf(
    src: &Path,
    flag_given: bool,
    progress: &dyn Reporter,
) -> Result<(HfDocs, Tokenizer)> {
    if flag_given {
        progress.message(
            "note: --instruct/--base are ignored for a Hugging Face source; its tokenizer_config.json decides",
        );
    }
    let need = |name: &str| -> Result<Json> {
        read_json(&src.join(name))?.ok_or_else(|| {
            anyhow!(
                "{}: not found; a GGUF file needs it",
                src.join(name).display()
            )
        })
    };
    let docs = HfDocs {
        config: need("config.json")?,
        generation: read_json(&src.join("generation_config.json"))?,
        tokenizer: need("tokenizer.json")?,
        tokenizer_config: read_json(&src.join("tokenizer_config.json"))?,
        chat_template_files: chat_template_files(src)?,
    };
    let tok = Tokenizer::from_file(&src.join("tokenizer.json"))?;
    Ok((docs, tok))
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{}: invalid JSON", path.display()))
}

/// The chat template(s) stored beside tokenizer_config.json, where llama.cpp's converter looks:
/// `chat_template.jinja` (a list of `{name, template}` when `additional_chat_templates/*.jinja`
/// exist, `default` first, the others by file name), else `chat_template.json`'s `chat_template`.
fn chat_template_files(src: &Path) -> Result<Option<Json>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let jinja = src.join("chat_template.jinja");
    if !jinja.is_file() {
        return Ok(read_json(&src.join("chat_template.json"))?
            .and_then(|doc| doc.get("chat_template").cloned()));
    }
    let default = read(&jinja)?;
    let extra_dir = src.join("additional_chat_templates");
    let mut extra: Vec<PathBuf> = match std::fs::read_dir(&extra_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jinja") && p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    if extra.is_empty() {
        return Ok(Some(Json::String(default)));
    }
    extra.sort();
    let mut list = vec![serde_json::json!({"name": "default", "template": default})];
    for p in &extra {
        let name = p.file_stem().unwrap_or_default().to_string_lossy();
        list.push(serde_json::json!({"name": name, "template": read(p)?}));
    }
    Ok(Some(Json::Array(list)))
}

/// Refuse a tokenizer whose pre-tokenizer llama.cpp would not recognise as Llama 3's: encode the
/// converter's probe text (with the beginning-of-text token) and compare the ids' hash.
pub(super) fn check_llama3_pretokenizer(tok: &Tokenizer) -> Result<()> {
    let ids = tok
        .encode(PRE_CHECK_TEXT, true, false, AllowedSpecial::None)
        .with_context(|| format!("{}: not a Llama 3 tokenizer", tok.source().display()))?;
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let hash = hex::encode(Sha256::digest(format!("[{}]", list.join(", ")).as_bytes()));
    if hash != LLAMA_BPE_HASH {
        bail!(
            "{}: this tokenizer splits text differently from Llama 3's (pre-tokenizer hash {hash}); \
             only Llama 3 tokenizers (llama.cpp's `llama-bpe`) are supported",
            tok.source().display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_tokenizer_passes_the_pretokenizer_check() {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tokenizer.model");
        let tok = Tokenizer::from_tiktoken_file(&model, SpecialNames::Llama3).unwrap();
        check_llama3_pretokenizer(&tok).unwrap();
    }
}
