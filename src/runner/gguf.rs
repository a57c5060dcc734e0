//! A llama-architecture GGUF file as a model: the config from its metadata (`llama.*` keys and
//! `rope_freqs.weight`), and its tensors by Meta name, used from the file's memory map.
//!
//! GGUF stores q/k rows in Meta's order (llama.cpp's converter un-permutes Hugging Face's), so the
//! rotary pairs are adjacent, as for a Meta checkpoint. Everything the run needs is checked before
//! a weight is touched: the architecture, the file's structure (sizes, offsets), the hyper-parameter
//! keys and the type of every tensor.
use super::cpu::{quant::Quant, Bytes};
use super::model::{Config, RopePairing};
use super::weights::{StoredTensor, WeightBytes, WeightSource};
use crate::checkpoint::layout::meta_to_gguf;
use crate::checkpoint::rope::DEFAULT_THETA;
use crate::checkpoint::tensors::{Part, GGUF_ROPE_FACTORS};
use crate::formats::gguf::{GgmlType, GgufFile, TensorInfo, Value};
use crate::formats::DType;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// How a GGUF tensor is stored, in the terms of the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Float(DType),
    Quant(Quant),
}

fn stored_type(t: GgmlType) -> Option<Stored> {
    Some(match t {
        GgmlType::F32 => Stored::Float(DType::F32),
        GgmlType::F16 => Stored::Float(DType::F16),
        GgmlType::BF16 => Stored::Float(DType::BF16),
        _ => Stored::Quant(Quant::from_name(&t.name())?),
    })
}

/// The GGML types `run` computes with.
fn supported_types() -> String {
    let mut names = vec!["F32", "F16", "BF16"];
    names.extend(Quant::ALL.iter().map(|q| q.name()));
    names.join(" ")
}

pub(crate) struct GgufModel {
    pub file: GgufFile,
    map: Arc<Mmap>,
    by_name: HashMap<String, usize>,
}

impl GgufModel {
    /// Open and check a GGUF file; the metadata stays available as `file`.
    pub(crate) fn open(path: &Path) -> Result<GgufModel> {
        let file = GgufFile::open(path)?;
        let at = |e: anyhow::Error| e.context(format!("{}", path.display()));
        check_file(&file).map_err(at)?;
        let f = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        let map = super::weights::map_weights(&f, path)?;
        let by_name = file
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufModel {
            file,
            map: Arc::new(map),
            by_name,
        })
    }

    fn info(&self, gguf: &str) -> Option<&TensorInfo> {
        self.by_name.get(gguf).map(|&i| &self.file.tensors[i])
    }

    /// The model config from the `llama.*` keys.
    pub(crate) fn config(&self) -> Result<Config> {
        let f = &self.file;
        let int = |k: &str| -> Result<usize> {
            f.get(&format!("llama.{k}"))
                .ok_or_else(|| anyhow!("metadata key llama.{k} is missing"))?
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| anyhow!("metadata key llama.{k} is not an integer"))
        };
        let opt_int = |k: &str| f.get(&format!("llama.{k}")).and_then(Value::as_u64);
        let float = |k: &str| f.get(&format!("llama.{k}")).and_then(as_f64);
        let (dim, n_heads) = (int("embedding_length")?, int("attention.head_count")?);
        if n_heads == 0 {
            bail!("llama.attention.head_count is 0");
        }
        let head_dim = opt_int("attention.key_length").map_or(dim / n_heads, |v| v as usize);
        if let Some(r) = opt_int("rope.dimension_count") {
            if r as usize != head_dim {
                bail!("llama.rope.dimension_count {r} is not the head size {head_dim}: partial rotary is not supported");
            }
        }
        let vocab_size = match opt_int("vocab_size") {
            Some(v) => v as usize,
            None => match self.info(Part::Embedding.gguf_name()) {
                Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
                _ => bail!(
                    "llama.vocab_size is missing and {} is not a matrix",
                    Part::Embedding.gguf_name()
                ),
            },
        };
        let norm_eps = float("attention.layer_norm_rms_epsilon").ok_or_else(|| {
            anyhow!("metadata key llama.attention.layer_norm_rms_epsilon is missing")
        })?;
        let cfg = Config {
            dim,
            n_layers: int("block_count")?,
            n_heads,
            n_kv_heads: opt_int("attention.head_count_kv").map_or(n_heads, |v| v as usize),
            head_dim,
            hidden_dim: int("feed_forward_length")?,
            vocab_size,
            norm_eps,
            rope_theta: float("rope.freq_base").unwrap_or(DEFAULT_THETA),
            rope_scaling: None,
            rope_freq_factors: self.freq_factors(head_dim / 2)?,
            rope_pairing: RopePairing::AdjacentPairs,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// [`GGUF_ROPE_FACTORS`] (Llama 3.1 scaling) times the linear scaling factor, if any.
    fn freq_factors(&self, half: usize) -> Result<Option<Vec<f32>>> {
        let f = &self.file;
        let scaling = f.get("llama.rope.scaling.type").and_then(Value::as_str);
        let linear = match scaling {
            None | Some("none") => 1.0,
            Some("linear") => f
                .get("llama.rope.scaling.factor")
                .and_then(as_f64)
                .filter(|v| *v > 0.0)
                .ok_or_else(|| anyhow!("linear rope scaling without a positive factor"))?
                as f32,
            Some(other) => {
                bail!("rope scaling {other:?} is not supported (none, linear and rope_freqs are)")
            }
        };
        let stored = match self.info(GGUF_ROPE_FACTORS) {
            None => None,
            Some(t) if t.ggml_type == GgmlType::F32 => {
                let b = self.bytes(t)?;
                Some(
                    b.as_slice()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<f32>>(),
                )
            }
            Some(t) => bail!(
                "{GGUF_ROPE_FACTORS} is {}, expected F32",
                t.ggml_type.name()
            ),
        };
        Ok(match (stored, linear) {
            (None, 1.0) => None,
            (None, l) => Some(vec![l; half]),
            (Some(v), l) => Some(v.into_iter().map(|x| x * l).collect()),
        })
    }

    fn bytes(&self, t: &TensorInfo) -> Result<Bytes> {
        let len = t
            .nbytes()
            .ok_or_else(|| anyhow!("tensor {}: no valid size", t.name))? as usize;
        let offset = (self.file.data_offset + t.offset) as usize;
        if offset + len > self.map.len() {
            bail!("tensor {}: runs past the end of the file", t.name);
        }
        Ok(Bytes::Mapped {
            map: self.map.clone(),
            offset,
            len,
        })
    }

    /// What the weights will occupy (see `weights::weight_bytes`): matrices used in their stored
    /// type on the CPU stay in the map, everything else is copied in the `target` type.
    pub(crate) fn weight_bytes(&self, target: Option<DType>, map: bool) -> WeightBytes {
        let mut w = WeightBytes::default();
        for t in &self.file.tensors {
            let size = t.nbytes().unwrap_or(0);
            let elems: u64 = t.dims.iter().product();
            if map && (target.is_none() || t.dims.len() < 2) {
                w.mapped += size;
            } else {
                w.owned += elems * target.map_or(4, |d| d.size() as u64);
            }
        }
        w
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => Some(x.into()),
        Value::F64(x) => Some(x),
        _ => v.as_u64().map(|x| x as f64),
    }
}

/// The architecture, the file's structure and every tensor's type, before anything is loaded.
fn check_file(f: &GgufFile) -> Result<()> {
    match f.get("general.architecture").and_then(Value::as_str) {
        Some("llama") => {}
        Some(a) => {
            bail!("architecture {a:?} is not supported (llamactl runs llama-architecture files)")
        }
        None => bail!("metadata key general.architecture is missing"),
    }
    if let Some(p) = f.problems().into_iter().next() {
        bail!("{p}");
    }
    for t in &f.tensors {
        if stored_type(t.ggml_type).is_none() {
            bail!(
                "tensor {} is {}, a type llamactl cannot run (it runs {})",
                t.name,
                t.ggml_type.name(),
                supported_types()
            );
        }
    }
    Ok(())
}

impl WeightSource for GgufModel {
    fn contains(&self, name: &str) -> bool {
        meta_to_gguf(name).is_some_and(|g| self.by_name.contains_key(&g))
    }

    fn tensor(&self, name: &str) -> Result<StoredTensor> {
        let g = meta_to_gguf(name).ok_or_else(|| anyhow!("{name} has no GGUF name"))?;
        let t = self
            .info(&g)
            .ok_or_else(|| anyhow!("tensor {g} is missing"))?;
        let (dtype, quant) = match stored_type(t.ggml_type) {
            Some(Stored::Float(d)) => (d, None),
            Some(Stored::Quant(q)) => (DType::U8, Some(q)),
            None => bail!("tensor {g}: type {} is not supported", t.ggml_type.name()),
        };
        let bytes = self.bytes(t)?;
        Ok(StoredTensor {
            dtype,
            quant,
            shape: t.shape().iter().map(|&d| d as usize).collect(),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tensors::{Entry, Found, Naming, Sizes, LAYER_WEIGHTS};
    use crate::formats::gguf::{Header, TensorEntry};
    use crate::runner::cpu::quant;
    use crate::runner::model::{Llama, Precision};
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    /// Bytes of `v` stored as `t`.
    fn encode(t: GgmlType, v: &[f32]) -> Vec<u8> {
        match t {
            GgmlType::F32 => bytemuck::cast_slice(v).to_vec(),
            GgmlType::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            GgmlType::BF16 => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => match Quant::from_name(&t.name()) {
                Some(q) => quant::quantize(q, v),
                None => vec![0; t.row_bytes(v.len() as u64).unwrap() as usize],
            },
        }
    }

    /// A one-layer llama GGUF (dim 256, 4 heads of 64, 2 kv heads) with every matrix in `t`.
    fn write_model(path: &Path, t: GgmlType) {
        let (dim, hidden, vocab) = (256u64, 512u64, 96u64);
        let u = |v: u64| Value::U32(v as u32);
        let kvs = vec![
            (
                "general.architecture".to_string(),
                Value::Str("llama".into()),
            ),
            ("llama.embedding_length".into(), u(dim)),
            ("llama.block_count".into(), u(1)),
            ("llama.attention.head_count".into(), u(4)),
            ("llama.attention.head_count_kv".into(), u(2)),
            ("llama.feed_forward_length".into(), u(hidden)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Value::F32(1e-5),
            ),
            ("llama.rope.freq_base".into(), Value::F32(10000.0)),
            ("llama.vocab_size".into(), u(vocab)),
        ];
        let sizes = Sizes {
            dim: dim as usize,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
            hidden: hidden as usize,
            vocab: vocab as usize,
        };
        // The matrices in Hugging Face's order, then the norms.
        let mut block: Vec<&Entry> = LAYER_WEIGHTS.iter().collect();
        block.sort_by_key(|e| e.hf_rank);
        let (norms, matrices): (Vec<&Entry>, Vec<&Entry>) =
            block.into_iter().partition(|e| e.part.is_norm());
        let top = |part: Part| Found {
            entry: part.entry(),
            layer: None,
        };
        let in_block = |entry| Found {
            entry,
            layer: Some(0),
        };
        let mats = [top(Part::Embedding)]
            .into_iter()
            .chain(matrices.into_iter().map(in_block))
            .chain([top(Part::Output)])
            .chain(norms.into_iter().map(in_block))
            .chain([top(Part::Norm)]);
        let mut entries = Vec::new();
        let mut data = Vec::new();
        for (i, f) in mats.enumerate() {
            let shape: Vec<u64> = sizes.shape(f.entry).iter().map(|&d| d as u64).collect();
            let n = shape.iter().product::<u64>() as usize;
            let (ggml_type, v) = match f.entry.part.is_norm() {
                true => (GgmlType::F32, vec![1.0; n]),
                false => (t, values(n, i as u64 + 1)),
            };
            entries.push(TensorEntry {
                name: f.name(Naming::Gguf).unwrap(),
                shape,
                ggml_type,
            });
            data.push(encode(ggml_type, &v));
        }
        let h = Header {
            kvs,
            tensors: entries,
        };
        let (offsets, total) = h.layout().unwrap();
        let mut bytes = h.encode().unwrap();
        let base = bytes.len();
        bytes.resize(base + total as usize, 0);
        for (off, d) in offsets.iter().zip(&data) {
            let at = base + *off as usize;
            bytes[at..at + d.len()].copy_from_slice(d);
        }
        std::fs::write(path, bytes).unwrap();
    }

    fn logits(m: &Llama) -> Vec<f32> {
        let ids = Tensor::from_vec(vec![1u32, 5, 9, 2, 40], (1, 5), &Device::Cpu).unwrap();
        let mut cache = m.new_cache(1, 16).unwrap();
        let l = m.forward(&ids, 0, &mut cache, false).unwrap();
        l.squeeze(0).unwrap().to_vec1().unwrap()
    }

    /// Every supported type loads from the map and, computed on its blocks, stays close to the same
    /// file dequantized to f32 (only the activations' 8-bit rounding separates them).
    #[test]
    fn every_type_runs_from_the_map_and_tracks_f32() {
        let d = tempfile::tempdir().unwrap();
        let mut types = vec![GgmlType::F32, GgmlType::F16, GgmlType::BF16];
        types.extend(Quant::ALL.iter().map(|q| {
            let n = (0..40).find(|&n| GgmlType(n).name() == q.name()).unwrap();
            GgmlType(n)
        }));
        for t in types {
            let path = d.path().join(format!("{}.gguf", t.name()));
            write_model(&path, t);
            let g = GgufModel::open(&path).unwrap();
            let cfg = g.config().unwrap();
            let auto = Llama::load(cfg.clone(), &g, &Device::Cpu, Precision::Auto, 16).unwrap();
            assert!(auto.mapped_bytes() > 0, "{}", t.name());
            let f32 = Llama::load(
                cfg,
                &g,
                &Device::Cpu,
                Precision::Fixed(candle_core::DType::F32),
                16,
            )
            .unwrap();
            assert_eq!(f32.mapped_bytes() > 0, t == GgmlType::F32, "{}", t.name());
            let (a, b) = (logits(&auto), logits(&f32));
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            // Measured: 0.9% (Q8_0) to 2.5% (Q2_K) of the largest logit on these random weights;
            // Q8_K's one scale per 256 values rounds coarser than Q8_0's per 32.
            assert!(worst <= 0.04 * scale, "{}: {worst} of {scale}", t.name());
        }
    }

    #[test]
    fn unsupported_types_and_architectures_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.gguf");
        write_model(&path, GgmlType(16)); // IQ2_XXS: the size is known, the type is not run
        let e = format!("{:#}", GgufModel::open(&path).err().unwrap());
        assert!(e.contains("is IQ2_XXS, a type llamactl cannot run"), "{e}");
    }
}
