//! What a file is, by its first bytes (then its name), for refusals: a GGUF file handed to a
//! command that wants a Meta directory or a `.pth` shard is named as a GGUF file, not reported
//! as "not a directory" or "not a torch zip checkpoint".
use std::io::Read;
use std::path::Path;

/// How many leading bytes decide.
const HEAD: usize = 64;

/// Why `path` is not `wanted` ("a model directory", "a torch zip checkpoint"), as the rest of a
/// line that starts with the path: "is a GGUF file, not WANTED" when its content names it, else
/// its first bytes, and for a name that promises a format (`.gguf`, `.safetensors`, `.pth`) that
/// the format's header is missing.
pub fn refusal(path: &Path, wanted: &str) -> String {
    if path.is_dir() {
        return format!("is a directory, not {wanted}");
    }
    let mut head = Vec::with_capacity(HEAD);
    match std::fs::File::open(path) {
        Ok(f) => {
            if let Err(e) = f.take(HEAD as u64).read_to_end(&mut head) {
                return format!("cannot read: {e}");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return "no such file or directory".into()
        }
        Err(e) => return format!("cannot open: {e}"),
    }
    if let Some(kind) = by_content(&head) {
        return format!("is {kind}, not {wanted}");
    }
    let start = head
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let promised = match ext.as_deref() {
        Some("gguf") => Some("a GGUF file without the GGUF magic"),
        Some("safetensors") => Some("a safetensors file without its header"),
        Some("pth" | "pt") => Some("a .pth file without a zip header"),
        _ => None,
    };
    match promised {
        Some(p) => {
            format!("{p} (it starts with bytes {start}): corrupt or not that format; not {wanted}")
        }
        None => format!("not {wanted} (a file that starts with bytes {start})"),
    }
}

/// The kinds a file's first bytes prove.
fn by_content(head: &[u8]) -> Option<&'static str> {
    if head.is_empty() {
        return Some("an empty file");
    }
    let text = head
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .copied()
        .take(16)
        .collect::<Vec<u8>>()
        .to_ascii_lowercase();
    Some(match head {
        [b'G', b'G', b'U', b'F', ..] => "a GGUF file",
        [b'P', b'K', 3, 4, ..] => "a zip archive (as a torch .pth shard is)",
        [0x80, 0x02, 0x8a, ..] => "a legacy (pre-1.6) torch file",
        [0x1f, 0x8b, ..] => "a gzip file",
        _ if safetensors_header(head) => "a safetensors file",
        _ if text.starts_with(b"<!doctype html") || text.starts_with(b"<html") => "an HTML page",
        _ if text.starts_with(b"<?xml") || text.starts_with(b"<error") => "an XML document",
        _ if text.starts_with(b"{") || text.starts_with(b"[") => "a JSON or text file",
        _ => return None,
    })
}

/// safetensors: a little-endian u64 header length, then the JSON header's `{`.
fn safetensors_header(head: &[u8]) -> bool {
    head.len() > 8
        && head[8] == b'{'
        && u64::from_le_bytes(head[..8].try_into().unwrap_or_default()) < 1 << 32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(name: &str, bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        refusal(&p, "W")
    }

    #[test]
    fn kinds() {
        assert_eq!(
            why("m.pth", b"GGUF\x03\x00\x00\x00"),
            "is a GGUF file, not W"
        );
        assert_eq!(
            why("m.gguf", b"GGXF\x03\x00"),
            "a GGUF file without the GGUF magic (it starts with bytes 47 47 58 46): corrupt or not that format; not W"
        );
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(why("x.bin", &st), "is a safetensors file, not W");
        assert_eq!(
            why("x", b"\n<!DOCTYPE html><html>"),
            "is an HTML page, not W"
        );
        assert_eq!(why("x", b""), "is an empty file, not W");
        assert_eq!(
            why("x", b"\x00\x01\x02\x03"),
            "not W (a file that starts with bytes 00 01 02 03)"
        );
        assert_eq!(
            refusal(Path::new("/nonexistent/x"), "W"),
            "no such file or directory"
        );
        assert_eq!(refusal(Path::new("/"), "W"), "is a directory, not W");
    }
}
