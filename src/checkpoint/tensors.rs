//! The one table of the tensors a Llama model has: each one's Meta, Hugging Face and GGUF name,
//! how Meta's model-parallel layers split it, its role in attention and its shape. Every name map,
//! the expected weight lists, the GGUF names and the model's loader are derived from
//! [`LAYER_WEIGHTS`] and `MODEL_WEIGHTS`, so a name is spelled once.

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

/// What a tensor is, for the code that treats some of them specially (the loader, llama.cpp's
/// quantization mix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Embedding,
    Wq,
    Wk,
    Wv,
    Wo,
    /// The feed-forward gate (`w1`).
    W1,
    /// The feed-forward down projection (`w2`).
    W2,
    /// The feed-forward up projection (`w3`).
    W3,
    AttentionNorm,
    FfnNorm,
    /// The final norm.
    Norm,
    Output,
    /// Meta's precomputed rotary frequencies (some Llama 2 era checkpoints).
    RopeFreqs,
}

/// One length of a weight's shape, in terms of the model's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    /// `dim`, the residual width.
    Model,
    /// `n_heads * head_dim`.
    QHeads,
    /// `n_kv_heads * head_dim`.
    KvHeads,
    /// The feed-forward hidden size.
    Hidden,
    Vocab,
    /// `head_dim / 2`.
    HalfHead,
}

/// The model sizes a `Dim` resolves against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub vocab: usize,
}

impl Sizes {
    fn len(&self, d: Dim) -> usize {
        match d {
            Dim::Model => self.dim,
            Dim::QHeads => self.n_heads * self.head_dim,
            Dim::KvHeads => self.n_kv_heads * self.head_dim,
            Dim::Hidden => self.hidden,
            Dim::Vocab => self.vocab,
            Dim::HalfHead => self.head_dim / 2,
        }
    }

    pub fn shape(&self, e: &Entry) -> Vec<usize> {
        e.shape.iter().map(|&d| self.len(d)).collect()
    }
}

/// One tensor of the table. Per-layer names are the part between the layer prefix and
/// `.weight`; the others are whole names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub part: Part,
    pub meta: &'static str,
    /// None: Hugging Face models do not store it.
    hf: Option<&'static str>,
    /// None: GGUF files do not store it under a name derived from the Meta one.
    gguf: Option<&'static str>,
    /// The embedding's split depends on the checkpoint (see [`rule_for`]); this is Llama 3's.
    split: Split,
    role: Role,
    shape: &'static [Dim],
    /// Position in transformers' `LlamaForCausalLM.state_dict()` order (module registration
    /// order: q, k, v, o, gate, up, down, the two norms), which is the order it shards in.
    pub hf_rank: u8,
}

const fn layer(
    part: Part,
    names: [&'static str; 3],
    split: Split,
    role: Role,
    shape: &'static [Dim],
    hf_rank: u8,
) -> Entry {
    Entry {
        part,
        meta: names[0],
        hf: Some(names[1]),
        gguf: Some(names[2]),
        split,
        role,
        shape,
        hf_rank,
    }
}

use Dim::{Hidden, KvHeads, Model, QHeads};
use Split::{Cols, Replicated, Rows};

/// The weights of one transformer block, in Meta's state-dict order.
#[rustfmt::skip]
pub const LAYER_WEIGHTS: [Entry; 9] = [
    layer(Part::Wq, ["attention.wq", "self_attn.q_proj", "attn_q"], Rows, Role::Query, &[QHeads, Model], 0),
    layer(Part::Wk, ["attention.wk", "self_attn.k_proj", "attn_k"], Rows, Role::Key, &[KvHeads, Model], 1),
    layer(Part::Wv, ["attention.wv", "self_attn.v_proj", "attn_v"], Rows, Role::Value, &[KvHeads, Model], 2),
    layer(Part::Wo, ["attention.wo", "self_attn.o_proj", "attn_output"], Cols, Role::Other, &[Model, QHeads], 3),
    layer(Part::W1, ["feed_forward.w1", "mlp.gate_proj", "ffn_gate"], Rows, Role::Other, &[Hidden, Model], 4),
    layer(Part::W2, ["feed_forward.w2", "mlp.down_proj", "ffn_down"], Cols, Role::Other, &[Model, Hidden], 6),
    layer(Part::W3, ["feed_forward.w3", "mlp.up_proj", "ffn_up"], Rows, Role::Other, &[Hidden, Model], 5),
    layer(Part::AttentionNorm, ["attention_norm", "input_layernorm", "attn_norm"], Replicated, Role::Other, &[Model], 7),
    layer(Part::FfnNorm, ["ffn_norm", "post_attention_layernorm", "ffn_norm"], Replicated, Role::Other, &[Model], 8),
];

/// The tensors outside the blocks, in Meta's state-dict order (the embedding before the blocks,
/// the rest after them).
const MODEL_WEIGHTS: [Entry; 4] = [
    Entry {
        part: Part::Embedding,
        meta: "tok_embeddings.weight",
        hf: Some("model.embed_tokens.weight"),
        gguf: Some("token_embd.weight"),
        split: Rows,
        role: Role::Other,
        shape: &[Dim::Vocab, Model],
        hf_rank: 0,
    },
    Entry {
        part: Part::Norm,
        meta: "norm.weight",
        hf: Some("model.norm.weight"),
        gguf: Some("output_norm.weight"),
        split: Replicated,
        role: Role::Other,
        shape: &[Model],
        hf_rank: 1,
    },
    Entry {
        part: Part::RopeFreqs,
        meta: "rope.freqs",
        hf: None,
        gguf: None,
        split: Replicated,
        role: Role::Other,
        shape: &[Dim::HalfHead],
        hf_rank: 2,
    },
    Entry {
        part: Part::Output,
        meta: "output.weight",
        hf: Some("lm_head.weight"),
        gguf: Some("output.weight"),
        split: Rows,
        role: Role::Other,
        shape: &[Dim::Vocab, Model],
        hf_rank: 3,
    },
];

/// The GGUF tensor of Llama 3.1's rope frequency factors, which llama.cpp's converter computes
/// from config.json's `rope_scaling` (no Meta or Hugging Face file stores it).
pub const GGUF_ROPE_FACTORS: &str = "rope_freqs.weight";

impl Part {
    /// This part's row of the table.
    pub fn entry(self) -> &'static Entry {
        LAYER_WEIGHTS
            .iter()
            .chain(&MODEL_WEIGHTS)
            .find(|e| e.part == self)
            .expect("every part is in the table")
    }

    /// The Meta name of a tensor outside the blocks.
    pub fn meta_name(self) -> &'static str {
        self.entry().meta
    }

    /// The Hugging Face name of a tensor outside the blocks.
    pub fn hf_name(self) -> &'static str {
        self.entry().hf.expect("a tensor Hugging Face stores")
    }

    /// The GGUF name of a tensor outside the blocks.
    pub fn gguf_name(self) -> &'static str {
        self.entry().gguf.expect("a tensor GGUF stores")
    }

    /// The Meta name of this weight in block `layer` (a tensor outside the blocks: its name).
    pub fn at(self, layer: usize) -> String {
        self.name_at(Naming::Meta, layer)
            .expect("Meta names every tensor")
    }

    /// This weight's name in block `layer` in `naming`, as [`Part::at`].
    pub fn name_at(self, naming: Naming, layer: usize) -> Option<String> {
        let found = Found {
            entry: self.entry(),
            layer: self.in_blocks().then_some(layer),
        };
        found.name(naming)
    }

    /// One of the weights every transformer block has.
    fn in_blocks(self) -> bool {
        LAYER_WEIGHTS.iter().any(|e| e.part == self)
    }

    pub fn is_norm(self) -> bool {
        matches!(self, Part::AttentionNorm | Part::FfnNorm | Part::Norm)
    }
}

/// The three ways a tensor is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    Meta,
    Hf,
    Gguf,
}

impl Naming {
    /// The layer prefix (before the layer number).
    fn prefix(self) -> &'static str {
        match self {
            Naming::Meta => "layers.",
            Naming::Hf => "model.layers.",
            Naming::Gguf => "blk.",
        }
    }

    /// The block number in a name of this naming, whatever follows it (None outside the blocks).
    pub fn layer_of(self, name: &str) -> Option<usize> {
        let rest = name.strip_prefix(self.prefix())?;
        rest.split('.').next()?.parse().ok()
    }

    fn of(self, e: &Entry) -> Option<&'static str> {
        match self {
            Naming::Meta => Some(e.meta),
            Naming::Hf => e.hf,
            Naming::Gguf => e.gguf,
        }
    }
}

/// Where a tensor sits: its entry and, for a block's weight, the layer number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub entry: &'static Entry,
    pub layer: Option<usize>,
}

impl Found {
    /// The tensor's name in `naming` (None where that format does not store it).
    pub fn name(&self, naming: Naming) -> Option<String> {
        let n = naming.of(self.entry)?;
        Some(match self.layer {
            Some(l) => format!("{}{l}.{n}.weight", naming.prefix()),
            None => n.to_string(),
        })
    }
}

/// The table entry and layer of a tensor named in `naming`; None for names Llama does not have.
pub fn find(naming: Naming, name: &str) -> Option<Found> {
    if let Some(entry) = MODEL_WEIGHTS.iter().find(|e| naming.of(e) == Some(name)) {
        return Some(Found { entry, layer: None });
    }
    let rest = name.strip_prefix(naming.prefix())?;
    let (n, tail) = rest.split_once('.')?;
    let layer = n.parse::<usize>().ok()?;
    let tail = tail.strip_suffix(".weight")?;
    let entry = LAYER_WEIGHTS.iter().find(|e| naming.of(e) == Some(tail))?;
    Some(Found {
        entry,
        layer: Some(layer),
    })
}

/// Which part of the model the tensor named `name` in `naming` is.
pub fn part_of(naming: Naming, name: &str) -> Option<Part> {
    find(naming, name).map(|f| f.entry.part)
}

/// `name` (in `from`'s naming) in `to`'s naming.
pub fn rename(from: Naming, to: Naming, name: &str) -> Option<String> {
    find(from, name)?.name(to)
}

/// Every tensor of an `n_layers` model in Meta's state-dict order, `rope.freqs` left out.
pub fn meta_order(n_layers: usize) -> impl Iterator<Item = Found> {
    let top = |part: Part| Found {
        entry: part.entry(),
        layer: None,
    };
    let blocks = (0..n_layers).flat_map(|l| {
        LAYER_WEIGHTS.iter().map(move |entry| Found {
            entry,
            layer: Some(l),
        })
    });
    std::iter::once(top(Part::Embedding))
        .chain(blocks)
        .chain([top(Part::Norm), top(Part::Output)])
}

/// HF tensor names of a Llama model in `LlamaForCausalLM.state_dict()` order, which is the order
/// transformers shards in.
pub fn hf_order(n_layers: usize) -> Vec<String> {
    let mut layer: Vec<&Entry> = LAYER_WEIGHTS.iter().collect();
    layer.sort_by_key(|e| e.hf_rank);
    let mut out = vec![Part::Embedding.hf_name().to_string()];
    for l in 0..n_layers {
        for e in &layer {
            let found = Found {
                entry: e,
                layer: Some(l),
            };
            out.extend(found.name(Naming::Hf));
        }
    }
    out.push(Part::Norm.hf_name().to_string());
    out.push(Part::Output.hf_name().to_string());
    out
}

/// The split rule for a Meta weight name (None for names Llama does not have). `embed_split` is
/// how this checkpoint splits the embedding (rows for Llama 3, columns for Llama 2).
pub fn rule_for(name: &str, embed_split: Split) -> Option<(Split, Role)> {
    let e = find(Naming::Meta, name)?.entry;
    let split = match e.part {
        Part::Embedding => embed_split,
        _ => e.split,
    };
    Some((split, e.role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_every_naming() {
        for f in meta_order(3) {
            let meta = f.name(Naming::Meta).unwrap();
            for naming in [Naming::Hf, Naming::Gguf] {
                let other = f.name(naming).unwrap();
                assert_eq!(find(naming, &other), Some(f), "{other}");
                assert_eq!(rename(naming, Naming::Meta, &other).unwrap(), meta);
            }
        }
        let rope = find(Naming::Meta, Part::RopeFreqs.meta_name()).unwrap();
        assert_eq!(rope.name(Naming::Gguf), None);
        assert_eq!(find(Naming::Meta, "layers.x.attention.wq.weight"), None);
        assert_eq!(find(Naming::Meta, "layers.0.attention.wq"), None);
    }

    #[test]
    fn hf_order_is_module_registration_order() {
        let order = hf_order(1);
        assert_eq!(order.len(), LAYER_WEIGHTS.len() + 3);
        let parts: Vec<Part> = order
            .iter()
            .map(|n| find(Naming::Hf, n).unwrap().entry.part)
            .collect();
        use Part::*;
        assert_eq!(
            parts,
            [
                Embedding,
                Wq,
                Wk,
                Wv,
                Wo,
                W1,
                W3,
                W2,
                AttentionNorm,
                FfnNorm,
                Norm,
                Output
            ]
        );
    }
}
