//! The Llama 3 transformer on candle: the same computation as Meta's `model.py`, one readable file.
//!
//! Weights are addressed by their Meta names whatever the kind of directory; the only fact of the
//! kind the model needs is how q/k rows are ordered, which decides the rotary pairing
//! ([`RopePairing`]: adjacent pairs for Meta, halves for Hugging Face). Attention reads grouped K/V heads straight from the preallocated cache
//! without repeating them: the query heads of one group are folded into the row dimension instead.
use super::cpu::{self, kernels::WeightType, quant::Quant, MatType};
use super::kv_cache::KvCache;
use super::weights::{StoredTensor, WeightSource};
pub(crate) use crate::checkpoint::rope::RopeScaling;
use crate::checkpoint::stream::{cast, CastStats};
use crate::checkpoint::tensors::{self, Naming, Part};
use crate::checkpoint::{DirKind, ModelDir};
use crate::formats::DType as FDType;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor, D};

/// How the rows of wq/wk pair up the rotary components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RopePairing {
    /// Meta checkpoints: components (2i, 2i+1) rotate together.
    AdjacentPairs,
    /// Hugging Face checkpoints (q/k rows permuted by the converter): components (i, i + hd/2).
    Halves,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden_dim: usize,
    pub vocab_size: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Per-frequency divisors (a GGUF file's `rope_freqs.weight`, Llama 3.1 scaling precomputed);
    /// applied after `rope_scaling`, which such files leave out.
    pub rope_freq_factors: Option<Vec<f32>>,
    pub rope_pairing: RopePairing,
}

impl Config {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.n_heads == 0 || self.n_kv_heads == 0 || self.vocab_size == 0 {
            bail!("model config has a zero dimension: {self:?}");
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads,
                self.n_kv_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("head_dim {} is odd; rotary needs pairs", self.head_dim);
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim / 2 || !f.iter().all(|v| *v > 0.0) {
                bail!(
                    "rope_freqs: {} factors, need {} positive ones (head_dim / 2)",
                    f.len(),
                    self.head_dim / 2
                );
            }
        }
        Ok(())
    }

    /// Rotary inverse frequencies, in f32 arithmetic as Meta and transformers compute them.
    fn inv_freqs(&self) -> Vec<f32> {
        let hd = self.head_dim;
        let theta = self.rope_theta as f32;
        let freqs = (0..hd / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / hd as f32));
        let freqs: Vec<f32> = match self.rope_scaling {
            None => freqs.collect(),
            Some(s) => freqs.map(|f| s.scale(f)).collect(),
        };
        match &self.rope_freq_factors {
            None => freqs,
            Some(d) => freqs.iter().zip(d).map(|(f, d)| f / d).collect(),
        }
    }

    pub(crate) fn param_count(&self, tied: bool) -> usize {
        let (d, hd) = (self.dim, self.head_dim);
        let attn = d * self.n_heads * hd * 2 + d * self.n_kv_heads * hd * 2;
        let ffn = 3 * d * self.hidden_dim;
        let per_layer = attn + ffn + 2 * d;
        let embed = self.vocab_size * d;
        embed * if tied { 1 } else { 2 } + self.n_layers * per_layer + d
    }
}

impl Config {
    /// The model config of a checkpoint directory: params.json for Meta dirs, config.json (either
    /// rope style) for HF dirs.
    pub(crate) fn from_model_dir(dir: &ModelDir) -> Result<Config> {
        let p = dir.params();
        let vocab_size = match p.vocab() {
            Some(v) => v,
            None => bail!(
                "{}: vocab_size is {} in params.json; llamactl runs Llama 3 checkpoints, which state it",
                dir.dir().display(),
                p.vocab_size
            ),
        };
        Ok(Config {
            dim: p.dim,
            n_layers: p.n_layers,
            n_heads: p.n_heads,
            n_kv_heads: p.kv_heads(),
            head_dim: p.head_dim(),
            hidden_dim: p.ffn_hidden(),
            vocab_size,
            norm_eps: p.norm_eps,
            rope_theta: p.rope_theta(),
            rope_scaling: dir.rope_scaling(),
            rope_freq_factors: None,
            rope_pairing: match dir.kind() {
                DirKind::Meta => RopePairing::AdjacentPairs,
                DirKind::Hf => RopePairing::Halves,
            },
        })
    }
}

/// The weights of one linear layer and how `x @ W.T` is computed with them.
enum Linear {
    /// Our kernels on the stored bytes (CPU).
    Cpu(cpu::Linear),
    /// candle's matmul on a device tensor in the run dtype (CUDA).
    Device(Tensor),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Cpu(l) => Ok(x.contiguous()?.apply_op1_no_bwd(&cpu::LinearOp(l))?),
            Linear::Device(w) => {
                let dims = x.dims();
                let rows: usize = dims[..dims.len() - 1].iter().product();
                let out = x.reshape((rows, dims[dims.len() - 1]))?.matmul(&w.t()?)?;
                let mut shape = dims[..dims.len() - 1].to_vec();
                shape.push(w.dim(0)?);
                Ok(out.reshape(shape)?)
            }
        }
    }
}

/// The token embedding table.
enum Embedding {
    Cpu(cpu::Matrix),
    Device(Tensor),
}

/// Positions per forward pass over a long input: the attention scores of one pass are
/// batch x heads x PREFILL_CHUNK x context f32 values.
pub(crate) const PREFILL_CHUNK: usize = 512;

struct Block {
    attention_norm: Tensor,
    /// wq, wk, wv stacked along the output rows: one matmul per layer instead of three.
    wqkv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    /// w1 (gate) and w3 (up) stacked.
    w13: Linear,
    w2: Linear,
}

pub(crate) struct Llama {
    cfg: Config,
    /// The dtype of activations and of the KV cache: f32 on the CPU.
    dtype: DType,
    /// What the big matrices are held as (their stored type on the CPU with `--dtype auto`).
    weight_dtype: DType,
    device: Device,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    /// `output.weight`, or the embedding matrix again when the checkpoint ties them.
    output: Linear,
    tied: bool,
    cos: Tensor,
    sin: Tensor,
}

/// RMSNorm computed in f32 whatever the model dtype, as Meta does.
fn rms_norm(x: &Tensor, weight_f32: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let y = candle_nn::ops::rms_norm(
        &x.to_dtype(DType::F32)?.contiguous()?,
        weight_f32,
        eps as f32,
    )?;
    Ok(y.to_dtype(dtype)?)
}

/// The names every Llama checkpoint holds (`output.weight` only when not tied).
fn required_names(cfg: &Config, tied: bool) -> Vec<String> {
    tensors::meta_order(cfg.n_layers)
        .filter(|f| !(tied && f.entry.part == Part::Output))
        .map(|f| f.name(Naming::Meta).expect("Meta names every tensor"))
        .collect()
}

/// Reads weights from a source and puts them where the device computes with them.
struct Loader<'a> {
    src: &'a dyn WeightSource,
    device: &'a Device,
    /// Matrices on the CPU: None keeps each stored type; Some casts to that type.
    cpu_type: Option<FDType>,
    /// Matrices on a device: the run dtype.
    dtype: DType,
}

impl Loader<'_> {
    fn stored(&self, name: &str, shape: &[usize]) -> Result<StoredTensor> {
        let t = self
            .src
            .tensor(name)
            .with_context(|| format!("reading {name}"))?;
        if t.shape != shape {
            bail!(
                "weight {name} has shape {:?}, the config implies {:?}",
                t.shape,
                shape
            );
        }
        Ok(t)
    }

    /// A small f32 tensor on the device (norm weights).
    fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        let t = self.stored(name, &[len])?;
        let host = host_tensor(&t, name)?;
        Ok(host.to_dtype(DType::F32)?.to_device(self.device)?)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<cpu::Matrix> {
        let t = self.stored(name, &[rows, cols])?;
        if let Some(q) = t.quant {
            return self
                .quant_matrix(t.bytes, q, rows, cols)
                .with_context(|| format!("weight {name}"));
        }
        let to = match self.cpu_type {
            Some(to) => to,
            // f64 (or any wider float) checkpoints are computed as f32.
            None if matches!(t.dtype, FDType::BF16 | FDType::F16 | FDType::F32) => t.dtype,
            None => FDType::F32,
        };
        let bytes = if to == t.dtype {
            t.bytes
        } else {
            cast_bytes(t.bytes.as_slice(), t.dtype, to).with_context(|| format!("weight {name}"))?
        };
        cpu::Matrix::new(weight_type(to), rows, cols, bytes)
            .with_context(|| format!("weight {name}"))
    }

    /// Blocks as stored (`--dtype auto`), else dequantized and held in the asked type.
    fn quant_matrix(
        &self,
        bytes: cpu::Bytes,
        q: Quant,
        rows: usize,
        cols: usize,
    ) -> Result<cpu::Matrix> {
        let m = cpu::Matrix::new(q, rows, cols, bytes)?;
        let Some(to) = self.cpu_type else {
            return Ok(m);
        };
        let wide = m.to_f32();
        let bytes = cast_bytes(bytemuck::cast_slice(&wide), FDType::F32, to)?;
        cpu::Matrix::new(weight_type(to), rows, cols, bytes)
    }

    /// One linear layer from `names` stacked along the output rows, each [rows, cols].
    fn linear(&self, parts: &[(&str, usize)], cols: usize) -> Result<Linear> {
        if self.device.is_cpu() {
            let mats = parts
                .iter()
                .map(|(n, rows)| self.matrix(n, *rows, cols))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Linear::Cpu(cpu::Linear::new(mats)?));
        }
        let ts = parts
            .iter()
            .map(|(n, rows)| self.device_matrix(n, *rows, cols))
            .collect::<Result<Vec<_>>>()?;
        Ok(Linear::Device(Tensor::cat(&ts, 0)?))
    }

    /// Converted on the host first when narrowing, so a checkpoint never lands on the device twice.
    fn device_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        let t = self.stored(name, &[rows, cols])?;
        Ok(host_tensor(&t, name)?
            .to_dtype(self.dtype)?
            .to_device(self.device)?)
    }
}

/// The float kernels' element type for a stored type (anything else is held as f32).
fn weight_type(d: FDType) -> WeightType {
    match d {
        FDType::BF16 => WeightType::Bf16,
        FDType::F16 => WeightType::F16,
        _ => WeightType::F32,
    }
}

/// `bytes` of type `from` converted to `to`, in a buffer of our own.
fn cast_bytes(bytes: &[u8], from: FDType, to: FDType) -> Result<cpu::Bytes> {
    if from == to {
        return Ok(cpu::Bytes::Owned(bytes.into()));
    }
    let mut out = Vec::new();
    cast(bytes, from, to, &mut out, &mut CastStats::default())?;
    Ok(cpu::Bytes::Owned(out.into()))
}

/// A candle tensor over a copy of the stored bytes (host side, for small tensors and uploads);
/// block-quantized tensors are dequantized to f32.
fn host_tensor(t: &StoredTensor, name: &str) -> Result<Tensor> {
    if let Some(q) = t.quant {
        let cols = t.shape.last().copied().unwrap_or(1);
        let rows = t.shape.iter().product::<usize>() / cols.max(1);
        let m =
            cpu::Matrix::new(q, rows, cols, t.bytes.clone()).with_context(|| name.to_string())?;
        return Ok(Tensor::from_vec(
            m.to_f32(),
            t.shape.as_slice(),
            &Device::Cpu,
        )?);
    }
    let dtype = match t.dtype {
        FDType::BF16 => DType::BF16,
        FDType::F16 => DType::F16,
        FDType::F32 => DType::F32,
        FDType::F64 => DType::F64,
        other => bail!("{name}: stored as {}, not a float type", other.name()),
    };
    Ok(Tensor::from_raw_buffer(
        t.bytes.as_slice(),
        dtype,
        &t.shape,
        &Device::Cpu,
    )?)
}

/// The checkpoint element type that holds a run dtype (anything but bf16/f16 is held as f32).
pub(crate) fn stored_dtype(d: DType) -> FDType {
    match d {
        DType::BF16 => FDType::BF16,
        DType::F16 => FDType::F16,
        _ => FDType::F32,
    }
}

/// How a run holds its weights: see [`Llama::load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precision {
    /// CPU: matrices in their stored type; CUDA: bf16.
    Auto,
    /// Matrices (CPU) or everything (CUDA) in this type.
    Fixed(DType),
}

impl Llama {
    /// Load every weight from `src`, checking names and shapes. On the CPU the matrices stay in
    /// their stored type (or `precision`'s) and activations are f32; on a device everything is
    /// converted to the run dtype (bf16 for `Auto`). `max_positions` bounds the rotary tables.
    pub(crate) fn load(
        cfg: Config,
        src: &dyn WeightSource,
        device: &Device,
        precision: Precision,
        max_positions: usize,
    ) -> Result<Llama> {
        cfg.validate()?;
        let tied = !src.contains(Part::Output.meta_name());
        let missing: Vec<String> = required_names(&cfg, tied)
            .into_iter()
            .filter(|n| !src.contains(n))
            .collect();
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
            bail!(
                "{} weight(s) missing from the checkpoint: {}{}",
                missing.len(),
                shown.join(", "),
                if missing.len() > 5 { ", ..." } else { "" }
            );
        }
        let dtype = match (precision, device.is_cpu()) {
            (_, true) => DType::F32,
            (Precision::Auto, false) => DType::BF16,
            (Precision::Fixed(d), false) => d,
        };
        let ld = Loader {
            src,
            device,
            cpu_type: match precision {
                Precision::Auto => None,
                Precision::Fixed(d) => Some(stored_dtype(d)),
            },
            dtype,
        };
        let (d, hd) = (cfg.dim, cfg.head_dim);
        let embed = if device.is_cpu() {
            Embedding::Cpu(ld.matrix(Part::Embedding.meta_name(), cfg.vocab_size, d)?)
        } else {
            let name = Part::Embedding.meta_name();
            Embedding::Device(ld.device_matrix(name, cfg.vocab_size, d)?)
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = |part: Part| part.at(l);
            let (q, k, v) = (p(Part::Wq), p(Part::Wk), p(Part::Wv));
            let (w1, w3) = (p(Part::W1), p(Part::W3));
            let kv_rows = cfg.n_kv_heads * hd;
            blocks.push(Block {
                attention_norm: ld.vector(&p(Part::AttentionNorm), d)?,
                wqkv: ld.linear(&[(&q, cfg.n_heads * hd), (&k, kv_rows), (&v, kv_rows)], d)?,
                wo: ld.linear(&[(&p(Part::Wo), d)], cfg.n_heads * hd)?,
                ffn_norm: ld.vector(&p(Part::FfnNorm), d)?,
                w13: ld.linear(&[(&w1, cfg.hidden_dim), (&w3, cfg.hidden_dim)], d)?,
                w2: ld.linear(&[(&p(Part::W2), d)], cfg.hidden_dim)?,
            });
        }
        let norm = ld.vector(Part::Norm.meta_name(), d)?;
        let output = match (&embed, tied) {
            (Embedding::Cpu(m), true) => Linear::Cpu(cpu::Linear::new(vec![m.clone()])?),
            (Embedding::Device(t), true) => Linear::Device(t.clone()),
            (_, false) => ld.linear(&[(Part::Output.meta_name(), cfg.vocab_size)], d)?,
        };
        let weight_dtype = match &output {
            Linear::Cpu(l) => match l.parts()[0].ty {
                MatType::Float(WeightType::Bf16) => DType::BF16,
                MatType::Float(WeightType::F16) => DType::F16,
                MatType::Float(WeightType::F32) | MatType::Quant(_) => DType::F32,
            },
            Linear::Device(t) => t.dtype(),
        };
        let (cos, sin) = rotary_tables(&cfg, max_positions, device)?;
        Ok(Llama {
            cfg,
            dtype,
            weight_dtype,
            device: device.clone(),
            embed,
            blocks,
            norm,
            output,
            tied,
            cos,
            sin,
        })
    }

    pub(crate) fn config(&self) -> &Config {
        &self.cfg
    }
    /// The dtype of activations and of the KV cache.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }
    /// The matrices held for the CPU kernels, each once.
    fn cpu_matrices(&self) -> Vec<&cpu::Matrix> {
        let mut mats: Vec<&cpu::Matrix> = Vec::new();
        if let Embedding::Cpu(m) = &self.embed {
            mats.push(m);
        }
        for l in self
            .blocks
            .iter()
            .flat_map(|b| [&b.wqkv, &b.wo, &b.w13, &b.w2])
        {
            if let Linear::Cpu(l) = l {
                mats.extend(l.parts());
            }
        }
        if let (Linear::Cpu(l), false) = (&self.output, self.tied) {
            mats.extend(l.parts());
        }
        mats
    }

    /// Weight bytes used straight from checkpoint file maps (CPU).
    pub(crate) fn mapped_bytes(&self) -> u64 {
        self.cpu_matrices()
            .iter()
            .filter(|m| m.bytes().is_mapped())
            .map(|m| m.bytes().as_slice().len() as u64)
            .sum()
    }

    /// What the weight matrices are held as: "bf16", or the GGML types of a quantized file from the
    /// most parameters to the fewest ("q4_k+q6_k").
    pub(crate) fn weight_label(&self) -> String {
        let mut by_type: Vec<(MatType, usize)> = Vec::new();
        for m in self.cpu_matrices() {
            match by_type.iter_mut().find(|(t, _)| *t == m.ty) {
                Some((_, n)) => *n += m.rows * m.cols,
                None => by_type.push((m.ty, m.rows * m.cols)),
            }
        }
        if by_type.is_empty() {
            return dtype_name(self.weight_dtype).to_string();
        }
        by_type.sort_by_key(|t| std::cmp::Reverse(t.1));
        let names: Vec<String> = by_type
            .iter()
            .map(|(t, _)| t.name().to_lowercase())
            .collect();
        names.join("+")
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }
    pub(crate) fn tied_embeddings(&self) -> bool {
        self.tied
    }
    fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// A cache sized for this model.
    pub(crate) fn new_cache(&self, max_batch: usize, max_seq: usize) -> Result<KvCache> {
        KvCache::new(
            self.cfg.n_layers,
            max_batch,
            self.cfg.n_kv_heads,
            max_seq.min(self.max_positions()),
            self.cfg.head_dim,
            self.dtype,
            &self.device,
        )
    }

    /// Run `tokens` ([batch, seq], u32) at positions `start_pos..start_pos + seq`, extending `cache`.
    /// Returns f32 logits: [batch, seq, vocab] when `all_positions`, else [batch, vocab] for the last
    /// position only (all that generation needs, and far cheaper for a 128k vocabulary).
    /// Long inputs run in chunks of [`PREFILL_CHUNK`] positions (the same result, since attention
    /// is causal), which bounds the attention scores held at once.
    pub(crate) fn forward(
        &self,
        tokens: &Tensor,
        start_pos: usize,
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor> {
        let (_, t) = tokens.dims2()?;
        if t <= PREFILL_CHUNK {
            return self.forward_chunk(tokens, start_pos, cache, all_positions);
        }
        let mut outs = Vec::new();
        for s in (0..t).step_by(PREFILL_CHUNK) {
            let n = PREFILL_CHUNK.min(t - s);
            let last = s + n == t;
            let l = self.forward_chunk(
                &tokens.narrow(1, s, n)?,
                start_pos + s,
                cache,
                all_positions || last,
            )?;
            if all_positions {
                outs.push(l);
            } else if last {
                return Ok(l);
            }
        }
        Ok(Tensor::cat(&outs, 1)?)
    }

    fn forward_chunk(
        &self,
        tokens: &Tensor,
        start_pos: usize,
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        if t == 0 {
            bail!("forward called with no tokens");
        }
        if start_pos + t > self.max_positions() {
            bail!(
                "positions {}..{} exceed the rotary table ({} positions)",
                start_pos,
                start_pos + t,
                self.max_positions()
            );
        }
        let mut h = self.embed(tokens)?.reshape((b, t, self.cfg.dim))?;
        let cos = self.cos.narrow(0, start_pos, t)?;
        let sin = self.sin.narrow(0, start_pos, t)?;
        // Only the device's attention takes a mask; the CPU's skips the positions a row may not see.
        let mask = if t > 1 && !self.device.is_cpu() {
            Some(causal_mask(t, start_pos, &self.device)?)
        } else {
            None
        };
        for (l, block) in self.blocks.iter().enumerate() {
            let x = rms_norm(&h, &block.attention_norm, self.cfg.norm_eps)?;
            let a = self.attention(block, &x, start_pos, &cos, &sin, mask.as_ref(), cache, l)?;
            h = (h + a)?;
            let x = rms_norm(&h, &block.ffn_norm, self.cfg.norm_eps)?;
            let gu = block.w13.forward(&x)?;
            let f = block.w2.forward(&swiglu(&gu, self.cfg.hidden_dim)?)?;
            h = (h + f)?;
        }
        let h = if all_positions {
            h
        } else {
            h.narrow(1, t - 1, 1)?
        };
        let h = rms_norm(&h, &self.norm, self.cfg.norm_eps)?;
        let logits = self.output.forward(&h)?.to_dtype(DType::F32)?;
        if all_positions {
            Ok(logits)
        } else {
            Ok(logits.squeeze(1)?)
        }
    }

    /// Embedding rows of `tokens`, flattened: [n, dim].
    fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let ids = tokens.flatten_all()?;
        match &self.embed {
            Embedding::Cpu(m) => {
                let ids = ids.to_vec1::<u32>()?;
                let rows = m.gather(&ids)?;
                Ok(Tensor::from_vec(rows, (ids.len(), m.cols), &Device::Cpu)?)
            }
            Embedding::Device(e) => Ok(e.index_select(&ids, 0)?),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        start_pos: usize,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let qkv = block.wqkv.forward(x)?;
        let heads = |start: usize, n: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(D::Minus1, start * hd, n * hd)?
                .reshape((b, t, n, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = self.rotate(&heads(0, nh)?, cos, sin)?;
        let k = self.rotate(&heads(nh, nkv)?, cos, sin)?;
        let v = heads(nh + nkv, nkv)?;
        // Views of [b, nkv, start_pos + t, hd] inside the preallocated cache.
        let (keys, values) = cache.append(layer, &k, &v, start_pos)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let out = if self.device.is_cpu() {
            cpu_attention(&q, &keys, &values, start_pos, scale as f32)?
        } else {
            self.device_attention(&q, &keys, &values, scale, mask)?
        };
        block.wo.forward(&out)
    }

    /// Attention as candle tensor ops (on a GPU): `q` [b, n_heads, t, head_dim], `keys` and
    /// `values` views of the cache [b, n_kv_heads, start + t, head_dim], `mask` the causal mask
    /// (None for one new position); the result [b, t, n_heads * head_dim].
    fn device_attention(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        scale: f64,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, nh, t, hd) = q.dims4()?;
        let (nkv, total) = (keys.dim(1)?, keys.dim(2)?);
        let rep = nh / nkv;
        // Query heads g*rep .. g*rep+rep share kv head g; stacking them as rows lets one batched
        // matmul per kv head serve the whole group.
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scores = (q.matmul(&keys.t()?)? * scale)?;
        let scores = scores.to_dtype(DType::F32)?;
        let scores = match mask {
            Some(m) => scores
                .reshape((b, nkv, rep, t, total))?
                .broadcast_add(m)?
                .reshape((b, nkv, rep * t, total))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(self.dtype)?;
        let out = probs.matmul(values)?; // [b, nkv, rep*t, hd]
        Ok(out
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?)
    }

    /// Rotary embedding in f32 (Meta rotates in float and casts back).
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let y = match self.cfg.rope_pairing {
            RopePairing::AdjacentPairs => candle_nn::rotary_emb::rope_i(&x32, cos, sin)?,
            RopePairing::Halves => candle_nn::rotary_emb::rope(&x32, cos, sin)?,
        };
        Ok(y.to_dtype(self.dtype)?)
    }
}

/// `silu(gate) * up` of the stacked feed-forward projections `gu` [.., 2 * hidden]: on the CPU
/// through [`cpu::swiglu`] (the same values, on every thread), elsewhere with candle's ops.
fn swiglu(gu: &Tensor, hidden: usize) -> Result<Tensor> {
    if gu.device().is_cpu() && gu.dtype() == DType::F32 {
        let gu = gu.contiguous()?;
        let (s, l) = gu.storage_and_layout();
        let out = cpu::swiglu(&cpu_f32s(&s, l)?[..l.shape().elem_count()], hidden);
        let mut dims = gu.dims().to_vec();
        *dims.last_mut().expect("a feed-forward output has dims") = hidden;
        return Ok(Tensor::from_vec(out, dims, gu.device())?);
    }
    let gate = gu.narrow(D::Minus1, 0, hidden)?;
    let up = gu.narrow(D::Minus1, hidden, hidden)?;
    Ok((candle_nn::ops::silu(&gate)? * up)?)
}

/// Attention on the CPU through [`cpu::attention`], which applies causality itself (no mask): `q`
/// [b, n_heads, t, head_dim], `keys` and `values` views of the cache [b, n_kv_heads, start + t,
/// head_dim], all f32 (the CPU's activation type); the result as the output projection takes it,
/// [b, t, n_heads * head_dim].
fn cpu_attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    start: usize,
    scale: f32,
) -> Result<Tensor> {
    let q = q.contiguous()?;
    let (b, n_heads, t, head_dim) = q.dims4()?;
    let shape = cpu::attention::Shape {
        b,
        t,
        start,
        n_heads,
        n_kv_heads: keys.dim(1)?,
        head_dim,
    };
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = keys.storage_and_layout();
    let (vs, vl) = values.storage_and_layout();
    fn kv<'a>(s: &'a Storage, l: &Layout, head_dim: usize) -> Result<cpu::attention::Kv<'a>> {
        match l.stride() {
            &[batch_stride, head_stride, row, 1] if row == head_dim => Ok(cpu::attention::Kv {
                data: cpu_f32s(s, l)?,
                batch_stride,
                head_stride,
            }),
            _ => bail!("attention: the cache's rows are not contiguous"),
        }
    }
    let (keys, values) = (kv(&ks, kl, head_dim)?, kv(&vs, vl, head_dim)?);
    let out = cpu::attention::attend(cpu_f32s(&qs, ql)?, &keys, &values, shape, scale);
    let out = Tensor::from_vec(out, (b, n_heads, t, head_dim), q.device())?;
    Ok(out.transpose(1, 2)?.reshape((b, t, n_heads * head_dim))?)
}

/// The f32 elements of a CPU tensor's storage from its layout's start on (the callers checked
/// device and dtype).
fn cpu_f32s<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(CpuStorage::F32(d)) => Ok(&d[l.start_offset()..]),
        _ => bail!("expected an f32 tensor on the CPU"),
    }
}

/// cos and sin of every rotary angle, [max_positions, head_dim / 2], in f32 like Meta's tables.
fn rotary_tables(cfg: &Config, max_positions: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv = cfg.inv_freqs();
    let half = inv.len();
    // The run's preflight refuses sizes this large first; this keeps a library caller from a
    // wrapped capacity.
    let len = max_positions.checked_mul(half).ok_or_else(|| {
        anyhow!("{max_positions} positions: the rotary tables would not fit in memory")
    })?;
    let mut angles = Vec::with_capacity(len);
    for pos in 0..max_positions {
        // f32 products, like torch.outer on f32 tensors.
        angles.extend(inv.iter().map(|f| pos as f32 * f));
    }
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    Ok((
        Tensor::from_vec(cos, (max_positions, half), device)?,
        Tensor::from_vec(sin, (max_positions, half), device)?,
    ))
}

/// [t, start_pos + t] additive mask: row i (position start_pos + i) sees columns 0..=start_pos + i.
fn causal_mask(t: usize, start_pos: usize, device: &Device) -> Result<Tensor> {
    let total = start_pos + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start_pos + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, total), device)?)
}

pub(crate) fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tensors::Sizes;
    use std::collections::HashMap;

    struct MapSource(HashMap<String, (Vec<usize>, Vec<f32>)>);
    impl WeightSource for MapSource {
        fn contains(&self, name: &str) -> bool {
            self.0.contains_key(name)
        }
        fn tensor(&self, name: &str) -> Result<StoredTensor> {
            let (shape, v) = self.0.get(name).context("absent")?;
            Ok(StoredTensor {
                dtype: FDType::F32,
                quant: None,
                shape: shape.clone(),
                bytes: cpu::Bytes::Owned(bytemuck::cast_slice::<f32, u8>(v).into()),
            })
        }
    }

    fn tiny_cfg(pairing: RopePairing) -> Config {
        Config {
            dim: 16,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 4,
            hidden_dim: 24,
            vocab_size: 11,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            rope_freq_factors: None,
            rope_pairing: pairing,
        }
    }

    /// Deterministic pseudo-random weights (an LCG), so the test needs no files.
    fn random_weights(cfg: &Config, tied: bool) -> MapSource {
        let mut state = 12345u64;
        let mut rnd = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8
                })
                .collect();
            (shape.to_vec(), v)
        };
        let sizes = Sizes {
            dim: cfg.dim,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            hidden: cfg.hidden_dim,
            vocab: cfg.vocab_size,
        };
        let mut m = HashMap::new();
        let mut top = vec![Part::Embedding, Part::Norm];
        if !tied {
            top.push(Part::Output);
        }
        for part in top {
            m.insert(part.meta_name().into(), rnd(&sizes.shape(part.entry())));
        }
        // Drawn in Hugging Face's order, as before the table existed: the same weights each run.
        let mut block: Vec<_> = tensors::LAYER_WEIGHTS.iter().collect();
        block.sort_by_key(|e| e.hf_rank);
        for l in 0..cfg.n_layers {
            for e in &block {
                m.insert(e.part.at(l), rnd(&sizes.shape(e)));
            }
        }
        MapSource(m)
    }

    fn ids(v: &[u32]) -> Tensor {
        Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu).unwrap()
    }

    /// Prefill in one call and token-by-token decoding through the cache must agree: this checks
    /// the mask offset, the cache writes and the per-position rotary angles together.
    #[test]
    fn cached_decoding_matches_full_prefill() {
        for pairing in [RopePairing::AdjacentPairs, RopePairing::Halves] {
            let cfg = tiny_cfg(pairing);
            let src = random_weights(&cfg, false);
            let m = Llama::load(cfg, &src, &Device::Cpu, Precision::Auto, 32).unwrap();
            let seq = [1u32, 5, 9, 2, 7, 3];
            let mut c1 = m.new_cache(1, 32).unwrap();
            let full = m.forward(&ids(&seq), 0, &mut c1, true).unwrap();
            let full: Vec<Vec<f32>> = full.squeeze(0).unwrap().to_vec2().unwrap();
            let mut c2 = m.new_cache(1, 32).unwrap();
            let first = m.forward(&ids(&seq[..2]), 0, &mut c2, false).unwrap();
            let mut steps = vec![first.squeeze(0).unwrap().to_vec1::<f32>().unwrap()];
            for (i, tok) in seq.iter().enumerate().skip(2) {
                let l = m.forward(&ids(&[*tok]), i, &mut c2, false).unwrap();
                steps.push(l.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
            }
            for (k, step) in steps.iter().enumerate() {
                for (a, b) in step.iter().zip(&full[k + 1]) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{pairing:?} pos {}: {a} vs {b}",
                        k + 1
                    );
                }
            }
        }
    }

    /// f16 and bf16 weights (f32 activations) stay near the f32 logits.
    #[test]
    fn half_precision_tracks_f32() {
        let cfg = tiny_cfg(RopePairing::AdjacentPairs);
        let src = random_weights(&cfg, false);
        let seq = [1u32, 5, 9, 2];
        let logits = |dt: DType| -> Vec<f32> {
            let m = Llama::load(cfg.clone(), &src, &Device::Cpu, Precision::Fixed(dt), 8).unwrap();
            let mut c = m.new_cache(1, 8).unwrap();
            let l = m.forward(&ids(&seq), 0, &mut c, false).unwrap();
            assert_eq!(l.dtype(), DType::F32);
            l.squeeze(0).unwrap().to_vec1().unwrap()
        };
        let full = logits(DType::F32);
        for dt in [DType::F16, DType::BF16] {
            let half = logits(dt);
            let worst = full
                .iter()
                .zip(&half)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 0.1, "{dt:?}: max logit difference {worst}");
        }
    }

    #[test]
    fn tied_embeddings_and_shape_errors() {
        let cfg = tiny_cfg(RopePairing::AdjacentPairs);
        let src = random_weights(&cfg, true);
        let m = Llama::load(cfg.clone(), &src, &Device::Cpu, Precision::Auto, 8).unwrap();
        assert!(m.tied_embeddings());

        let mut bad = random_weights(&cfg, false);
        let (wk, w2) = (Part::Wk.at(1), Part::W2.at(0));
        bad.0.insert(wk.clone(), (vec![3, 16], vec![0.0; 48]));
        let err = Llama::load(cfg.clone(), &bad, &Device::Cpu, Precision::Auto, 8)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&wk), "{err}");
        assert!(err.contains("[3, 16]"), "{err}");

        bad.0.remove(&w2);
        let err = Llama::load(cfg, &bad, &Device::Cpu, Precision::Auto, 8)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&w2), "{err}");
    }

    /// Llama 3.1 scaling leaves high frequencies alone, divides low ones by the factor and blends
    /// the band between.
    #[test]
    fn scaled_rope_frequencies() {
        let mut cfg = tiny_cfg(RopePairing::AdjacentPairs);
        cfg.head_dim = 128;
        cfg.rope_theta = 500000.0;
        let plain = cfg.inv_freqs();
        cfg.rope_scaling = Some(RopeScaling::default());
        let scaled = cfg.inv_freqs();
        assert_eq!(plain[0], scaled[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-12);
        let mid = (0..64)
            .find(|&i| {
                let w = 2.0 * std::f32::consts::PI / plain[i];
                (2048.0..=8192.0).contains(&w)
            })
            .unwrap();
        assert!(scaled[mid] < plain[mid] && scaled[mid] > plain[mid] / 8.0);
    }
}
