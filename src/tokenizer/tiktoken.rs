//! The Meta backend: `tokenizer.model` + Llama 3's 256 special tokens + Meta's long-input rule.
use super::bpe::Bpe;
use super::split::{for_each_piece, py_isspace};
use super::{AllowedSpecial, SpecialNames};
use anyhow::{bail, Result};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::path::Path;

/// Meta encodes at most this many chars per tiktoken call.
const WINDOW_CHARS: usize = 400_000;
/// ... and cuts runs of whitespace or non-whitespace longer than this.
const MAX_RUN_CHARS: usize = 25_000;
/// Inputs at least this long are encoded on several threads, one slice per task.
const PARALLEL_BYTES: usize = 1 << 20;

const NUM_SPECIAL: usize = 256;

/// Names of the 256 special tokens, in id order after the ordinary tokens.
pub fn special_names(names: SpecialNames) -> Vec<String> {
    let named: &[&str] = match names {
        // meta-llama/llama3 (April 2024).
        SpecialNames::Llama3 => &[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>",
            "<|reserved_special_token_2|>",
            "<|reserved_special_token_3|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|reserved_special_token_4|>",
            "<|eot_id|>",
        ],
        // llama-models (Llama 3.1 and later): four reserved slots got names, plus <|image|>.
        SpecialNames::Llama31 => &[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>",
            "<|step_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
            "<|image|>",
        ],
    };
    let first_reserved = match names {
        SpecialNames::Llama3 => 5,
        SpecialNames::Llama31 => 2,
    };
    let mut out: Vec<String> = named.iter().map(|s| s.to_string()).collect();
    let rest = NUM_SPECIAL - named.len();
    out.extend((0..rest).map(|i| format!("<|reserved_special_token_{}|>", first_reserved + i)));
    out
}

pub(super) struct Tiktoken {
    pub bpe: Bpe,
    pub names: SpecialNames,
    special_bytes: Vec<Vec<u8>>,
    special_ids: FxHashMap<String, u32>,
}

impl Tiktoken {
    pub(super) fn parse(data: &[u8], path: &Path, names: SpecialNames) -> Result<Tiktoken> {
        let bpe = Bpe::parse(data, path)?;
        let base = bpe.len() as u32;
        let list = special_names(names);
        let special_ids = list
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), base + i as u32))
            .collect();
        Ok(Tiktoken {
            bpe,
            names,
            special_bytes: list.into_iter().map(String::into_bytes).collect(),
            special_ids,
        })
    }

    pub(super) fn n_vocab(&self) -> usize {
        self.bpe.len() + NUM_SPECIAL
    }

    pub(super) fn special_id(&self, name: &str) -> Option<u32> {
        self.special_ids.get(name).copied()
    }

    pub(super) fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let base = self.bpe.len();
        match (id as usize).checked_sub(base) {
            Some(i) => self.special_bytes.get(i).map(|b| b.as_slice()),
            None => self.bpe.token_bytes(id),
        }
    }

    pub(super) fn is_special(&self, id: u32) -> bool {
        (id as usize) >= self.bpe.len() && (id as usize) < self.n_vocab()
    }

    /// Meta's `Tokenizer.encode` without bos/eos: 400,000-char windows, runs longer than
    /// 25,000 cut, each slice encoded on its own.
    pub(super) fn encode(&self, text: &str, allowed: AllowedSpecial) -> Vec<u32> {
        if text.len() < PARALLEL_BYTES {
            let mut out = Vec::with_capacity(text.len() / 3 + 1);
            meta_slices(text, |s| self.encode_slice(s, allowed, &mut out));
            return out;
        }
        let mut slices = Vec::new();
        meta_slices(text, |s| slices.push(s));
        let parts: Vec<Vec<u32>> = slices
            .par_iter()
            .map(|s| {
                let mut out = Vec::with_capacity(s.len() / 3 + 1);
                self.encode_slice(s, allowed, &mut out);
                out
            })
            .collect();
        let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for p in parts {
            out.extend_from_slice(&p);
        }
        out
    }

    /// One tiktoken call: special-token text splits the slice when allowed.
    fn encode_slice(&self, slice: &str, allowed: AllowedSpecial, out: &mut Vec<u32>) {
        let mut rest = slice;
        if allowed == AllowedSpecial::All {
            while let Some((start, end, id)) = self.find_special(rest) {
                self.encode_ordinary(&rest[..start], out);
                out.push(id);
                rest = &rest[end..];
            }
        }
        self.encode_ordinary(rest, out);
    }

    /// The leftmost special-token text in `s`. Every name is `<|...|>` without an inner `|>`,
    /// so a match starting at a `<|` can only end at the first `|>` after it.
    fn find_special(&self, s: &str) -> Option<(usize, usize, u32)> {
        let b = s.as_bytes();
        let mut from = 0;
        while let Some(off) = find2(&b[from..], b'<', b'|') {
            let start = from + off;
            if let Some(close) = find2(&b[start + 2..], b'|', b'>') {
                let end = start + 2 + close + 2;
                if let Some(&id) = self.special_ids.get(&s[start..end]) {
                    return Some((start, end, id));
                }
            } else {
                return None;
            }
            from = start + 1;
        }
        None
    }

    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) {
        for_each_piece(text, |piece| self.bpe.encode_piece(piece.as_bytes(), out));
    }

    /// Bytes of the ids; an id outside the vocabulary is an error.
    pub(super) fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.token_bytes(id) {
                Some(b) => out.extend_from_slice(b),
                None => bail!(
                    "token id {id} is outside the vocabulary (0..{})",
                    self.n_vocab()
                ),
            }
        }
        Ok(out)
    }
}

fn find2(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&c| c == a) {
        let at = from + i;
        if hay.get(at + 1) == Some(&b) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Meta's slicing of a long input: windows of 400,000 chars, each cut wherever a run of
/// whitespace (Python `isspace`) or of non-whitespace would exceed 25,000 chars.
fn meta_slices<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let mut window_start = 0;
    while window_start < text.len() {
        let window_end = nth_char_boundary(text, window_start, WINDOW_CHARS);
        cut_runs(&text[window_start..window_end], &mut f);
        window_start = window_end;
    }
}

/// Byte offset `n` chars after `from` (or the end).
fn nth_char_boundary(text: &str, from: usize, n: usize) -> usize {
    let b = text.as_bytes();
    let mut count = 0;
    let mut i = from;
    while i < b.len() {
        if b[i] & 0xC0 != 0x80 {
            if count == n {
                return i;
            }
            count += 1;
        }
        i += 1;
    }
    b.len()
}

fn cut_runs<'a>(s: &'a str, f: &mut impl FnMut(&'a str)) {
    let mut chars = s.char_indices();
    let Some((_, first)) = chars.next() else {
        f(s);
        return;
    };
    let mut run_is_space = py_isspace(first);
    let mut run_len = 1usize;
    let mut slice_start = 0;
    for (i, c) in chars {
        let is_space = py_isspace(c);
        if is_space != run_is_space {
            run_is_space = is_space;
            run_len = 1;
        } else {
            run_len += 1;
            if run_len > MAX_RUN_CHARS {
                f(&s[slice_start..i]);
                slice_start = i;
                run_len = 1;
            }
        }
    }
    f(&s[slice_start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slices(s: &str) -> Vec<usize> {
        let mut v = Vec::new();
        meta_slices(s, |x| v.push(x.chars().count()));
        v
    }

    #[test]
    fn long_input_rule() {
        assert!(slices("").is_empty());
        assert_eq!(slices("ab c"), vec![4]);
        // A run of 30,000 spaces after "x": the 25,001st space of the run starts a new slice.
        let s = format!("x{}", " ".repeat(30_000));
        assert_eq!(slices(&s), vec![25_001, 5_000]);
        let s = "a".repeat(50_001);
        assert_eq!(slices(&s), vec![25_000, 25_000, 1]);
        // Windows are counted in chars, not bytes.
        let s = "é ".repeat(300_000);
        assert_eq!(slices(&s), vec![400_000, 200_000]);
    }

    #[test]
    fn special_tables() {
        for names in [SpecialNames::Llama3, SpecialNames::Llama31] {
            let t = special_names(names);
            assert_eq!(t.len(), 256);
            assert_eq!(t[9], "<|eot_id|>");
            let unique: std::collections::HashSet<_> = t.iter().collect();
            assert_eq!(unique.len(), 256);
        }
        let l3 = special_names(SpecialNames::Llama3);
        assert_eq!(l3[8], "<|reserved_special_token_4|>");
        assert_eq!(l3[10], "<|reserved_special_token_5|>");
        assert_eq!(l3[255], "<|reserved_special_token_250|>");
        let l31 = special_names(SpecialNames::Llama31);
        assert_eq!(l31[8], "<|eom_id|>");
        assert_eq!(l31[10], "<|python_tag|>");
        assert_eq!(l31[255], "<|reserved_special_token_245|>");
    }
}
