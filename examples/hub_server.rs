//! A local Hugging Face Hub serving one folder as one repo, for scripts/check_hf_cache_compat.py
//! and scripts/bench/pull.sh (the same server the tests use, tests/common/hub.rs).
//!
//! ```text
//! cargo run --release --example hub_server -- --repo org/name --dir DIR [--commit SHA]
//!     [--branch main] [--lfs-threshold BYTES] [--token TOKEN]
//! ```
//! Prints `HF_ENDPOINT=http://127.0.0.1:PORT` on stdout once it listens, then serves until killed.
//! Files of at least `--lfs-threshold` bytes (default 1 MiB) are LFS files: their resolve URL
//! redirects to the CDN listener with `X-Linked-Etag`/`X-Linked-Size`.
#[path = "../tests/common/hub.rs"]
mod hub;

use hub::{CommitSpec, Data, FileSpec, Hub, RepoSpec};
use std::io::Write;
use std::path::{Path, PathBuf};

fn files_under(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            files_under(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push((rel.to_string_lossy().replace('\\', "/"), p.clone()));
        }
    }
    Ok(())
}

fn main() {
    let mut repo = None;
    let mut dir = None;
    let mut commit = "0123456789abcdef0123456789abcdef01234567".to_string();
    let mut branch = "main".to_string();
    let mut threshold: u64 = 1 << 20;
    let mut token = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("hub_server: {a} needs a value");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--repo" => repo = Some(value()),
            "--dir" => dir = Some(PathBuf::from(value())),
            "--commit" => commit = value(),
            "--branch" => branch = value(),
            "--lfs-threshold" => {
                threshold = value().parse().unwrap_or_else(|_| {
                    eprintln!("hub_server: --lfs-threshold needs a byte count");
                    std::process::exit(2)
                })
            }
            "--token" => token = Some(value()),
            other => {
                eprintln!("hub_server: unknown argument {other:?}");
                std::process::exit(2)
            }
        }
    }
    let (Some(repo), Some(dir)) = (repo, dir) else {
        eprintln!("usage: hub_server --repo ORG/NAME --dir DIR [--commit SHA] [--branch B] [--lfs-threshold N] [--token T]");
        std::process::exit(2)
    };
    let mut found = Vec::new();
    if let Err(e) = files_under(&dir, &dir, &mut found) {
        eprintln!("hub_server: {}: {e}", dir.display());
        std::process::exit(2)
    }
    found.sort();
    let files = found
        .into_iter()
        .map(|(rel, path)| {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            FileSpec {
                path: rel,
                data: Data::File(path),
                lfs: len >= threshold,
                corrupt: false,
            }
        })
        .collect();
    let hub = Hub::start(vec![RepoSpec {
        id: repo,
        commits: vec![CommitSpec {
            sha: commit.clone(),
            files,
        }],
        refs: vec![(branch, commit)],
        gated_token: token,
    }]);
    println!("HF_ENDPOINT={}", hub.endpoint);
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
