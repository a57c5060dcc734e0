//! Write a random bf16 Meta checkpoint with Llama 3.2 1B shapes, for benchmarks
//! (scripts/bench/verify.sh): `cargo run --release --example bench_checkpoint -- OUT_DIR [MP]`.
//!
//! Values look like trained weights to a scanner (finite, magnitudes around 0.02, random signs);
//! norms are 1.0 in every shard so replicated copies are identical. Written with the crate's own
//! streaming torch writer, so no Python is needed on the benchmark machine.
use anyhow::{bail, Context, Result};
use llamactl::checkpoint::layout::{self, Split};
use llamactl::checkpoint::Params;
use llamactl::formats::pth::{PthWriter, TensorSpec};
use llamactl::formats::DType;
use std::io::Write;
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        bail!("usage: bench_checkpoint OUT_DIR [MP]");
    };
    let mp: usize = args.next().map_or(Ok(4), |s| s.parse())?;
    let params: Params = serde_json::from_str(
        r#"{"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
            "multiple_of": 256, "ffn_dim_multiplier": 1.5, "norm_eps": 1e-05,
            "rope_theta": 500000.0, "use_scaled_rope": true}"#,
    )?;
    let vocab = params.vocab().context("vocab")?;
    if !params.is_valid_mp(mp, vocab) {
        bail!("MP {mp} is not valid for these params");
    }
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("params.json"), params.to_json())?;
    let weights = layout::meta_weights(&params, vocab, Split::Rows, false);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for rank in 0..mp {
        let stem = format!("consolidated.{rank:02}");
        let specs: Vec<TensorSpec> = weights
            .iter()
            .map(|w| TensorSpec {
                name: w.name.clone(),
                dtype: DType::BF16,
                shape: layout::shard_shape(w, &params, mp),
            })
            .collect();
        let path = out.join(format!("{stem}.pth"));
        let file = std::fs::File::create(&path)?;
        let mut w = PthWriter::new(std::io::BufWriter::new(file), &stem, specs.clone())?;
        for (spec, weight) in specs.iter().zip(&weights) {
            let n = spec.nbytes() as usize / 2;
            let replicated = weight.split == Split::Replicated;
            w.write_tensor(&mut |out: &mut dyn Write| {
                let mut block = Vec::with_capacity(1 << 20);
                let mut left = n;
                while left > 0 {
                    let k = left.min(1 << 19);
                    block.clear();
                    for _ in 0..k {
                        let bits = if replicated {
                            0x3f80u16 // 1.0
                        } else {
                            // xorshift64*: sign, exponent 2^-9..2^-6, random mantissa.
                            state ^= state >> 12;
                            state ^= state << 25;
                            state ^= state >> 27;
                            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
                            let sign = ((r >> 63) as u16) << 15;
                            let exp = (118 + (r >> 40) % 4) as u16;
                            sign | exp << 7 | (r as u16 & 0x7f)
                        };
                        block.extend_from_slice(&bits.to_le_bytes());
                    }
                    out.write_all(&block)?;
                    left -= k;
                }
                Ok(())
            })?;
        }
        let mut inner = w.finish()?;
        inner.flush()?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
