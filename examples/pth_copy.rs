//! Streams checkpoints through the writers, for scripts/check_torch_compat.py and
//! scripts/bench/pth_write.sh (not part of the CLI).
//!
//!   pth_copy copy SRC.pth DST.pth          every tensor of SRC re-written by PthWriter, bytes
//!                                          streamed from SRC with pread (bounded memory)
//!   pth_copy safetensors SRC.pth DST.safetensors
//!   pth_copy big DST.pth GIB               one U8 tensor of GIB GiB (a ZIP64 record) with a
//!                                          repeating 0..251 pattern, plus a small tensor after it
use anyhow::{bail, Context, Result};
use llamactl::formats::copy::HashingFile;
use llamactl::formats::pth::{PthFile, PthWriter, TensorSpec};
use llamactl::formats::DType;
use std::io::Write;
use std::path::Path;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("copy") if args.len() == 4 => copy(Path::new(&args[2]), Path::new(&args[3])),
        Some("safetensors") if args.len() == 4 => to_st(Path::new(&args[2]), Path::new(&args[3])),
        Some("big") if args.len() == 4 => big(Path::new(&args[2]), args[3].parse()?),
        _ => bail!("usage: pth_copy copy|safetensors SRC DST | big DST GIB"),
    }
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

fn copy(src: &Path, dst: &Path) -> Result<()> {
    let f = PthFile::open(src)?;
    let specs: Vec<TensorSpec> = f
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    // Plain buffered file (no md5) so the benchmark measures the writer, as `cp` does no hashing.
    let out = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(dst)?);
    let mut w = PthWriter::new(out, &stem(dst), specs)?;
    let mut buf = Vec::new();
    for t in f.tensors() {
        if t.is_contiguous() {
            let off = f.data_offset(t)?;
            w.write_tensor(&mut |o| f.source().copy_range(off, t.nbytes() as u64, &mut buf, o))?;
        } else {
            let bytes = f.bytes(t)?;
            w.write_tensor(&mut |o| Ok(o.write_all(&bytes)?))?;
        }
    }
    w.finish()?.flush()?;
    Ok(())
}

fn to_st(src: &Path, dst: &Path) -> Result<()> {
    let f = PthFile::open(src)?;
    let specs: Vec<(String, DType, Vec<usize>)> = f
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let md = [("format".to_string(), "pt".to_string())].into();
    let mut out = std::io::BufWriter::new(std::fs::File::create(dst).context("create")?);
    llamactl::formats::safetensors::write(&mut out, &specs, &md, &mut |name, o| {
        let t = f.get(name).unwrap();
        Ok(o.write_all(&f.bytes(t)?)?)
    })?;
    out.flush()?;
    Ok(())
}

fn big(dst: &Path, gib: u64) -> Result<()> {
    let n = (gib << 30) as usize + 12345;
    let specs = vec![
        TensorSpec {
            name: "big".into(),
            dtype: DType::U8,
            shape: vec![n],
        },
        TensorSpec {
            name: "after".into(),
            dtype: DType::F32,
            shape: vec![4],
        },
    ];
    let out = HashingFile::create(dst)?;
    let mut w = PthWriter::new(out, &stem(dst), specs)?;
    let pattern: Vec<u8> = (0..(1usize << 20) * 251).map(|i| (i % 251) as u8).collect();
    w.write_tensor(&mut |o| {
        let mut left = n;
        while left > 0 {
            let k = left.min(pattern.len());
            o.write_all(&pattern[..k])?;
            left -= k;
        }
        Ok(())
    })?;
    let after: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    w.write_tensor(&mut |o| Ok(o.write_all(&after)?))?;
    w.finish()?.finish()?;
    Ok(())
}
