//! Llama 3.1 405B's fp8 release (DESIGN.md): the FFN weights w1/w2/w3 of layers 1..n-2 are stored as
//! float8_e4m3fn, and beside each shard `fp8_scales_{rank}.pt` maps `"{layer}_feed_forward.{w}_{rank}"`
//! to an f32 vector with one scale per row of that rank's matrix: value = w.float() * scale[:, None].
//!
//! w1/w3 are split by rows, so their scales split with them; w2 is split by columns and each rank
//! computed its own row scales over its own columns, so no exact merge of w2 exists. That is why
//! reshard and convert refuse these directories instead of producing something approximate.
use super::stream::FullTensor;
use super::tensors::{find, Naming, Part};
use crate::formats::pth::PthFile;
use crate::formats::safetensors::SafetensorsFile;
use crate::formats::{DType, TensorInfo};
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};

/// The dtype Meta's fp8 release stores its quantized weights in.
pub(crate) const DTYPE: DType = DType::F8E4M3;

/// `fp8_scales_{rank}.pt` (the rank is not zero-padded, unlike `consolidated.NN.pth`).
pub(crate) fn scales_name(rank: usize) -> String {
    format!("fp8_scales_{rank}.pt")
}

/// Layer and in-block Meta name (`feed_forward.w1`, `.w2`, `.w3`) of an FFN weight name.
fn ffn_parts(name: &str) -> Option<(usize, &'static str)> {
    let f = find(Naming::Meta, name)?;
    let ffn = matches!(f.entry.part, Part::W1 | Part::W2 | Part::W3);
    Some((f.layer.filter(|_| ffn)?, f.entry.meta))
}

/// Whether Meta's fp8 release stores this weight as fp8: FFN w1/w2/w3 of layers 1..n-2.
pub(crate) fn is_fp8_weight(name: &str, n_layers: usize) -> bool {
    ffn_parts(name).is_some_and(|(l, _)| l >= 1 && l + 1 < n_layers)
}

/// The key of a weight's row scales in rank `rank`'s scales file.
pub(crate) fn scale_key(name: &str, rank: usize) -> Option<String> {
    let (layer, w) = ffn_parts(name)?;
    Some(format!("{layer}_{w}_{rank}"))
}

/// `fp8_scales_*.pt` files in a directory, sorted by name.
pub(crate) fn scale_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("fp8_scales_") && n.ends_with(".pt"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned())
}

/// The fp8 tensors (any fp8 dtype) of one checkpoint file, by name.
fn fp8_names<'a>(tensors: impl Iterator<Item = &'a TensorInfo>) -> Vec<String> {
    tensors
        .filter(|t| t.dtype.is_fp8())
        .map(|t| t.name.clone())
        .collect()
}

/// What makes a directory fp8: fp8 tensors in its first weights file, or scales files beside it.
#[derive(Debug, Default)]
struct Fp8Content {
    tensors: Vec<String>,
    /// Where the tensors were found (`consolidated.00.pth`, or "the safetensors files").
    found_in: String,
    scale_files: Vec<String>,
}

impl Fp8Content {
    /// Read headers only: the first `consolidated.*.pth` (every rank holds the same names) or every
    /// safetensors file. Files that do not open are left to the command's own error.
    fn of(dir: &Path) -> Self {
        let mut out = Fp8Content {
            scale_files: scale_files(dir),
            ..Default::default()
        };
        let shards = super::meta::shards_by_rank(dir).unwrap_or_default();
        if let Some(first) = shards.iter().flatten().next() {
            if let Ok(f) = PthFile::open(first) {
                out.tensors = fp8_names(f.tensors().iter());
                out.found_in = name_of(first);
            }
            return out;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| name_of(p).ends_with(".safetensors"));
        files.sort();
        out.found_in = "the safetensors files".into();
        for p in &files {
            if let Ok(f) = SafetensorsFile::open(p) {
                out.tensors.extend(fp8_names(f.tensors()));
            }
        }
        out
    }

    fn is_fp8(&self) -> bool {
        !self.tensors.is_empty() || !self.scale_files.is_empty()
    }

    /// "layers.1.feed_forward.w1.weight, ... (6 fp8 tensors)": the names, shortened for a message.
    fn describe(&self) -> String {
        const SHOWN: usize = 3;
        let mut s = self.tensors[..self.tensors.len().min(SHOWN)].join(", ");
        if self.tensors.len() > SHOWN {
            s.push_str(", ...");
        }
        match (self.tensors.len(), self.scale_files.len()) {
            (0, n) => format!("{n} fp8 scales file(s) ({})", self.scale_files.join(", ")),
            (t, 0) => format!("{t} fp8 tensors in {} ({s})", self.found_in),
            (t, n) => format!(
                "{t} fp8 tensors in {} ({s}) with row scales in {n} fp8_scales file(s)",
                self.found_in
            ),
        }
    }
}

/// Refuse an fp8 source before `command` creates anything: moving fp8 rows between ranks or into
/// one HF file would need scales that do not exist.
pub(crate) fn refuse(dir: &Path, command: &str) -> Result<()> {
    let c = Fp8Content::of(dir);
    if !c.is_fp8() {
        return Ok(());
    }
    bail!(
        "{}: an fp8 checkpoint ({}); {command} refuses it: fp8 weights carry per-rank row scales, and w2 is split by columns with each rank's row scales computed over its own columns, so no exact merge of w2's scales exists. Use the bf16 release (e.g. Llama3.1-405B:bf16-mp8) instead",
        dir.display(),
        c.describe()
    )
}

/// Make the fp8 weights of a Meta checkpoint read as f32: each rank's block of an fp8 tensor gets
/// that rank's row scales from `fp8_scales_{rank}.pt` (see `stream::Piece::fp8_scales`), so
/// streaming it yields `w.float() * scale[row]`. `full` maps Meta names to tensors whose pieces
/// are in rank order, one per rank.
pub(crate) fn dequantize_on_read<'a>(
    dir: &Path,
    n_layers: usize,
    full: impl Iterator<Item = &'a mut FullTensor>,
) -> Result<()> {
    let mut by_rank: Vec<Option<std::collections::HashMap<String, Vec<f32>>>> = Vec::new();
    for t in full.filter(|t| t.dtype.is_fp8()) {
        if t.dtype != DTYPE || !is_fp8_weight(&t.name, n_layers) {
            bail!(
                "tensor {} is {}; only the FFN weights of layers 1..n-2 as float8_e4m3fn (Meta's fp8 release) can be dequantized",
                t.name,
                t.dtype
            );
        }
        let name = t.name.clone();
        for (rank, p) in t.pieces.iter_mut().enumerate() {
            if by_rank.len() <= rank {
                by_rank.resize(rank + 1, None);
            }
            if by_rank[rank].is_none() {
                let path = dir.join(scales_name(rank));
                if !path.is_file() {
                    bail!(
                        "{}: not found; the fp8 weights of rank {rank} need it",
                        path.display()
                    );
                }
                let scales = read_scales(&path)?
                    .into_iter()
                    .filter_map(|(t, v)| Some((t.name, v?)))
                    .collect();
                by_rank[rank] = Some(scales);
            }
            let key = scale_key(&name, rank).expect("an fp8 FFN weight");
            let path = || dir.join(scales_name(rank)).display().to_string();
            let scales = by_rank[rank]
                .as_ref()
                .and_then(|m| m.get(&key))
                .ok_or_else(|| anyhow!("{}: no f32 row scales {key} for {name}", path()))?;
            if scales.len() != p.rows.len() {
                bail!(
                    "{}: {key} has {} scales, but rank {rank}'s block of {name} has {} rows",
                    path(),
                    scales.len(),
                    p.rows.len()
                );
            }
            p.fp8_scales = Some(std::sync::Arc::new(scales.clone()));
        }
        t.dtype = DType::F32;
    }
    Ok(())
}

pub(crate) use crate::formats::fp8_to_f32 as to_f32;

/// The f32 row scales of one rank, by key, read whole (a few KiB per layer).
pub(crate) fn read_scales(path: &Path) -> Result<Vec<(TensorInfo, Option<Vec<f32>>)>> {
    let f = PthFile::open(path)?;
    let mut out = Vec::new();
    for t in f.tensors() {
        let values = (t.dtype == DType::F32 && t.shape.len() == 1)
            .then(|| -> Result<Vec<f32>> {
                let mut buf = vec![0u8; t.nbytes()];
                f.source().read_exact_at(&mut buf, f.data_offset(t)?)?;
                Ok(buf
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            })
            .transpose()
            .map_err(|e| anyhow!("{}: {}: {e:#}", path.display(), t.name))?;
        out.push((t.clone(), values));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys() {
        assert!(is_fp8_weight(&Part::W2.at(1), 4));
        assert!(is_fp8_weight(&Part::W1.at(2), 4));
        assert!(!is_fp8_weight(&Part::W1.at(0), 4));
        assert!(!is_fp8_weight(&Part::W3.at(3), 4));
        assert!(!is_fp8_weight(&Part::Wq.at(1), 4));
        // The key Meta's scales files use: layer, in-block name, rank.
        let w3 = Part::W3.entry().meta;
        assert_eq!(scale_key(&Part::W3.at(7), 5).unwrap(), format!("7_{w3}_5"));
        assert_eq!(scales_name(3), "fp8_scales_3.pt");
    }

    #[test]
    fn decodes_float8() {
        // e4m3fn: 0x38 = 1.0, 0x7e = 448 (largest), 0x7f NaN, 0x01 = 2^-9 (smallest subnormal).
        assert_eq!(to_f32(DType::F8E4M3, 0x38), 1.0);
        assert_eq!(to_f32(DType::F8E4M3, 0xb8), -1.0);
        assert_eq!(to_f32(DType::F8E4M3, 0x7e), 448.0);
        assert!(to_f32(DType::F8E4M3, 0x7f).is_nan());
        assert_eq!(to_f32(DType::F8E4M3, 0x01), 2f32.powi(-9));
        // e5m2: 0x3c = 1.0, 0x7c = inf.
        assert_eq!(to_f32(DType::F8E5M2, 0x3c), 1.0);
        assert!(to_f32(DType::F8E5M2, 0x7c).is_infinite());
    }
}
