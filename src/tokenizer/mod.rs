//! The tokenizer: one interface over Meta's `tokenizer.model` (tiktoken) and Hugging Face's
//! `tokenizer.json`, exact to Meta's `Tokenizer` id for id. `tokenize`, `convert` and `run` all
//! use it.
//!
//! The parts:
//! - [`Tokenizer`] (here): the runtime interface, picking a backend by the file's content.
//! - `tiktoken`: Meta's backend, built from `bpe` (the merge loop) and `split` (Llama 3's
//!   pre-split pattern, hand-written).
//! - `hf_backend`: the runtime backend for a `tokenizer.json`, run by the `tokenizers` crate.
//! - `gguf_vocab`: a GGUF file's vocabulary (`tokenizer.ggml.*`) turned into a `tokenizer.json`
//!   for that backend.
//! - [`hf_files`]: the Hugging Face tokenizer *files* that `convert` writes (and reads back into
//!   a `tokenizer.model`); not used at run time.
//! - `byte_alphabet`: GPT-2's byte <-> printable-char map, shared by the last two.
//! - [`chat`]: dialogs to prompt tokens (Meta's Llama 3 format, Hugging Face Jinja templates), for
//!   `run --chat` and `tokenize --chat`.
//!
//! ```no_run
//! use llamactl::tokenizer::{AllowedSpecial, Tokenizer};
//! let tok = Tokenizer::from_file("tokenizer.model".as_ref())?;
//! let ids = tok.encode("This is a test sentence.", true, false, AllowedSpecial::None)?;
//! assert_eq!(tok.decode(&ids[1..])?, "This is a test sentence.");
//! # anyhow::Ok(())
//! ```
mod bpe;
mod byte_alphabet;
pub mod chat;
mod gguf_vocab;
mod hf_backend;
pub mod hf_files;
mod split;
mod tiktoken;

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

pub use split::{py_isspace, py_strip};
pub use tiktoken::special_names;

/// Whether special-token text such as `<|eot_id|>` in the input becomes the special token.
/// Meta's default, and the right choice for user content, is `None`: the text is plain text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowedSpecial {
    None,
    All,
}

/// Which names the 256 special tokens of a tiktoken model carry. The ids of the tokens that
/// matter (begin/end of text, headers, eot) are the same in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialNames {
    /// meta-llama/llama3: 128004, 128005, 128008 are reserved 2-4; 128010.. reserved 5-250.
    Llama3,
    /// llama-models (Llama 3.1 and later, Meta's current code): `<|finetune_right_pad_id|>`,
    /// `<|step_id|>`, `<|eom_id|>`, `<|python_tag|>`, `<|image|>`; 128012.. reserved 2-245.
    Llama31,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// A tiktoken `tokenizer.model` (Meta's format).
    Tiktoken,
    /// A Hugging Face `tokenizer.json`.
    HuggingFace,
}

enum Backend {
    Tiktoken(Box<tiktoken::Tiktoken>),
    Hf(Box<hf_backend::Hf>),
}

pub struct Tokenizer {
    backend: Backend,
    source: PathBuf,
    bos: Option<u32>,
    eos: Option<u32>,
    stop: Vec<u32>,
    /// Whether `encode(bos = true)` adds `bos` (false for GGUF vocabularies that say so).
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("source", &self.source)
            .field("n_vocab", &self.n_vocab())
            .finish()
    }
}

impl Tokenizer {
    /// A `tokenizer.model` (tiktoken text, Llama 3.1 names) or a `tokenizer.json`, told apart by
    /// content. For a `tokenizer.json`, bos/eos/stop ids come from the HF config files beside it.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let data = read(path)?;
        match sniff(&data) {
            Format::Json => Self::hf(&data, path),
            Format::Tiktoken => Self::from_tiktoken_bytes(&data, path, SpecialNames::Llama31),
            Format::SentencePiece => bail!(
                "{}: this is a SentencePiece model (Llama 2 and older); llamactl reads Llama 3's tiktoken tokenizer.model or a tokenizer.json",
                path.display()
            ),
            Format::Unknown => bail!(
                "{}: neither a tiktoken tokenizer.model (`<base64> <rank>` lines) nor a tokenizer.json",
                path.display()
            ),
        }
    }

    /// A tiktoken `tokenizer.model` with the given special-token names.
    pub fn from_tiktoken_file(path: &Path, names: SpecialNames) -> Result<Tokenizer> {
        Self::from_tiktoken_bytes(&read(path)?, path, names)
    }

    /// `data` is the file's content; `path` only names it in errors.
    pub fn from_tiktoken_bytes(data: &[u8], path: &Path, names: SpecialNames) -> Result<Tokenizer> {
        let t = tiktoken::Tiktoken::parse(data, path, names)?;
        let id = |name: &str| t.special_id(name);
        let bos = id("<|begin_of_text|>");
        let eos = id("<|end_of_text|>");
        // Meta's generation stops on these; <|eom_id|> exists only under the 3.1 names.
        let stop = ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
            .iter()
            .filter_map(|n| id(n))
            .collect();
        Ok(Tokenizer {
            backend: Backend::Tiktoken(Box::new(t)),
            source: path.to_path_buf(),
            bos,
            eos,
            stop,
            add_bos: true,
        })
    }

    /// The tokenizer of a model directory: `tokenizer.json` in an HF dir, else `tokenizer.model`.
    /// For a Meta dir the special-token names follow params.json: Llama 3.1 and later set
    /// `use_scaled_rope`.
    pub fn from_model_dir(dir: &Path) -> Result<Tokenizer> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json);
        }
        let model = dir.join("tokenizer.model");
        if model.is_file() {
            let names = SpecialNames::for_meta_dir(dir)?;
            let data = read(&model)?;
            if sniff(&data) != Format::Tiktoken {
                return Self::from_file(&model);
            }
            return Self::from_tiktoken_bytes(&data, &model, names);
        }
        let original = dir.join("original").join("tokenizer.model");
        if original.is_file() {
            return Self::from_model_dir(&dir.join("original"));
        }
        if !dir.is_dir() {
            bail!("{}: not a directory", dir.display());
        }
        bail!(
            "{}: no tokenizer.json or tokenizer.model in this directory",
            dir.display()
        )
    }

    fn hf(data: &[u8], path: &Path) -> Result<Tokenizer> {
        let h = hf_backend::Hf::parse(data, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let ids = HfSpecialIds::read(dir, &h)?;
        Ok(Tokenizer {
            backend: Backend::Hf(Box::new(h)),
            source: path.to_path_buf(),
            bos: ids.bos,
            eos: ids.eos,
            stop: ids.stop,
            add_bos: true,
        })
    }

    /// The vocabulary in a GGUF file's metadata, tokenizing as llama.cpp does (see `gguf_vocab`).
    pub fn from_gguf(f: &crate::formats::gguf::GgufFile) -> Result<Tokenizer> {
        let v = gguf_vocab::GgufVocab::read(f)
            .with_context(|| format!("{}: tokenizer", f.path.display()))?;
        let h = hf_backend::Hf::parse(&v.json, &f.path)?;
        Ok(Tokenizer {
            backend: Backend::Hf(Box::new(h)),
            source: f.path.clone(),
            bos: v.bos,
            eos: v.eos,
            stop: v.stop,
            add_bos: v.add_bos,
        })
    }

    pub fn kind(&self) -> TokenizerKind {
        match self.backend {
            Backend::Tiktoken(_) => TokenizerKind::Tiktoken,
            Backend::Hf(_) => TokenizerKind::HuggingFace,
        }
    }

    /// The file this tokenizer was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The special-token naming of a tiktoken model (`None` for `tokenizer.json`).
    pub fn special_names(&self) -> Option<SpecialNames> {
        match &self.backend {
            Backend::Tiktoken(t) => Some(t.names),
            Backend::Hf(_) => None,
        }
    }

    /// The ordinary (mergeable) tokens of a tiktoken model in rank order.
    pub fn mergeable_tokens(&self) -> Option<&[Vec<u8>]> {
        match &self.backend {
            Backend::Tiktoken(t) => Some(t.bpe.tokens()),
            Backend::Hf(_) => None,
        }
    }

    /// Meta's `Tokenizer.encode(text, bos=, eos=, allowed_special=)`; `bos` is skipped for a GGUF
    /// vocabulary whose `add_bos_token` is false, as llama.cpp skips it.
    pub fn encode(
        &self,
        text: &str,
        bos: bool,
        eos: bool,
        allowed_special: AllowedSpecial,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if bos && self.add_bos {
            ids.push(self.bos.ok_or_else(|| {
                anyhow!(
                    "{}: this tokenizer has no beginning-of-text token",
                    self.source.display()
                )
            })?);
        }
        match &self.backend {
            Backend::Tiktoken(t) => ids.extend(t.encode(text, allowed_special)),
            Backend::Hf(h) => ids.extend(h.encode(text, allowed_special)?),
        }
        if eos {
            ids.push(self.eos.ok_or_else(|| {
                anyhow!(
                    "{}: this tokenizer has no end-of-text token",
                    self.source.display()
                )
            })?);
        }
        Ok(ids)
    }

    /// Text of the ids; bytes that are not valid UTF-8 become U+FFFD (as Python's
    /// `errors="replace"`). An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.backend {
            Backend::Tiktoken(t) => Ok(String::from_utf8_lossy(&t.decode_bytes(ids)?).into_owned()),
            Backend::Hf(h) => h.decode(ids),
        }
    }

    /// Vocabulary size including special tokens (128256 for Llama 3).
    pub fn n_vocab(&self) -> usize {
        match &self.backend {
            Backend::Tiktoken(t) => t.n_vocab(),
            Backend::Hf(h) => h.n_vocab(),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Ids that end generation: 128001 and 128009 (and 128008 `<|eom_id|>` under the 3.1 names)
    /// for Meta's tokenizer; from generation_config.json / config.json for HF.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop
    }

    /// The id of a token given as its text: a special-token name, or the exact text of one
    /// ordinary token ("user" -> 882).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.backend {
            Backend::Tiktoken(t) => t.special_id(text).or_else(|| t.bpe.rank(text.as_bytes())),
            Backend::Hf(h) => h.token_id(text),
        }
    }

    /// The bytes of one token, where the tokenizer knows them (tiktoken, byte-level HF).
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        match &self.backend {
            Backend::Tiktoken(t) => t.token_bytes(id).map(<[u8]>::to_vec),
            Backend::Hf(h) => h.token_bytes(id),
        }
    }

    pub fn is_special(&self, id: u32) -> bool {
        match &self.backend {
            Backend::Tiktoken(t) => t.is_special(id),
            Backend::Hf(h) => h.is_special(id),
        }
    }

    /// An incremental decoder for streaming output.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            pending: Vec::new(),
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }
}

/// Turns ids into text as they arrive, emitting only complete UTF-8: a character split across
/// tokens comes out once its last byte arrives. The concatenated output equals `decode` of all
/// ids (for tiktoken and byte-level tokenizers exactly; for others as far as the library's
/// decoder is prefix-stable).
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl StreamDecoder<'_> {
    /// The text that `id` completes (often empty while a multi-byte character is pending).
    pub fn push(&mut self, id: u32) -> Result<String> {
        if let Some(b) = self.tok.token_bytes(id) {
            if self.ids.is_empty() {
                self.pending.extend_from_slice(&b);
                return Ok(take_complete(&mut self.pending, false));
            }
        } else if self.tok.n_vocab() <= id as usize {
            bail!("token id {id} is outside the vocabulary");
        }
        // A decoder that is not byte-level: decode a short window of ids and emit what grew,
        // holding back while the tail is an incomplete character.
        let flushed = take_complete(&mut self.pending, true);
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            self.prefix = self.read;
            self.read = self.ids.len();
            return Ok(flushed + &now[before.len()..]);
        }
        Ok(flushed)
    }

    /// Whatever is still pending (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> Result<String> {
        let mut out = take_complete(&mut self.pending, true);
        if self.read < self.ids.len() {
            let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
            let now = self.tok.decode(&self.ids[self.prefix..])?;
            if now.len() > before.len() && now.is_char_boundary(before.len()) {
                out.push_str(&now[before.len()..]);
            }
            self.prefix = self.ids.len();
            self.read = self.ids.len();
        }
        Ok(out)
    }
}

/// Drains the decodable prefix of `pending`: invalid bytes become U+FFFD; an incomplete
/// character at the end stays unless `flush`.
fn take_complete(pending: &mut Vec<u8>, flush: bool) -> String {
    let mut out = String::new();
    let mut start = 0;
    while start < pending.len() {
        match std::str::from_utf8(&pending[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = pending.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&pending[start..start + valid]));
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        start += valid + n;
                    }
                    None if flush => {
                        out.push('\u{FFFD}');
                        start = pending.len();
                    }
                    None => {
                        start += valid;
                        break;
                    }
                }
            }
        }
    }
    pending.drain(..start);
    out
}

/// What a tokenizer file is, told by its content ([`sniff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// tiktoken text (`<base64> <rank>` lines): Meta's Llama 3 `tokenizer.model`. Other text is
    /// taken for a malformed one, so that the parser can say which line is wrong.
    Tiktoken,
    /// A JSON object: a Hugging Face `tokenizer.json`.
    Json,
    /// A SentencePiece protobuf (Llama 2 and older).
    SentencePiece,
    /// None of these (binary, empty).
    Unknown,
}

/// The one rule, for every caller, of what a tokenizer file is: [`Tokenizer::from_file`] and
/// `verify` both decide by it.
pub fn sniff(data: &[u8]) -> Format {
    // A JSON object's opening brace, written as its byte value so that brace-counting tools see
    // this function's true length.
    if data.trim_ascii_start().first() == Some(&0x7b) {
        return Format::Json;
    }
    let line = data
        .split(|&b| b == b'\n')
        .find(|l| !l.trim_ascii().is_empty());
    if let Some(line) = line {
        let mut f = line.trim_ascii().split(|&b| b == b' ');
        if let (Some(t), Some(r)) = (f.next(), f.next()) {
            let b64 = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=');
            if t.iter().all(b64) && !r.is_empty() && r.iter().all(u8::is_ascii_digit) {
                return Format::Tiktoken;
            }
        }
    }
    // SentencePiece models are protobufs whose first field (pieces, tag 0x0a) holds "<unk>".
    if data.first() == Some(&0x0a)
        && data.len() > 16
        && data[..64.min(data.len())].windows(5).any(|w| w == b"<unk>")
    {
        return Format::SentencePiece;
    }
    if std::str::from_utf8(data).is_ok() && !data.is_empty() {
        // Text but malformed: let the tiktoken parser say which line is wrong.
        return Format::Tiktoken;
    }
    Format::Unknown
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let data = read(path)?;
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| anyhow!("{}: not valid JSON ({e})", path.display()))
}

impl SpecialNames {
    /// The names Meta's code uses for the model in `dir`: params.json of Llama 3.1 and later
    /// sets `use_scaled_rope`; without params.json, the current (3.1) names.
    pub fn for_meta_dir(dir: &Path) -> Result<SpecialNames> {
        let params = dir.join("params.json");
        Ok(match read_json(&params)? {
            Some(p)
                if p["use_scaled_rope"].as_bool() == Some(false)
                    || p.get("use_scaled_rope").is_none() =>
            {
                SpecialNames::Llama3
            }
            _ => SpecialNames::Llama31,
        })
    }
}

struct HfSpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    stop: Vec<u32>,
}

impl HfSpecialIds {
    /// bos/eos from tokenizer_config.json (token text) or config.json (ids); stop ids from
    /// generation_config.json, then config.json, then eos.
    fn read(dir: &Path, h: &hf_backend::Hf) -> Result<HfSpecialIds> {
        let tc = read_json(&dir.join("tokenizer_config.json"))?;
        let cfg = read_json(&dir.join("config.json"))?;
        let gen = read_json(&dir.join("generation_config.json"))?;
        let by_name = |key: &str| -> Option<u32> {
            let v = &tc.as_ref()?[key];
            let name = v.as_str().or_else(|| v["content"].as_str())?;
            h.token_id(name)
        };
        let ids_of = |v: Option<&serde_json::Value>, key: &str| -> Vec<u32> {
            match v.map(|v| &v[key]) {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().map(|n| n as u32).into_iter().collect()
                }
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .map(|n| n as u32)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let bos =
            by_name("bos_token").or_else(|| ids_of(cfg.as_ref(), "bos_token_id").first().copied());
        let eos =
            by_name("eos_token").or_else(|| ids_of(cfg.as_ref(), "eos_token_id").first().copied());
        let mut stop = ids_of(gen.as_ref(), "eos_token_id");
        if stop.is_empty() {
            stop = ids_of(cfg.as_ref(), "eos_token_id");
        }
        if let Some(e) = eos {
            if !stop.contains(&e) {
                stop.push(e);
            }
        }
        Ok(HfSpecialIds { bos, eos, stop })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_across_threads() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
    }

    #[test]
    fn take_complete_holds_partial_chars() {
        let mut p = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_complete(&mut p, false), "");
        p.push("é".as_bytes()[1]);
        p.extend_from_slice(b"x\xffy\xe4\xb8");
        assert_eq!(take_complete(&mut p, false), "éx\u{FFFD}y");
        assert_eq!(p, b"\xe4\xb8");
        assert_eq!(take_complete(&mut p, true), "\u{FFFD}");
        assert!(p.is_empty());
    }
}
