//! GGUF, llama.cpp's model file: a little-endian header (magic, version 3, tensor and key counts),
//! typed key/value metadata, a tensor table (name, dims innermost first, GGML type, offset into
//! the data section), padding to the alignment, then each tensor's bytes at an aligned offset.
//!
//! [`Header`] lays a file out (the writer streams the tensor bytes itself), [`GgufFile`] reads one
//! back with every count and length checked against the file size. [`GgmlType`] holds every
//! type's block size and bytes; `formats::quant` writes the quantized ones.
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// A GGML tensor type, by its number in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);

    /// (name, values per block, bytes per block) of the types llama.cpp writes.
    const TABLE: [(u32, &'static str, u64, u64); 32] = [
        (0, "F32", 1, 4),
        (1, "F16", 1, 2),
        (2, "Q4_0", 32, 18),
        (3, "Q4_1", 32, 20),
        (6, "Q5_0", 32, 22),
        (7, "Q5_1", 32, 24),
        (8, "Q8_0", 32, 34),
        (9, "Q8_1", 32, 36),
        (10, "Q2_K", 256, 84),
        (11, "Q3_K", 256, 110),
        (12, "Q4_K", 256, 144),
        (13, "Q5_K", 256, 176),
        (14, "Q6_K", 256, 210),
        (15, "Q8_K", 256, 292),
        (16, "IQ2_XXS", 256, 66),
        (17, "IQ2_XS", 256, 74),
        (18, "IQ3_XXS", 256, 98),
        (19, "IQ1_S", 256, 50),
        (20, "IQ4_NL", 32, 18),
        (21, "IQ3_S", 256, 110),
        (22, "IQ2_S", 256, 82),
        (23, "IQ4_XS", 256, 136),
        (24, "I8", 1, 1),
        (25, "I16", 1, 2),
        (26, "I32", 1, 4),
        (27, "I64", 1, 8),
        (28, "F64", 1, 8),
        (29, "IQ1_M", 256, 56),
        (30, "BF16", 1, 2),
        (34, "TQ1_0", 256, 54),
        (35, "TQ2_0", 256, 66),
        (39, "MXFP4", 32, 17),
    ];

    fn entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        Self::TABLE.iter().find(|e| e.0 == self.0)
    }

    pub fn name(self) -> String {
        self.entry()
            .map_or_else(|| format!("type{}", self.0), |e| e.1.to_string())
    }

    /// Values per block (1 for the float and integer types).
    pub fn block_size(self) -> Option<u64> {
        self.entry().map(|e| e.2)
    }

    /// Whether values are stored in blocks with scales (everything but the plain float and
    /// integer types).
    pub fn is_quantized(self) -> bool {
        self.block_size().is_some_and(|b| b > 1)
    }

    /// Bytes of `n` values laid out along a row, or None when the type is unknown or `n` is not
    /// a whole number of blocks.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let &(_, _, block, size) = self.entry()?;
        n.is_multiple_of(block).then(|| n / block * size)
    }

    /// Bytes of a tensor with this shape (any dim order; the innermost is given separately).
    fn tensor_bytes(self, innermost: u64, numel: u64) -> Option<u64> {
        if innermost == 0 {
            return Some(0);
        }
        let rows = numel / innermost;
        self.row_bytes(innermost)?.checked_mul(rows)
    }
}

/// Metadata value types, by their number in the file.
mod vt {
    pub(super) const U8: u32 = 0;
    pub(super) const I8: u32 = 1;
    pub(super) const U16: u32 = 2;
    pub(super) const I16: u32 = 3;
    pub(super) const U32: u32 = 4;
    pub(super) const I32: u32 = 5;
    pub(super) const F32: u32 = 6;
    pub(super) const BOOL: u32 = 7;
    pub(super) const STRING: u32 = 8;
    pub(super) const ARRAY: u32 = 9;
    pub(super) const U64: u32 = 10;
    pub(super) const I64: u32 = 11;
    pub(super) const F64: u32 = 12;
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type and elements (all of that type).
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn type_code(&self) -> u32 {
        match self {
            Value::U8(_) => vt::U8,
            Value::I8(_) => vt::I8,
            Value::U16(_) => vt::U16,
            Value::I16(_) => vt::I16,
            Value::U32(_) => vt::U32,
            Value::I32(_) => vt::I32,
            Value::F32(_) => vt::F32,
            Value::Bool(_) => vt::BOOL,
            Value::Str(_) => vt::STRING,
            Value::Array(..) => vt::ARRAY,
            Value::U64(_) => vt::U64,
            Value::I64(_) => vt::I64,
            Value::F64(_) => vt::F64,
        }
    }

    pub fn strings(items: Vec<String>) -> Value {
        Value::Array(vt::STRING, items.into_iter().map(Value::Str).collect())
    }

    pub fn i32s(items: impl IntoIterator<Item = i32>) -> Value {
        Value::Array(vt::I32, items.into_iter().map(Value::I32).collect())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integer value of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value's bytes as the file stores them (after the type code).
    pub fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::Str(s) => put_str(out, s),
            Value::Array(t, items) => {
                out.extend_from_slice(&t.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    v.encode(out);
                }
            }
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// A short rendering for `inspect`: arrays show their length and first items.
    pub fn summary(&self) -> String {
        match self {
            Value::Str(s) if s.chars().count() > 60 => {
                format!(
                    "{:?}... ({} chars)",
                    s.chars().take(60).collect::<String>(),
                    s.len()
                )
            }
            Value::Str(s) => format!("{s:?}"),
            Value::Array(_, items) => {
                let head: Vec<String> = items.iter().take(4).map(Value::summary).collect();
                let more = if items.len() > 4 { ", ..." } else { "" };
                format!("[{}{more}] ({} items)", head.join(", "), items.len())
            }
            Value::F32(v) => format!("{v}"),
            Value::F64(v) => format!("{v}"),
            Value::Bool(v) => format!("{v}"),
            other => other
                .as_u64()
                .map_or_else(|| format!("{other:?}"), |v| v.to_string()),
        }
    }

    /// JSON for `inspect --json` (arrays of more than `max_items` are cut to their length).
    pub fn to_json(&self, max_items: usize) -> serde_json::Value {
        use serde_json::json;
        match self {
            Value::Str(s) => json!(s),
            Value::Bool(b) => json!(b),
            Value::F32(v) => json!(v),
            Value::F64(v) => json!(v),
            Value::I8(v) => json!(v),
            Value::I16(v) => json!(v),
            Value::I32(v) => json!(v),
            Value::I64(v) => json!(v),
            Value::Array(_, items) if items.len() > max_items => {
                json!({"array_len": items.len()})
            }
            Value::Array(_, items) => {
                serde_json::Value::Array(items.iter().map(|v| v.to_json(max_items)).collect())
            }
            other => json!(other.as_u64()),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Round `x` up to a multiple of `align`.
pub fn pad_to(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

/// One entry of the tensor table, as the writer plans it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    /// Shape in torch order (outermost first); the file stores it reversed.
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorEntry {
    pub fn nbytes(&self) -> Result<u64> {
        let numel = self
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow!("tensor {}: shape overflows", self.name))?;
        let inner = self.shape.last().copied().unwrap_or(1);
        self.ggml_type.tensor_bytes(inner, numel).ok_or_else(|| {
            anyhow!(
                "tensor {}: rows of {inner} values do not fit {} blocks",
                self.name,
                self.ggml_type.name()
            )
        })
    }
}

/// Everything before the tensor data: metadata and the tensor table.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub kvs: Vec<(String, Value)>,
    pub tensors: Vec<TensorEntry>,
}

impl Header {
    pub fn alignment(&self) -> u64 {
        self.kvs
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Offsets of each tensor relative to the data section, and the data section's size
    /// (every tensor padded to the alignment, the last one too).
    pub fn layout(&self) -> Result<(Vec<u64>, u64)> {
        let align = self.alignment();
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut at = 0u64;
        for t in &self.tensors {
            offsets.push(at);
            at += pad_to(t.nbytes()?, align);
        }
        Ok((offsets, at))
    }

    /// The file's bytes up to the data section, padding included.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let (offsets, _) = self.layout()?;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            out.extend_from_slice(&v.type_code().to_le_bytes());
            v.encode(&mut out);
        }
        for (t, off) in self.tensors.iter().zip(offsets) {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.0.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        let padded = pad_to(out.len() as u64, self.alignment()) as usize;
        out.resize(padded, 0);
        Ok(out)
    }
}

/// A tensor as a GGUF file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dims as stored: innermost first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Shape in torch order (outermost first).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Byte size, or None when the type is unknown or the row is not whole blocks.
    pub fn nbytes(&self) -> Option<u64> {
        let numel = self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        self.ggml_type
            .tensor_bytes(self.dims.first().copied().unwrap_or(1), numel)
    }
}

/// A GGUF file's header, read.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub kvs: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    alignment: u64,
    /// File offset of the data section.
    pub data_offset: u64,
    pub file_len: u64,
}

/// True when the file starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == MAGIC
}

struct Cursor<R> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Cursor<R> {
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        if n > self.len.saturating_sub(self.pos) {
            bail!(
                "at byte {}: a field of {n} bytes runs past the end of the file ({} bytes)",
                self.pos,
                self.len
            );
        }
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b)?;
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.bytes(N as u64)?;
        Ok(b.try_into().expect("length checked"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        let at = self.pos;
        String::from_utf8(self.bytes(n)?)
            .map_err(|_| anyhow!("at byte {at}: a string is not valid UTF-8"))
    }

    /// A count of items that each take at least `min_size` bytes, checked against what is left.
    fn count(&mut self, min_size: u64, what: &str) -> Result<u64> {
        let n = self.u64()?;
        if n.saturating_mul(min_size) > self.len.saturating_sub(self.pos) {
            bail!(
                "at byte {}: {n} {what} cannot fit in the rest of the file",
                self.pos
            );
        }
        Ok(n)
    }

    fn value(&mut self, t: u32, depth: usize) -> Result<Value> {
        Ok(match t {
            vt::U8 => Value::U8(self.array::<1>()?[0]),
            vt::I8 => Value::I8(i8::from_le_bytes(self.array()?)),
            vt::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            vt::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            vt::U32 => Value::U32(self.u32()?),
            vt::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            vt::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            vt::BOOL => Value::Bool(self.array::<1>()?[0] != 0),
            vt::STRING => Value::Str(self.string()?),
            vt::U64 => Value::U64(self.u64()?),
            vt::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            vt::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            vt::ARRAY if depth < 4 => {
                let et = self.u32()?;
                let n = self.count(1, "array items")?;
                let mut items = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    items.push(self.value(et, depth + 1)?);
                }
                Value::Array(et, items)
            }
            vt::ARRAY => bail!("at byte {}: arrays nested too deep", self.pos),
            other => bail!("at byte {}: unknown value type {other}", self.pos),
        })
    }
}

impl<R: Read> Cursor<R> {
    /// Pass over a value of type `t` without keeping it (no allocation per string).
    fn skip(&mut self, t: u32, depth: usize) -> Result<()> {
        let fixed = match t {
            vt::U8 | vt::I8 | vt::BOOL => 1,
            vt::U16 | vt::I16 => 2,
            vt::U32 | vt::I32 | vt::F32 => 4,
            vt::U64 | vt::I64 | vt::F64 => 8,
            vt::STRING => self.u64()?,
            vt::ARRAY if depth < 4 => {
                let et = self.u32()?;
                let n = self.count(1, "array items")?;
                for _ in 0..n {
                    self.skip(et, depth + 1)?;
                }
                return Ok(());
            }
            _ => return self.value(t, depth).map(|_| ()),
        };
        if fixed > self.len.saturating_sub(self.pos) {
            bail!(
                "at byte {}: a field of {fixed} bytes runs past the end of the file",
                self.pos
            );
        }
        std::io::copy(&mut (&mut self.r).take(fixed), &mut std::io::sink())?;
        self.pos += fixed;
        Ok(())
    }
}

/// The values of `keys` from a GGUF file's metadata, reading only as far as the last of them
/// (a listing wants `general.file_type`, not the tokenizer's hundreds of thousands of strings).
pub fn peek_kvs(path: &Path, keys: &[&str]) -> Result<Vec<(String, Value)>> {
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = f.metadata()?.len();
    let mut c = Cursor {
        r: BufReader::with_capacity(64 << 10, f),
        pos: 0,
        len,
    };
    let mut found = Vec::new();
    let mut read = || -> Result<()> {
        if &c.array::<4>()? != MAGIC || !(2..=3).contains(&c.u32()?) {
            bail!("not a GGUF file of version 2 or 3");
        }
        c.u64()?;
        let n_kv = c.count(13, "metadata entries")?;
        for _ in 0..n_kv {
            if found.len() == keys.len() {
                break;
            }
            let key = c.string()?;
            let t = c.u32()?;
            if keys.contains(&key.as_str()) {
                let v = c.value(t, 0)?;
                found.push((key, v));
            } else {
                c.skip(t, 0)?;
            }
        }
        Ok(())
    };
    read().with_context(|| format!("{}: not a valid GGUF file", path.display()))?;
    Ok(found)
}

impl GgufFile {
    /// Read the header of a GGUF file (version 2 or 3).
    pub fn open(path: &Path) -> Result<GgufFile> {
        let f = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        let len = f.metadata()?.len();
        let mut c = Cursor {
            r: BufReader::with_capacity(1 << 20, f),
            pos: 0,
            len,
        };
        Self::parse(&mut c, path)
            .with_context(|| format!("{}: not a valid GGUF file", path.display()))
    }

    fn parse<R: Read + Seek>(c: &mut Cursor<R>, path: &Path) -> Result<GgufFile> {
        if &c.array::<4>()? != MAGIC {
            bail!("no GGUF magic");
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            bail!("GGUF version {version} is not supported (2 and 3 are)");
        }
        // A tensor entry takes at least 8 + 4 + 4 + 8 bytes, a key/value at least 8 + 4 + 1.
        let n_tensors = c.count(24, "tensors")?;
        let n_kv = c.count(13, "metadata entries")?;
        let mut kvs = Vec::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = c.string()?;
            let t = c.u32()?;
            let v = c
                .value(t, 0)
                .with_context(|| format!("metadata key {key:?}"))?;
            kvs.push((key, v));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims > 8 {
                bail!("tensor {name}: {n_dims} dimensions");
            }
            let dims = (0..n_dims).map(|_| c.u64()).collect::<Result<Vec<_>>>()?;
            let ggml_type = GgmlType(c.u32()?);
            let offset = c.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = match kvs.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => bail!("general.alignment {v:?} is not a power of two"),
            },
        };
        let data_offset = pad_to(c.pos, alignment);
        c.r.seek(SeekFrom::Start(c.pos))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            kvs,
            tensors,
            alignment,
            data_offset,
            file_len: c.len,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Structural problems: unknown types, rows that are not whole blocks, misaligned or
    /// overlapping tensors, data past the end of the file, duplicate names or keys.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (k, _) in &self.kvs {
            if !seen.insert(k.as_str()) {
                out.push(format!("metadata key {k} appears twice"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut spans = Vec::new();
        for t in &self.tensors {
            if !seen.insert(t.name.as_str()) {
                out.push(format!("tensor {} appears twice", t.name));
            }
            let Some(size) = t.nbytes() else {
                out.push(format!(
                    "tensor {}: type {} with dims {:?} has no valid size",
                    t.name,
                    t.ggml_type.name(),
                    t.dims
                ));
                continue;
            };
            if !t.offset.is_multiple_of(self.alignment) {
                out.push(format!(
                    "tensor {}: offset {} is not a multiple of the alignment {}",
                    t.name, t.offset, self.alignment
                ));
            }
            let end = self
                .data_offset
                .saturating_add(t.offset)
                .saturating_add(size);
            if end > self.file_len {
                out.push(format!(
                    "tensor {}: bytes {}..{end} run past the end of the file ({} bytes)",
                    t.name,
                    self.data_offset + t.offset,
                    self.file_len
                ));
            }
            spans.push((t.offset, t.offset.saturating_add(size), t.name.as_str()));
        }
        spans.sort();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                out.push(format!("tensors {} and {} overlap", w[0].2, w[1].2));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_the_reader() {
        let h = Header {
            kvs: vec![
                ("general.architecture".into(), Value::Str("llama".into())),
                ("llama.block_count".into(), Value::U32(2)),
                ("x.f".into(), Value::F32(0.5)),
                (
                    "x.tokens".into(),
                    Value::strings(vec!["a".into(), "bc".into()]),
                ),
                ("x.types".into(), Value::i32s([1, 3])),
                ("x.flag".into(), Value::Bool(true)),
            ],
            tensors: vec![
                TensorEntry {
                    name: "a".into(),
                    shape: vec![3],
                    ggml_type: GgmlType::F32,
                },
                TensorEntry {
                    name: "b".into(),
                    shape: vec![2, 64],
                    ggml_type: GgmlType::Q8_0,
                },
            ],
        };
        let (offsets, data) = h.layout().unwrap();
        assert_eq!(offsets, vec![0, 32]);
        assert_eq!(data, 32 + pad_to(2 * 2 * 34, 32));
        let mut bytes = h.encode().unwrap();
        assert_eq!(bytes.len() % 32, 0);
        bytes.resize(bytes.len() + data as usize, 0);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        std::fs::write(&p, &bytes).unwrap();
        assert!(is_gguf(&p));
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.kvs, h.kvs);
        assert_eq!(f.tensors[1].dims, vec![64, 2]);
        assert_eq!(f.tensors[1].shape(), vec![2, 64]);
        assert_eq!(f.tensors[1].nbytes(), Some(136));
        assert_eq!(f.data_offset as usize, bytes.len() - data as usize);
        assert!(f.problems().is_empty(), "{:?}", f.problems());
        // Cut the data short: the last tensor now runs past the end.
        std::fs::write(&p, &bytes[..bytes.len() - 40]).unwrap();
        let f = GgufFile::open(&p).unwrap();
        assert!(f.problems()[0].contains("run past the end"));
        // Truncated inside the metadata: an error, not a panic.
        std::fs::write(&p, &bytes[..40]).unwrap();
        assert!(GgufFile::open(&p).is_err());
    }

    #[test]
    fn absurd_counts_are_refused_before_allocating() {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.gguf");
        std::fs::write(&p, &b).unwrap();
        let e = format!("{:#}", GgufFile::open(&p).unwrap_err());
        assert!(e.contains("cannot fit"), "{e}");
    }
}
