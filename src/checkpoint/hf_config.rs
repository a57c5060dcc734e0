//! The `config.json` and `generation_config.json` a Hugging Face `LlamaForCausalLM` directory needs,
//! derived from Meta's params.json. Field set and values follow what transformers' own converter
//! (4.44.2) writes, plus the Llama 3.1 `rope_scaling` block that converter forgot. Keys are sorted,
//! as `PretrainedConfig.to_json_string` sorts them.
use super::params::Params;
use super::rope::RopeScaling;
use crate::formats::DType;
use serde_json::{json, Map, Value};

const BOS: u64 = 128000;
const END_OF_TEXT: u64 = 128001;
const EOM: u64 = 128008;
const EOT: u64 = 128009;

/// What the weights alone don't say about the model being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelKind {
    /// Chat-tuned: generation stops at `<|eot_id|>` too.
    pub instruct: bool,
    /// `lm_head` shares the embedding matrix (Llama 3.2 1B/3B).
    pub tied: bool,
    /// Element type of the written weights.
    pub dtype: DType,
}

/// Llama 3.1 and later mark their long-context rope with `use_scaled_rope`.
fn is_llama31(p: &Params) -> bool {
    p.scaled_rope()
}

/// Context length the model was trained for (tokenizer `model_max_length` uses the same number).
pub fn max_position_embeddings(p: &Params) -> usize {
    if is_llama31(p) {
        131072
    } else {
        8192
    }
}

fn torch_dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F32 => "float32",
        DType::F64 => "float64",
        _ => "bfloat16",
    }
}

/// The scaling Meta's model.py applies when `use_scaled_rope` is set, in transformers'
/// `rope_scaling` spelling: Meta's constants (a `rope_scaling_factor` in params.json is not
/// carried over).
pub fn rope_scaling(p: &Params) -> Value {
    if !is_llama31(p) {
        return Value::Null;
    }
    let d = RopeScaling::default();
    json!({
        "factor": d.factor,
        "high_freq_factor": d.high_freq_factor,
        "low_freq_factor": d.low_freq_factor,
        "original_max_position_embeddings": d.original_max_position_embeddings as u64,
        "rope_type": "llama3"
    })
}

/// End-of-sequence ids for `config.json`: Llama 3 base stops at `<|end_of_text|>`, Llama 3 Instruct at
/// `<|eot_id|>`; Llama 3.1 Instruct adds `<|eom_id|>` (tool calls) and lists all three.
fn config_eos(p: &Params, instruct: bool) -> Value {
    match (instruct, is_llama31(p)) {
        (false, _) => json!(END_OF_TEXT),
        (true, false) => json!(EOT),
        (true, true) => json!([END_OF_TEXT, EOM, EOT]),
    }
}

fn generation_eos(p: &Params, instruct: bool) -> Value {
    match (instruct, is_llama31(p)) {
        (false, _) => json!(END_OF_TEXT),
        (true, false) => json!([END_OF_TEXT, EOT]),
        (true, true) => json!([END_OF_TEXT, EOM, EOT]),
    }
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect::<Map<_, _>>())
        }
        other => other,
    }
}

/// `config.json` for a Llama 3 model with these params and vocabulary size.
pub fn config_json(p: &Params, vocab: usize, kind: &ModelKind) -> Value {
    sorted(json!({
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": config_eos(p, kind.instruct),
        "hidden_act": "silu",
        "hidden_size": p.dim,
        "initializer_range": 0.02,
        "intermediate_size": p.ffn_hidden(),
        "max_position_embeddings": max_position_embeddings(p),
        "mlp_bias": false,
        "model_type": "llama",
        "num_attention_heads": p.n_heads,
        "num_hidden_layers": p.n_layers,
        "num_key_value_heads": p.kv_heads(),
        "pretraining_tp": 1,
        "rms_norm_eps": p.norm_eps,
        "rope_scaling": rope_scaling(p),
        "rope_theta": p.rope_theta(),
        "tie_word_embeddings": kind.tied,
        "torch_dtype": torch_dtype_name(kind.dtype),
        "use_cache": true,
        "vocab_size": vocab,
    }))
}

/// `generation_config.json`: Meta's sampling defaults (temperature 0.6, top_p 0.9, as in its
/// generation.py) and the stop tokens of a base or instruct model.
pub fn generation_config_json(p: &Params, instruct: bool) -> Value {
    sorted(json!({
        "bos_token_id": BOS,
        "do_sample": true,
        "eos_token_id": generation_eos(p, instruct),
        "temperature": 0.6,
        "top_p": 0.9,
    }))
}

/// JSON as transformers writes it: two-space indent, trailing newline.
pub fn to_pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("json values serialise");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::hf::params_from_config;

    fn p8b(scaled: bool) -> Params {
        let mut p: Params = serde_json::from_str(r#"{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}"#).unwrap();
        if scaled {
            p.use_scaled_rope = Some(true);
        }
        p
    }

    #[test]
    fn published_8b_values() {
        let kind = ModelKind {
            instruct: false,
            tied: false,
            dtype: DType::BF16,
        };
        let c = config_json(&p8b(false), 128256, &kind);
        assert_eq!(c["intermediate_size"], 14336);
        assert_eq!(c["max_position_embeddings"], 8192);
        assert_eq!(c["rope_scaling"], Value::Null);
        assert_eq!(c["eos_token_id"], 128001);
        let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(keys, want);

        let c31 = config_json(
            &p8b(true),
            128256,
            &ModelKind {
                instruct: true,
                ..kind
            },
        );
        assert_eq!(c31["max_position_embeddings"], 131072);
        assert_eq!(c31["rope_scaling"]["rope_type"], "llama3");
        assert_eq!(c31["eos_token_id"], json!([128001, 128008, 128009]));
        let g = generation_config_json(&p8b(false), true);
        assert_eq!(g["eos_token_id"], json!([128001, 128009]));
        assert_eq!(g["temperature"], 0.6);
    }

    #[test]
    fn config_reads_back_to_the_same_params() {
        for scaled in [false, true] {
            let p = p8b(scaled);
            let kind = ModelKind {
                instruct: false,
                tied: false,
                dtype: DType::BF16,
            };
            let back = params_from_config(&config_json(&p, 128256, &kind)).unwrap();
            assert_eq!(back, p);
        }
    }
}
