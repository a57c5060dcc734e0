//! The Hugging Face backend: a `tokenizer.json` run by the `tokenizers` crate.
use super::byte_alphabet::{byte_to_unicode, unicode_to_byte};
use super::AllowedSpecial;
use anyhow::{anyhow, bail, Result};
use rustc_hash::FxHashMap;
use std::path::Path;
use tokenizers::DecoderWrapper;

pub(super) struct Hf {
    /// Splits special-token text out of the input (allowed special).
    special: tokenizers::Tokenizer,
    /// Encodes special-token text as plain text.
    plain: tokenizers::Tokenizer,
    /// The decoder maps GPT-2's byte alphabet back to bytes, so a token's bytes are known.
    byte_level: bool,
    added: FxHashMap<u32, String>,
}

impl Hf {
    pub(super) fn parse(data: &[u8], path: &Path) -> Result<Hf> {
        let special = tokenizers::Tokenizer::from_bytes(data).map_err(|e| {
            anyhow!(
                "{}: not a tokenizer.json the tokenizers library accepts ({e})",
                path.display()
            )
        })?;
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        let byte_level = special.get_decoder().is_some_and(is_byte_level);
        let added = special
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.content))
            .collect();
        Ok(Hf {
            special,
            plain,
            byte_level,
            added,
        })
    }

    pub(super) fn n_vocab(&self) -> usize {
        self.special.get_vocab_size(true)
    }

    pub(super) fn encode(&self, text: &str, allowed: AllowedSpecial) -> Result<Vec<u32>> {
        let tk = match allowed {
            AllowedSpecial::All => &self.special,
            AllowedSpecial::None => &self.plain,
        };
        let enc = tk
            .encode_fast(text, false)
            .map_err(|e| anyhow!("encoding failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let n = self.n_vocab();
        for &id in ids {
            if self.special.id_to_token(id).is_none() {
                bail!("token id {id} is outside the vocabulary (0..{n})");
            }
        }
        Ok(())
    }

    pub(super) fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.special
            .decode(ids, false)
            .map_err(|e| anyhow!("decoding failed: {e}"))
    }

    /// The token's bytes, where the tokenizer is byte-level (or the token is an added one).
    pub(super) fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        if let Some(s) = self.added.get(&id) {
            return Some(s.as_bytes().to_vec());
        }
        if !self.byte_level {
            return None;
        }
        let tok = self.special.id_to_token(id)?;
        tok.chars().map(unicode_to_byte).collect()
    }

    pub(super) fn is_special(&self, id: u32) -> bool {
        self.added.contains_key(&id)
    }

    /// The id of a token given as its text: added tokens by content, others through the
    /// byte alphabet when byte-level.
    pub(super) fn token_id(&self, text: &str) -> Option<u32> {
        if let Some(id) = self.special.token_to_id(text) {
            if self.added.contains_key(&id) || !self.byte_level {
                return Some(id);
            }
        }
        if self.byte_level {
            let mapped: String = text.bytes().map(byte_to_unicode).collect();
            return self.special.token_to_id(&mapped);
        }
        None
    }
}

fn is_byte_level(d: &DecoderWrapper) -> bool {
    match d {
        DecoderWrapper::ByteLevel(_) => true,
        DecoderWrapper::Sequence(seq) => seq.get_decoders().iter().any(is_byte_level),
        _ => false,
    }
}
