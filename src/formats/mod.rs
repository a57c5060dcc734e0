//! Bytes <-> tensors: the restricted unpickler, torch zip checkpoints, safetensors, GGUF and
//! ggml's block quantizers (`quant`).
//! No CLI, no network, no model knowledge.
pub mod copy;
pub mod gguf;
pub mod integrity;
pub(crate) mod md5;
pub mod pickle;
pub mod pth;
pub mod quant;
pub mod safetensors;
pub mod sniff;

/// Element types, named as safetensors spells them (the names `inspect --json` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    BF16,
    F16,
    F32,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    BOOL,
    /// float8_e4m3fn: 4 exponent bits, 3 mantissa bits, no infinities (Llama 3.1 405B fp8 weights).
    F8E4M3,
    /// float8_e5m2: the top byte of an f16.
    F8E5M2,
    U16,
    U32,
    U64,
}

impl DType {
    const ALL: [DType; 15] = [
        DType::BF16,
        DType::F16,
        DType::F32,
        DType::F64,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::BOOL,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::U16,
        DType::U32,
        DType::U64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::BF16 | DType::F16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::BOOL | DType::F8E4M3 | DType::F8E5M2 => 1,
        }
    }

    /// The safetensors / `inspect` name.
    pub fn name(self) -> &'static str {
        match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::BOOL => "BOOL",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::U16 => "U16",
            DType::U32 => "U32",
            DType::U64 => "U64",
        }
    }

    /// The legacy typed-storage class torch.save names in `data.pkl` (`torch.BFloat16Storage`).
    /// Types newer than typed storages have none: torch writes them with `_rebuild_tensor_v3` over
    /// an `UntypedStorage` and names the dtype instead.
    fn torch_storage(self) -> Option<&'static str> {
        Some(match self {
            DType::BF16 => "BFloat16Storage",
            DType::F16 => "HalfStorage",
            DType::F32 => "FloatStorage",
            DType::F64 => "DoubleStorage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::BOOL => "BoolStorage",
            DType::F8E4M3 | DType::F8E5M2 | DType::U16 | DType::U32 | DType::U64 => return None,
        })
    }

    fn from_torch_storage(class: &str) -> Option<DType> {
        DType::ALL
            .iter()
            .copied()
            .find(|d| d.torch_storage() == Some(class))
    }

    /// The torch dtype object's name (`torch.float8_e4m3fn`), as `_rebuild_tensor_v3` pickles name it.
    fn torch_dtype(self) -> &'static str {
        match self {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::BOOL => "bool",
            DType::F8E4M3 => "float8_e4m3fn",
            DType::F8E5M2 => "float8_e5m2",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
        }
    }

    /// torch dtype objects (`torch.bfloat16`) as they appear in pickles.
    fn from_torch_dtype(name: &str) -> Option<DType> {
        Some(match name {
            "bfloat16" => DType::BF16,
            "float16" | "half" => DType::F16,
            "float32" | "float" => DType::F32,
            "float64" | "double" => DType::F64,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int16" | "short" => DType::I16,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "bool" => DType::BOOL,
            "float8_e4m3fn" => DType::F8E4M3,
            "float8_e5m2" => DType::F8E5M2,
            "uint16" => DType::U16,
            "uint32" => DType::U32,
            "uint64" => DType::U64,
            _ => return None,
        })
    }

    /// Floats llamactl computes with (fp8 values need their scales first, see `checkpoint::fp8`).
    pub fn is_float(self) -> bool {
        matches!(self, DType::BF16 | DType::F16 | DType::F32 | DType::F64)
    }

    pub fn is_fp8(self) -> bool {
        matches!(self, DType::F8E4M3 | DType::F8E5M2)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Number of elements of a shape (1 for a scalar), or None on overflow.
fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Row-major (C-contiguous) strides for a shape, in elements.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d);
    }
    strides
}

/// Shape and dtype of a tensor, and where its bytes live inside a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Strides in elements.
    stride: Vec<usize>,
    /// The storage record (`data/<key>` in a .pth; the tensor's own name in safetensors).
    pub storage_key: String,
    /// Offset into the storage, in elements.
    pub storage_offset: usize,
}

impl TensorInfo {
    fn numel(&self) -> usize {
        numel(&self.shape).unwrap_or(usize::MAX)
    }

    pub fn nbytes(&self) -> usize {
        self.numel().saturating_mul(self.dtype.size())
    }

    /// True when the elements are laid out row-major without gaps (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let want = contiguous_strides(&self.shape);
        self.shape
            .iter()
            .zip(self.stride.iter().zip(&want))
            .all(|(&d, (&s, &w))| d <= 1 || s == w)
    }
}

/// Decode one float8 byte to f32 (e4m3fn: bias 7, no infinities, S.1111.111 is NaN; e5m2: the top
/// byte of an f16).
pub fn fp8_to_f32(dtype: DType, b: u8) -> f32 {
    match dtype {
        DType::F8E5M2 => half::f16::from_bits(u16::from(b) << 8).to_f32(),
        _ => {
            let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
            let (e, m) = (i32::from((b >> 3) & 0x0f), f32::from(b & 0x07));
            if e == 0x0f && m == 7.0 {
                f32::NAN
            } else if e == 0 {
                sign * m / 8.0 * 2f32.powi(-6)
            } else {
                sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
            }
        }
    }
}
