//! `ls --verify`: re-check what the listing otherwise takes from records. Meta folders: every
//! file's md5 against `checklist.chk` (a pass is recorded like `download` records one, so later
//! listings say `verified` without hashing); HF cache repos: every LFS blob's sha256 against its
//! name; GGUF files: the header and tensor layout (`verify FILE.gguf`'s check; a GGUF carries no
//! checksum).
use super::catalog;
use super::scan::{Entry, Format, Place};
use crate::checkpoint::hashing;
use anyhow::Result;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Re-check `entry` and set its `verified` field: `verified`, `failed`, or for GGUF `checked`.
pub fn verify(entry: &mut Entry, jobs: usize) {
    entry.verified = if entry.formats == [Format::Gguf] {
        gguf_ok(&entry.path)
    } else if entry.place == Place::HfCache {
        hf_blobs_ok(&entry.path)
    } else {
        match meta_dir(&entry.path) {
            Some(dir) => meta_ok(&dir, jobs),
            None => entry.verified,
        }
    };
}

fn meta_dir(path: &Path) -> Option<PathBuf> {
    [path.to_path_buf(), path.join("original")]
        .into_iter()
        .find(|d| d.join("checklist.chk").is_file())
}

fn gguf_ok(path: &Path) -> &'static str {
    match crate::formats::gguf::GgufFile::open(path) {
        Ok(g) if g.problems().is_empty() => "checked",
        _ => "failed",
    }
}

fn meta_ok(dir: &Path, jobs: usize) -> &'static str {
    let Ok(text) = std::fs::read_to_string(dir.join("checklist.chk")) else {
        return "failed";
    };
    let Ok(list) = catalog::parse_checklist(&text) else {
        return "failed";
    };
    let paths: Vec<PathBuf> = list.keys().map(|n| dir.join(n)).collect();
    let got = hashing::md5_files(&paths, jobs, &|_| {});
    let mut marker = BTreeMap::new();
    for ((name, want), (path, got)) in list.iter().zip(paths.iter().zip(got)) {
        match got {
            Ok(md5) if &md5 == want => match catalog::VerifiedFile::of(path, &md5) {
                Ok(v) => {
                    marker.insert(name.clone(), v);
                }
                Err(_) => return "failed",
            },
            _ => return "failed",
        }
    }
    // Checked either way; a read-only folder just keeps no record for the next listing.
    let _ = catalog::write_marker(dir, &marker);
    "verified"
}

/// Every blob named by a sha256 (LFS files) hashes to its name. Blobs named by a git blob id
/// (small files) are not checked.
fn hf_blobs_ok(root: &Path) -> &'static str {
    let blobs = root.join("blobs");
    let Ok(rd) = std::fs::read_dir(&blobs) else {
        return "failed";
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            match sha256_file(&e.path()) {
                Ok(h) if h.eq_ignore_ascii_case(&name) => {}
                _ => return "failed",
            }
        }
    }
    "verified"
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
