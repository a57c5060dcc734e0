//! torch zip checkpoints (`torch.save` since 1.6): a lazy mmap reader and a streaming writer.
//!
//! Layout facts (see DESIGN.md): a stored zip whose records live under one folder (`consolidated.00/`,
//! older files `archive/`): `data.pkl`, `.format_version`, `.storage_alignment`, `byteorder`,
//! `data/0..K`, `version`, `.data/serialization_id`. Every record's data starts on a 64-byte boundary
//! thanks to an extra field `FB` padded with `Z`, which is what lets `torch.load(mmap=True)` map
//! storages in place. torch 2.x writes each record with a data descriptor (flag bit 3) and always ends
//! with a ZIP64 end record; we do the same, so the CRC can be computed while streaming.
use super::copy::{CrcWriter, Source};
use super::integrity;
use super::pickle::{self, EmitTensor, StateDict};
use super::{DType, TensorInfo};
use anyhow::{anyhow, bail, Context, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Data alignment torch uses for records.
const ALIGNMENT: u64 = 64;

#[derive(Debug, Clone, Copy)]
struct Record {
    /// Absolute file offset of the first data byte.
    start: u64,
    len: u64,
    /// The zip's CRC-32 of the record's bytes.
    crc: u32,
}

/// A torch zip checkpoint, opened lazily: only the zip directory and `data.pkl` are read.
pub struct PthFile {
    path: PathBuf,
    source: Arc<Source>,
    mmap: memmap2::Mmap,
    prefix: String,
    records: HashMap<String, Record>,
    pickle: Record,
    state: StateDict,
}

impl std::fmt::Debug for PthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PthFile").field("path", &self.path).finish()
    }
}

impl PthFile {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path).with_context(|| format!("{}", path.display()))
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let source = Source::open(path)?;
        // SAFETY: the map is read-only; a concurrent truncation by another process could fault, the
        // same contract every mmap reader (torch, safetensors) accepts.
        let mmap = unsafe { memmap2::Mmap::map(source.file()) }.context("cannot mmap")?;
        let bytes: &[u8] = &mmap;
        if bytes.len() >= 3 && bytes[0] == 0x80 && bytes[1] == 0x02 && bytes[2] == 0x8a {
            bail!("legacy (pre-1.6) torch serialization, which cannot be read without running its pickle; re-save it with a trusted torch: torch.save(torch.load(path, weights_only=True), path)");
        }
        if bytes.len() < 4 || &bytes[..4] != b"PK\x03\x04" {
            bail!("{}", super::sniff::refusal(path, "a torch zip checkpoint"));
        }
        // The zip crate scans for directory signatures; reading through the map would count every
        // page it looks at in our RSS (~110 MB on a 3 GB shard), so it reads with pread instead.
        let reader = std::io::BufReader::new(PreadReader {
            src: &source,
            pos: 0,
        });
        let mut zip =
            zip::ZipArchive::new(reader).map_err(|e| anyhow!("corrupt or truncated zip: {e}"))?;
        let mut prefix: Option<String> = None;
        let mut records = HashMap::new();
        let mut pickle_rec = None;
        for i in 0..zip.len() {
            let f = zip
                .by_index_raw(i)
                .map_err(|e| anyhow!("corrupt zip entry #{i}: {e}"))?;
            let name = f.name().to_owned();
            if name.starts_with('/') || name.split('/').any(|c| c == ".." || c.is_empty()) {
                bail!("zip entry {name:?} has an unsafe path");
            }
            let (folder, rest) = name
                .split_once('/')
                .ok_or_else(|| anyhow!("zip entry {name:?} is not inside a folder"))?;
            match &prefix {
                None => prefix = Some(folder.to_owned()),
                Some(p) if p != folder => {
                    bail!("zip entry {name:?} is outside the archive folder {p:?}")
                }
                _ => {}
            }
            let rec = Record {
                start: f.data_start(),
                len: f.compressed_size(),
                crc: f.crc32(),
            };
            if rec
                .start
                .checked_add(rec.len)
                .is_none_or(|e| e > bytes.len() as u64)
            {
                bail!("zip entry {name:?} runs past the end of the file (truncated?)");
            }
            let stored = f.compression() == zip::CompressionMethod::Stored;
            if rest == "data.pkl" {
                if !stored {
                    bail!("record {name:?} is compressed; torch writes it stored");
                }
                pickle_rec = Some(rec);
            } else if let Some(key) = rest.strip_prefix("data/") {
                if !stored {
                    bail!("data record {name:?} is deflated; tensors must be stored uncompressed (torch.save never compresses them)");
                }
                records.insert(key.to_owned(), rec);
            }
        }
        let prefix = prefix.ok_or_else(|| anyhow!("empty zip archive"))?;
        let pk = pickle_rec.ok_or_else(|| anyhow!("no {prefix}/data.pkl record"))?;
        let state =
            pickle::load_state_dict(&bytes[pk.start as usize..(pk.start + pk.len) as usize])
                .context("data.pkl")?;
        check_storages(&state, &records)?;
        Ok(Self {
            path: path.to_path_buf(),
            source: Arc::new(source),
            mmap,
            prefix,
            records,
            pickle: pk,
            state,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archive folder name (`consolidated.00`, `archive`, ...).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.state.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.state.tensors.iter().find(|t| t.name == name)
    }

    /// Keys that held something other than a tensor.
    pub fn skipped_keys(&self) -> &[String] {
        &self.state.skipped
    }

    pub fn source(&self) -> &Arc<Source> {
        &self.source
    }

    /// The zip's CRC-32 of `data.pkl` and of every storage record, labelled with the tensors
    /// that live in it, for checking reads (see [`crate::formats::integrity`]).
    pub fn record_checks(&self) -> Vec<integrity::Record> {
        let mut tensors: HashMap<&str, Vec<&str>> = HashMap::new();
        for t in &self.state.tensors {
            tensors.entry(&t.storage_key).or_default().push(&t.name);
        }
        let mut out = vec![integrity::Record {
            start: self.pickle.start,
            len: self.pickle.len,
            crc: self.pickle.crc,
            label: format!("record {}/data.pkl", self.prefix),
        }];
        for (key, r) in &self.records {
            let label = match tensors.get(key.as_str()) {
                Some(names) => format!("record data/{key} (tensor {})", names.join(", ")),
                None => format!("record data/{key}"),
            };
            out.push(integrity::Record {
                start: r.start,
                len: r.len,
                crc: r.crc,
                label,
            });
        }
        out
    }

    fn record(&self, t: &TensorInfo) -> Result<Record> {
        self.records.get(&t.storage_key).copied().ok_or_else(|| {
            anyhow!(
                "{}: tensor {} has no storage record",
                self.path.display(),
                t.name
            )
        })
    }

    /// Absolute file offset of a contiguous tensor's first byte.
    pub fn data_offset(&self, t: &TensorInfo) -> Result<u64> {
        if !t.is_contiguous() {
            bail!(
                "{}: tensor {} is a non-contiguous view (stride {:?}) and cannot be streamed as one range",
                self.path.display(),
                t.name,
                t.stride
            );
        }
        let rec = self.record(t)?;
        Ok(rec.start + (t.storage_offset as u64) * t.dtype.size() as u64)
    }

    /// The tensor's bytes in row-major order: a zero-copy slice of the map when contiguous,
    /// otherwise gathered element by element (strided views are rare in checkpoints).
    pub fn bytes(&self, t: &TensorInfo) -> Result<Cow<'_, [u8]>> {
        let rec = self.record(t)?;
        let storage = &self.mmap[rec.start as usize..(rec.start + rec.len) as usize];
        let es = t.dtype.size();
        if t.is_contiguous() {
            let s = t.storage_offset * es;
            return Ok(Cow::Borrowed(&storage[s..s + t.nbytes()]));
        }
        let mut out = Vec::with_capacity(t.nbytes());
        let n = t.numel();
        let mut idx = vec![0usize; t.shape.len()];
        for _ in 0..n {
            let off: usize =
                t.storage_offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&storage[off * es..off * es + es]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(Cow::Owned(out))
    }
}

/// Every storage data.pkl names exists with the bytes it declares, and every tensor's view stays
/// inside its storage.
fn check_storages(state: &StateDict, records: &HashMap<String, Record>) -> Result<()> {
    for (key, (dtype, numel)) in &state.storages {
        let rec = records
            .get(key)
            .ok_or_else(|| anyhow!("storage data/{key} is referenced by data.pkl but missing"))?;
        let want = (*numel as u64).checked_mul(dtype.size() as u64);
        if want != Some(rec.len) {
            bail!(
                "storage data/{key} holds {} bytes but data.pkl declares {numel} x {dtype}",
                rec.len
            );
        }
    }
    for t in &state.tensors {
        let (_, numel) = state.storages[&t.storage_key];
        if t.numel() > 0 && extent(t).is_none_or(|e| e > numel) {
            bail!(
                "tensor {}: view (offset {}, size {:?}, stride {:?}) runs past its storage of {numel} elements",
                t.name,
                t.storage_offset,
                t.shape,
                t.stride
            );
        }
    }
    Ok(())
}

/// `Read + Seek` over a [`Source`] with positional reads (no shared file cursor, no mapping).
struct PreadReader<'a> {
    src: &'a Source,
    pos: u64,
}

impl std::io::Read for PreadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.src.file().read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for PreadReader<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let base = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.src.len().checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = base.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

/// One past the last storage element a view touches, or None on overflow.
fn extent(t: &TensorInfo) -> Option<usize> {
    let mut last = t.storage_offset;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        last = last.checked_add(d.checked_sub(1)?.checked_mul(s)?)?;
    }
    last.checked_add(1)
}

/// What the writer needs to know about a tensor before any bytes are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn nbytes(&self) -> u64 {
        super::numel(&self.shape).unwrap_or(0) as u64 * self.dtype.size() as u64
    }
}

struct CentralEntry {
    name: String,
    offset: u64,
    crc: u32,
    size: u64,
    zip64_local: bool,
}

/// Streams a torch checkpoint: `data.pkl` first (the tensor list is known up front), then one
/// `data/K` record per tensor as its bytes are produced, then the zip directory.
pub struct PthWriter<W: Write> {
    w: W,
    pos: u64,
    prefix: String,
    specs: Vec<TensorSpec>,
    next: usize,
    entries: Vec<CentralEntry>,
    serialization_id: String,
}

impl<W: Write> PthWriter<W> {
    /// Start a checkpoint whose records live under `prefix/` (torch uses the file stem).
    pub fn new(w: W, prefix: &str, specs: Vec<TensorSpec>) -> Result<Self> {
        let keys: Vec<String> = (0..specs.len()).map(|i| i.to_string()).collect();
        let emit: Vec<EmitTensor> = specs
            .iter()
            .zip(&keys)
            .map(|(s, k)| EmitTensor {
                name: &s.name,
                dtype: s.dtype,
                shape: &s.shape,
                storage_key: k,
            })
            .collect();
        let pkl = pickle::emit_state_dict(&emit);
        // torch writes a random 40-digit id; ours is derived from the pickle so equal inputs give
        // byte-identical files.
        let mut md5 = super::md5::Md5::new();
        md5.update(&pkl);
        let digest = md5.finalize();
        let serialization_id: String = digest
            .iter()
            .chain(digest.iter())
            .take(40)
            .map(|b| char::from(b'0' + b % 10))
            .collect();
        let mut me = Self {
            w,
            pos: 0,
            prefix: prefix.to_owned(),
            specs,
            next: 0,
            entries: Vec::new(),
            serialization_id,
        };
        me.small_record("data.pkl", &pkl)?;
        me.small_record(".format_version", b"1")?;
        me.small_record(".storage_alignment", b"64")?;
        me.small_record("byteorder", b"little")?;
        Ok(me)
    }

    /// Write the next tensor's bytes. `fill` must write exactly the tensor's byte size.
    pub fn write_tensor(
        &mut self,
        fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let spec = self
            .specs
            .get(self.next)
            .cloned()
            .ok_or_else(|| anyhow!("more tensors written than announced"))?;
        let name = format!("data/{}", self.next);
        self.next += 1;
        let size = spec.nbytes();
        self.record(&name, size, &mut |w| fill(w))
            .with_context(|| format!("tensor {}", spec.name))
    }

    /// Write the trailing records and the zip directory; returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        if self.next != self.specs.len() {
            bail!(
                "checkpoint closed after {} of {} tensors",
                self.next,
                self.specs.len()
            );
        }
        self.small_record("version", b"3\n")?;
        let id = self.serialization_id.clone();
        self.small_record(".data/serialization_id", id.as_bytes())?;
        self.central_directory()?;
        self.w.flush()?;
        Ok(self.w)
    }

    fn small_record(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.record(name, data.len() as u64, &mut |w| Ok(w.write_all(data)?))
    }

    fn record(
        &mut self,
        name: &str,
        size: u64,
        fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let full = format!("{}/{}", self.prefix, name);
        let offset = self.pos;
        let zip64 = size >= 0xFFFF_FFFF || offset >= 0xFFFF_FFFF;
        let mut extra = Vec::new();
        if zip64 {
            let mut z = Vec::new();
            if size >= 0xFFFF_FFFF {
                z.extend_from_slice(&size.to_le_bytes());
                z.extend_from_slice(&size.to_le_bytes());
            }
            if offset >= 0xFFFF_FFFF {
                z.extend_from_slice(&offset.to_le_bytes());
            }
            extra.extend_from_slice(&1u16.to_le_bytes());
            extra.extend_from_slice(&(z.len() as u16).to_le_bytes());
            extra.extend_from_slice(&z);
        }
        // The "FB" field pads the header so the data starts on a 64-byte boundary.
        let start = offset + 30 + full.len() as u64 + extra.len() as u64 + 4;
        let pad = (ALIGNMENT - start % ALIGNMENT) % ALIGNMENT;
        extra.extend_from_slice(b"FB");
        extra.extend_from_slice(&(pad as u16).to_le_bytes());
        extra.extend(std::iter::repeat_n(b'Z', pad as usize));

        let mut h = Vec::with_capacity(30 + full.len() + extra.len());
        h.extend_from_slice(b"PK\x03\x04");
        h.extend_from_slice(&(if zip64 { 45u16 } else { 0 }).to_le_bytes());
        h.extend_from_slice(&0x0808u16.to_le_bytes()); // data descriptor + UTF-8 names
        h.extend_from_slice(&[0; 2 + 4 + 4 + 4 + 4]); // stored, no time, crc and sizes follow
        h.extend_from_slice(&(full.len() as u16).to_le_bytes());
        h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        h.extend_from_slice(full.as_bytes());
        h.extend_from_slice(&extra);
        self.put(&h)?;
        debug_assert_eq!(self.pos % ALIGNMENT, 0);

        let mut cw = CrcWriter::new(&mut self.w);
        fill(&mut cw)?;
        let (crc, written) = (cw.crc.finalize(), cw.count);
        self.pos += written;
        if written != size {
            bail!("{full}: expected {size} bytes, got {written}");
        }
        let mut d = Vec::with_capacity(24);
        d.extend_from_slice(b"PK\x07\x08");
        d.extend_from_slice(&crc.to_le_bytes());
        if zip64 {
            d.extend_from_slice(&size.to_le_bytes());
            d.extend_from_slice(&size.to_le_bytes());
        } else {
            d.extend_from_slice(&(size as u32).to_le_bytes());
            d.extend_from_slice(&(size as u32).to_le_bytes());
        }
        self.put(&d)?;
        self.entries.push(CentralEntry {
            name: full,
            offset,
            crc,
            size,
            zip64_local: zip64,
        });
        Ok(())
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn central_directory(&mut self) -> Result<()> {
        let cd_start = self.pos;
        let entries = std::mem::take(&mut self.entries);
        for e in &entries {
            let big_size = e.size >= 0xFFFF_FFFF;
            let big_off = e.offset >= 0xFFFF_FFFF;
            let mut z = Vec::new();
            if big_size {
                z.extend_from_slice(&e.size.to_le_bytes());
                z.extend_from_slice(&e.size.to_le_bytes());
            }
            if big_off {
                z.extend_from_slice(&e.offset.to_le_bytes());
            }
            let mut extra = Vec::new();
            if !z.is_empty() {
                extra.extend_from_slice(&1u16.to_le_bytes());
                extra.extend_from_slice(&(z.len() as u16).to_le_bytes());
                extra.extend_from_slice(&z);
            }
            let size32 = if big_size { 0xFFFF_FFFF } else { e.size as u32 };
            let off32 = if big_off {
                0xFFFF_FFFF
            } else {
                e.offset as u32
            };
            let version: u16 = if e.zip64_local || !z.is_empty() {
                45
            } else {
                0
            };
            let mut h = Vec::with_capacity(46 + e.name.len() + extra.len());
            h.extend_from_slice(b"PK\x01\x02");
            h.extend_from_slice(&version.to_le_bytes()); // made by
            h.extend_from_slice(&version.to_le_bytes()); // needed
            h.extend_from_slice(&0x0808u16.to_le_bytes());
            h.extend_from_slice(&[0; 2 + 4]); // stored, no time
            h.extend_from_slice(&e.crc.to_le_bytes());
            h.extend_from_slice(&size32.to_le_bytes());
            h.extend_from_slice(&size32.to_le_bytes());
            h.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            h.extend_from_slice(&[0; 2 + 2 + 2 + 4]); // comment, disk, attrs
            h.extend_from_slice(&off32.to_le_bytes());
            h.extend_from_slice(e.name.as_bytes());
            h.extend_from_slice(&extra);
            self.put(&h)?;
        }
        let cd_size = self.pos - cd_start;
        let n = entries.len() as u64;
        let z64_eocd = self.pos;
        let mut t = Vec::with_capacity(56 + 20 + 22);
        t.extend_from_slice(b"PK\x06\x06");
        t.extend_from_slice(&44u64.to_le_bytes());
        t.extend_from_slice(&0x031eu16.to_le_bytes());
        t.extend_from_slice(&45u16.to_le_bytes());
        t.extend_from_slice(&[0; 8]); // disk numbers
        t.extend_from_slice(&n.to_le_bytes());
        t.extend_from_slice(&n.to_le_bytes());
        t.extend_from_slice(&cd_size.to_le_bytes());
        t.extend_from_slice(&cd_start.to_le_bytes());
        t.extend_from_slice(b"PK\x06\x07");
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&z64_eocd.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"PK\x05\x06");
        t.extend_from_slice(&[0; 4]);
        let n16 = n.min(0xFFFF) as u16;
        t.extend_from_slice(&n16.to_le_bytes());
        t.extend_from_slice(&n16.to_le_bytes());
        t.extend_from_slice(&(cd_size.min(0xFFFF_FFFF) as u32).to_le_bytes());
        t.extend_from_slice(&(cd_start.min(0xFFFF_FFFF) as u32).to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        self.put(&t)
    }
}

/// Write a whole checkpoint from in-memory tensors (small files, tests, fixtures).
pub fn write_small(path: &Path, tensors: &[(TensorSpec, Vec<u8>)]) -> Result<()> {
    let prefix = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".into());
    let f = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let mut w = PthWriter::new(
        std::io::BufWriter::new(f),
        &prefix,
        tensors.iter().map(|(s, _)| s.clone()).collect(),
    )?;
    for (_, data) in tensors {
        w.write_tensor(&mut |out| Ok(out.write_all(data)?))?;
    }
    w.finish()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pread_reader_reads_and_seeks_like_a_file() {
        use std::io::{Read, Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let src = Source::open(&p).unwrap();
        let mut r = PreadReader { src: &src, pos: 0 };
        assert_eq!(r.seek(SeekFrom::End(-3)).unwrap(), 7);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"789");
        assert_eq!(r.seek(SeekFrom::Current(-6)).unwrap(), 4);
        r.read_exact(&mut buf[..2]).unwrap();
        assert_eq!(&buf[..2], b"45");
        assert!(r.seek(SeekFrom::Current(-100)).is_err());
        assert_eq!(r.read(&mut buf).unwrap(), 4);
    }

    fn spec(name: &str, dtype: DType, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn writer_output_reads_back_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("consolidated.00.pth");
        let a: Vec<u8> = (0..24u8).collect();
        let b: Vec<u8> = (0..12u8).map(|x| x * 3).collect();
        write_small(
            &p,
            &[
                (spec("a", DType::BF16, &[3, 4]), a.clone()),
                (spec("b", DType::F32, &[3]), b.clone()),
            ],
        )
        .unwrap();
        let f = PthFile::open(&p).unwrap();
        assert_eq!(f.prefix(), "consolidated.00");
        assert_eq!(f.tensors().len(), 2);
        let ta = f.get("a").unwrap();
        assert_eq!(f.bytes(ta).unwrap().as_ref(), &a[..]);
        assert_eq!(f.data_offset(ta).unwrap() % ALIGNMENT, 0);
        assert_eq!(f.bytes(f.get("b").unwrap()).unwrap().as_ref(), &b[..]);
    }

    #[test]
    fn wrong_byte_count_is_an_error() {
        let mut w = PthWriter::new(Vec::new(), "x", vec![spec("a", DType::F32, &[2])]).unwrap();
        let e = w
            .write_tensor(&mut |o| Ok(o.write_all(&[0; 7])?))
            .unwrap_err();
        assert!(format!("{e:#}").contains("expected 8 bytes"));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pth");
        std::fs::write(&p, b"\x80\x02\x8a\x0alegacy").unwrap();
        assert!(format!("{:#}", PthFile::open(&p).unwrap_err()).contains("legacy"));
        std::fs::write(&p, b"hello").unwrap();
        assert!(format!("{:#}", PthFile::open(&p).unwrap_err()).contains("not a torch zip"));
        // Truncated: cut a valid file in half.
        let good = dir.path().join("g.pth");
        write_small(&good, &[(spec("a", DType::F32, &[64]), vec![1; 256])]).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = format!("{:#}", PthFile::open(&p).unwrap_err());
        assert!(e.contains("x.pth") && e.contains("zip"), "{e}");
    }
}
