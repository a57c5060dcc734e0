//! `llamactl tokenize` (see CLI.md): encode text, decode ids, or show a chat prompt.
//!
//! Input is the TEXT arguments (joined by spaces) or, without them, all of stdin (`--chat FILE`:
//! the file). Stdin must be
//! UTF-8: Meta's tokenizer encodes text, not bytes, and replacing bad bytes would silently change
//! the ids, so invalid UTF-8 is refused with the offset of the first bad byte.
use crate::cli::TokenizeArgs;
use crate::tokenizer::chat::{parse_dialog, ChatFormat};
use crate::tokenizer::{AllowedSpecial, Tokenizer};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};

pub(crate) fn run(args: &TokenizeArgs) -> Result<i32> {
    if args.chat.is_some() && args.decode {
        bail!(
            "--chat and --decode cannot be combined (decode the ids a --chat run printed instead)"
        );
    }
    let (tok, chat_format) = load(args)?;
    // A dialog file is the whole input: stdin is not read.
    let input = match &args.chat {
        Some(Some(_)) => String::new(),
        _ => read_input(args)?,
    };
    let mut out = std::io::stdout().lock();
    if args.decode {
        let ids = parse_ids(&input)?;
        let text = tok.decode(&ids)?;
        if args.json {
            let doc = serde_json::json!({"text": text, "ids": ids, "count": ids.len()});
            writeln!(out, "{doc}")?;
        } else {
            out.write_all(text.as_bytes())?;
        }
        out.flush()?;
        return Ok(0);
    }
    if let Some(file) = &args.chat {
        let (what, input) = match file {
            Some(f) if !args.text.is_empty() => bail!(
                "--chat {} and TEXT both give a dialog; give one",
                f.display()
            ),
            Some(f) => (f.display().to_string(), read_file(f)?),
            None if args.text.is_empty() => ("stdin".to_string(), input),
            None => ("TEXT".to_string(), input),
        };
        let dialog = parse_dialog(&input, &what)?;
        let ids = chat_format.encode(&tok, &dialog)?;
        let text = tok.decode(&ids)?;
        if args.json {
            let doc = serde_json::json!({"ids": ids, "count": ids.len(), "text": text});
            writeln!(out, "{doc}")?;
        } else {
            // The prompt as the model reads it, then its ids (a line of its own, as without --chat).
            let sep = if text.ends_with('\n') { "" } else { "\n" };
            writeln!(out, "{text}{sep}--- {} tokens:", ids.len())?;
            writeln!(out, "{}", id_line(&ids))?;
        }
        out.flush()?;
        return Ok(0);
    }
    let allowed = if args.special {
        AllowedSpecial::All
    } else {
        AllowedSpecial::None
    };
    let ids = tok.encode(&input, args.bos, args.eos, allowed)?;
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"ids": ids, "count": ids.len()})
        )?;
    } else {
        writeln!(out, "{}", id_line(&ids))?;
    }
    out.flush()?;
    Ok(0)
}

fn id_line(ids: &[u32]) -> String {
    let line: Vec<String> = ids.iter().map(u32::to_string).collect();
    line.join(" ")
}

fn read_file(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "--chat {}: cannot read the dialog file (a dialog as text goes on stdin, or after `--chat --`)",
            path.display()
        )
    })?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{}: not valid UTF-8 (first bad byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn load(args: &TokenizeArgs) -> Result<(Tokenizer, ChatFormat)> {
    match (&args.tokenizer, &args.model) {
        (Some(path), _) if path.is_dir() => {
            Ok((Tokenizer::from_model_dir(path)?, ChatFormat::for_model_dir(path)?))
        }
        (Some(path), _) => {
            let tok = Tokenizer::from_file(path)?;
            let fmt = ChatFormat::for_tokenizer(&tok)?;
            Ok((tok, fmt))
        }
        (None, Some(dir)) => Ok((Tokenizer::from_model_dir(dir)?, ChatFormat::for_model_dir(dir)?)),
        (None, None) => bail!(
            "no tokenizer given: pass --model DIR (a Meta or Hugging Face model directory) or --tokenizer PATH (a tokenizer.model or tokenizer.json)"
        ),
    }
}

fn read_input(args: &TokenizeArgs) -> Result<String> {
    if !args.text.is_empty() {
        return Ok(args.text.join(" "));
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut buf)
        .context("stdin: cannot read")?;
    String::from_utf8(buf).map_err(|e| {
        anyhow!(
            "stdin: not valid UTF-8 (first bad byte at offset {}); tokenize encodes text, so convert the input to UTF-8 first",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Ids separated by whitespace and/or commas, optionally inside a JSON-style `[...]`.
fn parse_ids(input: &str) -> Result<Vec<u32>> {
    let body = input.trim();
    let body = body
        .strip_prefix('[')
        .and_then(|b| b.strip_suffix(']'))
        .unwrap_or(body);
    body.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>().map_err(|_| {
                anyhow!("--decode: {s:?} is not a token id (expected non-negative integers)")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lists() {
        assert_eq!(parse_ids("1 2\n3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_ids("[1, 2,3]").unwrap(), vec![1, 2, 3]);
        assert!(parse_ids("").unwrap().is_empty());
        assert!(parse_ids("1 x")
            .unwrap_err()
            .to_string()
            .contains("\"x\" is not a token id"));
        assert!(parse_ids("-1").is_err());
    }
}
