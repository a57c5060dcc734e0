//! safetensors: an mmap reader (header validated by the `safetensors` crate), a streaming writer that
//! produces the crate's exact header (same tensor order, same JSON, same padding) while the bytes come
//! from a callback, and the HF `model.safetensors.index.json`.
use super::copy::Source;
use super::{DType, TensorInfo};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype as StDtype, Metadata, TensorInfo as StInfo};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn to_st(d: DType) -> StDtype {
    match d {
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::I64 => StDtype::I64,
        DType::I32 => StDtype::I32,
        DType::I16 => StDtype::I16,
        DType::I8 => StDtype::I8,
        DType::U8 => StDtype::U8,
        DType::BOOL => StDtype::BOOL,
        DType::F8E4M3 => StDtype::F8_E4M3,
        DType::F8E5M2 => StDtype::F8_E5M2,
        DType::U16 => StDtype::U16,
        DType::U32 => StDtype::U32,
        DType::U64 => StDtype::U64,
    }
}

fn from_st(d: StDtype) -> Result<DType> {
    Ok(match d {
        StDtype::BF16 => DType::BF16,
        StDtype::F16 => DType::F16,
        StDtype::F32 => DType::F32,
        StDtype::F64 => DType::F64,
        StDtype::I64 => DType::I64,
        StDtype::I32 => DType::I32,
        StDtype::I16 => DType::I16,
        StDtype::I8 => DType::I8,
        StDtype::U8 => DType::U8,
        StDtype::BOOL => DType::BOOL,
        StDtype::F8_E4M3 => DType::F8E4M3,
        StDtype::F8_E5M2 => DType::F8E5M2,
        StDtype::U16 => DType::U16,
        StDtype::U32 => DType::U32,
        StDtype::U64 => DType::U64,
        other => bail!("tensor type {other:?} is not one llamactl can use (it reads float, integer, bool and fp8 E4M3/E5M2 tensors)"),
    })
}

/// A safetensors file: header parsed, data reachable by mmap slice or positional read.
pub struct SafetensorsFile {
    path: PathBuf,
    source: Arc<Source>,
    mmap: memmap2::Mmap,
    tensors: Vec<(TensorInfo, u64)>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .finish()
    }
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path).with_context(|| format!("{}", path.display()))
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let source = Source::open(path)?;
        // SAFETY: read-only map; see PthFile::open.
        let mmap = unsafe { memmap2::Mmap::map(source.file()) }.context("cannot mmap")?;
        if mmap.len() < 8 {
            bail!(
                "not a safetensors file: {} bytes, shorter than the header length",
                mmap.len()
            );
        }
        let declared = u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes"));
        if declared > mmap.len() as u64 - 8 {
            bail!(
                "safetensors header claims {declared} bytes but the file has only {} after the length field",
                mmap.len() - 8
            );
        }
        let (n, meta) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| anyhow!("invalid safetensors header: {e}"))?;
        let data_start = 8 + n as u64;
        let mut tensors = Vec::new();
        let mut index = HashMap::new();
        for name in meta.offset_keys() {
            let info = meta.info(&name).expect("offset_keys come from the header");
            let dtype = from_st(info.dtype).with_context(|| format!("tensor {name}"))?;
            let stride = super::contiguous_strides(&info.shape);
            index.insert(name.clone(), tensors.len());
            tensors.push((
                TensorInfo {
                    name: name.clone(),
                    dtype,
                    shape: info.shape.clone(),
                    stride,
                    storage_key: name,
                    storage_offset: 0,
                },
                data_start + info.data_offsets.0 as u64,
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            source: Arc::new(source),
            mmap,
            tensors,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors in data order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.iter().map(|(t, _)| t)
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i].0)
    }

    pub fn source(&self) -> &Arc<Source> {
        &self.source
    }

    /// Absolute file offset of a tensor's first byte.
    pub fn data_offset(&self, name: &str) -> Result<u64> {
        self.index
            .get(name)
            .map(|&i| self.tensors[i].1)
            .ok_or_else(|| anyhow!("{}: no tensor {name}", self.path.display()))
    }

    /// Zero-copy bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| anyhow!("{}: no tensor {name}", self.path.display()))?;
        let (t, off) = &self.tensors[i];
        let s = *off as usize;
        Ok(&self.mmap[s..s + t.nbytes()])
    }
}

/// Header bytes (length prefix included) for tensors already in the order `order_for_writing` gives.
pub fn header(
    specs: &[(String, DType, Vec<usize>)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut infos = Vec::with_capacity(specs.len());
    let mut offset = 0usize;
    for (name, dtype, shape) in specs {
        let n = super::numel(shape)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| anyhow!("tensor {name}: shape {shape:?} is too large"))?;
        infos.push((
            name.clone(),
            StInfo {
                dtype: to_st(*dtype),
                shape: shape.clone(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let md = if metadata.is_empty() {
        None
    } else {
        Some(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };
    let meta = Metadata::new(md, infos).map_err(|e| anyhow!("safetensors header: {e}"))?;
    let mut json = serde_json::to_vec(&meta)?;
    // Same rule as the crate: pad the JSON with spaces to a multiple of 8.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
}

/// The order in which the `safetensors` crate (and so Python's `save_file`) lays tensors out:
/// by descending dtype alignment, then by name.
pub fn order_for_writing(specs: &mut [(String, DType, Vec<usize>)]) {
    specs.sort_by(|(ln, ld, _), (rn, rd, _)| to_st(*rd).cmp(&to_st(*ld)).then(ln.cmp(rn)));
}

/// Total file size a safetensors file with these tensors will have.
pub fn file_size(
    specs: &[(String, DType, Vec<usize>)],
    metadata: &BTreeMap<String, String>,
) -> Result<u64> {
    let mut sorted = specs.to_vec();
    order_for_writing(&mut sorted);
    let h = header(&sorted, metadata)?;
    let data: u64 = sorted
        .iter()
        .map(|(_, d, s)| super::numel(s).unwrap_or(0) as u64 * d.size() as u64)
        .sum();
    Ok(h.len() as u64 + data)
}

/// Stream a safetensors file: the header is written first, then `fill(name, writer)` is called for
/// each tensor in file order and must write exactly that tensor's bytes.
pub fn write<W: Write>(
    w: &mut W,
    specs: &[(String, DType, Vec<usize>)],
    metadata: &BTreeMap<String, String>,
    fill: &mut dyn FnMut(&str, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    let mut sorted = specs.to_vec();
    order_for_writing(&mut sorted);
    w.write_all(&header(&sorted, metadata)?)?;
    for (name, dtype, shape) in &sorted {
        let want = super::numel(shape).unwrap_or(0) as u64 * dtype.size() as u64;
        let mut counter = super::copy::CrcWriter::new(w);
        fill(name, &mut counter).with_context(|| format!("tensor {name}"))?;
        if counter.count != want {
            bail!(
                "tensor {name}: expected {want} bytes, got {}",
                counter.count
            );
        }
    }
    Ok(())
}

/// `model.safetensors.index.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Index {
    pub metadata: IndexMetadata,
    pub weight_map: BTreeMap<String, String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IndexMetadata {
    pub total_size: u64,
}

impl Index {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid index json", path.display()))
    }

    pub fn to_json(&self) -> String {
        // transformers writes the index with indent 2 and a trailing newline.
        let mut s = serde_json::to_string_pretty(self).expect("index serialises");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_file_matches_crate_serialisation() {
        let a: Vec<u8> = (0..24).collect();
        let b: Vec<u8> = (0..4).collect();
        let specs = vec![
            ("z.weight".to_string(), DType::BF16, vec![3, 4]),
            ("a.weight".to_string(), DType::F32, vec![1]),
        ];
        let md: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let mut ours = Vec::new();
        write(&mut ours, &specs, &md, &mut |name, w| {
            Ok(w.write_all(if name == "z.weight" { &a } else { &b })?)
        })
        .unwrap();
        let views = vec![
            (
                "z.weight",
                safetensors::tensor::TensorView::new(StDtype::BF16, vec![3, 4], &a).unwrap(),
            ),
            (
                "a.weight",
                safetensors::tensor::TensorView::new(StDtype::F32, vec![1], &b).unwrap(),
            ),
        ];
        let md_hash: HashMap<String, String> = md.clone().into_iter().collect();
        let theirs = safetensors::tensor::serialize(views, Some(md_hash)).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(file_size(&specs, &md).unwrap(), ours.len() as u64);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        std::fs::write(&p, &ours).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        assert_eq!(f.bytes("z.weight").unwrap(), &a[..]);
    }

    #[test]
    fn bad_headers_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        let mut long = 1000u64.to_le_bytes().to_vec();
        long.extend_from_slice(b"{}");
        std::fs::write(&p, &long).unwrap();
        let e = format!("{:#}", SafetensorsFile::open(&p).unwrap_err());
        assert!(
            e.contains("bad.safetensors") && e.contains("header claims"),
            "{e}"
        );
        let json = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        let mut overlap = (json.len() as u64).to_le_bytes().to_vec();
        overlap.extend_from_slice(json);
        overlap.extend_from_slice(&[0; 12]);
        std::fs::write(&p, &overlap).unwrap();
        let e = format!("{:#}", SafetensorsFile::open(&p).unwrap_err());
        assert!(e.contains("invalid safetensors header"), "{e}");
    }
}
