//! Which GGML type each tensor of a GGUF file gets, per file type (`general.file_type`).
//!
//! f32, f16, bf16 and q8_0 files are what llama.cpp's converter writes directly: every matrix in
//! the file's type (q8_0 rows that are not whole blocks in f16), 1-D tensors in f32.
//!
//! The other types are what `llama-quantize IN OUT TYPE` makes of the converter's file, without an
//! importance matrix. Its rules for a dense Llama model, in words:
//! - 1-D tensors, norms and anything not named `*weight` keep their type (f32).
//! - `output.weight` (or `token_embd.weight` when there is no separate output, the embeddings
//!   being tied) becomes Q6_K, unless the file type is Q8_0 (kept) or its rows are not whole blocks
//!   of the file's type (then Q8_0).
//! - `attn_v` counts its occurrences i of n: Q2_K -> Q3_K (Q4_K when 4+ query heads share a kv
//!   head); Q3_K_M -> Q5_K for the first two, else Q4_K; Q3_K_L -> Q5_K; Q4_K_M and Q5_K_M -> Q6_K
//!   where [`use_more_bits`]; Q4_K_S -> Q5_K for the first four. A 70B model (80 layers, grouped
//!   kv heads) raises a Q3_K/Q4_K result to Q5_K.
//! - `ffn_down` of layer i of n: Q2_K -> Q3_K; Q3_K_M -> Q5_K below n/16, else Q4_K; Q3_K_L ->
//!   Q5_K; Q4_K_M and Q5_K_M -> Q6_K where [`use_more_bits`]; Q4_K_S -> Q5_K below n/8.
//! - `attn_output`: Q2_K -> Q3_K, Q3_K_M -> Q4_K, Q3_K_L -> Q5_K.
//! - Finally a type whose block does not divide the row length falls back: Q2_K/Q3_K -> Q4_0,
//!   Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; if that still does not fit, F16.
use crate::checkpoint::tensors::{part_of, Naming, Part};
use crate::formats::gguf::GgmlType;
use crate::formats::DType;
use anyhow::{bail, Result};

/// `general.file_type`: what the weights (2-D tensors) are stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub(crate) enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

/// (file type, its name, llama.cpp's `LLAMA_FTYPE_*` number, the default tensor type).
const TABLE: [(FileType, &str, u32, GgmlType); 17] = [
    (FileType::F32, "f32", 0, GgmlType::F32),
    (FileType::F16, "f16", 1, GgmlType::F16),
    (FileType::BF16, "bf16", 32, GgmlType::BF16),
    (FileType::Q8_0, "q8_0", 7, GgmlType::Q8_0),
    (FileType::Q4_0, "q4_0", 2, GgmlType::Q4_0),
    (FileType::Q4_1, "q4_1", 3, GgmlType::Q4_1),
    (FileType::Q5_0, "q5_0", 8, GgmlType::Q5_0),
    (FileType::Q5_1, "q5_1", 9, GgmlType::Q5_1),
    (FileType::Q2_K, "q2_k", 10, GgmlType::Q2_K),
    (FileType::Q3_K_S, "q3_k_s", 11, GgmlType::Q3_K),
    (FileType::Q3_K_M, "q3_k_m", 12, GgmlType::Q3_K),
    (FileType::Q3_K_L, "q3_k_l", 13, GgmlType::Q3_K),
    (FileType::Q4_K_S, "q4_k_s", 14, GgmlType::Q4_K),
    (FileType::Q4_K_M, "q4_k_m", 15, GgmlType::Q4_K),
    (FileType::Q5_K_S, "q5_k_s", 16, GgmlType::Q5_K),
    (FileType::Q5_K_M, "q5_k_m", 17, GgmlType::Q5_K),
    (FileType::Q6_K, "q6_k", 18, GgmlType::Q6_K),
];

/// Names llama-quantize knows that need an importance matrix (or that llamactl does not write).
const REFUSED: [&str; 14] = [
    "iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m",
    "iq4_nl", "iq4_xs", "q2_k_s", "tq1_0",
];

impl FileType {
    fn entry(self) -> &'static (FileType, &'static str, u32, GgmlType) {
        TABLE
            .iter()
            .find(|e| e.0 == self)
            .expect("every file type is in the table")
    }

    /// llama.cpp's `LLAMA_FTYPE_*` number, written as `general.file_type`.
    pub(crate) fn code(self) -> u32 {
        self.entry().2
    }

    /// The name `--dtype` takes (llama-quantize's, lower case).
    pub(crate) fn name(self) -> &'static str {
        self.entry().1
    }

    /// The type of a weight matrix before any per-tensor rule.
    pub(crate) fn weight_type(self) -> GgmlType {
        self.entry().3
    }

    /// Every name `--dtype` accepts for GGUF output.
    fn names() -> impl Iterator<Item = &'static str> {
        TABLE.iter().map(|e| e.1)
    }

    /// A file type by name, case-insensitive; llama-quantize's aliases q3_k, q4_k, q5_k (the _M
    /// mixes) too. Importance-matrix types are refused with the reason.
    pub(crate) fn parse(name: &str) -> Result<FileType> {
        let n = name.to_ascii_lowercase();
        let n = match n.as_str() {
            "q3_k" => "q3_k_m",
            "q4_k" => "q4_k_m",
            "q5_k" => "q5_k_m",
            other => other,
        };
        if let Some(e) = TABLE.iter().find(|e| e.1 == n) {
            return Ok(e.0);
        }
        if REFUSED.contains(&n) || n.starts_with("iq") {
            bail!(
                "--dtype {name}: llama-quantize makes this type only with an importance matrix \
                 (--imatrix), which llamactl does not read; choose one of {}",
                Self::names().collect::<Vec<_>>().join(", ")
            );
        }
        bail!(
            "--dtype {name}: unknown type; choose one of {}",
            Self::names().collect::<Vec<_>>().join(", ")
        )
    }

    /// The file type of a float dtype (what the converter writes when no --dtype is given).
    pub(crate) fn from_dtype(d: DType) -> Option<FileType> {
        match d {
            DType::F32 => Some(FileType::F32),
            DType::F16 => Some(FileType::F16),
            DType::BF16 => Some(FileType::BF16),
            _ => None,
        }
    }

    /// Whether the file is what llama-quantize writes (as opposed to the converter directly).
    pub(crate) fn is_llama_quantize(self) -> bool {
        !matches!(
            self,
            FileType::F32 | FileType::F16 | FileType::BF16 | FileType::Q8_0
        )
    }
}

/// Layers that the _M mixes give more bits: the first and last eighth, and every third between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// What the llama-quantize rules need to know about the model.
#[derive(Debug, Clone, Copy)]
pub(super) struct ModelFacts {
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// No `output.weight`: the token embeddings double as the output.
    pub tied: bool,
    /// How many `attn_v` weights the file holds.
    pub n_attn_v: usize,
}

impl ModelFacts {
    fn gqa(&self) -> usize {
        self.n_heads.checked_div(self.n_kv_heads).unwrap_or(0)
    }

    /// llama.cpp's 70B class: 80 layers with fewer kv heads than query heads.
    fn is_70b(&self) -> bool {
        self.n_layers == 80 && self.n_heads != self.n_kv_heads
    }
}

/// The per-tensor decisions of llama-quantize, fed tensors in its order (layer, then name).
pub(super) struct QuantRules {
    ft: FileType,
    facts: ModelFacts,
    i_attn_v: usize,
    i_ffn_down: usize,
}

impl QuantRules {
    pub(super) fn new(ft: FileType, facts: ModelFacts) -> Self {
        QuantRules {
            ft,
            facts,
            i_attn_v: 0,
            i_ffn_down: 0,
        }
    }

    /// The type of tensor `name` with `shape` (torch order) stored as `stored`.
    pub(super) fn tensor_type(&mut self, name: &str, shape: &[u64], stored: GgmlType) -> GgmlType {
        if !may_quantize(name, shape) {
            return stored;
        }
        if !self.ft.weight_type().is_quantized() {
            return self.ft.weight_type();
        }
        let ncols = *shape.last().expect("2-D");
        let t = self.mix_type(name, ncols);
        fallback(t, ncols)
    }

    fn mix_type(&mut self, name: &str, ncols: u64) -> GgmlType {
        use FileType as F;
        let ft = self.ft;
        let mut t = ft.weight_type();
        let blocks = |t: GgmlType| ncols.is_multiple_of(t.block_size().unwrap_or(1));
        let part = part_of(Naming::Gguf, name);
        let is_output = part == Some(Part::Output);
        if is_output || (self.facts.tied && part == Some(Part::Embedding)) {
            if !blocks(t) {
                return GgmlType::Q8_0;
            }
            return if t == GgmlType::Q8_0 {
                t
            } else {
                GgmlType::Q6_K
            };
        }
        if part == Some(Part::Wv) {
            let i = self.i_attn_v;
            self.i_attn_v += 1;
            t = match ft {
                F::Q2_K if self.facts.gqa() >= 4 => GgmlType::Q4_K,
                F::Q2_K => GgmlType::Q3_K,
                F::Q3_K_M if i < 2 => GgmlType::Q5_K,
                F::Q3_K_M => GgmlType::Q4_K,
                F::Q3_K_L => GgmlType::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i, self.facts.n_attn_v) => GgmlType::Q6_K,
                F::Q4_K_S if i < 4 => GgmlType::Q5_K,
                _ => t,
            };
            if self.facts.is_70b() && matches!(t, GgmlType::Q3_K | GgmlType::Q4_K) {
                t = GgmlType::Q5_K;
            }
        } else if part == Some(Part::W2) {
            let (i, n) = (self.i_ffn_down, self.facts.n_layers);
            self.i_ffn_down += 1;
            t = match ft {
                F::Q2_K => GgmlType::Q3_K,
                F::Q3_K_M if i < n / 16 => GgmlType::Q5_K,
                F::Q3_K_M => GgmlType::Q4_K,
                F::Q3_K_L => GgmlType::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i, n) => GgmlType::Q6_K,
                F::Q4_K_S if i < n / 8 => GgmlType::Q5_K,
                _ => t,
            };
        } else if part == Some(Part::Wo) {
            t = match ft {
                F::Q2_K => GgmlType::Q3_K,
                F::Q3_K_M => GgmlType::Q4_K,
                F::Q3_K_L => GgmlType::Q5_K,
                _ => t,
            };
        }
        t
    }
}

/// Whether llama-quantize changes a tensor's type at all: 2-D (or more) weights, not norms.
fn may_quantize(name: &str, shape: &[u64]) -> bool {
    let norm = part_of(Naming::Gguf, name).is_some_and(Part::is_norm);
    shape.len() >= 2 && name.ends_with("weight") && !norm
}

/// The type used when `t`'s blocks do not divide the row length.
fn fallback(t: GgmlType, ncols: u64) -> GgmlType {
    let fits = |t: GgmlType| ncols.is_multiple_of(t.block_size().unwrap_or(1));
    if fits(t) {
        return t;
    }
    let smaller = match t {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if fits(smaller) {
        smaller
    } else {
        GgmlType::F16
    }
}

/// The order llama-quantize writes tensors in: by layer number (tensors outside `blk.N.` first),
/// then by name.
pub(super) fn quantize_order(a: &str, b: &str) -> std::cmp::Ordering {
    let layer = |n: &str| Naming::Gguf.layer_of(n).map_or(-1, |l| l as i64);
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GGUF name of `part` (in block `layer`).
    fn g(part: Part, layer: usize) -> String {
        part.name_at(Naming::Gguf, layer).unwrap()
    }

    fn facts(n_layers: usize) -> ModelFacts {
        ModelFacts {
            n_layers,
            n_heads: 32,
            n_kv_heads: 8,
            tied: false,
            n_attn_v: n_layers,
        }
    }

    #[test]
    fn more_bits_layers_of_a_32_layer_model() {
        let v: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            v,
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    #[test]
    fn q4_k_m_mix() {
        let mut r = QuantRules::new(FileType::Q4_K_M, facts(32));
        let m = |cols| vec![64u64, cols];
        assert_eq!(
            r.tensor_type(&g(Part::Output, 0), &m(4096), GgmlType::BF16),
            GgmlType::Q6_K
        );
        assert_eq!(
            r.tensor_type(&g(Part::Embedding, 0), &m(4096), GgmlType::BF16),
            GgmlType::Q4_K
        );
        assert_eq!(
            r.tensor_type(&g(Part::AttentionNorm, 0), &[4096], GgmlType::F32),
            GgmlType::F32
        );
        assert_eq!(
            r.tensor_type(&g(Part::Wv, 0), &m(4096), GgmlType::BF16),
            GgmlType::Q6_K
        );
        assert_eq!(
            r.tensor_type(&g(Part::W2, 0), &m(14336), GgmlType::BF16),
            GgmlType::Q6_K
        );
        for _ in 1..4 {
            r.tensor_type(&g(Part::Wv, 1), &m(4096), GgmlType::BF16);
        }
        // Layer 4 is not a more-bits layer.
        assert_eq!(
            r.tensor_type(&g(Part::Wv, 4), &m(4096), GgmlType::BF16),
            GgmlType::Q4_K
        );
        // Rows of 64 values are not whole 256-blocks: Q4_K falls back to Q5_0.
        assert_eq!(
            r.tensor_type(&g(Part::Wq, 4), &m(64), GgmlType::BF16),
            GgmlType::Q5_0
        );
        // Rows of 16: even Q5_0 does not fit, so F16.
        assert_eq!(
            r.tensor_type(&g(Part::Wq, 4), &m(16), GgmlType::BF16),
            GgmlType::F16
        );
    }

    #[test]
    fn output_rules() {
        let mut r = QuantRules::new(FileType::Q8_0, facts(2));
        assert_eq!(
            r.tensor_type(&g(Part::Output, 0), &[8, 64], GgmlType::F32),
            GgmlType::Q8_0
        );
        let mut r = QuantRules::new(FileType::Q4_0, facts(2));
        assert_eq!(
            r.tensor_type(&g(Part::Output, 0), &[8, 64], GgmlType::F32),
            GgmlType::Q8_0
        );
        assert_eq!(
            r.tensor_type(&g(Part::Output, 0), &[8, 256], GgmlType::F32),
            GgmlType::Q6_K
        );
        let tied = ModelFacts {
            tied: true,
            ..facts(2)
        };
        let mut r = QuantRules::new(FileType::Q4_0, tied);
        assert_eq!(
            r.tensor_type(&g(Part::Embedding, 0), &[8, 256], GgmlType::F32),
            GgmlType::Q6_K
        );
    }

    #[test]
    fn names_parse_case_insensitively_and_iq_is_refused() {
        assert_eq!(FileType::parse("Q4_K_M").unwrap(), FileType::Q4_K_M);
        assert_eq!(FileType::parse("q4_k").unwrap(), FileType::Q4_K_M);
        assert_eq!(FileType::parse("q6_k").unwrap().code(), 18);
        let e = FileType::parse("IQ4_XS").unwrap_err().to_string();
        assert!(e.contains("importance matrix"), "{e}");
        assert!(FileType::parse("q9").is_err());
    }

    #[test]
    fn quantize_order_sorts_layers_numerically() {
        let (output, embd) = (Part::Output.gguf_name(), Part::Embedding.gguf_name());
        let mut v = vec!["blk.10.a", "blk.2.b", output, "blk.2.a", embd];
        v.sort_by(|a, b| quantize_order(a, b));
        assert_eq!(v, [output, embd, "blk.2.a", "blk.2.b", "blk.10.a"]);
    }
}
