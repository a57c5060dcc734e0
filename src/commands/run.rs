//! `llamactl run` (see CLI.md): load a Meta or HF checkpoint and generate, the way Meta's
//! example_text_completion.py / example_chat_completion.py do, plus an interactive chat and a CI check.
use crate::checkpoint::ModelDir;
use crate::cli::{DeviceChoice, RunArgs, RunDtype};
use crate::formats::DType as FDType;
use crate::runner::chat::{parse_dialog, ChatFormat, Message};
use crate::runner::device::{self, DeviceRequest, DtypeRequest, PeakMemory};
use crate::runner::generate::{generate, GenParams, Generation, Stats};
use crate::runner::kv_cache::KvCache;
use crate::runner::memory::MemoryPlan;
use crate::runner::model::{stored_dtype, Config, Llama, Precision, RopeLayout};
use crate::runner::weights::{weight_bytes, DirWeights};
use crate::tokenizer::{AllowedSpecial, Tokenizer};
use crate::util::human_bytes;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Meta's example_text_completion.py prompts, used when no --prompt is given.
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
    memory: PeakMemory,
}

pub fn run(args: &RunArgs) -> Result<i32> {
    let Some(dir) = args.ckpt_dir.as_deref() else {
        bail!("--ckpt-dir is required: a Meta checkpoint dir (params.json) or an HF dir (config.json)");
    };
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
    set_threads(args.threads)?;
    let mut s = load(dir, args)?;
    if args.check {
        return check(&mut s, args);
    }
    if args.chat {
        return match &args.dialogs {
            Some(file) => chat_batch(&mut s, args, file),
            None => chat_repl(&mut s, args),
        };
    }
    complete(&mut s, args)
}

fn load(dir: &Path, args: &RunArgs) -> Result<Session> {
    let started = Instant::now();
    let mdir = ModelDir::open(dir)?;
    let cfg = Config::from_model_dir(&mdir).with_context(|| format!("{}", dir.display()))?;
    let tok = match &args.tokenizer_path {
        Some(p) => Tokenizer::from_file(p)?,
        None => Tokenizer::from_model_dir(dir)?,
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
        match cfg.rope_layout {
            RopeLayout::AdjacentPairs => "Meta",
            RopeLayout::Halves => "HF",
        },
        cfg.n_layers,
        cfg.dim,
        cfg.n_heads,
        cfg.n_kv_heads,
        device::device_name(&device),
    );
    preflight(&mdir, &cfg, &device, precision, args)?;
    let weights = DirWeights::new(&mdir)?;
    let model = Llama::load(cfg, &weights, &device, precision, args.max_seq_len)
        .with_context(|| format!("{}", dir.display()))?;
    let cache = model.new_cache(args.max_batch_size, args.max_seq_len)?;
    let memory = PeakMemory::new(&device);
    eprintln!(
        "loaded {:.1}M parameters in {:.2} s: {} weights{}, {} activations, KV cache {}",
        model.config().param_count(model.tied_embeddings()) as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        device::dtype_name(model.weight_dtype()),
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
        memory,
    })
}

/// Estimate what the run needs before loading anything, and refuse (exit 2) rather than be killed.
fn preflight(
    dir: &ModelDir,
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
    let weights = weight_bytes(dir, target, device.is_cpu())?;
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

/// Size rayon's pool (our kernels and candle's CPU ops share it) once, before any work starts.
/// More threads than cores only take turns on them (and every kernel splits its work per
/// thread), so a larger count is clamped to the cores with a note.
fn set_threads(threads: Option<usize>) -> Result<()> {
    let Some(asked) = threads else { return Ok(()) };
    if asked == 0 {
        bail!("--threads must be at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = asked.min(cores);
    if n < asked {
        eprintln!("note: --threads {asked} is more than the {cores} cores this process may use; using {cores}");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow!("--threads {n}: {e}"))
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

/// Generate for all prompts, --max-batch-size at a time, in order.
fn run_batches(
    s: &mut Session,
    prompts: &[Vec<u32>],
    params: &GenParams,
) -> Result<(Vec<Generation>, Stats)> {
    let mut all = Vec::with_capacity(prompts.len());
    let mut total = Stats::default();
    for chunk in prompts.chunks(s.cache.max_batch()) {
        let (gens, st) = generate(&s.model, &mut s.cache, chunk, 0, params, &mut |_, _| true)?;
        s.memory.sample();
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
        "dtype": device::dtype_name(s.model.weight_dtype()),
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

fn complete(s: &mut Session, args: &RunArgs) -> Result<i32> {
    let texts: Vec<String> = if args.prompt.is_empty() {
        EXAMPLE_PROMPTS.iter().map(|p| p.to_string()).collect()
    } else {
        args.prompt.clone()
    };
    let prompts = texts
        .iter()
        .map(|t| s.tok.encode(t, true, false, AllowedSpecial::None))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<Value> = texts.iter().map(|t| json!(t)).collect();
    generate_and_report(s, args, inputs, &prompts, &|out, i, d| {
        writeln!(out, "{}", texts[i])?;
        writeln!(out, "> {d}")
    })
}

/// Generate for every prompt and report: the CLI.md JSON document, or for each input the lines
/// `show` prints (which end with the completion), logprobs when asked, and a separator.
fn generate_and_report(
    s: &mut Session,
    args: &RunArgs,
    inputs: Vec<Value>,
    prompts: &[Vec<u32>],
    show: &dyn Fn(&mut dyn Write, usize, &str) -> std::io::Result<()>,
) -> Result<i32> {
    let params = gen_params(args, s);
    let (gens, st) = run_batches(s, prompts, &params)?;
    let decoded = gens
        .iter()
        .map(|g| s.tok.decode(&g.tokens))
        .collect::<Result<Vec<_>>>()?;
    if args.json {
        let results: Vec<Value> = inputs
            .into_iter()
            .zip(prompts)
            .zip(gens.iter().zip(&decoded))
            .map(|((i, p), (g, d))| result_json(i, p, g, d, args.logprobs))
            .collect();
        let doc = json!({"results": results, "stats": stats_json(s, &st)});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let mut out = std::io::stdout().lock();
        for (i, (g, d)) in gens.iter().zip(&decoded).enumerate() {
            show(&mut out, i, d)?;
            if args.logprobs {
                writeln!(out, "  logprobs: {:?}", g.logprobs)?;
            }
            writeln!(out, "\n==================================\n")?;
        }
        print_stats_line(s, &st);
    }
    Ok(0)
}

fn chat_format(s: &Session) -> Result<ChatFormat> {
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
    generate_and_report(s, args, inputs, &prompts, &|out, i, t| {
        for m in &dialogs[i] {
            writeln!(out, "{}: {}\n", capitalize(&m.role), m.content)?;
        }
        writeln!(out, "> Assistant: {t}")
    })
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

const REPL_HELP: &str = "commands: /system TEXT (set the system prompt and start over), /reset (forget the dialog), /quit";

/// Interactive chat: one user message per line of stdin, the reply streamed as it is generated.
/// Prompts and help appear only on a terminal, so the same loop serves piped input.
///
/// The KV cache carries over between turns: each turn's prompt is the whole dialog in the chat
/// format, and only the part after what the cache already holds is run, so turn N costs its new
/// tokens. Ctrl-C stops the reply being written; at the prompt (or pressed twice) it leaves.
fn chat_repl(s: &mut Session, args: &RunArgs) -> Result<i32> {
    let interactive = std::io::stdin().is_terminal();
    let format = chat_format(s)?;
    let mut chat = Chat {
        system: None,
        dialog: Vec::new(),
        cached: Vec::new(),
        turn: 0,
    };
    if interactive {
        eprintln!("chatting with {} — {REPL_HELP}", s.ckpt_dir.display());
    }
    interrupt::install();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("\nuser> ");
            std::io::stderr().flush().ok();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        if let Some(cmd) = input.strip_prefix('/') {
            if !chat.command(cmd) {
                break;
            }
            continue;
        }
        chat.dialog.push(Message::new("user", input));
        let Some(prompt) = chat.prompt(s, &format)? else {
            continue;
        };
        if interactive {
            eprint!("assistant> ");
            std::io::stderr().flush().ok();
        }
        chat.reply(s, args, prompt)?;
    }
    Ok(0)
}

/// The state of a REPL chat.
struct Chat {
    system: Option<String>,
    dialog: Vec<Message>,
    /// The tokens whose keys and values the cache holds, position by position.
    cached: Vec<u32>,
    turn: u64,
}

impl Chat {
    /// Run a `/command`; false means leave.
    fn command(&mut self, cmd: &str) -> bool {
        let (name, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
        match name {
            "quit" | "exit" | "q" => return false,
            "reset" => {
                self.dialog.clear();
                eprintln!("(dialog cleared)");
            }
            "system" => {
                let text = rest.trim();
                self.system = (!text.is_empty()).then(|| text.to_string());
                self.dialog.clear();
                eprintln!(
                    "{}",
                    if self.system.is_some() {
                        "(system prompt set; dialog cleared)"
                    } else {
                        "(system prompt removed; dialog cleared)"
                    }
                );
            }
            "help" => eprintln!("{REPL_HELP}"),
            other => eprintln!("unknown command /{other}; {REPL_HELP}"),
        }
        true
    }

    /// The dialog as prompt ids, dropping the oldest exchanges (never the system prompt) until it
    /// leaves room for a reply; None when the last message alone does not fit.
    fn prompt(&mut self, s: &Session, format: &ChatFormat) -> Result<Option<Vec<u32>>> {
        let max_seq = s.cache.max_seq();
        loop {
            let mut full: Vec<Message> = self
                .system
                .iter()
                .map(|t| Message::new("system", t))
                .collect();
            full.extend(self.dialog.iter().cloned());
            let ids = format.encode(&s.tok, &full)?;
            if ids.len() + 1 < max_seq {
                return Ok(Some(ids));
            }
            if self.dialog.len() <= 1 {
                eprintln!(
                    "that message is {} tokens with the chat format; it does not fit --max-seq-len {max_seq}",
                    ids.len()
                );
                self.dialog.pop();
                return Ok(None);
            }
            self.dialog.drain(..2.min(self.dialog.len() - 1));
            eprintln!("(the dialog outgrew --max-seq-len {max_seq}: dropped the oldest exchange)");
        }
    }

    /// Generate and stream the reply to `prompt`, reusing the cached prefix, and record it.
    fn reply(&mut self, s: &mut Session, args: &RunArgs, prompt: Vec<u32>) -> Result<()> {
        let mut params = gen_params(args, s);
        params.logprobs = false;
        // A different sampling stream per turn, reproducible from --seed.
        params.seed = args.seed.wrapping_add(self.turn);
        self.turn += 1;
        let reuse = self
            .cached
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        let mut decoder = s.tok.stream_decoder();
        let mut out = std::io::stdout();
        interrupt::begin();
        let result = generate(
            &s.model,
            &mut s.cache,
            std::slice::from_ref(&prompt),
            reuse,
            &params,
            &mut |_, id| {
                if let Ok(text) = decoder.push(id) {
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                }
                !interrupt::requested()
            },
        );
        let stopped = interrupt::end();
        let (gens, st) = result?;
        s.memory.sample();
        let tail = decoder.finish().unwrap_or_default();
        writeln!(out, "{tail}")?;
        out.flush()?;
        let g = gens.into_iter().next().unwrap_or_default();
        let mut row = prompt;
        row.extend(&g.tokens);
        row.truncate(st.cache_len);
        self.cached = row;
        eprintln!(
            "({}{} new prompt tokens, {} reused from the cache; {} generated, {:.1} tokens/s)",
            if stopped { "stopped; " } else { "" },
            st.prefill_tokens,
            reuse,
            g.tokens.len(),
            st.decode_tokens_per_s()
        );
        let reply = s.tok.decode(&g.tokens)?;
        self.dialog.push(Message::new("assistant", &reply));
        Ok(())
    }
}

/// Ctrl-C in the chat REPL: while a reply is generated the first press stops it; a press at the
/// prompt, or a second one during a reply, ends the program with 130 as a default SIGINT would.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static GENERATING: AtomicBool = AtomicBool::new(false);
    static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_sigint(_: libc::c_int) {
        if GENERATING.load(Ordering::SeqCst) && !STOP.swap(true, Ordering::SeqCst) {
            return;
        }
        // Only async-signal-safe calls here: finish the terminal line and leave.
        unsafe {
            libc::write(2, b"\n".as_ptr().cast(), 1);
            libc::_exit(130);
        }
    }

    pub fn install() {
        // SAFETY: the handler only touches atomics and calls write/_exit.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        }
    }

    pub fn begin() {
        STOP.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
    }

    pub fn requested() -> bool {
        STOP.load(Ordering::SeqCst)
    }

    /// Whether the reply was stopped.
    pub fn end() -> bool {
        GENERATING.store(false, Ordering::SeqCst);
        STOP.swap(false, Ordering::SeqCst)
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
    let (first, st1) = run_batches(s, &prompts, &params)?;
    let (second, st2) = run_batches(s, &prompts, &params)?;
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
            device::dtype_name(s.model.weight_dtype()),
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
