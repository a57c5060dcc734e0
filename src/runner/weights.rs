//! Where a model's weights come from, and what they cost in memory before anything is loaded.
//!
//! A tensor that one file holds whole and contiguous (every tensor of a Meta MP 1 `.pth` or of HF
//! safetensors) is handed out as a range of that file's memory map: no copy, and its pages are
//! file-backed, so they count as page cache rather than process memory. Tensors split across Meta
//! shards are merged once into a buffer of their own, in their stored type.
use super::cpu::quant::Quant;
use super::cpu::Bytes;
use crate::checkpoint::{stream::FullTensor, ModelDir};
use crate::formats::DType;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A tensor as stored: type, shape and bytes.
pub(crate) struct StoredTensor {
    /// The element type; `U8` when `quant` is set.
    pub dtype: DType,
    /// GGML blocks of this type (GGUF files), one row after another.
    pub quant: Option<Quant>,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

/// Full (unsharded) tensors by Meta name, in the type they are stored in.
pub(crate) trait WeightSource {
    fn contains(&self, name: &str) -> bool;
    fn tensor(&self, name: &str) -> Result<StoredTensor>;
}

/// A Meta or HF checkpoint directory as a weight source.
pub(crate) struct DirWeights<'a> {
    dir: &'a ModelDir,
    names: HashSet<String>,
    maps: Mutex<HashMap<PathBuf, Arc<Mmap>>>,
}

impl<'a> DirWeights<'a> {
    pub(crate) fn new(dir: &'a ModelDir) -> Result<Self> {
        Ok(DirWeights {
            dir,
            names: dir.tensor_names()?.into_iter().collect(),
            maps: Mutex::new(HashMap::new()),
        })
    }

    /// The file's map, made once per file.
    fn map(&self, t: &FullTensor) -> Result<Arc<Mmap>> {
        let src = &t.pieces[0].src;
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = maps.get(src.path()) {
            return Ok(m.clone());
        }
        let map = map_weights(src.file(), src.path())?;
        let map = Arc::new(map);
        maps.insert(src.path().to_path_buf(), map.clone());
        Ok(map)
    }
}

/// A read-only map of a weight file, populated up front as llama.cpp maps its files: the first
/// forward pass would otherwise take a page fault per 4 KiB of weights.
pub(crate) fn map_weights(file: &std::fs::File, path: &std::path::Path) -> Result<Mmap> {
    // SAFETY: the map is read-only; a checkpoint rewritten while we run is outside what any reader
    // of it can guard against (torch.load(mmap=True) makes the same assumption).
    unsafe { memmap2::MmapOptions::new().populate().map(file) }
        .with_context(|| format!("{}: cannot map", path.display()))
}

/// Whether a tensor lies whole and contiguous in one file, so it can be used from the map.
fn mappable(t: &FullTensor) -> bool {
    matches!(t.pieces.as_slice(), [p] if p.rows.len() == t.rows() && p.cols.len() == t.cols())
}

impl WeightSource for DirWeights<'_> {
    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    fn tensor(&self, name: &str) -> Result<StoredTensor> {
        let t = self.dir.full(name)?;
        let bytes = if mappable(&t) {
            let map = self.map(&t)?;
            let (offset, len) = (t.pieces[0].offset as usize, t.nbytes() as usize);
            if offset + len > map.len() {
                bail!(
                    "{}: tensor {name} ends at byte {} but the file has {}",
                    t.pieces[0].src.path().display(),
                    offset + len,
                    map.len()
                );
            }
            Bytes::Mapped { map, offset, len }
        } else {
            Bytes::Owned(self.dir.read_tensor(name)?.data.into())
        };
        Ok(StoredTensor {
            dtype: t.dtype,
            quant: None,
            shape: t.shape,
            bytes,
        })
    }
}

/// What the weights of a directory will occupy: `mapped` bytes used from file maps, `owned` bytes
/// copied into process memory (merged shards, casts) — known from the headers alone.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WeightBytes {
    pub mapped: u64,
    pub owned: u64,
}

/// The weight bytes of `dir` when every tensor is used in `target` type (None: as stored), on the
/// CPU (`map` true: whole tensors straight from the file) or copied to a device.
pub(crate) fn weight_bytes(
    dir: &ModelDir,
    target: Option<DType>,
    map: bool,
) -> Result<WeightBytes> {
    let mut w = WeightBytes::default();
    for name in dir.tensor_names()? {
        let t = dir.full(&name)?;
        let elems = t.nbytes() / t.dtype.size() as u64;
        let to = target.filter(|_| t.shape.len() > 1).unwrap_or(t.dtype);
        if map && to == t.dtype && mappable(&t) {
            w.mapped += t.nbytes();
        } else {
            w.owned += elems * to.size() as u64;
        }
    }
    Ok(w)
}
