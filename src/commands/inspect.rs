//! `llamactl inspect PATH [--json]`: what is in a checkpoint dir or file. Reads only zip
//! directories, pickles and safetensors headers, so it answers at once on a 16 GB shard.
use crate::checkpoint::{self, fp8, meta, Layout};
use crate::cli::InspectArgs;
use crate::formats::gguf::{self, GgufFile};
use crate::formats::pth::PthFile;
use crate::formats::safetensors::SafetensorsFile;
use crate::formats::TensorInfo;
use crate::util::human_bytes;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

struct Report {
    format: &'static str,
    params: Option<Value>,
    files: Vec<PathBuf>,
    tensors: Vec<(TensorInfo, usize)>,
    /// `fp8_scales_{rank}.pt` beside the shards (Meta's fp8 release).
    fp8_scales: Vec<String>,
}

pub fn run(args: &InspectArgs) -> Result<i32> {
    if args.path.is_file() && gguf::is_gguf(&args.path) {
        return inspect_gguf(args);
    }
    let r = collect(&args.path)?;
    let total: u64 = r.tensors.iter().map(|(t, _)| t.nbytes() as u64).sum();
    if args.json {
        let tensors: Vec<Value> = r
            .tensors
            .iter()
            .map(|(t, s)| json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, "shard": s}))
            .collect();
        let doc = json!({
            "format": r.format,
            "params": r.params,
            "shards": r.files.len(),
            "tensors": tensors,
            "total_bytes": total,
            "fp8_scales": r.fp8_scales,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    println!("path     {}", args.path.display());
    println!("format   {}", r.format);
    println!("shards   {}", r.files.len());
    if let Some(p) = &r.params {
        println!("params   {p}");
    }
    let fp8 = r.tensors.iter().filter(|(t, _)| t.dtype.is_fp8()).count();
    if r.format == "meta" && (fp8 > 0 || !r.fp8_scales.is_empty()) {
        println!(
            "fp8      {fp8} fp8 tensors; row scales in {}",
            if r.fp8_scales.is_empty() {
                "no fp8_scales_*.pt file".to_string()
            } else {
                r.fp8_scales.join(", ")
            }
        );
    }
    let mut dtypes: Vec<&str> = r.tensors.iter().map(|(t, _)| t.dtype.name()).collect();
    dtypes.sort();
    dtypes.dedup();
    println!(
        "tensors  {} ({}), {} of tensor data",
        r.tensors.len(),
        dtypes.join(", "),
        human_bytes(total)
    );
    let width = r
        .tensors
        .iter()
        .map(|(t, _)| t.name.len())
        .max()
        .unwrap_or(4);
    println!();
    println!("{:<width$}  {:<7}  {:<18}  shard", "name", "dtype", "shape");
    for (t, s) in &r.tensors {
        println!(
            "{:<width$}  {:<7}  {:<18}  {s}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape)
        );
    }
    Ok(0)
}

/// A GGUF file: its metadata (arrays shown by length) and tensor table, GGML type names.
fn inspect_gguf(args: &InspectArgs) -> Result<i32> {
    let g = GgufFile::open(&args.path)?;
    let sizes: Vec<u64> = g.tensors.iter().map(|t| t.nbytes().unwrap_or(0)).collect();
    let total: u64 = sizes.iter().sum();
    if args.json {
        let meta: serde_json::Map<String, Value> = g
            .kvs
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json(16)))
            .collect();
        let tensors: Vec<Value> = g
            .tensors
            .iter()
            .map(|t| json!({"name": t.name, "dtype": t.ggml_type.name(), "shape": t.shape(), "shard": 0, "offset": t.offset}))
            .collect();
        let doc = json!({"format": "gguf", "params": null, "shards": 1, "metadata": meta,
            "tensors": tensors, "total_bytes": total});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    println!("path     {}", args.path.display());
    println!("format   gguf (version {})", g.version);
    for (k, v) in &g.kvs {
        println!("  {k:<40} {}", v.summary());
    }
    println!(
        "tensors  {}, {} of tensor data",
        g.tensors.len(),
        human_bytes(total)
    );
    let width = g.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4);
    println!();
    println!("{:<width$}  {:<5}  {:<18}  bytes", "name", "type", "shape");
    for (t, size) in g.tensors.iter().zip(&sizes) {
        let shape = format!("{:?}", t.shape());
        println!(
            "{:<width$}  {:<5}  {shape:<18}  {size}",
            t.name,
            t.ggml_type.name()
        );
    }
    Ok(0)
}

fn collect(path: &Path) -> Result<Report> {
    if path.is_dir() {
        return match checkpoint::detect(path)? {
            Layout::Meta => {
                let params: Value = read_json(&path.join("params.json"))?;
                let files = meta::shard_paths(path)?;
                if files.is_empty() {
                    bail!("{}: no consolidated.NN.pth shards", path.display());
                }
                let mut tensors = Vec::new();
                for (i, f) in files.iter().enumerate() {
                    let p = PthFile::open(f)?;
                    tensors.extend(p.tensors().iter().cloned().map(|t| (t, i)));
                }
                Ok(Report {
                    format: "meta",
                    params: Some(params),
                    files,
                    tensors,
                    fp8_scales: fp8::scale_files(path),
                })
            }
            Layout::Hf => {
                let config: Value = read_json(&path.join("config.json"))?;
                let index = path.join("model.safetensors.index.json");
                let files: Vec<PathBuf> = if index.exists() {
                    let ix = crate::formats::safetensors::Index::read(&index)?;
                    let mut names: Vec<String> = ix.weight_map.into_values().collect();
                    names.sort();
                    names.dedup();
                    names.into_iter().map(|n| path.join(n)).collect()
                } else {
                    vec![path.join("model.safetensors")]
                };
                let mut tensors = Vec::new();
                for (i, f) in files.iter().enumerate() {
                    let s = SafetensorsFile::open(f)?;
                    tensors.extend(s.tensors().cloned().map(|t| (t, i)));
                }
                Ok(Report {
                    format: "hf",
                    params: Some(config),
                    files,
                    tensors,
                    fp8_scales: Vec::new(),
                })
            }
        };
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    if ext == "safetensors" {
        let s = SafetensorsFile::open(path)?;
        Ok(Report {
            format: "safetensors",
            params: None,
            files: vec![path.to_path_buf()],
            tensors: s.tensors().cloned().map(|t| (t, 0)).collect(),
            fp8_scales: Vec::new(),
        })
    } else {
        let p = PthFile::open(path)?;
        Ok(Report {
            format: "pth",
            params: None,
            files: vec![path.to_path_buf()],
            tensors: p.tensors().iter().cloned().map(|t| (t, 0)).collect(),
            fp8_scales: Vec::new(),
        })
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}
