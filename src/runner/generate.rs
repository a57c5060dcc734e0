//! Batched generation with the semantics of Meta's generation.py: prompts of different lengths are
//! right-padded into one batch, decoding starts at the shortest prompt, and while a sequence still
//! has prompt tokens at the current position they are forced instead of sampled. Every sequence shares
//! the position counter, so the model never sees a pad token.
use super::kv_cache::KvCache;
use super::model::Llama;
use super::sampling::{log_prob, Sampler};
use anyhow::{bail, Result};
use candle_core::Tensor;
use std::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct GenParams {
    /// Tokens to generate per sequence at most; None = max_seq_len - 1 (Meta's default).
    pub max_gen_len: Option<usize>,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    pub logprobs: bool,
    pub stop_ids: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Generation {
    /// Generated ids, without the stop token.
    pub tokens: Vec<u32>,
    /// log p of each generated token (only with `logprobs`).
    pub logprobs: Vec<f32>,
    /// Whether a stop token ended the sequence (rather than a length limit).
    stopped: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    /// Positions run in the first forward pass (batch × shortest prompt) and its time.
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    /// Positions run in the single-position steps after it (batch per step) and their time.
    pub decode_tokens: usize,
    pub decode_secs: f64,
    /// Whether any logits row held a NaN or infinity.
    pub non_finite: bool,
    /// Positions whose keys and values are in the cache afterwards (every token but the last one
    /// generated), for a caller that continues from them.
    pub cache_len: usize,
}

impl Stats {
    pub(crate) fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_secs)
    }
    pub(crate) fn decode_tokens_per_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// What [`generate`] tells its caller about sequence `i` as it happens, for streaming.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step<'a> {
    /// A generated (non-stop) token.
    Token(u32),
    /// The sequence is finished (a stop token, its length limit, the end of the run, or a stop
    /// asked for): what it generated. Comes exactly once per sequence, after its last token.
    Done(&'a Generation),
}

/// Generate a continuation for each prompt. `on_step(i, step)` sees each generated token of
/// sequence `i` as soon as it exists and then its end; returning false stops the whole batch
/// there. Polls [`crate::signal::check`] between positions, so SIGINT/SIGTERM end a long run.
///
/// `cached` positions of every prompt are already in `cache` (a chat's earlier turns, all prompts
/// sharing them): prefill starts after them.
pub(crate) fn generate(
    model: &Llama,
    cache: &mut KvCache,
    prompts: &[Vec<u32>],
    cached: usize,
    params: &GenParams,
    on_step: &mut dyn FnMut(usize, Step) -> bool,
) -> Result<(Vec<Generation>, Stats)> {
    let (min_prompt, max_prompt) = check_prompts(model, cache, prompts, cached)?;
    let max_seq_len = cache.max_seq();
    let max_gen_len = match params.max_gen_len {
        Some(n) if n > 0 && n < max_seq_len => n,
        _ => max_seq_len - 1,
    };
    let total_len = (max_gen_len + max_prompt).min(max_seq_len);
    let mut batch = Batch::new(prompts, params, max_gen_len, total_len);
    let mut stats = Stats::default();
    let device = model.device().clone();

    let mut prev_pos = cached;
    let mut filled = min_prompt;
    for cur_pos in min_prompt..total_len {
        crate::signal::check()?;
        let started = Instant::now();
        let input = Tensor::from_vec(
            batch.window(prev_pos, cur_pos),
            (prompts.len(), cur_pos - prev_pos),
            &device,
        )?;
        let logits = model.forward(&input, prev_pos, cache, false)?;
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        // The first pass runs every prompt's shortest common part; each later one a position.
        let (n, secs) = (
            prompts.len() * (cur_pos - prev_pos),
            started.elapsed().as_secs_f64(),
        );
        if cur_pos == min_prompt {
            (stats.prefill_tokens, stats.prefill_secs) = (n, secs);
        } else {
            stats.decode_tokens += n;
            stats.decode_secs += secs;
        }
        stats.non_finite |= rows.iter().flatten().any(|v| !v.is_finite());
        let stopped_early = batch.take(&rows, cur_pos, on_step);
        filled = cur_pos + 1;
        prev_pos = cur_pos;
        if stopped_early || batch.eos.iter().all(|&e| e) {
            break;
        }
    }
    stats.cache_len = prev_pos;
    let gens: Vec<Generation> = (0..prompts.len())
        .map(|i| batch.generation(i, filled))
        .collect();
    for (i, g) in gens.iter().enumerate() {
        if !batch.done[i] {
            on_step(i, Step::Done(g));
        }
    }
    Ok((gens, stats))
}

/// Refuse a batch the cache cannot hold or the model cannot read; returns the shortest and the
/// longest prompt length.
fn check_prompts(
    model: &Llama,
    cache: &KvCache,
    prompts: &[Vec<u32>],
    cached: usize,
) -> Result<(usize, usize)> {
    let bsz = prompts.len();
    let max_seq_len = cache.max_seq();
    if bsz == 0 {
        bail!("nothing to generate: no prompts");
    }
    if bsz > cache.max_batch() {
        bail!(
            "{bsz} prompts exceed --max-batch-size {}",
            cache.max_batch()
        );
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        bail!("prompt {} is empty (no tokens)", i + 1);
    }
    let min_prompt = prompts.iter().map(|p| p.len()).min().unwrap_or(0);
    if cached >= min_prompt {
        bail!("{cached} cached positions leave no new prompt token to run (shortest prompt {min_prompt})");
    }
    let (longest, max_prompt) = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.len()))
        .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))
        .unwrap_or((0, 0));
    if max_prompt >= max_seq_len {
        bail!(
            "prompt {} has {max_prompt} tokens, which leaves no room to generate within --max-seq-len {max_seq_len}",
            longest + 1
        );
    }
    let vocab = model.config().vocab_size as u32;
    if let Some((i, t)) = prompts
        .iter()
        .enumerate()
        .find_map(|(i, p)| p.iter().find(|&&t| t >= vocab).map(|&t| (i, t)))
    {
        bail!(
            "prompt {} holds token id {t}, outside the model's vocabulary of {vocab}",
            i + 1
        );
    }
    Ok((min_prompt, max_prompt))
}

/// The batch being generated: every row right-padded to the full length.
struct Batch<'a> {
    prompts: &'a [Vec<u32>],
    params: &'a GenParams,
    max_gen_len: usize,
    tokens: Vec<Vec<u32>>,
    logprobs: Vec<Vec<f32>>,
    eos: Vec<bool>,
    /// Whether the caller was told the sequence is done.
    done: Vec<bool>,
    sampler: Sampler,
}

impl<'a> Batch<'a> {
    fn new(
        prompts: &'a [Vec<u32>],
        params: &'a GenParams,
        max_gen_len: usize,
        total_len: usize,
    ) -> Self {
        let tokens = prompts
            .iter()
            .map(|p| {
                let mut row = p.clone();
                row.resize(total_len, 0);
                row
            })
            .collect();
        Self {
            prompts,
            params,
            max_gen_len,
            tokens,
            logprobs: vec![vec![0f32; total_len]; prompts.len()],
            eos: vec![false; prompts.len()],
            done: vec![false; prompts.len()],
            sampler: Sampler::new(params.temperature, params.top_p, params.seed),
        }
    }

    /// Positions `from..to` of every row, row after row: the next forward pass's input.
    fn window(&self, from: usize, to: usize) -> Vec<u32> {
        self.tokens
            .iter()
            .flat_map(|row| row[from..to].iter().copied())
            .collect()
    }

    /// Put position `cur_pos` of each row: its prompt token while it has one, else a sampled
    /// token. Returns true when `on_step` asked to stop.
    fn take(
        &mut self,
        rows: &[Vec<f32>],
        cur_pos: usize,
        on_step: &mut dyn FnMut(usize, Step) -> bool,
    ) -> bool {
        let mut stop = false;
        for (i, row) in rows.iter().enumerate() {
            let forced = cur_pos < self.prompts[i].len();
            let next = if forced {
                self.tokens[i][cur_pos]
            } else {
                self.sampler.sample(row)
            };
            self.tokens[i][cur_pos] = next;
            if forced || self.eos[i] {
                continue;
            }
            if self.params.logprobs {
                self.logprobs[i][cur_pos] = log_prob(row, next);
            }
            let index = cur_pos - self.prompts[i].len();
            let is_stop = self.params.stop_ids.contains(&next);
            self.eos[i] |= is_stop;
            if !is_stop && index < self.max_gen_len && !on_step(i, Step::Token(next)) {
                stop = true;
            }
            if (is_stop || index + 1 == self.max_gen_len) && !self.done[i] {
                self.done[i] = true;
                stop |= !on_step(i, Step::Done(&self.generation(i, cur_pos + 1)));
            }
        }
        stop
    }

    /// What row `i` generated in positions before `filled`, cut at its first stop token.
    fn generation(&self, i: usize, filled: usize) -> Generation {
        let start = self.prompts[i].len();
        let end = filled.min(start + self.max_gen_len).max(start);
        let gen = &self.tokens[i][start..end];
        let cut = gen.iter().position(|t| self.params.stop_ids.contains(t));
        let n = cut.unwrap_or(gen.len());
        Generation {
            tokens: gen[..n].to_vec(),
            logprobs: if self.params.logprobs {
                self.logprobs[i][start..start + n].to_vec()
            } else {
                Vec::new()
            },
            stopped: cut.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ModelDir;
    use crate::runner::model::{Config, Precision};
    use crate::runner::weights::DirWeights;
    use candle_core::{DType, Device};
    use std::path::Path;

    fn golden() -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/run/meta_golden.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn ids(v: &serde_json::Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }

    /// Token ids in, token ids out: the batch from Meta's model.py golden, without the tokenizer.
    #[test]
    fn batch_matches_meta_golden() {
        let g = golden();
        let dir = ModelDir::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tiny-mp1"))
            .unwrap();
        let cfg = Config::from_model_dir(&dir).unwrap();
        let max_seq = g["max_seq_len"].as_u64().unwrap() as usize;
        let model = Llama::load(
            cfg,
            &DirWeights::new(&dir).unwrap(),
            &Device::Cpu,
            Precision::Fixed(DType::F32),
            max_seq,
        )
        .unwrap();
        let results = g["results"].as_array().unwrap();
        let prompts: Vec<Vec<u32>> = results.iter().map(|r| ids(&r["prompt_tokens"])).collect();
        let mut cache = model.new_cache(prompts.len(), max_seq).unwrap();
        let params = GenParams {
            max_gen_len: Some(g["max_gen_len"].as_u64().unwrap() as usize),
            temperature: 0.0,
            top_p: 0.9,
            seed: 1,
            logprobs: true,
            stop_ids: vec![128001, 128009],
        };
        let mut streamed = vec![Vec::new(); prompts.len()];
        let mut done = vec![None; prompts.len()];
        let (gens, stats) = generate(&model, &mut cache, &prompts, 0, &params, &mut |i, step| {
            assert!(done[i].is_none(), "prompt {i}: a step after Done");
            match step {
                Step::Token(t) => streamed[i].push(t),
                Step::Done(g) => done[i] = Some(g.clone()),
            }
            true
        })
        .unwrap();
        assert!(!stats.non_finite);
        for (i, (r, gen)) in results.iter().zip(&gens).enumerate() {
            assert_eq!(gen.tokens, ids(&r["tokens"]), "prompt {i}");
            assert_eq!(streamed[i], gen.tokens, "prompt {i} streaming");
            assert_eq!(done[i].as_ref(), Some(gen), "prompt {i} done");
            for (k, (a, b)) in gen
                .logprobs
                .iter()
                .zip(r["logprobs"].as_array().unwrap())
                .enumerate()
            {
                let b = b.as_f64().unwrap() as f32;
                assert!((a - b).abs() < 1e-4, "prompt {i} token {k}: {a} vs {b}");
            }
        }
    }

    /// transformers' LlamaForCausalLM goldens on HF dirs: tied embeddings + GQA + `rope_parameters`,
    /// untied MHA + `rope_scaling`; both with llama3 scaling active within the prompt lengths.
    #[test]
    fn hf_dirs_match_transformers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = root.join("testdata/run/hf_golden.json");
        let g: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for m in g["models"].as_array().unwrap() {
            let dir = ModelDir::open(&root.join(m["dir"].as_str().unwrap())).unwrap();
            let cfg = Config::from_model_dir(&dir).unwrap();
            assert!(cfg.rope_scaling.is_some());
            let model = Llama::load(
                cfg,
                &DirWeights::new(&dir).unwrap(),
                &Device::Cpu,
                Precision::Fixed(DType::F32),
                128,
            )
            .unwrap();
            let mut cache = model.new_cache(1, 128).unwrap();
            let params = GenParams {
                max_gen_len: Some(g["max_gen_len"].as_u64().unwrap() as usize),
                temperature: 0.0,
                top_p: 0.9,
                seed: 1,
                logprobs: false,
                stop_ids: ids(&m["stop_ids"]),
            };
            let cases = m["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .chain(m["dialogs"].as_array().unwrap());
            for case in cases {
                let prompt = ids(&case["prompt_tokens"]);
                let (gens, _) =
                    generate(&model, &mut cache, &[prompt], 0, &params, &mut |_, _| true).unwrap();
                assert_eq!(gens[0].tokens, ids(&case["tokens"]), "{}: {case}", m["dir"]);
            }
        }
    }

    #[test]
    fn prompt_limits_are_clear_errors() {
        let dir = ModelDir::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tiny-mp1"))
            .unwrap();
        let cfg = Config::from_model_dir(&dir).unwrap();
        let model = Llama::load(
            cfg,
            &DirWeights::new(&dir).unwrap(),
            &Device::Cpu,
            Precision::Fixed(DType::F32),
            8,
        )
        .unwrap();
        let mut cache = model.new_cache(2, 8).unwrap();
        let params = GenParams {
            max_gen_len: None,
            temperature: 0.6,
            top_p: 0.9,
            seed: 3,
            logprobs: false,
            stop_ids: vec![],
        };
        let mut none = |_: usize, _: Step| true;
        let err = generate(&model, &mut cache, &[vec![1; 8]], 0, &params, &mut none).unwrap_err();
        assert!(err.to_string().contains("--max-seq-len 8"), "{err}");
        let err = generate(
            &model,
            &mut cache,
            &[vec![1], vec![2], vec![3]],
            0,
            &params,
            &mut none,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--max-batch-size 2"), "{err}");
        let err = generate(&model, &mut cache, &[vec![]], 0, &params, &mut none).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        // Default max_gen_len fills the sequence: 3 prompt tokens + 5 generated = 8.
        let (g, _) = generate(
            &model,
            &mut cache,
            &[vec![128000, 5, 6]],
            0,
            &params,
            &mut none,
        )
        .unwrap();
        assert_eq!(g[0].tokens.len(), 5);
        // Sampling is reproducible from the seed.
        let (again, _) = generate(
            &model,
            &mut cache,
            &[vec![128000, 5, 6]],
            0,
            &params,
            &mut none,
        )
        .unwrap();
        assert_eq!(g, again);
    }
}
