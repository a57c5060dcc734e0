//! Write an HF Llama dir of any size at almost no disk cost: `model.safetensors` is a real header
//! followed by a hole, so every weight reads as zeros. For checking what a full-size model needs in
//! memory and time (`run --check` on an 8B-shaped model) without the weights:
//! `cargo run --release --example sparse_checkpoint -- OUT_DIR [8b|70b|1b]`.
use anyhow::{bail, Context, Result};
use llamactl::checkpoint::hf_config::{config_json, ModelKind};
use llamactl::checkpoint::layout::{meta_to_hf, meta_weights, Split};
use llamactl::checkpoint::Params;
use llamactl::formats::{safetensors, DType};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        bail!("usage: sparse_checkpoint OUT_DIR [8b|70b|1b]");
    };
    let params = match args.next().as_deref().unwrap_or("8b") {
        "8b" => {
            r#"{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
            "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0,
            "use_scaled_rope": true}"#
        }
        "70b" => {
            r#"{"dim": 8192, "n_layers": 80, "n_heads": 64, "n_kv_heads": 8, "vocab_size": 128256,
            "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0,
            "use_scaled_rope": true}"#
        }
        "1b" => {
            r#"{"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
            "multiple_of": 256, "ffn_dim_multiplier": 1.5, "norm_eps": 1e-05, "rope_theta": 500000.0,
            "use_scaled_rope": true}"#
        }
        other => bail!("unknown size {other}: 8b, 70b or 1b"),
    };
    let p: Params = serde_json::from_str(params)?;
    let vocab = p.vocab().context("vocab")?;
    std::fs::create_dir_all(&out)?;
    let mut specs: Vec<(String, DType, Vec<usize>)> = meta_weights(&p, vocab, Split::Rows, false)
        .into_iter()
        .map(|w| {
            (
                meta_to_hf(&w.name).expect("llama name"),
                DType::BF16,
                w.full_shape,
            )
        })
        .collect();
    safetensors::order_for_writing(&mut specs);
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let header = safetensors::header(&specs, &metadata)?;
    let size = safetensors::file_size(&specs, &metadata)?;
    let path = out.join("model.safetensors");
    std::fs::write(&path, &header)?;
    // The hole: no blocks are allocated, and reads return zeros.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_len(size)?;
    let kind = ModelKind {
        instruct: false,
        tied: false,
        dtype: DType::BF16,
    };
    let config = serde_json::to_string_pretty(&config_json(&p, vocab, &kind))?;
    std::fs::write(out.join("config.json"), config)?;
    eprintln!(
        "{}: {} tensors, {:.1} GB of zeros (sparse)",
        out.display(),
        specs.len(),
        size as f64 / 1e9
    );
    Ok(())
}
