//! The test CDN (tests/common/cdn.rs) as a standalone server, for benchmarks and manual tries.
//!
//! `cargo run --release --example cdn_server -- DIR [VALID_SECS]` serves every file under DIR at its
//! relative path, prints one signed-style link (`http://127.0.0.1:PORT/*?Policy=…`) on stdout, and
//! runs until killed. Range, If-Range and 416 behave as CloudFront does.
#[path = "../tests/common/cdn.rs"]
mod cdn;

use std::io::Write;
use std::path::{Path, PathBuf};

fn add_dir(server: &cdn::Cdn, root: &Path, dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            n += add_dir(server, root, &path)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            server.put_file(&rel.to_string_lossy(), path.clone())?;
            n += 1;
        }
    }
    Ok(n)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(root) = args.next().map(PathBuf::from) else {
        eprintln!("usage: cdn_server DIR [VALID_SECS]");
        std::process::exit(2);
    };
    let valid: i64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(86_400);
    let server = cdn::Cdn::start();
    match add_dir(&server, &root, &root) {
        Ok(n) => eprintln!(
            "serving {n} files from {} on {}",
            root.display(),
            server.addr
        ),
        Err(e) => {
            eprintln!("{}: {e}", root.display());
            std::process::exit(2);
        }
    }
    println!("{}", server.link(valid, None));
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
