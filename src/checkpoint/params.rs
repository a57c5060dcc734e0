//! `params.json`: Meta's model hyper-parameters, the sizes derived from them, and which
//! model-parallel sizes they allow.
use super::rope::{RopeScaling, DEFAULT_THETA};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Meta's params.json (Llama 2, 3, 3.1, 3.2). Unknown fields are kept and written back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_kv_heads: Option<usize>,
    /// Llama 2 files say -1 (taken from the tokenizer); Llama 3 gives 128256.
    pub vocab_size: i64,
    #[serde(default = "default_multiple_of")]
    pub multiple_of: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_dim_multiplier: Option<f64>,
    pub norm_eps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_scaled_rope: Option<bool>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_multiple_of() -> usize {
    256
}

impl Params {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let p: Params = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid params.json", path.display()))?;
        p.validate()
            .with_context(|| format!("{}: inconsistent params", path.display()))?;
        Ok(p)
    }

    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_theta.unwrap_or(DEFAULT_THETA)
    }

    pub fn scaled_rope(&self) -> bool {
        self.use_scaled_rope.unwrap_or(false)
    }

    /// The scaling `use_scaled_rope` turns on: Meta's constants, with Llama 3.2's own factor
    /// (`rope_scaling_factor`) when params.json carries one.
    pub fn rope_scaling(&self) -> Option<RopeScaling> {
        let d = RopeScaling::default();
        self.scaled_rope().then(|| RopeScaling {
            factor: self
                .extra
                .get("rope_scaling_factor")
                .and_then(|v| v.as_f64())
                .unwrap_or(d.factor),
            ..d
        })
    }

    /// FFN hidden size by Meta's formula: int(2*4*dim/3), times ffn_dim_multiplier (int()),
    /// rounded up to a multiple of multiple_of.
    pub fn ffn_hidden(&self) -> usize {
        ffn_hidden(self.dim, self.multiple_of, self.ffn_dim_multiplier)
    }

    /// The vocabulary size when params.json states it (Llama 3); None for Llama 2's -1.
    pub fn vocab(&self) -> Option<usize> {
        usize::try_from(self.vocab_size).ok().filter(|&v| v > 0)
    }

    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.n_heads == 0 || self.n_layers == 0 {
            bail!("dim, n_heads and n_layers must be positive");
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            bail!(
                "dim {} is not divisible by n_heads {}",
                self.dim,
                self.n_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!(
                "head dim {} is odd; rotary embeddings need pairs",
                self.head_dim()
            );
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            bail!(
                "n_heads {} is not divisible by n_kv_heads {kv}",
                self.n_heads
            );
        }
        if self.multiple_of == 0 {
            bail!("multiple_of must be positive");
        }
        if self.vocab_size == 0 || self.vocab_size < -1 {
            bail!("vocab_size {} is invalid", self.vocab_size);
        }
        if let Some(m) = self.ffn_dim_multiplier {
            if !(m.is_finite() && m > 0.0) {
                bail!("ffn_dim_multiplier {m} is invalid");
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            bail!("norm_eps {} is invalid", self.norm_eps);
        }
        Ok(())
    }

    /// Model-parallel sizes these params allow (given the vocabulary size of the weights).
    /// Every split dim must divide evenly, and each rank's query heads must map onto whole kv
    /// heads: either the kv heads split evenly, or each rank's queries fall inside one GQA group.
    pub fn is_valid_mp(&self, mp: usize, vocab: usize) -> bool {
        let kv = self.kv_heads();
        mp >= 1
            && self.n_heads.is_multiple_of(mp)
            && vocab.is_multiple_of(mp)
            && self.ffn_hidden().is_multiple_of(mp)
            && self.dim.is_multiple_of(mp)
            && (kv.is_multiple_of(mp) || mp.is_multiple_of(kv))
    }

    pub fn valid_mps(&self, vocab: usize) -> Vec<usize> {
        (1..=self.n_heads)
            .filter(|&m| self.is_valid_mp(m, vocab))
            .collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("params serialise")
    }
}

pub fn ffn_hidden(dim: usize, multiple_of: usize, ffn_dim_multiplier: Option<f64>) -> usize {
    let mut hidden = 2 * (4 * dim) / 3;
    if let Some(m) = ffn_dim_multiplier {
        hidden = (m * hidden as f64) as usize;
    }
    hidden.div_ceil(multiple_of.max(1)) * multiple_of.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p8b() -> Params {
        serde_json::from_str(r#"{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}"#).unwrap()
    }

    #[test]
    fn known_hidden_sizes() {
        assert_eq!(p8b().ffn_hidden(), 14336);
        assert_eq!(ffn_hidden(8192, 4096, Some(1.3)), 28672);
        assert_eq!(ffn_hidden(2048, 256, Some(1.5)), 8192);
        assert_eq!(ffn_hidden(16384, 4096, Some(1.2)), 53248);
        assert_eq!(ffn_hidden(4096, 256, None), 11008); // Llama 2 7B
    }

    #[test]
    fn mp_rules() {
        let p = p8b();
        assert_eq!(p.valid_mps(128256), vec![1, 2, 4, 8, 16, 32]);
        assert!(!p.is_valid_mp(3, 128256));
    }

    #[test]
    fn unknown_fields_survive_and_wrong_types_fail() {
        let text = r#"{"dim": 8, "n_layers": 1, "n_heads": 2, "vocab_size": -1, "norm_eps": 1e-6, "future_field": [1, 2]}"#;
        let p: Params = serde_json::from_str(text).unwrap();
        assert!(p.to_json().contains("future_field"));
        assert!(serde_json::from_str::<Params>(
            r#"{"dim": "4096", "n_layers": 1, "n_heads": 1, "vocab_size": 1, "norm_eps": 1e-5}"#
        )
        .is_err());
    }
}
