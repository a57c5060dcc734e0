//! `llamactl run` end to end: the binary against golden outputs of Meta's model.py and transformers
//! (made by scripts/make_run_golden.py), the CI check, chat, and input errors.
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn llamactl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run llamactl")
}

fn llamactl_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn llamactl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

fn read_json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(rel)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Five prompts of different lengths as one batch on the tiny Meta checkpoint: the tokens must be
/// exactly those of Meta's model.py + generation loop, and the logprobs within 1e-4.
#[test]
fn meta_batch_matches_model_py_golden() {
    let g = read_json("testdata/run/meta_golden.json");
    let results = g["results"].as_array().unwrap();
    let max_seq = g["max_seq_len"].to_string();
    let max_gen = g["max_gen_len"].to_string();
    let batch = results.len().to_string();
    let mut args = vec![
        "run",
        "--ckpt-dir",
        "testdata/tiny-mp1",
        "--temperature",
        "0",
        "--max-seq-len",
        &max_seq,
        "--max-gen-len",
        &max_gen,
        "--max-batch-size",
        &batch,
        "--logprobs",
        "--json",
    ];
    for r in results {
        args.push("--prompt");
        args.push(r["prompt"].as_str().unwrap());
    }
    let doc = ok_json(&llamactl(&args));
    let got = doc["results"].as_array().unwrap();
    assert_eq!(got.len(), results.len());
    for (i, (want, got)) in results.iter().zip(got).enumerate() {
        assert_eq!(got["prompt"], want["prompt"]);
        assert_eq!(
            ids(&got["prompt_tokens"]),
            ids(&want["prompt_tokens"]),
            "prompt {i}"
        );
        assert_eq!(ids(&got["tokens"]), ids(&want["tokens"]), "prompt {i}");
        let (a, b) = (
            got["logprobs"].as_array().unwrap(),
            want["logprobs"].as_array().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            let d = (x.as_f64().unwrap() - y.as_f64().unwrap()).abs();
            assert!(d < 1e-4, "prompt {i} token {k}: {x} vs {y}");
        }
        assert!(got["text"].is_string());
    }
    let stats = &doc["stats"];
    assert_eq!(stats["device"], "cpu");
    // The checkpoint's own bf16 weights, f32 activations: the f32 model's numbers.
    assert_eq!(stats["dtype"], "bf16");
    assert_eq!(stats["activations"], "f32");
    assert!(stats["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(stats["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(stats["peak_memory_bytes"].as_u64().unwrap() > 0);
}

/// Small HF dirs written by transformers (tied embeddings + GQA + `rope_parameters`; untied MHA +
/// `rope_scaling`; a ChatML template, not Llama 3's): greedy tokens equal LlamaForCausalLM's, for
/// text prompts as one batch and for dialogs rendered with the model's own template.
#[test]
fn hf_dirs_match_transformers_golden() {
    let g = read_json("testdata/run/hf_golden.json");
    let max_gen = g["max_gen_len"].to_string();
    let tmp = tempfile::tempdir().unwrap();
    for m in g["models"].as_array().unwrap() {
        let dir = m["dir"].as_str().unwrap();
        let prompts = m["prompts"].as_array().unwrap();
        let mut args = vec![
            "run",
            "--ckpt-dir",
            dir,
            "--temperature",
            "0",
            "--max-gen-len",
            &max_gen,
            "--json",
        ];
        for p in prompts {
            args.push("--prompt");
            args.push(p["prompt"].as_str().unwrap());
        }
        let doc = ok_json(&llamactl(&args));
        for (want, got) in prompts.iter().zip(doc["results"].as_array().unwrap()) {
            assert_eq!(
                ids(&got["prompt_tokens"]),
                ids(&want["prompt_tokens"]),
                "{dir}"
            );
            assert_eq!(
                ids(&got["tokens"]),
                ids(&want["tokens"]),
                "{dir}: {}",
                want["prompt"]
            );
        }

        let dialogs = m["dialogs"].as_array().unwrap();
        let list: Vec<&Value> = dialogs.iter().map(|d| &d["dialog"]).collect();
        let file = tmp.path().join("dialogs.json");
        std::fs::write(&file, serde_json::to_string(&list).unwrap()).unwrap();
        let file = file.to_str().unwrap();
        let doc = ok_json(&llamactl(&[
            "run",
            "--ckpt-dir",
            dir,
            "--chat",
            "--dialogs",
            file,
            "--temperature",
            "0",
            "--max-gen-len",
            &max_gen,
            "--json",
        ]));
        for (want, got) in dialogs.iter().zip(doc["results"].as_array().unwrap()) {
            assert_eq!(
                ids(&got["prompt_tokens"]),
                ids(&want["prompt_tokens"]),
                "{dir} chat prompt"
            );
            assert_eq!(ids(&got["tokens"]), ids(&want["tokens"]), "{dir} chat");
        }
    }
}

#[test]
fn check_passes_on_the_tiny_model() {
    let out = llamactl(&["run", "--ckpt-dir", "testdata/tiny-mp1", "--check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("check passed"), "{stdout}");
    assert!(stdout.contains("tokens/s"), "{stdout}");

    let doc = ok_json(&llamactl(&[
        "run",
        "--ckpt-dir",
        "testdata/run/hf-tied-gqa",
        "--check",
        "--json",
    ]));
    assert_eq!(doc["ok"], true);
    assert!(doc["problems"].as_array().unwrap().is_empty());
    assert!(doc["stats"]["peak_memory_bytes"].as_u64().unwrap() > 0);
}

/// A weight whose values are not finite must fail the check with exit 1.
#[test]
fn check_fails_on_non_finite_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nan");
    std::fs::create_dir(&dir).unwrap();
    let src = root().join("testdata/run/hf-mha");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    // Overwrite the first f32 of model.norm.weight with NaN, in place in the safetensors data.
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["model.norm.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    bytes[8 + n + start..8 + n + start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let out = llamactl(&["run", "--ckpt-dir", dir.to_str().unwrap(), "--check"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
}

/// The REPL over piped stdin: commands work, and a greedy reply equals batch chat on the same dialog.
#[test]
fn chat_repl_streams_and_keeps_the_dialog() {
    let dir = "testdata/run/hf-mha";
    let common = [
        "run",
        "--ckpt-dir",
        dir,
        "--chat",
        "--temperature",
        "0",
        "--max-gen-len",
        "8",
    ];
    let out = llamactl_stdin(
        &common,
        "Hello there\n/system You are a robot who paints.\nWhat is the capital of France?\n/bogus\n/quit\nnever read\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("system prompt set"), "{stderr}");
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");

    // The second turn was asked after /system, which starts a new dialog.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("d.json");
    std::fs::write(
        &file,
        r#"[[{"role": "user", "content": "Hello there"}],
            [{"role": "system", "content": "You are a robot who paints."},
             {"role": "user", "content": "What is the capital of France?"}]]"#,
    )
    .unwrap();
    let mut args = common.to_vec();
    args.extend(["--dialogs", file.to_str().unwrap(), "--json"]);
    let doc = ok_json(&llamactl(&args));
    let texts: Vec<&str> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, format!("{}\n{}\n", texts[0], texts[1]));
}

#[test]
fn sampling_is_seeded() {
    let run = |seed: &str| {
        let doc = ok_json(&llamactl(&[
            "run",
            "--ckpt-dir",
            "testdata/tiny-mp1",
            "--prompt",
            "Once upon a time",
            "--temperature",
            "1.0",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--max-gen-len",
            "12",
            "--json",
        ]));
        ids(&doc["results"][0]["tokens"])
    };
    let a = run("7");
    assert_eq!(a.len(), 12);
    assert_eq!(a, run("7"));
    assert_ne!(a, run("8"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let long = "word ".repeat(40);
    let out = llamactl(&[
        "run",
        "--ckpt-dir",
        "testdata/tiny-mp1",
        "--max-seq-len",
        "16",
        "--prompt",
        &long,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-seq-len 16"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );

    let out = llamactl(&["run", "--ckpt-dir", "testdata/no-such-dir", "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("testdata/no-such-dir"));

    // A config that disagrees with the weights names the tensor.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bad");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(root().join("testdata/run/hf-mha")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let cfg_path = dir.join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["num_hidden_layers"] = 3.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = llamactl(&["run", "--ckpt-dir", dir.to_str().unwrap(), "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("layers.2."), "{err}");

    if !cfg!(feature = "cuda") {
        let out = llamactl(&[
            "run",
            "--ckpt-dir",
            "testdata/tiny-mp1",
            "--device",
            "cuda",
            "--prompt",
            "x",
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("cuda"));
    }
}

/// The same tiny model converted to HF layout (if this build has `convert`) gives the same tokens:
/// rotary on halves with permuted q/k rows must equal rotary on adjacent pairs.
#[test]
fn hf_layout_of_the_tiny_model_gives_the_same_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let conv = llamactl(&[
        "convert",
        "--to",
        "hf",
        "testdata/tiny-mp1",
        hf.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&conv.stderr);
    if stderr.contains("not available in this build yet") {
        eprintln!("convert is not in this build yet; the HF layout is covered by hf_dirs_match_transformers_golden");
        return;
    }
    assert!(conv.status.success(), "{stderr}");
    let g = read_json("testdata/run/meta_golden.json");
    let results = g["results"].as_array().unwrap();
    // Same tokenizer file for both, so only the weight layout differs.
    for dir in ["testdata/tiny-mp1", hf.to_str().unwrap()] {
        let mut args = vec![
            "run",
            "--ckpt-dir",
            dir,
            "--tokenizer-path",
            "testdata/tokenizer.model",
            "--temperature",
            "0",
            "--max-gen-len",
            "32",
            "--max-batch-size",
            "5",
            "--max-seq-len",
            "128",
            "--logprobs",
            "--json",
        ];
        for r in results {
            args.push("--prompt");
            args.push(r["prompt"].as_str().unwrap());
        }
        let doc = ok_json(&llamactl(&args));
        for (want, got) in results.iter().zip(doc["results"].as_array().unwrap()) {
            assert_eq!(ids(&got["tokens"]), ids(&want["tokens"]), "{dir}");
            for (x, y) in got["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .zip(want["logprobs"].as_array().unwrap())
            {
                assert!(
                    (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4,
                    "{dir}: {x} vs {y}"
                );
            }
        }
    }
}

/// `demo` runs the pipeline on a copy of the tiny checkpoint: every step works (none skipped), down
/// to `run --check` on the quantized GGUF it wrote.
#[test]
fn demo_runs_the_pipeline() {
    let out = llamactl(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("demo: 11 steps ok, 0 skipped, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("run --check on the quantized GGUF"),
        "{stdout}"
    );
    assert!(stdout.contains("check passed"), "{stdout}");
    assert!(!stdout.contains("kept the files"), "{stdout}");
}

/// The chat REPL reuses its KV cache: turn 2 runs only the tokens the cache lacks (the end of the
/// reply and the new message), and its reply equals batch chat on the whole dialog encoded at once.
#[test]
fn chat_turn_two_prefills_only_new_tokens() {
    let dir = "testdata/run/hf-mha";
    let common = [
        "run",
        "--ckpt-dir",
        dir,
        "--chat",
        "--temperature",
        "0",
        "--max-gen-len",
        "6",
        "--max-seq-len",
        "256",
    ];
    let out = llamactl_stdin(&common, "Hello there\nWhat is the capital of France?\n");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let replies: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    // "(N new prompt tokens, M reused from the cache; ...)" per turn.
    let turns: Vec<(usize, usize)> = stderr
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix('(')?;
            let (new, rest) = l.split_once(" new prompt tokens, ")?;
            let (reused, _) = rest.split_once(" reused")?;
            Some((new.parse().ok()?, reused.parse().ok()?))
        })
        .collect();
    assert_eq!(turns.len(), 2, "{stderr}");
    assert_eq!(turns[0].1, 0, "turn 1 starts from an empty cache");

    // The whole dialog at once: its prompt length is what turn 2 covered (new + reused).
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("d.json");
    let dialog = serde_json::json!([[
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": replies[0]},
        {"role": "user", "content": "What is the capital of France?"}
    ]]);
    std::fs::write(&file, dialog.to_string()).unwrap();
    let mut args = common.to_vec();
    args.extend(["--dialogs", file.to_str().unwrap(), "--json"]);
    let doc = ok_json(&llamactl(&args));
    let whole = &doc["results"][0];
    let prompt_len = whole["prompt_tokens"].as_array().unwrap().len();
    let (new, reused) = turns[1];
    assert_eq!(new + reused, prompt_len, "{stderr}");
    // Reused: at least all of turn 1's prompt.
    assert!(reused >= turns[0].0, "{stderr}");
    assert!(
        new <= prompt_len - turns[0].0,
        "turn 2 ran {new} of {prompt_len} tokens"
    );
    assert_eq!(whole["text"].as_str().unwrap(), replies[1]);
}

/// `--dtype auto` keeps bf16 weights (f32 activations) and gives the f32 reference's greedy tokens,
/// logprobs within 1e-2; the weights of a Meta MP 1 file and of HF safetensors are used mapped.
#[test]
fn auto_dtype_matches_the_f32_reference() {
    for dir in ["testdata/tiny-mp1", "testdata/run/hf-mha"] {
        let run = |dtype: &str| {
            ok_json(&llamactl(&[
                "run",
                "--ckpt-dir",
                dir,
                "--dtype",
                dtype,
                "--temperature",
                "0",
                "--max-gen-len",
                "12",
                "--logprobs",
                "--json",
                "--prompt",
                "The capital of France is",
                "--prompt",
                "1, 2, 3,",
            ]))
        };
        let (auto, f32) = (run("auto"), run("f32"));
        assert_eq!(auto["stats"]["activations"], "f32");
        assert_eq!(f32["stats"]["dtype"], "f32");
        assert!(
            auto["stats"]["mapped_weight_bytes"].as_u64().unwrap() > 0,
            "{dir}"
        );
        if auto["stats"]["dtype"] != "f32" {
            assert_eq!(f32["stats"]["mapped_weight_bytes"], 0, "{dir}: widened");
        }
        for (a, b) in auto["results"]
            .as_array()
            .unwrap()
            .iter()
            .zip(f32["results"].as_array().unwrap())
        {
            assert_eq!(ids(&a["tokens"]), ids(&b["tokens"]), "{dir}");
            for (x, y) in a["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .zip(b["logprobs"].as_array().unwrap())
            {
                let d = (x.as_f64().unwrap() - y.as_f64().unwrap()).abs();
                assert!(d <= 1e-2, "{dir}: {x} vs {y}");
            }
        }
    }
}

/// A run that cannot fit in memory is refused before loading, naming the flag to lower.
#[test]
fn memory_preflight_refuses_what_cannot_fit() {
    let started = std::time::Instant::now();
    let out = llamactl(&[
        "run",
        "--ckpt-dir",
        "testdata/tiny-mp1",
        "--max-seq-len",
        "4000000000",
        "--max-batch-size",
        "64",
        "--check",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("KV cache"), "{stderr}");
    assert!(
        stderr.contains("--max-seq-len or --max-batch-size"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{stderr}"
    );
    assert!(started.elapsed().as_secs() < 10);
}

/// A Meta dir with MP 2 is merged into memory (nothing mapped) and gives MP 1's tokens.
#[test]
fn sharded_meta_dir_is_merged_and_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let mp2 = tmp.path().join("mp2");
    let out = llamactl(&[
        "reshard",
        "--mp",
        "2",
        "testdata/tiny-mp1",
        mp2.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = |dir: &str| {
        ok_json(&llamactl(&[
            "run",
            "--ckpt-dir",
            dir,
            "--tokenizer-path",
            "testdata/tokenizer.model",
            "--temperature",
            "0",
            "--max-gen-len",
            "8",
            "--json",
            "--prompt",
            "Hello",
        ]))
    };
    let (one, two) = (run("testdata/tiny-mp1"), run(mp2.to_str().unwrap()));
    assert_eq!(two["stats"]["mapped_weight_bytes"], 0);
    assert!(one["stats"]["mapped_weight_bytes"].as_u64().unwrap() > 0);
    assert_eq!(one["results"][0]["tokens"], two["results"][0]["tokens"]);
}

/// The `cuda` build on a machine without the NVIDIA driver or any CUDA library: it starts,
/// `--device auto` says why it falls back, and the check passes on the CPU; `--device cuda` is a
/// clear error (exit 2).
#[cfg(feature = "cuda")]
#[test]
fn cuda_build_runs_on_the_cpu_without_a_driver() {
    let driver = [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    if driver {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    // No CUDA library on the search path either: the binary must start without libcudart too.
    let bare = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_llamactl"))
            .args(args)
            .current_dir(root())
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .expect("run llamactl")
    };
    let out = bare(&["run", "--ckpt-dir", "testdata/tiny-mp1", "--check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("libcuda") && stderr.contains("running on the CPU"),
        "{stderr}"
    );
    let out = bare(&[
        "run",
        "--ckpt-dir",
        "testdata/tiny-mp1",
        "--device",
        "cuda",
        "--check",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot load libcuda"), "{stderr}");
}

/// `--max-seq-len` from 2^56 to 2^64 - 1: sizes past 64 bits are the preflight's exit 2 with one
/// clear line, never an allocation abort (134) or a capacity-overflow panic (101).
#[test]
fn max_seq_len_past_64_bit_sizes_is_refused_by_the_preflight() {
    for v in [
        "72057594037927936",
        "1152921504606846976",
        "9223372036854775808",
        "18446744073709551615",
    ] {
        let out = llamactl(&[
            "run",
            "--ckpt-dir",
            "testdata/tiny-mp1",
            "--max-seq-len",
            v,
            "--prompt",
            "x",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{v}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains("more than 16 EiB"), "{err}");
        assert!(errors[0].contains("lower --max-seq-len"), "{err}");
    }
}

/// `--threads` above the cores is clamped to them with a note (the pool really has that many).
#[test]
fn threads_above_the_cores_are_clamped_with_a_note() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let asked = (cores * 512).to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .args([
            "run",
            "--ckpt-dir",
            "testdata/tiny-mp1",
            "--check",
            "--json",
            "--threads",
            &asked,
        ])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("run --threads {asked} still running after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "note: --threads {asked} is more than the {cores} cores"
        )),
        "{err}"
    );
    let doc = ok_json(&out);
    assert_eq!(doc["stats"]["threads"], cores, "{doc}");

    let out = llamactl(&["run", "--ckpt-dir", "testdata/tiny-mp1", "--threads", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `--check --prompt P`: the CI check runs on the prompts given (greedy, twice), `--max-gen-len`
/// tokens each; `--check --chat` and `--max-gen-len 0` are refused.
#[test]
fn check_uses_the_given_prompts_and_refuses_chat() {
    let doc = ok_json(&llamactl(&[
        "run",
        "--ckpt-dir",
        "testdata/tiny-mp1",
        "--check",
        "--json",
        "--prompt",
        "Paris is the capital of",
        "--prompt",
        "One, two,",
        "--max-gen-len",
        "5",
    ]));
    assert_eq!(doc["ok"], true, "{doc}");
    let results = doc["results"].as_array().unwrap();
    let prompts: Vec<&str> = results
        .iter()
        .map(|r| r["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(prompts, ["Paris is the capital of", "One, two,"]);
    for r in results {
        assert_eq!(r["tokens"].as_array().unwrap().len(), 5, "{r}");
    }
    for (extra, says) in [
        (&["--chat"][..], "--check"),
        (&["--max-gen-len", "0"][..], "--max-gen-len"),
    ] {
        let mut args = vec!["run", "--ckpt-dir", "testdata/tiny-mp1", "--check"];
        args.extend_from_slice(extra);
        let out = llamactl(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(says), "{err}");
    }
}

/// Each kernel path this CPU can run (`LLAMACTL_CPU_ISA`) gives the golden greedy tokens, the same
/// tokens as every other path on a prompt long enough for the prefill tiles, and bit-identical
/// logprobs at 1 and 2 threads (every output element is summed by one thread in a fixed order).
#[test]
fn every_kernel_path_gives_the_same_tokens_at_any_thread_count() {
    let g = read_json("testdata/run/meta_golden.json");
    let results = g["results"].as_array().unwrap();
    let long = "the quick brown fox jumps over a lazy dog while ".repeat(4);
    let mut prompts: Vec<&str> = results
        .iter()
        .map(|r| r["prompt"].as_str().unwrap())
        .collect();
    prompts.push(&long);
    let run = |isa: &str, threads: &str| -> Value {
        let mut args = vec![
            "run",
            "--ckpt-dir",
            "testdata/tiny-mp1",
            "--temperature",
            "0",
            "--max-gen-len",
            "16",
            "--max-batch-size",
            "6",
            "--max-seq-len",
            "128",
            "--threads",
            threads,
            "--logprobs",
            "--json",
        ];
        for p in &prompts {
            args.push("--prompt");
            args.push(p);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_llamactl"))
            .args(&args)
            .env("LLAMACTL_CPU_ISA", isa)
            .current_dir(root())
            .output()
            .expect("run llamactl");
        ok_json(&out)
    };
    let mut first: Option<(String, Vec<Vec<u64>>)> = None;
    for isa in ["native", "avx2", "portable"] {
        let one = run(isa, "1");
        let two = run(isa, "2");
        let kernels = one["stats"]["kernels"].as_str().unwrap().to_string();
        assert_eq!(one["results"], two["results"], "{kernels}: 1 vs 2 threads");
        let tokens: Vec<Vec<u64>> = one["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| ids(&r["tokens"]))
            .collect();
        for (want, got) in results.iter().zip(&tokens) {
            let want = ids(&want["tokens"]);
            assert_eq!(got[..], want[..got.len()], "{kernels}: golden tokens");
        }
        match &first {
            None => first = Some((kernels, tokens)),
            Some((k0, t0)) => assert_eq!(&tokens, t0, "{kernels} vs {k0}"),
        }
    }
}
