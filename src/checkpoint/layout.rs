//! The weights a Llama model has, how Meta's model-parallel layers split them across ranks, and
//! the Meta <-> Hugging Face name map and q/k row permutation.
use super::params::Params;
use std::ops::Range;

/// How a weight is divided between model-parallel ranks (fairscale Column/Row/VocabParallel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Rank r holds the r-th contiguous block of rows (dim 0).
    Rows,
    /// Rank r holds the r-th contiguous block of columns (dim 1).
    Cols,
    /// Every rank holds the whole tensor.
    Replicated,
}

/// Which attention projection a weight is, for GQA and the q/k permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Query,
    Key,
    Value,
    Other,
}

/// One expected weight of a Meta checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weight {
    pub name: String,
    pub full_shape: Vec<usize>,
    pub split: Split,
    pub role: Role,
}

/// The split rule for a Meta weight name (None for names Llama does not have).
pub fn rule_for(name: &str, embed_split: Split) -> Option<(Split, Role)> {
    if name == "tok_embeddings.weight" {
        return Some((embed_split, Role::Other));
    }
    if name == "output.weight" {
        return Some((Split::Rows, Role::Other));
    }
    if name == "norm.weight" || name == "rope.freqs" {
        return Some((Split::Replicated, Role::Other));
    }
    let rest = name.strip_prefix("layers.")?;
    let (n, tail) = rest.split_once('.')?;
    n.parse::<usize>().ok()?;
    Some(match tail {
        "attention.wq.weight" => (Split::Rows, Role::Query),
        "attention.wk.weight" => (Split::Rows, Role::Key),
        "attention.wv.weight" => (Split::Rows, Role::Value),
        "attention.wo.weight" => (Split::Cols, Role::Other),
        "feed_forward.w1.weight" | "feed_forward.w3.weight" => (Split::Rows, Role::Other),
        "feed_forward.w2.weight" => (Split::Cols, Role::Other),
        "attention_norm.weight" | "ffn_norm.weight" => (Split::Replicated, Role::Other),
        _ => return None,
    })
}

/// All weights of a Llama model in Meta's state-dict order.
pub fn meta_weights(p: &Params, vocab: usize, embed_split: Split, rope_freqs: bool) -> Vec<Weight> {
    let (dim, hd, hidden) = (p.dim, p.head_dim(), p.ffn_hidden());
    let kv = p.kv_heads() * hd;
    let mut out = Vec::new();
    let mut push = |name: String, full_shape: Vec<usize>| {
        let (split, role) = rule_for(&name, embed_split).expect("known name");
        out.push(Weight {
            name,
            full_shape,
            split,
            role,
        });
    };
    push("tok_embeddings.weight".into(), vec![vocab, dim]);
    for l in 0..p.n_layers {
        let n = |s: &str| format!("layers.{l}.{s}");
        push(n("attention.wq.weight"), vec![p.n_heads * hd, dim]);
        push(n("attention.wk.weight"), vec![kv, dim]);
        push(n("attention.wv.weight"), vec![kv, dim]);
        push(n("attention.wo.weight"), vec![dim, p.n_heads * hd]);
        push(n("feed_forward.w1.weight"), vec![hidden, dim]);
        push(n("feed_forward.w2.weight"), vec![dim, hidden]);
        push(n("feed_forward.w3.weight"), vec![hidden, dim]);
        push(n("attention_norm.weight"), vec![dim]);
        push(n("ffn_norm.weight"), vec![dim]);
    }
    push("norm.weight".into(), vec![dim]);
    if rope_freqs {
        push("rope.freqs".into(), vec![hd / 2]);
    }
    push("output.weight".into(), vec![vocab, dim]);
    out
}

/// The slice of the split dim that rank `rank` of `mp` holds, in full-tensor coordinates.
///
/// Key/value weights are the exception: with more ranks than kv heads, each rank holds the one kv
/// head its own query heads use (GQA group of query head q is q / (n_heads / n_kv_heads)), so kv
/// heads are replicated, never tiled.
pub fn shard_range(w: &Weight, p: &Params, mp: usize, rank: usize) -> Range<usize> {
    let dim_len = match w.split {
        Split::Rows => w.full_shape[0],
        Split::Cols => w.full_shape[1],
        Split::Replicated => return 0..w.full_shape.first().copied().unwrap_or(1),
    };
    if matches!(w.role, Role::Key | Role::Value) && mp > p.kv_heads() {
        let hd = p.head_dim();
        let q_per_rank = p.n_heads / mp;
        let group = p.n_heads / p.kv_heads();
        let head = rank * q_per_rank / group;
        return head * hd..(head + 1) * hd;
    }
    let n = dim_len / mp;
    rank * n..(rank + 1) * n
}

/// Per-shard shape of a weight at a given MP.
pub fn shard_shape(w: &Weight, p: &Params, mp: usize) -> Vec<usize> {
    let r = shard_range(w, p, mp, 0);
    let mut s = w.full_shape.clone();
    match w.split {
        Split::Rows => s[0] = r.len(),
        Split::Cols => s[1] = r.len(),
        Split::Replicated => {}
    }
    s
}

/// Meta name -> Hugging Face name.
pub fn meta_to_hf(name: &str) -> Option<String> {
    Some(match name {
        "tok_embeddings.weight" => "model.embed_tokens.weight".into(),
        "norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = name.strip_prefix("layers.")?;
            let (n, tail) = rest.split_once('.')?;
            let hf = match tail {
                "attention.wq.weight" => "self_attn.q_proj.weight",
                "attention.wk.weight" => "self_attn.k_proj.weight",
                "attention.wv.weight" => "self_attn.v_proj.weight",
                "attention.wo.weight" => "self_attn.o_proj.weight",
                "feed_forward.w1.weight" => "mlp.gate_proj.weight",
                "feed_forward.w2.weight" => "mlp.down_proj.weight",
                "feed_forward.w3.weight" => "mlp.up_proj.weight",
                "attention_norm.weight" => "input_layernorm.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                _ => return None,
            };
            format!("model.layers.{n}.{hf}")
        }
    })
}

/// Hugging Face name -> Meta name.
pub fn hf_to_meta(name: &str) -> Option<String> {
    Some(match name {
        "model.embed_tokens.weight" => "tok_embeddings.weight".into(),
        "model.norm.weight" => "norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        _ => {
            let rest = name.strip_prefix("model.layers.")?;
            let (n, tail) = rest.split_once('.')?;
            let meta = match tail {
                "self_attn.q_proj.weight" => "attention.wq.weight",
                "self_attn.k_proj.weight" => "attention.wk.weight",
                "self_attn.v_proj.weight" => "attention.wv.weight",
                "self_attn.o_proj.weight" => "attention.wo.weight",
                "mlp.gate_proj.weight" => "feed_forward.w1.weight",
                "mlp.down_proj.weight" => "feed_forward.w2.weight",
                "mlp.up_proj.weight" => "feed_forward.w3.weight",
                "input_layernorm.weight" => "attention_norm.weight",
                "post_attention_layernorm.weight" => "ffn_norm.weight",
                _ => return None,
            };
            format!("layers.{n}.{meta}")
        }
    })
}

/// Direction of the q/k row permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permute {
    /// Meta (rotary on adjacent pairs) -> HF (rotary on halves).
    MetaToHf,
    /// HF -> Meta.
    HfToMeta,
}

impl Permute {
    /// For output row `j` inside one head of `head_dim` rows, the source row inside that head.
    /// Meta -> HF views each head as [hd/2, 2] rows and swaps the two axes.
    pub fn source_row(self, j: usize, head_dim: usize) -> usize {
        let half = head_dim / 2;
        match self {
            Permute::MetaToHf => 2 * (j % half) + j / half,
            Permute::HfToMeta => (j % 2) * half + j / 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(heads: usize, kv: usize) -> Params {
        serde_json::from_value(
            serde_json::json!({"dim": heads * 4, "n_layers": 1, "n_heads": heads,
            "n_kv_heads": kv, "vocab_size": 64, "multiple_of": 16, "norm_eps": 1e-5}),
        )
        .unwrap()
    }

    #[test]
    fn names_round_trip() {
        let p = params(4, 2);
        for w in meta_weights(&p, 64, Split::Rows, false) {
            let hf = meta_to_hf(&w.name).unwrap();
            assert_eq!(hf_to_meta(&hf).unwrap(), w.name);
        }
    }

    #[test]
    fn permutation_is_inverse() {
        for hd in [2, 4, 8, 128] {
            for j in 0..hd {
                let s = Permute::MetaToHf.source_row(j, hd);
                assert_eq!(Permute::HfToMeta.source_row(s, hd), j);
            }
        }
        // Meta rows (pairs) 0,1,2,3 of a 4-row head become HF rows 0,2,1,3.
        assert_eq!(
            (0..4)
                .map(|j| Permute::MetaToHf.source_row(j, 4))
                .collect::<Vec<_>>(),
            [0, 2, 1, 3]
        );
    }

    #[test]
    fn kv_heads_replicate_past_n_kv() {
        let p = params(8, 2); // group of 4 query heads per kv head, head dim 4
        let ws = meta_weights(&p, 64, Split::Rows, false);
        let wk = ws.iter().find(|w| w.role == Role::Key).unwrap();
        assert_eq!(shard_range(wk, &p, 2, 1), 4..8);
        // MP 4: ranks 0,1 use kv head 0; ranks 2,3 use kv head 1.
        let r: Vec<_> = (0..4).map(|r| shard_range(wk, &p, 4, r)).collect();
        assert_eq!(r, vec![0..4, 0..4, 4..8, 4..8]);
        assert_eq!(shard_shape(wk, &p, 8), vec![4, 32]);
    }
}
