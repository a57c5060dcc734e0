//! Helper binary for scripts/bench/tokenize.sh and scripts/check_hf_tokenizer.py (not a test).
//!
//!   cargo run --release --example tokenize_tool -- bench TOKENIZER CORPUS [REPEATS]
//!   cargo run --release --example tokenize_tool -- write-hf TOKENIZER_MODEL DST_DIR [--instruct] [MAX_LEN]
//!   cargo run --release --example tokenize_tool -- to-tiktoken TOKENIZER_JSON OUT
use anyhow::{bail, Context, Result};
use llamactl::tokenizer::hf_files::{tiktoken_model_from_tokenizer_json, write_hf_tokenizer_files};
use llamactl::tokenizer::{AllowedSpecial, Tokenizer};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") if args.len() >= 3 => bench(&args[1], &args[2], args.get(3)),
        Some("write-hf") if args.len() >= 3 => {
            let instruct = args.iter().any(|a| a == "--instruct");
            let max_len = args
                .iter()
                .skip(3)
                .find(|a| !a.starts_with("--"))
                .map_or(Ok(8192), |s| s.parse())
                .context("MAX_LEN")?;
            std::fs::create_dir_all(&args[2])?;
            write_hf_tokenizer_files(Path::new(&args[1]), Path::new(&args[2]), instruct, max_len)
        }
        Some("to-tiktoken") if args.len() == 3 => {
            let bytes = tiktoken_model_from_tokenizer_json(Path::new(&args[1]))?;
            std::fs::write(&args[2], bytes).with_context(|| args[2].clone())
        }
        _ => bail!("usage: bench TOKENIZER CORPUS [REPEATS] | write-hf MODEL DIR [--instruct] [MAX_LEN] | to-tiktoken JSON OUT"),
    }
}

fn bench(tokenizer: &str, corpus: &str, repeats: Option<&String>) -> Result<()> {
    let repeats: usize = repeats.map_or(Ok(3), |s| s.parse())?;
    let t0 = Instant::now();
    let tok = Tokenizer::from_file(Path::new(tokenizer))?;
    let load_s = t0.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(corpus).with_context(|| corpus.to_string())?;
    let mb = text.len() as f64 / 1e6;
    // Best of `repeats`, on one thread and on all of rayon's threads.
    let mut results = Vec::new();
    for threads in [1, rayon::current_num_threads()] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let mut best = f64::MAX;
        let mut ids = Vec::new();
        for _ in 0..repeats {
            let t = Instant::now();
            ids = pool.install(|| tok.encode(&text, false, false, AllowedSpecial::None))?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        let mut h = Sha256::new();
        for id in &ids {
            h.update(id.to_le_bytes());
        }
        results.push(serde_json::json!({
            "threads": threads, "seconds": best, "mb_per_s": mb / best,
            "count": ids.len(), "sha256": hex::encode(h.finalize()),
        }));
    }
    println!(
        "{}",
        serde_json::json!({"impl": "llamactl", "load_s": load_s, "mb": mb, "runs": results})
    );
    Ok(())
}
