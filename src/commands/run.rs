//! `llamactl run` (see CLI.md): load a Meta or HF checkpoint or a GGUF file and generate, the way Meta's
//! example_text_completion.py / example_chat_completion.py do, plus an interactive chat and a CI check.
use crate::checkpoint::ModelDir;
use crate::cli::{DeviceChoice, RunArgs, RunDtype};
use crate::formats::gguf::is_gguf;
use crate::formats::DType as FDType;
use crate::human::human_bytes;
use crate::runner::device::{self, DeviceRequest, DtypeRequest, PeakMemory};
use crate::runner::generate::{generate, GenParams, Generation, Stats, Step};
use crate::runner::gguf::GgufModel;
use crate::runner::kv_cache::KvCache;
use crate::runner::memory::MemoryPlan;
use crate::runner::model::{stored_dtype, Config, Llama, Precision, RopePairing};
use crate::runner::weights::{weight_bytes, DirWeights, WeightBytes};
use crate::tokenizer::chat::{parse_dialog, ChatFormat};
use crate::tokenizer::{AllowedSpecial, Tokenizer};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod input;
mod repl;
mod stream;

/// Meta's example_text_completion.py prompts, for --examples.
const EXAMPLE_PROMPTS: [&str; 4] = [
    "I believe the meaning of life is",
    "Simply put, the theory of relativity states that ",
    "A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ",
    "Translate English to French:\n\n        sea otter => loutre de mer\n        peppermint => menthe poivrée\n        plush girafe => girafe peluche\n        cheese =>",
];

/// Fixed prompts for --check: different lengths, so the batch exercises forced prompt tokens.
const CHECK_PROMPTS: [&str; 3] = [
    "The capital of France is",
    "Simply put, the theory of relativity states that ",
    "1, 2, 3, 4, 5,",
];
const CHECK_GEN_LEN: usize = 24;

struct Session {
    model: Llama,
    cache: KvCache,
    tok: Tokenizer,
    ckpt_dir: PathBuf,
    tokenizer_path: Option<PathBuf>,
    /// The chat format a GGUF file carries (None: from the directory or tokenizer file).
    chat: Option<ChatFormat>,
    memory: PeakMemory,
}

pub(crate) fn run(args: &RunArgs) -> Result<i32> {
    let Some(given) = args.model.as_ref().or(args.ckpt_dir.as_ref()) else {
        bail!("which model? `llamactl run MODEL --prompt TEXT`: a catalog name, a Hub repo id, a Meta or HF checkpoint dir, or a .gguf file");
    };
    check_args(args)?;
    let dir = &crate::store::resolve::model_path(given, crate::store::resolve::Want::Any)?;
    set_threads(args.threads)?;
    crate::runner::cpu::keep_freed_buffers();
    // The session runs on one of the pool's own threads, so each parallel kernel starts inside the
    // pool instead of handing its work across and sleeping until it is done: with one thread that
    // handover was two context switches per matrix. Measured on 1-thread decode of the 1B-shaped
    // files (3 interleaved rounds): Q4_K_M 13.3 -> 17.1 tok/s, Q8_0 9.3 -> 11.3, bf16 8.7 -> 9.5.
    rayon::scope(|_| session(dir, args))
}

fn session(dir: &std::path::Path, args: &RunArgs) -> Result<i32> {
    let mut s = load(dir, args)?;
    if args.check {
        return check(&mut s, args);
    }
    if args.chat {
        return match &args.dialogs {
            Some(file) => chat_batch(&mut s, args, file),
            None => repl::chat_repl(&mut s, args),
        };
    }
    complete(&mut s, args)
}

/// What `run` needs to be told besides the model: one way to use it.
const MODES: &str = "--prompt TEXT (complete it), --chat (talk; --dialogs FILE for a batch), --check (the CI check) or --examples (Meta's example prompts)";

/// Refuse contradictory or out-of-range options before anything is loaded.
fn check_args(args: &RunArgs) -> Result<()> {
    let modes = [
        !args.prompt.is_empty() && !args.check,
        args.chat,
        args.check,
        args.examples,
    ];
    if !modes.contains(&true) {
        bail!("nothing to do: give {MODES}");
    }
    if args.examples && (args.chat || args.check || !args.prompt.is_empty()) {
        bail!(
            "--examples runs Meta's example prompts; it does not take --prompt, --chat or --check"
        );
    }
    if args.max_seq_len < 2 {
        bail!("--max-seq-len must be at least 2");
    }
    if args.max_batch_size == 0 {
        bail!("--max-batch-size must be at least 1");
    }
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0");
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1]");
    }
    if args.dialogs.is_some() && !args.chat {
        bail!("--dialogs needs --chat");
    }
    if args.chat && !args.prompt.is_empty() {
        bail!("--prompt and --chat are exclusive: use --dialogs FILE for batch chat");
    }
    if args.check && args.chat {
        bail!(
            "--check runs text completions (its own prompts, or --prompt); it does not take --chat"
        );
    }
    if args.max_gen_len == Some(0) {
        bail!("--max-gen-len must be at least 1 (leave it out to fill --max-seq-len)");
    }
    Ok(())
}

/// What MODEL names: a checkpoint directory or a GGUF file.
enum Checkpoint {
    Dir(Box<ModelDir>),
    Gguf(Box<GgufModel>),
}

impl Checkpoint {
    fn open(path: &Path) -> Result<Checkpoint> {
        if path.is_file() && is_gguf(path) {
            return Ok(Checkpoint::Gguf(Box::new(GgufModel::open(path)?)));
        }
        if path.is_file() {
            bail!(
                "{}: a file that is not GGUF; MODEL is a checkpoint directory or a .gguf file",
                path.display()
            );
        }
        Ok(Checkpoint::Dir(Box::new(ModelDir::open(path)?)))
    }

    fn config(&self) -> Result<Config> {
        match self {
            Checkpoint::Dir(d) => Config::from_model_dir(d),
            Checkpoint::Gguf(g) => g.config(),
        }
    }

    /// The tokenizer inside the checkpoint, and for a GGUF file its chat format.
    fn tokenizer(&self, path: &Path) -> Result<(Tokenizer, Option<ChatFormat>)> {
        match self {
            Checkpoint::Dir(_) => Ok((Tokenizer::from_model_dir(path)?, None)),
            Checkpoint::Gguf(g) => {
                let tok = Tokenizer::from_gguf(&g.file)?;
                let chat = ChatFormat::for_gguf(&g.file, &tok);
                Ok((tok, Some(chat)))
            }
        }
    }

    fn weight_bytes(&self, target: Option<FDType>, map: bool) -> Result<WeightBytes> {
        match self {
            Checkpoint::Dir(d) => weight_bytes(d, target, map),
            Checkpoint::Gguf(g) => Ok(g.weight_bytes(target, map)),
        }
    }
}

fn load(dir: &Path, args: &RunArgs) -> Result<Session> {
    let started = Instant::now();
    let ckpt = Checkpoint::open(dir)?;
    let cfg = ckpt
        .config()
        .with_context(|| format!("{}", dir.display()))?;
    let (tok, chat) = match &args.tokenizer_path {
        Some(p) => (Tokenizer::from_file(p)?, None),
        None => ckpt.tokenizer(dir)?,
    };
    if tok.n_vocab() > cfg.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model's vocabulary is {}",
            tok.source().display(),
            tok.n_vocab(),
            cfg.vocab_size
        );
    }
    let device = device::select(
        match args.device {
            DeviceChoice::Auto => DeviceRequest::Auto,
            DeviceChoice::Cpu => DeviceRequest::Cpu,
            DeviceChoice::Cuda => DeviceRequest::Cuda,
        },
        &mut |note| eprintln!("{note}"),
    )?;
    let precision = device::precision(match args.dtype {
        RunDtype::Auto => DtypeRequest::Auto,
        RunDtype::F32 => DtypeRequest::F32,
        RunDtype::F16 => DtypeRequest::F16,
        RunDtype::Bf16 => DtypeRequest::Bf16,
    });
    eprintln!(
        "loading {} ({} layout, {} layers, dim {}, {} heads / {} kv heads) on {}",
        dir.display(),
        match (&ckpt, cfg.rope_pairing) {
            (Checkpoint::Gguf(_), _) => "GGUF",
            (_, RopePairing::AdjacentPairs) => "Meta",
            (_, RopePairing::Halves) => "HF",
        },
        cfg.n_layers,
        cfg.dim,
        cfg.n_heads,
        cfg.n_kv_heads,
        device::device_name(&device),
    );
    preflight(&ckpt, &cfg, &device, precision, args)?;
    let model = match &ckpt {
        Checkpoint::Dir(d) => Llama::load(
            cfg,
            &DirWeights::new(d)?,
            &device,
            precision,
            args.max_seq_len,
        ),
        Checkpoint::Gguf(g) => Llama::load(cfg, g.as_ref(), &device, precision, args.max_seq_len),
    }
    .with_context(|| format!("{}", dir.display()))?;
    let cache = model.new_cache(args.max_batch_size, args.max_seq_len)?;
    let memory = PeakMemory::new(&device);
    eprintln!(
        "loaded {:.1}M parameters in {:.2} s: {} weights{}, {} activations, KV cache {}",
        model.config().param_count(model.tied_embeddings()) as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        model.weight_label(),
        match model.mapped_bytes() {
            0 => String::new(),
            n => format!(" ({} mapped from the checkpoint)", human_bytes(n)),
        },
        device::dtype_name(model.dtype()),
        human_bytes(cache.bytes() as u64)
    );
    Ok(Session {
        model,
        cache,
        tok,
        ckpt_dir: dir.to_path_buf(),
        tokenizer_path: args.tokenizer_path.clone(),
        chat,
        memory,
    })
}

/// Estimate what the run needs before loading anything, and refuse (exit 2) rather than be killed.
fn preflight(
    ckpt: &Checkpoint,
    cfg: &Config,
    device: &Device,
    precision: Precision,
    args: &RunArgs,
) -> Result<()> {
    let (target, act_bytes) = match (precision, device.is_cpu()) {
        (Precision::Auto, true) => (None, 4),
        (Precision::Fixed(d), true) => (Some(stored_dtype(d)), 4),
        (Precision::Auto, false) => (Some(FDType::BF16), 2),
        (Precision::Fixed(d), false) => (Some(stored_dtype(d)), d.size_in_bytes()),
    };
    let weights = ckpt.weight_bytes(target, device.is_cpu())?;
    let plan = MemoryPlan::new(
        cfg,
        weights,
        args.max_seq_len,
        args.max_batch_size,
        act_bytes,
    );
    let (avail, total) = device::available_bytes(device);
    let where_ = if device.is_cpu() { "host" } else { "GPU" };
    if let Some(note) = plan.check(avail, total, where_)? {
        eprintln!("{note}");
    }
    Ok(())
}

/// Size rayon's pool (our kernels and candle's CPU ops share it) once, before any work starts:
/// `--threads`, else rayon's default (RAYON_NUM_THREADS, else one thread per core). More threads
/// than cores only take turns on them (and every kernel splits its work per thread), so a larger
/// count is clamped to the cores with a note. The session itself runs on a pool thread, which gets
/// the main thread's stack size.
fn set_threads(threads: Option<usize>) -> Result<()> {
    let mut pool = rayon::ThreadPoolBuilder::new().stack_size(8 << 20);
    if let Some(asked) = threads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = match asked {
            0 => bail!("--threads must be at least 1"),
            a if a > cores => {
                eprintln!("note: --threads {a} is more than the {cores} cores this process may use; using {cores}");
                cores
            }
            a => a,
        };
        pool = pool.num_threads(n);
    }
    pool.build_global().map_err(|e| anyhow!("--threads: {e}"))?;
    // candle sizes its matrix products by this variable, read on every product; unset, it counts
    // the physical cores by parsing /proc/cpuinfo each time (1% of a decode), and ignores --threads.
    // Nothing runs on the pool yet, and the only other thread, signal's watchdog, never reads the
    // environment.
    std::env::set_var(
        "RAYON_NUM_THREADS",
        rayon::current_num_threads().to_string(),
    );
    Ok(())
}

fn gen_params(args: &RunArgs, s: &Session) -> GenParams {
    GenParams {
        max_gen_len: args.max_gen_len,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        logprobs: args.logprobs,
        stop_ids: if args.ignore_eos {
            Vec::new()
        } else {
            s.tok.stop_ids().to_vec()
        },
    }
}

/// The parts of a [`Session`] that generation changes.
struct Engine<'a> {
    model: &'a Llama,
    cache: &'a mut KvCache,
    memory: &'a mut PeakMemory,
}

/// Generate for all prompts, --max-batch-size at a time, in order; `on_step` sees every step
/// with the prompt's index in `prompts`.
fn run_batches(
    e: Engine,
    prompts: &[Vec<u32>],
    params: &GenParams,
    on_step: &mut dyn FnMut(usize, Step) -> bool,
) -> Result<(Vec<Generation>, Stats)> {
    let mut all = Vec::with_capacity(prompts.len());
    let mut total = Stats::default();
    let per_batch = e.cache.max_batch();
    for (k, chunk) in prompts.chunks(per_batch).enumerate() {
        let base = k * per_batch;
        let on_chunk = &mut |i: usize, step: Step| on_step(base + i, step);
        let (gens, st) = generate(e.model, e.cache, chunk, 0, params, on_chunk)?;
        e.memory.sample();
        all.extend(gens);
        total.prefill_tokens += st.prefill_tokens;
        total.prefill_secs += st.prefill_secs;
        total.decode_tokens += st.decode_tokens;
        total.decode_secs += st.decode_secs;
        total.non_finite |= st.non_finite;
    }
    Ok((all, total))
}

fn stats_json(s: &mut Session, st: &Stats) -> Value {
    json!({
        "device": device::device_name(s.model.device()),
        "dtype": s.model.weight_label(),
        "activations": device::dtype_name(s.model.dtype()),
        "kernels": device::kernels_name(s.model.device()),
        "threads": rayon::current_num_threads(),
        "prefill_tokens": st.prefill_tokens,
        "prefill_tokens_per_s": round2(st.prefill_tokens_per_s()),
        "decode_tokens": st.decode_tokens,
        "decode_tokens_per_s": round2(st.decode_tokens_per_s()),
        "peak_memory_bytes": s.memory.peak(),
        "peak_mapped_resident_bytes": s.memory.peak_file(),
        "mapped_weight_bytes": s.model.mapped_bytes(),
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn result_json(
    prompt: Value,
    prompt_tokens: &[u32],
    g: &Generation,
    text: &str,
    logprobs: bool,
) -> Value {
    let mut r = json!({
        "prompt": prompt,
        "prompt_tokens": prompt_tokens,
        "tokens": g.tokens,
        "text": text,
    });
    if logprobs {
        r["logprobs"] = json!(g.logprobs);
    }
    r
}

fn print_stats_line(s: &mut Session, st: &Stats) {
    eprintln!(
        "prefill {:.1} tokens/s, decode {:.1} tokens/s, peak memory {}",
        st.prefill_tokens_per_s(),
        st.decode_tokens_per_s(),
        human_bytes(s.memory.peak())
    );
}

impl Session {
    fn engine(&mut self) -> Engine<'_> {
        Engine {
            model: &self.model,
            cache: &mut self.cache,
            memory: &mut self.memory,
        }
    }
}

fn complete(s: &mut Session, args: &RunArgs) -> Result<i32> {
    let texts: Vec<String> = if args.examples {
        EXAMPLE_PROMPTS.iter().map(|p| p.to_string()).collect()
    } else {
        args.prompt.clone()
    };
    let prompts = texts
        .iter()
        .map(|t| s.tok.encode(t, true, false, AllowedSpecial::None))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<Value> = texts.iter().map(|t| json!(t)).collect();
    generate_and_report(s, args, inputs, &prompts, &|out, i| {
        write!(out, "{}\n> ", texts[i])
    })
}

/// Generate for every prompt and report: the CLI.md JSON document at the end, or each input's
/// `head` and its completion streamed as it is generated, logprobs when asked, and a separator.
fn generate_and_report(
    s: &mut Session,
    args: &RunArgs,
    inputs: Vec<Value>,
    prompts: &[Vec<u32>],
    head: stream::Head,
) -> Result<i32> {
    let params = gen_params(args, s);
    if !args.json {
        let mut out = stream::OrderedStream::new(&s.tok, prompts.len(), head, args.logprobs);
        let mut failed = None;
        let engine = Engine {
            model: &s.model,
            cache: &mut s.cache,
            memory: &mut s.memory,
        };
        let (_, st) = run_batches(engine, prompts, &params, &mut |i, step| {
            let res = out.step(i, step);
            let ok = res.is_ok();
            failed = failed.take().or(res.err());
            ok
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        print_stats_line(s, &st);
        return Ok(0);
    }
    let (gens, st) = run_batches(s.engine(), prompts, &params, &mut |_, _| true)?;
    let results = inputs
        .into_iter()
        .zip(prompts)
        .zip(&gens)
        .map(|((i, p), g)| {
            Ok(result_json(
                i,
                p,
                g,
                &s.tok.decode(&g.tokens)?,
                args.logprobs,
            ))
        })
        .collect::<Result<Vec<Value>>>()?;
    let doc = json!({"results": results, "stats": stats_json(s, &st)});
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(0)
}

fn chat_format(s: &Session) -> Result<ChatFormat> {
    if let Some(c) = &s.chat {
        return Ok(c.clone());
    }
    match &s.tokenizer_path {
        Some(_) => ChatFormat::for_tokenizer(&s.tok),
        None => ChatFormat::for_model_dir(&s.ckpt_dir),
    }
}

fn chat_batch(s: &mut Session, args: &RunArgs, file: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let list: Vec<Value> = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: expected a JSON list of dialogs ({e})", file.display()))?;
    if list.is_empty() {
        bail!("{}: the list of dialogs is empty", file.display());
    }
    let dialogs = list
        .iter()
        .enumerate()
        .map(|(i, d)| {
            parse_dialog(
                &d.to_string(),
                &format!("{} dialog {}", file.display(), i + 1),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let format = chat_format(s)?;
    let prompts = dialogs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            format
                .encode(&s.tok, d)
                .with_context(|| format!("{} dialog {}", file.display(), i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<Value> = dialogs.iter().map(|d| json!(d)).collect();
    generate_and_report(s, args, inputs, &prompts, &|out, i| {
        for m in &dialogs[i] {
            writeln!(out, "{}: {}\n", capitalize(&m.role), m.content)?;
        }
        write!(out, "> Assistant: ")
    })
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// What differs between the check's two runs, or is not finite, or is empty.
fn compare_runs(first: &[Generation], second: &[Generation], non_finite: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if non_finite {
        problems.push("non-finite logits".to_string());
    }
    for (i, (a, b)) in first.iter().zip(second).enumerate() {
        if a.tokens != b.tokens {
            problems.push(format!("prompt {}: tokens differ between runs", i + 1));
        } else if a
            .logprobs
            .iter()
            .zip(&b.logprobs)
            .any(|(x, y)| x.to_bits() != y.to_bits())
        {
            problems.push(format!("prompt {}: logprobs differ between runs", i + 1));
        }
        if a.logprobs.iter().any(|v| !v.is_finite()) {
            problems.push(format!("prompt {}: non-finite logprobs", i + 1));
        }
        if a.tokens.is_empty() {
            problems.push(format!("prompt {}: nothing generated", i + 1));
        }
    }
    problems
}

/// The CI inference check: fixed prompts as one batch (or the `--prompt`s, `--max-batch-size` at a
/// time), greedy, twice; the two runs must agree token for token and in every logprob bit, and
/// every logit must be finite.
fn check(s: &mut Session, args: &RunArgs) -> Result<i32> {
    let texts: Vec<&str> = if args.prompt.is_empty() {
        CHECK_PROMPTS
            .iter()
            .take(s.cache.max_batch())
            .copied()
            .collect()
    } else {
        args.prompt.iter().map(String::as_str).collect()
    };
    let prompts = texts
        .iter()
        .map(|t| s.tok.encode(t, true, false, AllowedSpecial::None))
        .collect::<Result<Vec<_>>>()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + 1 >= s.cache.max_seq() {
        bail!(
            "--check needs --max-seq-len above {} (its longest prompt is {longest} tokens)",
            longest + 1
        );
    }
    let gen_len = args.max_gen_len.unwrap_or(CHECK_GEN_LEN);
    let params = GenParams {
        max_gen_len: Some(gen_len.min(s.cache.max_seq() - longest)),
        temperature: 0.0,
        top_p: 1.0,
        seed: args.seed,
        logprobs: true,
        // Generate the full length, so that both runs exercise every step.
        stop_ids: Vec::new(),
    };
    let (first, st1) = run_batches(s.engine(), &prompts, &params, &mut |_, _| true)?;
    let (second, st2) = run_batches(s.engine(), &prompts, &params, &mut |_, _| true)?;
    let problems = compare_runs(&first, &second, st1.non_finite || st2.non_finite);
    let ok = problems.is_empty();
    let stats = Stats {
        prefill_tokens: st1.prefill_tokens + st2.prefill_tokens,
        prefill_secs: st1.prefill_secs + st2.prefill_secs,
        decode_tokens: st1.decode_tokens + st2.decode_tokens,
        decode_secs: st1.decode_secs + st2.decode_secs,
        non_finite: st1.non_finite || st2.non_finite,
        cache_len: 0,
    };
    if args.json {
        let results: Vec<Value> = texts
            .iter()
            .zip(&prompts)
            .zip(&first)
            .map(|((t, p), g)| {
                let text = s.tok.decode(&g.tokens).unwrap_or_default();
                result_json(json!(t), p, g, &text, true)
            })
            .collect();
        let doc = json!({
            "ok": ok,
            "problems": problems,
            "results": results,
            "stats": stats_json(s, &stats),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let generated: usize = first.iter().map(|g| g.tokens.len()).sum();
        println!(
            "check {}: {} prompts, {} tokens generated greedily twice on {} {}: {}",
            if ok { "passed" } else { "FAILED" },
            prompts.len(),
            generated,
            device::device_name(s.model.device()),
            s.model.weight_label(),
            if ok {
                "identical and finite".to_string()
            } else {
                problems.join("; ")
            }
        );
        println!(
            "prefill {:.1} tokens/s, decode {:.1} tokens/s, peak memory {}",
            stats.prefill_tokens_per_s(),
            stats.decode_tokens_per_s(),
            human_bytes(s.memory.peak())
        );
    }
    if ok {
        Ok(0)
    } else {
        eprintln!("run --check failed: {}", problems.join("; "));
        Ok(1)
    }
}
