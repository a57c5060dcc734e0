//! A Hugging Face model directory: `config.json`, `model.safetensors` or
//! `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`.
use super::layout;
use super::params::{ffn_hidden, Params};
use super::rope::{rope_from_config, RopeScaling};
use super::stream::{FullTensor, Piece};
use super::tensors::Part;
use crate::formats::safetensors::{Index, SafetensorsFile};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct HfDir {
    pub dir: PathBuf,
    config: Value,
    pub params: Params,
    /// config.json's Llama 3.1 rope scaling, with its own values (Meta's params.json only says
    /// whether there is one).
    pub rope_scaling: Option<RopeScaling>,
    pub files: Vec<SafetensorsFile>,
    /// HF tensor name -> index into `files`.
    pub map: HashMap<String, usize>,
}

/// Published (multiple_of, ffn_dim_multiplier) for known (hidden_size, intermediate_size) pairs.
const KNOWN_FFN: &[(usize, usize, usize, Option<f64>)] = &[
    (4096, 14336, 1024, Some(1.3)),  // Llama 3 / 3.1 8B
    (8192, 28672, 4096, Some(1.3)),  // Llama 3 / 3.1 / 3.3 70B, Llama 2 70B
    (16384, 53248, 4096, Some(1.2)), // Llama 3.1 405B
    (2048, 8192, 256, Some(1.5)),    // Llama 3.2 1B
    (3072, 8192, 256, Some(1.0)),    // Llama 3.2 3B
    (4096, 11008, 256, None),        // Llama 2 7B
    (5120, 13824, 256, None),        // Llama 2 13B
];

/// Choose `multiple_of` and `ffn_dim_multiplier` that reproduce `intermediate` through Meta's formula.
fn solve_ffn(dim: usize, intermediate: usize) -> Result<(usize, Option<f64>)> {
    if let Some(&(_, _, m, f)) = KNOWN_FFN.iter().find(|k| k.0 == dim && k.1 == intermediate) {
        return Ok((m, f));
    }
    const MULTIPLES: [usize; 13] = [4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1];
    for &m in &MULTIPLES {
        if ffn_hidden(dim, m, None) == intermediate {
            return Ok((m, None));
        }
    }
    let base = (2 * 4 * dim / 3) as f64;
    for &m in &MULTIPLES {
        // Smallest multiplier with two decimals that lands on the target after rounding up.
        for k in 1..=1600u32 {
            let f = k as f64 / 100.0;
            if ffn_hidden(dim, m, Some(f)) == intermediate {
                return Ok((m, Some(f)));
            }
            if f * base > intermediate as f64 + m as f64 {
                break;
            }
        }
    }
    bail!("no multiple_of / ffn_dim_multiplier reproduces intermediate_size {intermediate} for hidden_size {dim}")
}

fn get_usize(c: &Value, key: &str) -> Result<usize> {
    c.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| anyhow!("config.json: `{key}` is missing or not a positive integer"))
}

/// Meta params for an HF `LlamaForCausalLM` config.
pub(crate) fn params_from_config(c: &Value) -> Result<Params> {
    if let Some(archs) = c.get("architectures").and_then(Value::as_array) {
        if !archs.iter().any(|a| a.as_str() == Some("LlamaForCausalLM")) {
            let names: Vec<String> = archs
                .iter()
                .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_owned))
                .collect();
            bail!(
                "config.json: architecture {} is not supported (only LlamaForCausalLM)",
                names.join(", ")
            );
        }
    }
    if c.get("attention_bias").and_then(Value::as_bool) == Some(true)
        || c.get("mlp_bias").and_then(Value::as_bool) == Some(true)
    {
        bail!("config.json: bias tensors (attention_bias / mlp_bias) are not supported by Llama's Meta layout");
    }
    let dim = get_usize(c, "hidden_size")?;
    let n_heads = get_usize(c, "num_attention_heads")?;
    let n_kv = c
        .get("num_key_value_heads")
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .unwrap_or(n_heads);
    let inter = get_usize(c, "intermediate_size")?;
    let (multiple_of, ffn_dim_multiplier) = solve_ffn(dim, inter)?;
    let (rope_theta, _) = rope_from_config(c);
    let scaling = RopeScaling::from_hf_config(c)?;
    let p = Params {
        dim,
        n_layers: get_usize(c, "num_hidden_layers")?,
        n_heads,
        n_kv_heads: Some(n_kv),
        vocab_size: get_usize(c, "vocab_size")? as i64,
        multiple_of,
        ffn_dim_multiplier,
        norm_eps: c
            .get("rms_norm_eps")
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("config.json: `rms_norm_eps` is missing"))?,
        rope_theta: Some(rope_theta),
        use_scaled_rope: scaling.is_some().then_some(true),
        extra: Default::default(),
    };
    p.validate().context("config.json")?;
    if let Some(hd) = c.get("head_dim").and_then(Value::as_u64) {
        if hd as usize != p.head_dim() {
            bail!("config.json: head_dim {hd} differs from hidden_size / num_attention_heads; not supported");
        }
    }
    Ok(p)
}

impl HfDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("{}: cannot read", cfg_path.display()))?;
        let config: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", cfg_path.display()))?;
        let params = params_from_config(&config).with_context(|| format!("{}", dir.display()))?;
        let rope_scaling = RopeScaling::from_hf_config(&config)?;
        let index_path = dir.join("model.safetensors.index.json");
        let (names, index) = if index_path.exists() {
            let index = Index::read(&index_path)?;
            let mut files: Vec<String> = index.weight_map.values().cloned().collect();
            files.sort();
            files.dedup();
            for f in &files {
                if f.contains('/') || f.contains("..") {
                    bail!(
                        "{}: shard name {f:?} is not a plain file name",
                        index_path.display()
                    );
                }
            }
            (files, Some(index))
        } else if dir.join("model.safetensors").exists() {
            (vec!["model.safetensors".to_string()], None)
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            );
        };
        let files = names
            .iter()
            .map(|n| SafetensorsFile::open(&dir.join(n)))
            .collect::<Result<Vec<_>>>()?;
        let mut map = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for t in f.tensors() {
                if let Some(prev) = map.insert(t.name.clone(), i) {
                    bail!(
                        "{}: tensor {} is also in {}",
                        f.path().display(),
                        t.name,
                        files[prev].path().display()
                    );
                }
            }
        }
        if let Some(ix) = &index {
            for (name, file) in &ix.weight_map {
                match map.get(name) {
                    Some(&i) if names[i] == *file => {}
                    _ => bail!(
                        "{}: {name} is mapped to {file}, which does not hold it",
                        index_path.display()
                    ),
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            params,
            rope_scaling,
            files,
            map,
        })
    }

    /// True when `lm_head` is tied to the embedding (absent from the files).
    pub fn tied(&self) -> bool {
        !self.map.contains_key(Part::Output.hf_name())
            && self
                .config
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false)
    }

    /// HF tensor names in file order.
    fn names(&self) -> Vec<String> {
        self.files
            .iter()
            .flat_map(|f| f.tensors().map(|t| t.name.clone()))
            .collect()
    }

    /// One HF tensor, whole (a single piece of one file).
    pub fn full(&self, hf_name: &str) -> Result<FullTensor> {
        let &i = self
            .map
            .get(hf_name)
            .ok_or_else(|| anyhow!("{}: tensor {hf_name} is missing", self.dir.display()))?;
        let f = &self.files[i];
        let t = f.get(hf_name).expect("mapped names exist");
        let rows = if t.shape.len() > 1 { t.shape[0] } else { 1 };
        let cols = match t.shape.len() {
            0 => 1,
            1 => t.shape[0],
            _ => t.shape[1..].iter().product(),
        };
        FullTensor::new(
            hf_name,
            t.dtype,
            t.shape.clone(),
            vec![Piece::plain(
                f.source().clone(),
                f.data_offset(hf_name)?,
                0..rows,
                0..cols,
            )],
        )
    }

    /// Meta names of the tensors present, in Meta order; unknown HF names are an error.
    pub fn meta_names(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for n in self.names() {
            if n.ends_with(".bias") {
                bail!(
                    "{}: bias tensor {n} is not supported by the Llama layout",
                    self.dir.display()
                );
            }
            if n.ends_with("rotary_emb.inv_freq") {
                continue; // a buffer older transformers saved; recomputed from rope_theta
            }
            out.push(layout::hf_to_meta(&n).ok_or_else(|| {
                anyhow!(
                    "{}: tensor {n} is not part of a Llama model",
                    self.dir.display()
                )
            })?);
        }
        let order: HashMap<String, usize> = layout::meta_weights(
            &self.params,
            self.params.vocab().unwrap_or(0),
            layout::Split::Rows,
            false,
        )
        .into_iter()
        .enumerate()
        .map(|(i, w)| (w.name, i))
        .collect();
        out.sort_by_key(|n| order.get(n).copied().unwrap_or(usize::MAX));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffn_solver_reproduces_sizes() {
        assert_eq!(solve_ffn(4096, 14336).unwrap(), (1024, Some(1.3)));
        let (m, f) = solve_ffn(64, 224).unwrap();
        assert_eq!(ffn_hidden(64, m, f), 224);
        let (m, f) = solve_ffn(16, 48).unwrap();
        assert_eq!(ffn_hidden(16, m, f), 48);
    }

    #[test]
    fn config_styles() {
        let old = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
            "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
            "num_hidden_layers": 32, "rms_norm_eps": 1e-5, "vocab_size": 128256, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0}});
        let p = params_from_config(&old).unwrap();
        assert_eq!(p.use_scaled_rope, Some(true));
        assert_eq!(p.rope_theta, Some(500000.0));
        let mut new = old.clone();
        new.as_object_mut().unwrap().remove("rope_theta");
        new.as_object_mut().unwrap().remove("rope_scaling");
        new["rope_parameters"] =
            serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0});
        assert_eq!(params_from_config(&new).unwrap(), p);
        let mut mistral = old.clone();
        mistral["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        assert!(format!("{:#}", params_from_config(&mistral).unwrap_err())
            .contains("MistralForCausalLM"));
    }
}
