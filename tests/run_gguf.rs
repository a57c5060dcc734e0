//! `llamactl run` on GGUF files: every file `convert --to gguf` writes passes `--check` under every
//! `--dtype`, a GGUF runs like the directory it was converted from (Llama 3.1's `rope_freqs` and
//! the chat template included), llama.cpp's own quantized file gives llama.cpp's tokens, and broken
//! files fail with exit 2 and one line.
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn convert(src: &Path, dst: &Path, extra: &[&str]) {
    let mut args = vec![
        "convert",
        "--to",
        "gguf",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&llamactl(&args));
}

/// A copy of the tiny checkpoint whose params.json says Llama 3.1 (scaled rope).
fn llama31_copy(dir: &Path) -> PathBuf {
    let src = root().join("testdata/tiny-mp1");
    let dst = dir.join("tiny31");
    std::fs::create_dir(&dst).unwrap();
    for f in ["consolidated.00.pth", "tokenizer.model"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut p: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("params.json")).unwrap()).unwrap();
    p["use_scaled_rope"] = Value::Bool(true);
    std::fs::write(dst.join("params.json"), p.to_string()).unwrap();
    dst
}

/// Greedy tokens and logprobs of two prompts as JSON.
fn greedy(ckpt: &Path, dtype: &str) -> Value {
    let out = ok(&llamactl(&[
        "run",
        "--ckpt-dir",
        ckpt.to_str().unwrap(),
        "--dtype",
        dtype,
        "--temperature",
        "0",
        "--max-gen-len",
        "10",
        "--logprobs",
        "--json",
        "--prompt",
        "The capital of France is",
        "--prompt",
        "Numbers: 12345, and words' endings\n\nnew line",
    ]));
    serde_json::from_str(&out).unwrap()
}

/// Same prompt tokens and generated tokens, logprobs within `tol`.
fn assert_same_run(a: &Value, b: &Value, tol: f64, what: &str) {
    let (ra, rb) = (
        a["results"].as_array().unwrap(),
        b["results"].as_array().unwrap(),
    );
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(rb) {
        assert_eq!(
            x["prompt_tokens"], y["prompt_tokens"],
            "{what}: prompt tokens"
        );
        assert_eq!(x["tokens"], y["tokens"], "{what}: tokens");
        for (p, q) in x["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(y["logprobs"].as_array().unwrap())
        {
            let d = (p.as_f64().unwrap() - q.as_f64().unwrap()).abs();
            assert!(d <= tol, "{what}: logprob {p} vs {q}");
        }
    }
}

#[test]
fn check_passes_on_every_gguf_convert_writes_under_every_dtype() {
    let d = tempfile::tempdir().unwrap();
    let tiny = root().join("testdata/tiny-mp1");
    let mut files = Vec::new();
    // Every --dtype convert takes. tiny-mp1's rows (16 values) are shorter than any block, so the
    // quantized types exercise llama-quantize's fallbacks here; the llama-quantize files under
    // testdata/gguf/run carry real k-quant blocks.
    let types = [
        "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m",
        "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
    ];
    for t in types {
        let out = d.path().join(format!("tiny-{t}.gguf"));
        convert(&tiny, &out, &["--dtype", t, "--base"]);
        files.push(out);
    }
    let out = d.path().join("tiny31-instruct.gguf");
    convert(
        &llama31_copy(d.path()),
        &out,
        &["--dtype", "q8_0", "--instruct"],
    );
    files.push(out);
    for f in &files {
        // Every compute dtype on the float and q8_0 files; the file's own types (auto) on the rest.
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let all = ["f32", "f16", "bf16", "q8_0"]
            .iter()
            .any(|t| name.ends_with(&format!("-{t}.gguf")));
        let dtypes: &[&str] = if all {
            &["auto", "f32", "f16", "bf16"]
        } else {
            &["auto"]
        };
        for &dtype in dtypes {
            let out = llamactl(&[
                "run",
                "--ckpt-dir",
                f.to_str().unwrap(),
                "--check",
                "--dtype",
                dtype,
                "--max-seq-len",
                "64",
            ]);
            let text = ok(&out);
            assert!(text.contains("check passed"), "{}: {text}", f.display());
        }
    }
}

/// A GGUF converted from a directory runs like the directory: the tokenizer from the metadata, q/k
/// rows in Meta's order, and Llama 3.1's scaling through `rope_freqs.weight`.
#[test]
fn gguf_runs_like_the_directory_it_came_from() {
    let d = tempfile::tempdir().unwrap();
    let tiny = root().join("testdata/tiny-mp1");
    let tiny31 = llama31_copy(d.path());
    for (src, name) in [(&tiny, "tiny"), (&tiny31, "tiny31")] {
        let f32_file = d.path().join(format!("{name}-f32.gguf"));
        convert(src, &f32_file, &["--dtype", "f32", "--base"]);
        assert_same_run(&greedy(src, "f32"), &greedy(&f32_file, "auto"), 1e-4, name);
        let bf16_file = d.path().join(format!("{name}-bf16.gguf"));
        convert(src, &bf16_file, &["--dtype", "bf16", "--base"]);
        assert_same_run(
            &greedy(src, "bf16"),
            &greedy(&bf16_file, "auto"),
            1e-4,
            name,
        );
    }
}

/// Batch chat with a GGUF uses the file's chat template, which renders the Llama 3 dialog format:
/// the same prompt tokens and reply as the Meta directory's built-in format.
#[test]
fn chat_uses_the_template_in_the_file() {
    let d = tempfile::tempdir().unwrap();
    let src = llama31_copy(d.path());
    let file = d.path().join("31.gguf");
    convert(&src, &file, &["--dtype", "f32", "--instruct"]);
    let dialogs = d.path().join("dialogs.json");
    std::fs::write(
        &dialogs,
        r#"[[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]]"#,
    )
    .unwrap();
    let chat = |ckpt: &Path| -> Value {
        let out = ok(&llamactl(&[
            "run",
            "--ckpt-dir",
            ckpt.to_str().unwrap(),
            "--chat",
            "--dialogs",
            dialogs.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-gen-len",
            "8",
            "--json",
        ]));
        serde_json::from_str(&out).unwrap()
    };
    let (a, b) = (chat(&src), chat(&file));
    assert_eq!(
        a["results"][0]["prompt_tokens"],
        b["results"][0]["prompt_tokens"]
    );
    assert_eq!(a["results"][0]["tokens"], b["results"][0]["tokens"]);
}

/// The bytes of a GGUF file with `edit` applied to the tensor-table entry of `name`: the slice
/// from its type field to the end of its offset field (4 + 8 bytes).
fn edit_tensor_entry(bytes: &mut [u8], name: &str, edit: impl FnOnce(&mut [u8])) {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .expect("tensor name in the table")
        + key.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    edit(&mut bytes[ty..ty + 12]);
}

/// Replace the first occurrence of `from` with `to` (same length).
fn replace(bytes: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap();
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
}

/// A change made to a good file's bytes.
type Edit = dyn Fn(&mut Vec<u8>);

#[test]
fn bad_gguf_files_fail_with_exit_2_and_one_line() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.gguf");
    convert(
        &root().join("testdata/tiny-mp1"),
        &good,
        &["--dtype", "q8_0"],
    );
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Box<Edit>, &str)> = vec![
        (
            "truncated",
            Box::new(|b| b.truncate(b.len() * 2 / 3)),
            "past the end of the file",
        ),
        (
            "unsupported type",
            // I32 has F32's size, so only the type is wrong.
            Box::new(|b| {
                edit_tensor_entry(b, "blk.0.attn_norm.weight", |e| {
                    e[..4].copy_from_slice(&26u32.to_le_bytes())
                })
            }),
            "blk.0.attn_norm.weight is I32, a type llamactl cannot run",
        ),
        (
            "shape vs block size",
            // Q8_0 rows must be multiples of 32 values; the norm has 16.
            Box::new(|b| {
                edit_tensor_entry(b, "blk.0.attn_norm.weight", |e| {
                    e[..4].copy_from_slice(&8u32.to_le_bytes())
                })
            }),
            "tensor blk.0.attn_norm.weight: type Q8_0 with dims [16] has no valid size",
        ),
        (
            "offset past the end",
            Box::new(|b| {
                edit_tensor_entry(b, "output.weight", |e| {
                    e[4..].copy_from_slice(&(1u64 << 40).to_le_bytes())
                })
            }),
            "tensor output.weight: bytes",
        ),
        (
            "missing key",
            Box::new(|b| replace(b, "llama.block_count", "llama.block_cxunt")),
            "metadata key llama.block_count is missing",
        ),
        (
            "architecture",
            Box::new(|b| replace(b, "\u{5}\0\0\0\0\0\0\0llama", "\u{5}\0\0\0\0\0\0\0mamba")),
            "architecture \"mamba\" is not supported",
        ),
        (
            "pre-tokenizer",
            Box::new(|b| replace(b, "llama-bpe", "llama-bpX")),
            "tokenizer.ggml.pre \"llama-bpX\" is not a pre-tokenizer llamactl knows",
        ),
    ];
    for (what, edit, want) in cases {
        let mut b = bytes.clone();
        edit(&mut b);
        let path = d.path().join(format!("{}.gguf", what.replace(' ', "-")));
        std::fs::write(&path, b).unwrap();
        for extra in [&["--check"][..], &["--prompt", "hi"][..]] {
            let mut args = vec!["run", "--ckpt-dir", path.to_str().unwrap()];
            args.extend_from_slice(extra);
            let out = llamactl(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{what}: {err}");
            assert!(err.contains(want), "{what}: {err}");
            let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
            assert_eq!(errors.len(), 1, "{what}: {err}");
            assert!(!err.contains("panicked"), "{what}: {err}");
        }
    }
}

/// Files quantized by llama.cpp's `llama-quantize` (Q4_K_M, Q2_K, Q5_1 and Q4_0 mixes of a random
/// dim-256 model) against `llama-completion`'s greedy bytes (scripts/make_gguf_run_golden.py). The
/// model is random, so the next token is sometimes a near tie that llama.cpp's summation order and
/// ours break differently: every prompt must give llama.cpp's first token, and most its whole
/// continuation (measured: 13 of 16).
#[test]
fn quantized_files_from_llama_quantize_give_llama_cpp_tokens() {
    use llamactl::formats::gguf::GgufFile;
    use llamactl::tokenizer::Tokenizer;
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("testdata/gguf/run/llamacpp.json")).unwrap(),
    )
    .unwrap();
    let (mut whole, mut total) = (0, 0);
    for (mix, prompts) in golden.as_object().unwrap() {
        let file = root().join(format!("testdata/gguf/run/tiny-{mix}.gguf"));
        let tok = Tokenizer::from_gguf(&GgufFile::open(&file).unwrap()).unwrap();
        let mut args = vec![
            "run",
            "--ckpt-dir",
            file.to_str().unwrap(),
            "--temperature",
            "0",
        ];
        args.extend(["--max-gen-len", "12", "--json", "--max-batch-size", "4"]);
        let prompts = prompts.as_object().unwrap();
        for p in prompts.keys() {
            args.extend(["--prompt", p.as_str()]);
        }
        let out: Value = serde_json::from_str(&ok(&llamactl(&args))).unwrap();
        for r in out["results"].as_array().unwrap() {
            // llama.cpp prints control tokens as nothing.
            let ours: Vec<u8> = r["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .filter(|&t| !tok.is_special(t))
                .flat_map(|t| tok.token_bytes(t).unwrap())
                .collect();
            let theirs =
                hex::decode(prompts[r["prompt"].as_str().unwrap()].as_str().unwrap()).unwrap();
            let first = tok
                .token_bytes(r["tokens"][0].as_u64().unwrap() as u32)
                .unwrap();
            assert!(
                theirs.starts_with(&first),
                "{mix} {}: first token",
                r["prompt"]
            );
            total += 1;
            whole += usize::from(ours == theirs);
        }
    }
    assert!(
        whole * 4 >= total * 3,
        "{whole} of {total} continuations equal llama.cpp's"
    );
}

/// The quantized kernels' float order is fixed and the same on every instruction set (see
/// `runner::cpu::qdot`), and each output is summed by one thread: a Q4_K_M file (Q4_K and Q6_K
/// matrices; prompts long enough for full prefill tiles) gives the same tokens and log-probs bit
/// for bit on AVX-512, AVX2 and the portable path, with 1 thread and 2.
#[test]
fn quantized_results_do_not_depend_on_isa_or_threads() {
    let file = root().join("testdata/gguf/run/tiny-q4_k_m.gguf");
    let run = |isa: &str, threads: &str| -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_llamactl"))
            .args([
                "run",
                "--ckpt-dir",
                file.to_str().unwrap(),
                "--temperature",
                "0",
            ])
            .args([
                "--max-gen-len",
                "6",
                "--json",
                "--logprobs",
                "--threads",
                threads,
            ])
            .args(["--prompt", "Once upon a time there was a little fox who"])
            .args(["--prompt", "The capital of France"])
            // More than 16 tokens: the Q4_K panel kernel's activation groups on AVX-512 VNNI.
            .args([
                "--prompt",
                "In the morning the old fisherman walked down to the harbour, checked his nets, \
                 and told the children a long story about the sea",
            ])
            .env("LLAMACTL_CPU_ISA", isa)
            .current_dir(root())
            .output()
            .expect("run llamactl");
        let v: Value = serde_json::from_str(&ok(&out)).unwrap();
        v["results"].clone()
    };
    let want = run("native", "1");
    for (isa, threads) in [("native", "2"), ("avx2", "1"), ("portable", "2")] {
        assert_eq!(run(isa, threads), want, "{isa} with {threads} threads");
    }
}
