//! Tokenizer files: Meta's tiktoken `tokenizer.model` against the vocabulary size.
use super::{CheckState, Kind, Report};
use crate::checkpoint::Params;
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
