//! `llamactl inspect PATH [--json] [--shards]`: what is in a checkpoint dir or file. Reads only
//! zip directories, pickles and safetensors headers, so it answers at once on a 16 GB shard.
//!
//! A Meta dir of several shards is shown as the model's tensors, once each, whole shape and how
//! the ranks split it (`--shards`: every shard's own tensors). One `consolidated.NN.pth` file is
//! rank NN.
use crate::checkpoint::layout::Split;
use crate::checkpoint::meta::MetaDir;
use crate::checkpoint::{self, fp8, meta, DirKind};
use crate::cli::InspectArgs;
use crate::formats::gguf::{self, GgufFile};
use crate::formats::pth::PthFile;
use crate::formats::safetensors::SafetensorsFile;
use crate::formats::TensorInfo;
use crate::human::human_bytes;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Where a row of the tensor table lives.
#[derive(Clone, Copy)]
enum Place {
    /// In this shard (its rank, or the file's index in an HF dir).
    Shard(usize),
    /// A whole tensor of a multi-shard Meta dir, divided so among the ranks.
    Merged(Split),
}

impl Place {
    fn json(self) -> (&'static str, Value) {
        match self {
            Place::Shard(i) => ("shard", json!(i)),
            Place::Merged(s) => ("split", json!(split_name(s))),
        }
    }
}

fn split_name(s: Split) -> &'static str {
    match s {
        Split::Rows => "rows",
        Split::Cols => "cols",
        Split::Replicated => "replicated",
    }
}

struct Report {
    format: &'static str,
    params: Option<Value>,
    files: Vec<PathBuf>,
    /// Every shard's tensors, as stored.
    tensors: Vec<(TensorInfo, Place)>,
    /// A Meta dir of several shards: each tensor once, whole (`Place::Merged`).
    merged: Option<Vec<(TensorInfo, Place)>>,
    /// `fp8_scales_{rank}.pt` beside the shards (Meta's fp8 release).
    fp8_scales: Vec<String>,
}

pub(crate) fn run(args: &InspectArgs) -> Result<i32> {
    if args.path.is_file() && gguf::is_gguf(&args.path) {
        return inspect_gguf(args);
    }
    let r = collect(&args.path)?;
    if args.json {
        print_json(&r)?;
    } else {
        print_text(args, &r);
    }
    Ok(0)
}

fn bytes(tensors: &[(TensorInfo, Place)]) -> u64 {
    tensors.iter().map(|(t, _)| t.nbytes() as u64).sum()
}

fn tensors_json(tensors: &[(TensorInfo, Place)]) -> Vec<Value> {
    tensors
        .iter()
        .map(|(t, p)| {
            let (k, v) = p.json();
            json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, k: v})
        })
        .collect()
}

/// The CLI.md document; a multi-shard Meta dir adds `merged` and `merged_bytes`.
fn print_json(r: &Report) -> Result<()> {
    let mut doc = json!({
        "format": r.format,
        "params": r.params,
        "shards": r.files.len(),
        "tensors": tensors_json(&r.tensors),
        "total_bytes": bytes(&r.tensors),
        "fp8_scales": r.fp8_scales,
    });
    if let Some(m) = &r.merged {
        doc["merged"] = json!(tensors_json(m));
        doc["merged_bytes"] = json!(bytes(m));
    }
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

fn print_text(args: &InspectArgs, r: &Report) {
    println!("path     {}", args.path.display());
    println!("format   {}", r.format);
    println!("shards   {}", r.files.len());
    if let Some(rank) = Some(&args.path)
        .filter(|p| p.is_file())
        .and_then(|p| rank_of(p))
    {
        println!("rank     {rank} (of a model-parallel set, by the file name)");
    }
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
    let shown = match &r.merged {
        Some(m) if !args.shards => m,
        _ => &r.tensors,
    };
    let mut dtypes: Vec<&str> = shown.iter().map(|(t, _)| t.dtype.name()).collect();
    dtypes.sort();
    dtypes.dedup();
    let (total, stored) = (bytes(shown), bytes(&r.tensors));
    let in_shards = match stored == total {
        true => String::new(),
        false => format!(" ({} in the shards)", human_bytes(stored)),
    };
    println!(
        "tensors  {} ({}), {} of tensor data{in_shards}",
        shown.len(),
        dtypes.join(", "),
        human_bytes(total)
    );
    print_table(shown);
}

fn print_table(tensors: &[(TensorInfo, Place)]) {
    let width = tensors.iter().map(|(t, _)| t.name.len()).max().unwrap_or(4);
    let merged = matches!(tensors.first(), Some((_, Place::Merged(_))));
    let last = if merged { "split over shards" } else { "shard" };
    println!();
    println!(
        "{:<width$}  {:<7}  {:<18}  {last}",
        "name", "dtype", "shape"
    );
    for (t, p) in tensors {
        let place = match p {
            Place::Shard(i) => i.to_string(),
            Place::Merged(s) => split_name(*s).to_string(),
        };
        println!(
            "{:<width$}  {:<7}  {:<18}  {place}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape)
        );
    }
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
            DirKind::Meta => collect_meta(path),
            DirKind::Hf => {
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
                    tensors.extend(s.tensors().cloned().map(|t| (t, Place::Shard(i))));
                }
                Ok(Report {
                    format: "hf",
                    params: Some(config),
                    files,
                    tensors,
                    merged: None,
                    fp8_scales: Vec::new(),
                })
            }
        };
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    let (format, tensors): (_, Vec<TensorInfo>) = if ext == "safetensors" {
        let s = SafetensorsFile::open(path)?;
        ("safetensors", s.tensors().cloned().collect())
    } else {
        ("pth", PthFile::open(path)?.tensors().to_vec())
    };
    let rank = rank_of(path).unwrap_or(0);
    let tensors: Vec<_> = tensors
        .into_iter()
        .map(|t| (t, Place::Shard(rank)))
        .collect();
    Ok(Report {
        format,
        params: None,
        files: vec![path.to_path_buf()],
        tensors,
        merged: None,
        fp8_scales: Vec::new(),
    })
}

/// The model-parallel rank a `consolidated.NN.pth` name says.
fn rank_of(path: &Path) -> Option<usize> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("consolidated.")?
        .strip_suffix(".pth")?
        .parse()
        .ok()
}

/// A Meta dir: every shard's tensors and, with more than one shard, each tensor once, whole,
/// with the rule that splits it among the ranks.
fn collect_meta(path: &Path) -> Result<Report> {
    let params: Value = read_json(&path.join("params.json"))?;
    let files = meta::shard_paths(path)?;
    if files.is_empty() {
        bail!("{}: no consolidated.NN.pth shards", path.display());
    }
    let mut tensors = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let p = PthFile::open(f)?;
        tensors.extend(p.tensors().iter().cloned().map(|t| (t, Place::Shard(i))));
    }
    let mut merged = None;
    if files.len() > 1 {
        // A dir whose shards do not merge (an unknown tensor, shapes that fit no split) is
        // still worth listing: shard by shard, with the reason.
        let whole = MetaDir::open(path).and_then(|dir| {
            dir.names()
                .into_iter()
                .map(|name| merged_tensor(&dir, &name))
                .collect::<Result<Vec<_>>>()
        });
        match whole {
            Ok(t) => merged = Some(t),
            Err(e) => eprintln!(
                "note: {}; listing each shard's tensors",
                crate::error::one_line(&e)
            ),
        }
    }
    Ok(Report {
        format: "meta",
        params: Some(params),
        files,
        tensors,
        merged,
        fp8_scales: fp8::scale_files(path),
    })
}

/// One tensor of a multi-shard dir as the model sees it: shard 0's entry with the whole shape.
fn merged_tensor(dir: &MetaDir, name: &str) -> Result<(TensorInfo, Place)> {
    let w = dir.weight(name)?;
    let mut info = dir.shards[0]
        .get(name)
        .cloned()
        .with_context(|| format!("{}: no tensor {name}", dir.shards[0].path().display()))?;
    info.shape = w.full_shape;
    Ok((info, Place::Merged(w.split)))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}
