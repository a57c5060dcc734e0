//! The weights a Llama model of given params has (from the table in [`super::tensors`]), the slice
//! of each that a model-parallel rank holds, and the q/k row permutation between Meta and Hugging
//! Face.
use super::params::Params;
use super::tensors::{meta_order, rename, Found, Naming, Part, Sizes};
use std::ops::Range;

pub use super::tensors::{rule_for, Role, Split};

/// One expected weight of a Meta checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weight {
    pub name: String,
    pub full_shape: Vec<usize>,
    pub split: Split,
    pub role: Role,
}

/// All weights of a Llama model in Meta's state-dict order (`rope.freqs`, when the checkpoint has
/// it, before `output.weight`).
pub fn meta_weights(p: &Params, vocab: usize, embed_split: Split, rope_freqs: bool) -> Vec<Weight> {
    let sizes = Sizes {
        dim: p.dim,
        n_heads: p.n_heads,
        n_kv_heads: p.kv_heads(),
        head_dim: p.head_dim(),
        hidden: p.ffn_hidden(),
        vocab,
    };
    let weight = |f: Found| {
        let name = f.name(Naming::Meta).expect("Meta names every tensor");
        let (split, role) = rule_for(&name, embed_split).expect("a table name");
        Weight {
            name,
            full_shape: sizes.shape(f.entry),
            split,
            role,
        }
    };
    let mut out: Vec<Weight> = meta_order(p.n_layers).map(weight).collect();
    if rope_freqs {
        let rope = Found {
            entry: Part::RopeFreqs.entry(),
            layer: None,
        };
        out.insert(out.len() - 1, weight(rope));
    }
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
    rename(Naming::Meta, Naming::Hf, name)
}

/// Hugging Face name -> Meta name.
pub fn hf_to_meta(name: &str) -> Option<String> {
    rename(Naming::Hf, Naming::Meta, name)
}

/// Meta name -> GGUF name.
pub fn meta_to_gguf(name: &str) -> Option<String> {
    rename(Naming::Meta, Naming::Gguf, name)
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
