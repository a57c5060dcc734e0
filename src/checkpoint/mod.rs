//! A model directory as a thing: params.json, checklist.chk, shard discovery, the per-weight split
//! rules, the Meta <-> HF <-> GGUF name maps and permutation, and streaming of logical tensors.
//!
//! ```text
//! checkpoint/
//!   mod.rs        DirKind, ModelDir (a Meta or HF directory), detect, require_dir
//!   params.rs     params.json                   hf_config.rs  config.json and its siblings
//!   checklist.rs  checklist.chk                 hashing.rs    md5 of files, in parallel
//!   tensors.rs    the one table of a Llama model's tensors (names, split, role, shape, order)
//!   layout.rs     what the table says for given params: weights, shapes, name maps, q/k permute
//!   meta.rs       a Meta directory (consolidated.NN.pth shards)
//!   hf.rs         a Hugging Face directory (safetensors and their index)
//!   stream.rs     logical tensors streamed out of their shards, with permute and cast
//!   rope.rs       rope_theta and Llama 3.1 scaling      fp8.rs  Meta's fp8 release
//! ```
//!
//! Only facts about a model directory live here; what is done with one (convert, reshard, GGUF
//! export, verify, statistics) is the `ops` layer above. The GGUF type rules (llama-quantize's
//! choice of a type per tensor and file type) are an export policy, not a fact of the directory,
//! so they are `ops::gguf::types`; the GGUF *names* of the tensors are facts and stay in
//! `tensors`/`layout`.
pub mod checklist;
pub(crate) mod fp8;
pub mod hashing;
pub(crate) mod hf;
pub mod hf_config;
pub mod layout;
pub mod meta;
pub mod params;
pub mod rope;
pub(crate) mod stream;
pub mod tensors;

pub use params::Params;

use crate::formats::DType;
use anyhow::{anyhow, bail, Result};
use std::path::Path;

/// Which kind of model directory: Meta's or Hugging Face's. The kind also fixes how the q/k rows
/// are ordered in its files, i.e. the rotary convention they expect (the runner's `RopePairing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// Meta: params.json, consolidated.NN.pth; rotary on adjacent pairs.
    Meta,
    /// Hugging Face: config.json, safetensors; q/k rows permuted for rotary on halves.
    Hf,
}

/// A tensor read whole into memory (model loading; small tensors).
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A Meta or Hugging Face model directory.
pub enum ModelDir {
    Meta(meta::MetaDir),
    Hf(hf::HfDir),
}

/// Refuse a source that is not a directory, saying what it is instead (a GGUF file, a shard...).
pub fn require_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{}: {}",
            dir.display(),
            crate::formats::sniff::refusal(dir, "a model directory")
        );
    }
    Ok(())
}

/// What kind of directory `dir` looks like, without opening any weights.
pub fn detect(dir: &Path) -> Result<DirKind> {
    require_dir(dir)?;
    if dir.join("params.json").exists() {
        Ok(DirKind::Meta)
    } else if dir.join("config.json").exists() {
        Ok(DirKind::Hf)
    } else {
        bail!(
            "{}: neither a Meta checkpoint (params.json) nor a Hugging Face model (config.json)",
            dir.display()
        )
    }
}

impl ModelDir {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(match detect(dir)? {
            DirKind::Meta => ModelDir::Meta(meta::MetaDir::open(dir)?),
            DirKind::Hf => ModelDir::Hf(hf::HfDir::open(dir)?),
        })
    }

    pub fn kind(&self) -> DirKind {
        match self {
            ModelDir::Meta(_) => DirKind::Meta,
            ModelDir::Hf(_) => DirKind::Hf,
        }
    }

    pub fn dir(&self) -> &Path {
        match self {
            ModelDir::Meta(m) => &m.dir,
            ModelDir::Hf(h) => &h.dir,
        }
    }

    pub fn params(&self) -> &Params {
        match self {
            ModelDir::Meta(m) => &m.params,
            ModelDir::Hf(h) => &h.params,
        }
    }

    /// Llama 3.1 rope scaling: config.json's values for Hugging Face directories, Meta's for
    /// params.json's `use_scaled_rope`.
    pub fn rope_scaling(&self) -> Option<rope::RopeScaling> {
        match self {
            ModelDir::Meta(m) => m.params.rope_scaling(),
            ModelDir::Hf(h) => h.rope_scaling,
        }
    }

    /// Meta names of the tensors present (a tied HF model has no `output.weight`).
    pub fn tensor_names(&self) -> Result<Vec<String>> {
        match self {
            ModelDir::Meta(m) => Ok(m.names()),
            ModelDir::Hf(h) => h.meta_names(),
        }
    }

    /// The full tensor for a Meta name, shards merged, in the directory's own q/k layout.
    pub fn full(&self, meta_name: &str) -> Result<stream::FullTensor> {
        match self {
            ModelDir::Meta(m) => m.full(meta_name),
            ModelDir::Hf(h) => {
                let hf = layout::meta_to_hf(meta_name)
                    .ok_or_else(|| anyhow!("{meta_name} is not a Llama weight name"))?;
                h.full(&hf)
            }
        }
    }

    /// Read a full tensor into memory.
    pub fn read_tensor(&self, meta_name: &str) -> Result<RawTensor> {
        let t = self.full(meta_name)?;
        let mut data = Vec::with_capacity(t.nbytes() as usize);
        let mut bufs = stream::Buffers::default();
        let mut stats = stream::CastStats::default();
        stream::write_region(&t, &t.all(), None, &mut bufs, &mut data, &mut stats)?;
        Ok(RawTensor {
            dtype: t.dtype,
            shape: t.shape,
            data,
        })
    }
}
