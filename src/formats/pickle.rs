//! A restricted unpickler for torch state dicts, and the matching emitter.
//!
//! Nothing is ever executed: the opcodes build plain values in an arena, and the only "calls" (REDUCE,
//! NEWOBJ) are on an allowlist of torch rebuild functions that we *describe* instead of running. The
//! allowlist is the one `torch.load(weights_only=True)` uses for tensors; any other global is refused
//! with its name, and a global the weights-only loader would accept but llamactl cannot use (complex,
//! quantized, sparse tensors) is refused as such, so that message never says "may run code". Values live in an arena and are referred to by index, so shared memo entries cost
//! nothing to copy, cycles cannot leak, and no value is dropped recursively.
use super::{DType, TensorInfo};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;

/// At most this many nested MARKs (torch writes 3).
const MAX_MARKS: usize = 4096;
/// At most this many dict levels around the tensors (`{"model": {...}}` is 2).
const MAX_DICT_DEPTH: usize = 16;

type Id = usize;

#[derive(Debug, Clone)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// Floats and byte strings never describe where weights are; only their presence is kept.
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    /// A storage record. `dtype` None is an `UntypedStorage` (torch's `_rebuild_tensor_v3`), whose
    /// `numel` counts bytes until a tensor names the dtype.
    Storage {
        dtype: Option<DType>,
        key: String,
        numel: usize,
    },
    Tensor(Tensor),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    TorchSize,
    TorchTensor,
    Parameter,
    StorageClass(DType),
    UntypedStorage,
    Dtype(DType),
}

impl Global {
    /// The allowlist. Everything else is refused by name.
    fn lookup(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
            ("torch" | "torch.storage", "UntypedStorage") => Global::UntypedStorage,
            ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
            ("torch", "Size") => Global::TorchSize,
            ("torch", "Tensor") => Global::TorchTensor,
            ("torch.nn.parameter", "Parameter") => Global::Parameter,
            ("torch", n) => {
                if let Some(d) = DType::from_torch_storage(n) {
                    Global::StorageClass(d)
                } else if let Some(d) = DType::from_torch_dtype(n) {
                    Global::Dtype(d)
                } else {
                    return None;
                }
            }
            _ => return None,
        })
    }

    /// Globals torch's weights-only loader accepts that describe tensors llamactl cannot use: they
    /// are refused as unusable data, not as possible code.
    fn unusable(module: &str, name: &str) -> Option<&'static str> {
        const COMPLEX: &[&str] = &[
            "complex32",
            "complex64",
            "complex128",
            "chalf",
            "cfloat",
            "cdouble",
            "ComplexFloatStorage",
            "ComplexDoubleStorage",
        ];
        const QUANTIZED: &[&str] = &[
            "qint8",
            "quint8",
            "qint32",
            "quint4x2",
            "quint2x4",
            "QInt8Storage",
            "QUInt8Storage",
            "QInt32Storage",
            "QUInt4x2Storage",
            "QUInt2x4Storage",
            "per_tensor_affine",
            "per_channel_affine",
            "per_tensor_symmetric",
            "per_channel_symmetric",
            "per_channel_affine_float_qparams",
        ];
        const LAYOUTS: &[&str] = &[
            "sparse_coo",
            "sparse_csr",
            "sparse_csc",
            "sparse_bsr",
            "sparse_bsc",
            "_mkldnn",
            "strided",
            "device",
        ];
        match (module, name) {
            ("torch", n) if COMPLEX.contains(&n) => Some("complex numbers"),
            ("torch", n) if QUANTIZED.contains(&n) => Some("a torch-quantized type"),
            ("torch", n) if n.starts_with("float8_") || n.starts_with("float4_") => {
                Some("an fp8/fp4 variant other than float8_e4m3fn and float8_e5m2")
            }
            ("torch", n)
                if n.starts_with("bits") || n.starts_with("uint") || n.starts_with("int") =>
            {
                Some("a sub-byte or bit-packed type")
            }
            ("torch", n) if LAYOUTS.contains(&n) => Some("a sparse or device-specific layout"),
            ("torch._utils", n) if n.starts_with("_rebuild_") => {
                Some("a sparse, quantized, nested, meta or subclass tensor")
            }
            ("torch.serialization", "_get_layout") => Some("a sparse or device-specific layout"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Tensor {
    dtype: DType,
    storage: Id,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// The tensors of a state dict, in file order, plus the storages they view.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    pub tensors: Vec<TensorInfo>,
    /// storage key -> (dtype, number of elements)
    pub storages: HashMap<String, (DType, usize)>,
    /// Keys whose values were not tensors (e.g. an `"epoch": 3` next to the weights); ignored.
    pub skipped: Vec<String>,
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

/// Parse a torch `data.pkl` into tensor descriptors without touching any tensor bytes.
pub fn load_state_dict(data: &[u8]) -> Result<StateDict> {
    let mut m = Machine {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    m.state_dict(root)
}

impl<'a> Machine<'a> {
    fn push(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(self.nodes.len() - 1);
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                anyhow!(
                    "pickle truncated: a field of {n} bytes at offset {} runs past the end ({} bytes)",
                    self.pos,
                    self.data.len()
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len_field(&mut self, n: u64) -> Result<usize> {
        usize::try_from(n).map_err(|_| anyhow!("pickle length {n} is too large"))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let nl = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
            anyhow!(
                "pickle truncated: unterminated GLOBAL at offset {}",
                self.pos
            )
        })?;
        let s = std::str::from_utf8(&rest[..nl])
            .map_err(|_| anyhow!("pickle GLOBAL name at offset {} is not UTF-8", self.pos))?;
        self.pos += nl + 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Id> {
        if let Some(&m) = self.marks.last() {
            if self.stack.len() <= m {
                bail!(
                    "pickle stack underflow at offset {} (value expected above MARK)",
                    self.pos
                );
            }
        }
        self.stack
            .pop()
            .ok_or_else(|| anyhow!("pickle stack underflow at offset {}", self.pos))
    }
    fn top(&self) -> Result<Id> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| anyhow!("pickle stack underflow at offset {}", self.pos))
    }
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| anyhow!("pickle has no MARK to pop at offset {}", self.pos))?;
        if m > self.stack.len() {
            bail!("pickle MARK beyond stack at offset {}", self.pos);
        }
        Ok(self.stack.split_off(m))
    }
    fn memo_get(&self, idx: u32) -> Result<Id> {
        self.memo.get(&idx).copied().ok_or_else(|| {
            anyhow!(
                "pickle memo index {idx} out of range at offset {}",
                self.pos
            )
        })
    }
    fn str(&mut self, n: usize) -> Result<()> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b)
            .map_err(|_| anyhow!("pickle string at offset {} is not UTF-8", self.pos))?;
        self.push(Node::Str(s.to_owned()));
        Ok(())
    }
    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::lookup(module, name) {
            Some(g) => {
                self.push(Node::Global(g));
                Ok(())
            }
            None => match Global::unusable(module, name) {
                Some(what) => bail!(
                    "`{module}.{name}` is {what}: torch's weights-only loader reads it, but llamactl cannot use this tensor type here (it reads dense float, integer, bool and fp8 e4m3fn/e5m2 tensors)"
                ),
                None => bail!(
                    "refused pickle global `{module}.{name}`: only torch tensor-rebuild globals are allowed (weights_only); this file may try to run code"
                ),
            },
        }
    }

    fn run(&mut self) -> Result<Id> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        bail!("unsupported pickle protocol {proto}");
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        bail!("pickle nests more than {MAX_MARKS} MARKs (offset {at})");
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Node::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Node::Int(v as i64))
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as u64
                    } else {
                        self.u32()? as u64
                    };
                    let n = self.len_field(n)?;
                    let b = self.take(n)?;
                    if n > 8 {
                        bail!("pickle integer of {n} bytes at offset {at} is too large");
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // sign-extend two's complement
                    }
                    self.push(Node::Int(v))
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Node::Float)
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let n = self.len_field(n)?;
                    self.str(n)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.str(n)?
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len_field(n)?;
                    self.str(n)?
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'T' | b'B' => self.u32()? as u64,
                        b'U' | b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_field(n)?;
                    self.take(n)?;
                    self.push(Node::Bytes)
                }
                b')' => self.push(Node::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items))
                }
                b']' => self.push(Node::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, vec![v], at)?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, items, at)?
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items, at)?;
                    self.push(Node::Dict(pairs))
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![(k, v)], at)?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    let p = pairs(items, at)?;
                    self.set_items(d, p, at)?
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let t = self.top()?;
                    self.memo.insert(i, t);
                }
                b'r' => {
                    let i = self.u32()?;
                    let t = self.top()?;
                    self.memo.insert(i, t);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let t = self.top()?;
                    self.memo.insert(i, t);
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let id = self.memo_get(i)?;
                    self.stack.push(id)
                }
                b'j' => {
                    let i = self.u32()?;
                    let id = self.memo_get(i)?;
                    self.stack.push(id)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Node::Str(m), Node::Str(n)) =
                        (self.nodes[module].clone(), self.nodes[name].clone())
                    else {
                        bail!("pickle STACK_GLOBAL at offset {at} needs two strings");
                    };
                    self.global(&m, &n)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let node = self.persistent(pid, at)?;
                    self.push(node)
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let node = self.reduce(func, args, at)?;
                    self.push(node)
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    match (&self.nodes[cls], &self.nodes[args]) {
                        (Node::Global(Global::OrderedDict), Node::Tuple(a)) if a.is_empty() => {
                            self.push(Node::Dict(Vec::new()))
                        }
                        _ => bail!("refused pickle NEWOBJ at offset {at}: only OrderedDict() may be constructed"),
                    }
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    self.build(obj, state, at)?
                }
                _ => bail!(
                    "unsupported or refused pickle opcode 0x{op:02x} at offset {at} (torch.save writes protocol 2)"
                ),
            }
        }
    }

    fn append(&mut self, list: Id, items: Vec<Id>, at: usize) -> Result<()> {
        match &mut self.nodes[list] {
            Node::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => bail!("pickle APPEND at offset {at} on a value that is not a list"),
        }
    }

    fn set_items(&mut self, dict: Id, items: Vec<(Id, Id)>, at: usize) -> Result<()> {
        match &mut self.nodes[dict] {
            Node::Dict(d) => {
                d.extend(items);
                Ok(())
            }
            _ => bail!("pickle SETITEM at offset {at} on a value that is not a dict"),
        }
    }

    fn build(&mut self, obj: Id, state: Id, at: usize) -> Result<()> {
        // torch BUILDs parameters/tensors with their python attributes and OrderedDicts with nothing;
        // neither changes where the weights are, so the state is accepted and dropped.
        match (&self.nodes[obj], &self.nodes[state]) {
            (Node::Tensor(_), _) | (Node::Dict(_), Node::None) => Ok(()),
            (Node::Dict(_), Node::Dict(s)) if s.is_empty() => Ok(()),
            _ => bail!("refused pickle BUILD at offset {at}: only tensor state may be set"),
        }
    }

    fn int(&self, id: Id, what: &str, at: usize) -> Result<i64> {
        match self.nodes[id] {
            Node::Int(v) => Ok(v),
            Node::Bool(b) => Ok(b as i64),
            _ => bail!("pickle {what} at offset {at} is not an integer"),
        }
    }

    fn usize(&self, id: Id, what: &str, at: usize) -> Result<usize> {
        let v = self.int(id, what, at)?;
        usize::try_from(v).map_err(|_| anyhow!("pickle {what} at offset {at} is negative ({v})"))
    }

    fn ints(&self, id: Id, what: &str, at: usize) -> Result<Vec<usize>> {
        match &self.nodes[id] {
            Node::Tuple(items) | Node::List(items) => {
                items.iter().map(|&i| self.usize(i, what, at)).collect()
            }
            _ => bail!("pickle {what} at offset {at} is not a tuple of integers"),
        }
    }

    fn tuple(&self, id: Id, at: usize) -> Result<Vec<Id>> {
        match &self.nodes[id] {
            Node::Tuple(items) => Ok(items.clone()),
            _ => bail!("pickle REDUCE arguments at offset {at} are not a tuple"),
        }
    }

    fn persistent(&mut self, pid: Id, at: usize) -> Result<Node> {
        let items = self.tuple(pid, at)?;
        let tag = items.first().map(|&i| &self.nodes[i]);
        if !matches!(tag, Some(Node::Str(s)) if s == "storage") || items.len() != 5 {
            bail!("pickle persistent id at offset {at} is not a torch ('storage', ...) record");
        }
        let dtype = match &self.nodes[items[1]] {
            Node::Global(Global::StorageClass(d)) => Some(*d),
            Node::Global(Global::Dtype(d)) => Some(*d),
            Node::Global(Global::UntypedStorage) => None,
            _ => bail!("pickle storage at offset {at} has no storage type"),
        };
        let key = match &self.nodes[items[2]] {
            Node::Str(s) => s.clone(),
            _ => bail!("pickle storage key at offset {at} is not a string"),
        };
        if key.is_empty() || key.contains('/') || key.contains("..") {
            bail!("pickle storage key {key:?} at offset {at} is not a plain record name");
        }
        let numel = self.usize(items[4], "storage size", at)?;
        Ok(Node::Storage { dtype, key, numel })
    }

    fn reduce(&mut self, func: Id, args: Id, at: usize) -> Result<Node> {
        let g = match &self.nodes[func] {
            Node::Global(g) => *g,
            _ => bail!(
                "refused pickle REDUCE at offset {at}: the callable is not an allowlisted global"
            ),
        };
        let a = self.tuple(args, at)?;
        match g {
            Global::OrderedDict if a.is_empty() => Ok(Node::Dict(Vec::new())),
            Global::RebuildTensorV2 | Global::RebuildTensor if a.len() >= 4 => {
                let dtype = match self.nodes[a[0]] {
                    Node::Storage { dtype: Some(d), .. } => d,
                    Node::Storage { dtype: None, .. } => bail!(
                        "pickle tensor at offset {at}: an UntypedStorage needs _rebuild_tensor_v3, which names the dtype"
                    ),
                    _ => bail!("pickle tensor at offset {at} does not reference a storage"),
                };
                self.tensor(dtype, &a, at)
            }
            // (storage, offset, size, stride, requires_grad, hooks, dtype[, metadata]): the dtype
            // tells what the bytes of an UntypedStorage are.
            Global::RebuildTensorV3 if a.len() >= 7 => {
                let Node::Global(Global::Dtype(dtype)) = self.nodes[a[6]] else {
                    bail!(
                        "pickle _rebuild_tensor_v3 at offset {at}: argument 7 is not a torch dtype"
                    );
                };
                match self.nodes[a[0]] {
                    Node::Storage { dtype: None, .. } => {}
                    Node::Storage { dtype: Some(d), .. } if d == dtype => {}
                    Node::Storage { dtype: Some(d), .. } => {
                        bail!("pickle tensor at offset {at}: a {d} storage viewed as {dtype}")
                    }
                    _ => bail!("pickle tensor at offset {at} does not reference a storage"),
                }
                self.tensor(dtype, &a, at)
            }
            Global::RebuildParameter | Global::RebuildParameterWithState | Global::Parameter
                if !a.is_empty() =>
            {
                match &self.nodes[a[0]] {
                    Node::Tensor(t) => Ok(Node::Tensor(t.clone())),
                    _ => bail!("pickle Parameter at offset {at} does not wrap a tensor"),
                }
            }
            Global::RebuildFromTypeV2 if a.len() >= 3 => {
                match self.nodes[a[1]] {
                    Node::Global(Global::TorchTensor) | Node::Global(Global::Parameter) => {}
                    _ => bail!("refused pickle _rebuild_from_type_v2 at offset {at}: type is not torch.Tensor or Parameter"),
                }
                self.reduce(a[0], a[2], at)
            }
            Global::TorchSize if a.len() == 1 => {
                let dims = self.ints(a[0], "torch.Size", at)?;
                let ids = dims
                    .into_iter()
                    .map(|d| {
                        self.nodes.push(Node::Int(d as i64));
                        self.nodes.len() - 1
                    })
                    .collect();
                Ok(Node::Tuple(ids))
            }
            _ => bail!(
                "refused pickle REDUCE at offset {at}: {g:?} with {} arguments",
                a.len()
            ),
        }
    }

    /// A tensor node from the (storage, offset, size, stride, ...) arguments every rebuild shares.
    fn tensor(&self, dtype: DType, a: &[Id], at: usize) -> Result<Node> {
        let offset = self.usize(a[1], "storage offset", at)?;
        let shape = self.ints(a[2], "size", at)?;
        let stride = self.ints(a[3], "stride", at)?;
        if shape.len() != stride.len() {
            bail!(
                "pickle tensor at offset {at}: size has {} dims but stride has {}",
                shape.len(),
                stride.len()
            );
        }
        Ok(Node::Tensor(Tensor {
            dtype,
            storage: a[0],
            offset,
            shape,
            stride,
        }))
    }

    /// The (dtype, element count) of a tensor's storage: an untyped storage takes the tensor's
    /// dtype and must hold whole elements of it.
    fn storage_of(&self, t: &Tensor) -> Result<(String, DType, usize)> {
        let Node::Storage { dtype, key, numel } = &self.nodes[t.storage] else {
            unreachable!("tensor nodes are only built over storages")
        };
        match dtype {
            Some(d) => Ok((key.clone(), *d, *numel)),
            None if numel.is_multiple_of(t.dtype.size()) => {
                Ok((key.clone(), t.dtype, numel / t.dtype.size()))
            }
            None => bail!(
                "pickle storage {key:?} holds {numel} bytes, not a whole number of {} elements",
                t.dtype
            ),
        }
    }

    fn state_dict(&self, root: Id) -> Result<StateDict> {
        let mut out = StateDict::default();
        if !matches!(self.nodes[root], Node::Dict(_)) {
            bail!("pickle does not hold a state dict (the top-level value is not a dict)");
        }
        // Iterative walk; nested dicts ({"model": {...}}) flatten to dotted names.
        let mut todo: Vec<(Id, String, usize)> = vec![(root, String::new(), 0)];
        let mut visited = 0usize;
        while let Some((id, prefix, depth)) = todo.pop() {
            let Node::Dict(items) = &self.nodes[id] else {
                continue;
            };
            let mut nested = Vec::new();
            for &(k, v) in items {
                visited += 1;
                if visited > 10_000_000 {
                    bail!("pickle state dict is unreasonably large");
                }
                let key = match &self.nodes[k] {
                    Node::Str(s) => s.clone(),
                    Node::Int(i) => i.to_string(),
                    _ => bail!("pickle state dict has a key that is not a string"),
                };
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                match &self.nodes[v] {
                    Node::Tensor(t) => {
                        let (key, dtype, numel) = self.storage_of(t)?;
                        if let Some((d, n)) = out.storages.get(&key) {
                            if *d != dtype || *n != numel {
                                bail!("pickle storage {key:?} is declared twice with different types or sizes");
                            }
                        }
                        out.storages.insert(key.clone(), (dtype, numel));
                        out.tensors.push(TensorInfo {
                            name,
                            dtype,
                            shape: t.shape.clone(),
                            stride: t.stride.clone(),
                            storage_key: key,
                            storage_offset: t.offset,
                        });
                    }
                    Node::Dict(_) => {
                        if depth + 1 > MAX_DICT_DEPTH {
                            bail!("pickle state dict nests dicts deeper than {MAX_DICT_DEPTH}");
                        }
                        nested.push((v, name, depth + 1));
                    }
                    _ => out.skipped.push(name),
                }
            }
            // Keep file order: nested dicts are visited in the order they appeared.
            todo.extend(nested.into_iter().rev());
        }
        let mut seen = std::collections::HashSet::new();
        for t in &out.tensors {
            if !seen.insert(t.name.as_str()) {
                bail!("pickle state dict has the tensor name {:?} twice", t.name);
            }
        }
        Ok(out)
    }
}

fn pairs(items: Vec<Id>, at: usize) -> Result<Vec<(Id, Id)>> {
    if !items.len().is_multiple_of(2) {
        bail!("pickle dict items at offset {at} are not key/value pairs");
    }
    Ok(items.chunks(2).map(|c| (c[0], c[1])).collect())
}

/// One tensor for [`emit_state_dict`]: a whole storage of its own, viewed contiguously.
pub struct EmitTensor<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub storage_key: &'a str,
}

/// Writes `data.pkl` for a dict of tensors the way `torch.save` does (protocol 2, memoised
/// globals, SETITEMS batches of 1000), using only allowlisted globals.
pub fn emit_state_dict(tensors: &[EmitTensor]) -> Vec<u8> {
    let mut e = Emitter::default();
    e.out.extend_from_slice(&[0x80, 2, b'}']);
    e.put();
    for batch in tensors.chunks(1000) {
        e.out.push(b'(');
        for t in batch {
            e.string(t.name);
            e.tensor(t);
        }
        e.out.push(b'u');
    }
    e.out.push(b'.');
    e.out
}

#[derive(Default)]
struct Emitter {
    out: Vec<u8>,
    next: u32,
    memo: HashMap<String, u32>,
}

impl Emitter {
    /// `_rebuild_tensor_v2` over a typed storage, or, for types that have no typed storage class
    /// (fp8, uint16..64), `_rebuild_tensor_v3` over an `UntypedStorage` sized in bytes with the
    /// dtype as the last argument, as torch.save writes them.
    fn tensor(&mut self, t: &EmitTensor) {
        let numel = super::numel(t.shape).unwrap_or(0);
        let class = t.dtype.torch_storage();
        let rebuild = match class {
            Some(_) => "_rebuild_tensor_v2",
            None => "_rebuild_tensor_v3",
        };
        self.global("torch._utils", rebuild);
        self.out.extend_from_slice(b"((");
        self.string("storage");
        match class {
            Some(class) => self.global("torch", class),
            None => self.global("torch.storage", "UntypedStorage"),
        }
        self.string(t.storage_key);
        self.string("cpu");
        let size = if class.is_some() {
            numel
        } else {
            numel * t.dtype.size()
        };
        self.int(size as u64);
        self.out.push(b't');
        self.put();
        self.out.push(b'Q');
        self.int(0);
        self.tuple_of(t.shape);
        self.tuple_of(&super::contiguous_strides(t.shape));
        self.out.push(0x89);
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(b")R");
        self.put();
        if class.is_none() {
            self.global("torch", t.dtype.torch_dtype());
        }
        self.out.push(b't');
        self.put();
        self.out.push(b'R');
        self.put();
    }

    fn put(&mut self) -> u32 {
        let i = self.next;
        self.next += 1;
        if i < 256 {
            self.out.extend_from_slice(&[b'q', i as u8]);
        } else {
            self.out.push(b'r');
            self.out.extend_from_slice(&i.to_le_bytes());
        }
        i
    }
    fn get(&mut self, i: u32) {
        if i < 256 {
            self.out.extend_from_slice(&[b'h', i as u8]);
        } else {
            self.out.push(b'j');
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }
    fn memoised(&mut self, key: String, write: impl FnOnce(&mut Self)) {
        if let Some(&i) = self.memo.get(&key) {
            self.get(i);
        } else {
            write(self);
            let i = self.put();
            self.memo.insert(key, i);
        }
    }
    fn string(&mut self, s: &str) {
        self.memoised(format!("s:{s}"), |e| {
            e.out.push(b'X');
            e.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            e.out.extend_from_slice(s.as_bytes());
        });
    }
    fn global(&mut self, module: &str, name: &str) {
        self.memoised(format!("g:{module}\n{name}"), |e| {
            e.out.push(b'c');
            e.out.extend_from_slice(module.as_bytes());
            e.out.push(b'\n');
            e.out.extend_from_slice(name.as_bytes());
            e.out.push(b'\n');
        });
    }
    fn int(&mut self, v: u64) {
        if v < 256 {
            self.out.extend_from_slice(&[b'K', v as u8]);
        } else if v < 65536 {
            self.out.push(b'M');
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v < (1 << 31) {
            self.out.push(b'J');
            self.out.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            // LONG1: minimal little-endian two's complement.
            let mut bytes = v.to_le_bytes().to_vec();
            while bytes.len() > 1
                && bytes[bytes.len() - 1] == 0
                && bytes[bytes.len() - 2] & 0x80 == 0
            {
                bytes.pop();
            }
            if bytes[bytes.len() - 1] & 0x80 != 0 {
                bytes.push(0);
            }
            self.out.extend_from_slice(&[0x8a, bytes.len() as u8]);
            self.out.extend_from_slice(&bytes);
        }
    }
    fn tuple_of(&mut self, v: &[usize]) {
        match v.len() {
            0 => self.out.push(b')'),
            1..=3 => {
                for &x in v {
                    self.int(x as u64);
                }
                self.out.push(0x84 + v.len() as u8);
            }
            _ => {
                self.out.push(b'(');
                for &x in v {
                    self.int(x as u64);
                }
                self.out.push(b't');
            }
        }
        if !v.is_empty() {
            self.put();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(shapes: &[(&str, DType, Vec<usize>)]) -> StateDict {
        let keys: Vec<String> = (0..shapes.len()).map(|i| i.to_string()).collect();
        let ts: Vec<EmitTensor> = shapes
            .iter()
            .zip(&keys)
            .map(|((n, d, s), k)| EmitTensor {
                name: n,
                dtype: *d,
                shape: s,
                storage_key: k,
            })
            .collect();
        load_state_dict(&emit_state_dict(&ts)).unwrap()
    }

    #[test]
    fn emitted_pickle_reads_back() {
        let sd = round_trip(&[
            ("a", DType::BF16, vec![3, 4]),
            ("b", DType::F32, vec![7]),
            ("big", DType::F16, vec![128256, 8192]),
            ("scalar", DType::I64, vec![]),
            ("four", DType::U8, vec![1, 2, 3, 4]),
        ]);
        let names: Vec<_> = sd.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "big", "scalar", "four"]);
        assert_eq!(sd.tensors[2].shape, vec![128256, 8192]);
        assert_eq!(sd.tensors[2].stride, vec![8192, 1]);
        assert_eq!(sd.storages["2"], (DType::F16, 128256 * 8192));
        assert_eq!(sd.tensors[3].shape, Vec::<usize>::new());
    }

    #[test]
    fn types_without_storage_classes_use_rebuild_tensor_v3() {
        let sd = round_trip(&[
            ("w", DType::F8E4M3, vec![4, 3]),
            ("b", DType::BF16, vec![2]),
            ("e", DType::F8E5M2, vec![5]),
            ("u", DType::U32, vec![2]),
        ]);
        let dtypes: Vec<_> = sd.tensors.iter().map(|t| t.dtype).collect();
        assert_eq!(
            dtypes,
            [DType::F8E4M3, DType::BF16, DType::F8E5M2, DType::U32]
        );
        // An UntypedStorage counts bytes; the tensor's dtype turns them into elements.
        assert_eq!(sd.storages["0"], (DType::F8E4M3, 12));
        assert_eq!(sd.storages["3"], (DType::U32, 2));
        let ts = [EmitTensor {
            name: "u",
            dtype: DType::U16,
            shape: &[3],
            storage_key: "0",
        }];
        let p = emit_state_dict(&ts);
        let text = String::from_utf8_lossy(&p);
        assert!(text.contains("torch.storage\nUntypedStorage") && text.contains("torch\nuint16"));
        // 6 bytes of storage read as u32 are not whole elements.
        let at = p.windows(6).position(|w| w == b"uint16").unwrap();
        let mut odd = p.clone();
        odd[at + 4..at + 6].copy_from_slice(b"32");
        assert!(
            err(&odd).contains("not a whole number of U32"),
            "{}",
            err(&odd)
        );
    }

    #[test]
    fn unusable_tensor_types_are_not_called_code() {
        for (m, n) in [
            ("torch", "complex64"),
            ("torch", "QInt8Storage"),
            ("torch", "float8_e4m3fnuz"),
            ("torch._utils", "_rebuild_qtensor"),
            ("torch._utils", "_rebuild_sparse_tensor"),
        ] {
            let mut p = vec![0x80, 2, b'c'];
            p.extend_from_slice(format!("{m}\n{n}\n.").as_bytes());
            let e = err(&p);
            assert!(e.contains(&format!("`{m}.{n}`")), "{e}");
            assert!(e.contains("cannot use this tensor type"), "{e}");
            assert!(!e.contains("run code"), "{e}");
        }
    }

    #[test]
    fn many_tensors_use_batches_and_long_memo() {
        let shapes: Vec<(String, DType, Vec<usize>)> = (0..2500)
            .map(|i| (format!("t{i}"), DType::F32, vec![i % 7 + 1]))
            .collect();
        let refs: Vec<(&str, DType, Vec<usize>)> = shapes
            .iter()
            .map(|(n, d, s)| (n.as_str(), *d, s.clone()))
            .collect();
        let sd = round_trip(&refs);
        assert_eq!(sd.tensors.len(), 2500);
        assert_eq!(sd.tensors[2499].name, "t2499");
    }

    fn err(data: &[u8]) -> String {
        format!("{:#}", load_state_dict(data).unwrap_err())
    }

    #[test]
    fn refuses_code_execution_globals() {
        for (m, n) in [
            ("os", "system"),
            ("builtins", "eval"),
            ("posix", "system"),
            ("torch", "load"),
        ] {
            let mut p = vec![0x80, 2, b'c'];
            p.extend_from_slice(format!("{m}\n{n}\n").as_bytes());
            p.extend_from_slice(b"X\x02\x00\x00\x00ls\x85R.");
            let e = err(&p);
            assert!(e.contains(&format!("`{m}.{n}`")), "{e}");
        }
        // STACK_GLOBAL is checked the same way.
        let p = b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93.";
        assert!(err(p).contains("builtins.exec"));
    }

    #[test]
    fn refuses_reduce_on_non_callable_and_bad_memo() {
        assert!(err(b"\x80\x02K\x01)R.").contains("REDUCE"));
        assert!(err(b"\x80\x02h\x07.").contains("memo index 7"));
        assert!(err(b"\x80\x02X\xff\xff\x00\x00ab").contains("runs past the end"));
        let mut deep = vec![0x80, 2];
        deep.extend(std::iter::repeat_n(b'(', 100_000));
        assert!(err(&deep).contains("MARK"));
        assert!(err(b"\x80\x02K\x01.").contains("not a dict"));
        assert!(err(b"").contains("truncated"));
        assert!(err(b"\x80\x02}(X\x01\x00\x00\x00aK\x01").contains("truncated"));
    }

    #[test]
    fn ordered_dict_and_parameters() {
        // OrderedDict() with a Parameter wrapping a tensor, as model.state_dict() saves.
        let mut p = vec![0x80, 2];
        p.extend_from_slice(b"ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00w");
        p.extend_from_slice(b"ctorch._utils\n_rebuild_parameter\n");
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n");
        p.extend_from_slice(b"((X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00K\x02K\x03\x86K\x03K\x01\x86\x89h\x00)Rtq\x02R");
        p.extend_from_slice(b"\x88h\x00)R\x87Ru.");
        let sd = load_state_dict(&p).unwrap();
        assert_eq!(sd.tensors[0].name, "w");
        assert_eq!(sd.tensors[0].dtype, DType::F16);
        assert_eq!(sd.tensors[0].shape, vec![2, 3]);
    }
}
