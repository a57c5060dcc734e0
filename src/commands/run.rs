//! `llamactl run` (see CLI.md): load a Meta or HF checkpoint and generate, the way Meta's
//! example_text_completion.py / example_chat_completion.py do, plus an interactive chat and a CI check.
use crate::checkpoint::ModelDir;
use crate::cli::{DeviceChoice, RunArgs, RunDtype};
use crate::runner::chat::{parse_dialog, ChatFormat, Message};
use crate::runner::device::{self, DeviceRequest, DtypeRequest, PeakMemory};
use crate::runner::generate::{generate, GenParams, Generation, Stats};
use crate::runner::kv_cache::KvCache;
use crate::runner::model::{Config, DirWeights, Llama, RopeLayout};
use crate::tokenizer::{AllowedSpecial, Tokenizer};
use crate::util::human_bytes;
use anyhow::{anyhow, bail, Context, Result};
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
    let dtype = device::select_dtype(
        match args.dtype {
            RunDtype::Auto => DtypeRequest::Auto,
            RunDtype::F32 => DtypeRequest::F32,
            RunDtype::F16 => DtypeRequest::F16,
            RunDtype::Bf16 => DtypeRequest::Bf16,
        },
        &device,
    );
    eprintln!(
        "loading {} ({} layout, {} layers, dim {}, {} heads / {} kv heads) on {} as {}",
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
        device::dtype_name(dtype)
    );
    let weights = DirWeights::new(&mdir)?;
    let model = Llama::load(cfg, &weights, &device, dtype, args.max_seq_len)
        .with_context(|| format!("{}", dir.display()))?;
    let cache = model.new_cache(args.max_batch_size, args.max_seq_len)?;
    let memory = PeakMemory::new(&device);
    eprintln!(
        "loaded {:.1}M parameters in {:.2} s (KV cache {})",
        model.config().param_count(model.tied_embeddings()) as f64 / 1e6,
        started.elapsed().as_secs_f64(),
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

fn gen_params(args: &RunArgs, s: &Session) -> GenParams {
    GenParams {
        max_gen_len: args.max_gen_len,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        logprobs: args.logprobs,
        stop_ids: s.tok.stop_ids().to_vec(),
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
        let (gens, st) = generate(&s.model, &mut s.cache, chunk, params, &mut |_, _| {})?;
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
        "dtype": device::dtype_name(s.model.dtype()),
        "prefill_tokens_per_s": round2(st.prefill_tokens_per_s()),
        "decode_tokens_per_s": round2(st.decode_tokens_per_s()),
        "peak_memory_bytes": s.memory.peak(),
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
fn chat_repl(s: &mut Session, args: &RunArgs) -> Result<i32> {
    let interactive = std::io::stdin().is_terminal();
    let format = chat_format(s)?;
    let mut params = gen_params(args, s);
    params.logprobs = false;
    let mut system: Option<String> = None;
    let mut dialog: Vec<Message> = Vec::new();
    if interactive {
        eprintln!("chatting with {} — {REPL_HELP}", s.ckpt_dir.display());
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut turn = 0u64;
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
            let (name, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
            match name {
                "quit" | "exit" | "q" => break,
                "reset" => {
                    dialog.clear();
                    eprintln!("(dialog cleared)");
                }
                "system" => {
                    let text = rest.trim();
                    system = (!text.is_empty()).then(|| text.to_string());
                    dialog.clear();
                    eprintln!(
                        "{}",
                        if system.is_some() {
                            "(system prompt set; dialog cleared)"
                        } else {
                            "(system prompt removed; dialog cleared)"
                        }
                    );
                }
                "help" => eprintln!("{REPL_HELP}"),
                other => eprintln!("unknown command /{other}; {REPL_HELP}"),
            }
            continue;
        }
        dialog.push(Message::new("user", input));
        let prompt = loop {
            let mut full: Vec<Message> = system.iter().map(|t| Message::new("system", t)).collect();
            full.extend(dialog.iter().cloned());
            let ids = format.encode(&s.tok, &full)?;
            // Keep room for a reply: drop the oldest exchange while the prompt is too long.
            if ids.len() + 1 < s.cache.max_seq() || dialog.len() <= 1 {
                break ids;
            }
            dialog.drain(..2.min(dialog.len() - 1));
            eprintln!(
                "(dropped the oldest exchange to fit --max-seq-len {})",
                s.cache.max_seq()
            );
        };
        if prompt.len() >= s.cache.max_seq() {
            eprintln!(
                "that message is {} tokens with the chat format; it does not fit --max-seq-len {}",
                prompt.len(),
                s.cache.max_seq()
            );
            dialog.pop();
            continue;
        }
        if interactive {
            eprint!("assistant> ");
            std::io::stderr().flush().ok();
        }
        // A different sampling stream per turn, reproducible from --seed.
        params.seed = args.seed.wrapping_add(turn);
        turn += 1;
        let mut decoder = s.tok.stream_decoder();
        let mut out = std::io::stdout();
        let (gens, _) = generate(&s.model, &mut s.cache, &[prompt], &params, &mut |_, id| {
            if let Ok(text) = decoder.push(id) {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        })?;
        s.memory.sample();
        let tail = decoder.finish().unwrap_or_default();
        writeln!(out, "{tail}")?;
        out.flush()?;
        let reply = gens
            .first()
            .map(|g| s.tok.decode(&g.tokens))
            .transpose()?
            .unwrap_or_default();
        dialog.push(Message::new("assistant", &reply));
    }
    Ok(0)
}

/// The CI inference check: fixed prompts as one batch, greedy, twice; the two runs must agree token
/// for token and in every logprob bit, and every logit must be finite.
fn check(s: &mut Session, args: &RunArgs) -> Result<i32> {
    let texts: Vec<&str> = CHECK_PROMPTS
        .iter()
        .take(s.cache.max_batch())
        .copied()
        .collect();
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
    let params = GenParams {
        max_gen_len: Some(CHECK_GEN_LEN.min(s.cache.max_seq() - longest)),
        temperature: 0.0,
        top_p: 1.0,
        seed: args.seed,
        logprobs: true,
        // Generate the full length, so that both runs exercise every step.
        stop_ids: Vec::new(),
    };
    let (first, st1) = run_batches(s, &prompts, &params)?;
    let (second, st2) = run_batches(s, &prompts, &params)?;
    let mut problems = Vec::new();
    if st1.non_finite || st2.non_finite {
        problems.push("non-finite logits".to_string());
    }
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
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
    let ok = problems.is_empty();
    let stats = Stats {
        prefill_tokens: st1.prefill_tokens + st2.prefill_tokens,
        prefill_secs: st1.prefill_secs + st2.prefill_secs,
        decode_tokens: st1.decode_tokens + st2.decode_tokens,
        decode_secs: st1.decode_secs + st2.decode_secs,
        non_finite: st1.non_finite || st2.non_finite,
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
            device::dtype_name(s.model.dtype()),
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
