//! `checklist.chk`: GNU md5sum lines (32 hex digits, two spaces, file name).
use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub md5: String,
    pub name: String,
}

/// A line that could not be used, kept so callers can report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

/// Parse a checklist. Unsafe names (absolute, `..`) are reported as bad lines and never returned.
pub fn parse(text: &str) -> (Vec<Entry>, Vec<BadLine>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut fail = |reason: String| {
            bad.push(BadLine {
                line: i + 1,
                reason,
            })
        };
        let Some((hash, rest)) = line.split_once(' ') else {
            fail(format!("not an md5sum line: {line:?}"));
            continue;
        };
        // GNU md5sum: "HASH  name" (text mode) or "HASH *name" (binary mode).
        let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'));
        let Some(name) = name else {
            fail(format!("not an md5sum line: {line:?}"));
            continue;
        };
        if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            fail(format!("{hash:?} is not a 32-digit md5"));
            continue;
        }
        let name = name.strip_prefix("./").unwrap_or(name);
        let p = Path::new(name);
        if name.is_empty()
            || p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            fail(format!(
                "unsafe file name {name:?} (absolute or with ..); not followed"
            ));
            continue;
        }
        entries.push(Entry {
            md5: hash.to_ascii_lowercase(),
            name: name.to_owned(),
        });
    }
    (entries, bad)
}

pub fn read(path: &Path) -> Result<(Vec<Entry>, Vec<BadLine>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(parse(&text))
}

/// Render entries as md5sum lines, sorted by name like Meta's files.
pub fn render(entries: &[Entry]) -> Result<String> {
    let mut sorted = entries.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::new();
    for e in &sorted {
        if e.md5.len() != 32 || e.name.contains('\n') {
            bail!("cannot write checklist entry for {:?}", e.name);
        }
        out.push_str(&format!("{}  {}\n", e.md5, e.name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_unsafe_lines() {
        let text = "0123456789abcdef0123456789ABCDEF  consolidated.00.pth\n\
                    0123456789abcdef0123456789abcdef *params.json\n\
                    0123456789abcdef0123456789abcdef  ../etc/passwd\n\
                    0123456789abcdef0123456789abcdef  /etc/passwd\n\
                    xyz  tokenizer.model\n";
        let (e, bad) = parse(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].md5, "0123456789abcdef0123456789abcdef");
        assert_eq!(e[1].name, "params.json");
        assert_eq!(
            bad.iter().map(|b| b.line).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(render(&e).unwrap().lines().count(), 2);
    }
}
