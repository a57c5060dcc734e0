//! `llamactl convert --to gguf` end to end against golden files that scripts/check_gguf.py wrote
//! from llama.cpp's own converter: every metadata key (order, type, value or digest), the tensor
//! table (names, order, GGML types, dims, offsets) and each tensor's sha256. From the Meta dir
//! (MP 1 and MP 2) and from the HF dir `convert --to hf` makes. Plus refusals, and `inspect` /
//! `verify` on the written file.
use llamactl::formats::gguf::GgufFile;
use llamactl::formats::quant::quantize_q8_0;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Run llamactl; returns (exit code, stdout, stderr).
pub(crate) fn llamactl(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn convert(to: &str, src: &Path, dst: &Path, extra: &[&str]) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"convert", &"--to", &to, &src, &dst];
    for e in extra {
        args.push(e);
    }
    let (code, _, err) = llamactl(&args);
    assert_eq!(code, 0, "convert --to {to} {}: {err}", src.display());
}

/// Keys derived from the directory name: the converter and llamactl name models differently.
const NAMING: [&str; 7] = [
    "general.name",
    "general.basename",
    "general.size_label",
    "general.finetune",
    "general.type",
    "general.version",
    "general.organization",
];

/// The file's structure in the golden's terms: [key, type, value | {"sha256"}] and
/// [name, type, dims, offset, sha256].
pub(crate) fn structure(path: &Path) -> (Vec<Value>, Vec<Value>) {
    let g = GgufFile::open(path).unwrap();
    let kvs = g
        .kvs
        .iter()
        .filter(|(k, _)| !NAMING.contains(&k.as_str()))
        .map(|(k, v)| {
            let shown = match v {
                llamactl::formats::gguf::Value::Array(..) => {
                    serde_json::json!({"sha256": hex::encode(Sha256::digest(v.encoded()))})
                }
                other => other.to_json(usize::MAX),
            };
            serde_json::json!([k, v.type_code(), shown])
        })
        .collect();
    let mut f = std::fs::File::open(path).unwrap();
    let tensors = g
        .tensors
        .iter()
        .map(|t| {
            let mut data = vec![0u8; t.nbytes().unwrap() as usize];
            f.seek(SeekFrom::Start(g.data_offset + t.offset)).unwrap();
            f.read_exact(&mut data).unwrap();
            let sha = hex::encode(Sha256::digest(&data));
            serde_json::json!([t.name, t.ggml_type.0, t.dims, t.offset, sha])
        })
        .collect();
    (kvs, tensors)
}

pub(crate) fn golden(name: &str) -> (Vec<Value>, Vec<Value>) {
    let text = std::fs::read_to_string(testdata().join("gguf").join(name)).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let kvs = doc["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|kv| !NAMING.contains(&kv[0].as_str().unwrap()))
        .cloned()
        .collect();
    (kvs, doc["tensors"].as_array().unwrap().clone())
}

pub(crate) fn assert_matches_golden(file: &Path, golden_name: &str) {
    let (kvs, tensors) = structure(file);
    let (gk, gt) = golden(golden_name);
    let keys = |v: &[Value]| -> Vec<String> { v.iter().map(|x| x[0].to_string()).collect() };
    assert_eq!(keys(&kvs), keys(&gk), "{golden_name}: metadata keys");
    for (a, b) in kvs.iter().zip(&gk) {
        assert_eq!(a, b, "{golden_name}: metadata {}", a[0]);
    }
    assert_eq!(tensors.len(), gt.len(), "{golden_name}: tensor count");
    for (a, b) in tensors.iter().zip(&gt) {
        assert_eq!(a, b, "{golden_name}: tensor {}", a[0]);
    }
}

#[test]
fn meta_and_hf_sources_match_llama_cpp() {
    let d = tempfile::tempdir().unwrap();
    let tiny = testdata().join("tiny-mp1");
    for (t, golden) in [
        ("bf16", "tiny-mp1-bf16.json"),
        ("q8_0", "tiny-mp1-q8_0.json"),
    ] {
        let out = d.path().join(format!("meta-{t}.gguf"));
        convert("gguf", &tiny, &out, &["--dtype", t, "--base"]);
        assert_matches_golden(&out, golden);
    }
    // The default file type is the source's (bf16).
    let out = d.path().join("default.gguf");
    convert("gguf", &tiny, &out, &[]);
    assert_matches_golden(&out, "tiny-mp1-bf16.json");
    // From the HF dir: q/k rows un-permuted, same file.
    let hf = d.path().join("hf");
    convert("hf", &tiny, &hf, &["--base"]);
    let out = d.path().join("hf-bf16.gguf");
    convert("gguf", &hf, &out, &["--dtype", "bf16"]);
    assert_matches_golden(&out, "tiny-mp1-bf16.json");
}

#[test]
fn mp2_source_writes_the_same_file() {
    let d = tempfile::tempdir().unwrap();
    let mp2 = d.path().join("tiny-mp1");
    let (code, _, err) = llamactl(&[
        &"reshard",
        &"--mp",
        &"2",
        &testdata().join("tiny-mp1"),
        &mp2,
    ]);
    assert_eq!(code, 0, "{err}");
    let out = d.path().join("mp2.gguf");
    convert("gguf", &mp2, &out, &["--dtype", "q8_0"]);
    assert_matches_golden(&out, "tiny-mp1-q8_0.json");
}

/// A copy of the tiny checkpoint whose params.json says Llama 3.1 (scaled rope).
fn llama31_copy(dir: &Path) -> PathBuf {
    let src = testdata().join("tiny-mp1");
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

#[test]
fn llama31_instruct_has_rope_freqs_and_chat_template() {
    let d = tempfile::tempdir().unwrap();
    let src = llama31_copy(d.path());
    let out = d.path().join("31.gguf");
    convert("gguf", &src, &out, &["--dtype", "f32", "--instruct"]);
    assert_matches_golden(&out, "tiny31-instruct-f32.json");
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.tensors[0].name, "rope_freqs.weight");
    assert!(g.get("tokenizer.chat_template").is_some());
    let hf = d.path().join("hf31");
    convert("hf", &src, &hf, &["--instruct"]);
    let out = d.path().join("hf31.gguf");
    convert("gguf", &hf, &out, &["--dtype", "f32"]);
    assert_matches_golden(&out, "tiny31-instruct-f32.json");
}

/// The chat-template keys at the end of a GGUF file: (key, string value or the array's strings).
fn template_keys(path: &Path) -> Vec<(String, String)> {
    let g = GgufFile::open(path).unwrap();
    g.kvs
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.chat_template"))
        .map(|(k, v)| (k.clone(), v.to_json(usize::MAX).to_string()))
        .collect()
}

#[test]
fn chat_template_lists_and_template_files_become_named_templates() {
    let d = tempfile::tempdir().unwrap();
    let hf = d.path().join("hf");
    convert("hf", &testdata().join("tiny-mp1"), &hf, &["--instruct"]);
    let cfg_path = hf.join("tokenizer_config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    // tokenizer_config.json's list form: names are sanitised, `default` comes last.
    cfg["chat_template"] = serde_json::json!([
        {"name": "default", "template": "D"},
        {"name": "tool use", "template": "T"},
        {"template": "no name: skipped"},
    ]);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = d.path().join("list.gguf");
    convert("gguf", &hf, &out, &[]);
    let q = |s: &str| format!("{s:?}");
    assert_eq!(
        template_keys(&out),
        vec![
            ("tokenizer.chat_template.tool_use".into(), q("T")),
            ("tokenizer.chat_templates".into(), r#"["tool_use"]"#.into()),
            ("tokenizer.chat_template".into(), q("D")),
        ]
    );
    // Template files beside the config, used when the config has none.
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    std::fs::write(hf.join("chat_template.jinja"), "J").unwrap();
    std::fs::create_dir(hf.join("additional_chat_templates")).unwrap();
    std::fs::write(hf.join("additional_chat_templates/rag.jinja"), "R").unwrap();
    let out = d.path().join("files.gguf");
    convert("gguf", &hf, &out, &[]);
    assert_eq!(
        template_keys(&out),
        vec![
            ("tokenizer.chat_template.rag".into(), q("R")),
            ("tokenizer.chat_templates".into(), r#"["rag"]"#.into()),
            ("tokenizer.chat_template".into(), q("J")),
        ]
    );
}

#[test]
fn q8_0_bytes_equal_gguf_py() {
    let text = std::fs::read_to_string(testdata().join("gguf/q8_0.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let input: Vec<f32> = doc["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let mut out = Vec::new();
    quantize_q8_0(&input, &mut out);
    assert_eq!(hex::encode(out), doc["q8_0_hex"].as_str().unwrap());
}

#[test]
fn refusals_are_clear_and_leave_nothing() {
    let d = tempfile::tempdir().unwrap();
    let tiny = testdata().join("tiny-mp1");
    let out = d.path().join("m.gguf");
    std::fs::write(&out, b"old").unwrap();
    let (code, _, err) = llamactl(&[&"convert", &"--to", &"gguf", &tiny, &out]);
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    // A tokenizer that is not Llama 3's.
    let other = testdata().join("run/hf-mha");
    let out2 = d.path().join("other.gguf");
    let (code, _, err) = llamactl(&[&"convert", &"--to", &"gguf", &other, &out2]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Llama 3"), "{err}");
    // Llama 2 layout.
    let l2 = testdata().join("misc/llama2-mp2");
    let (code, _, err) = llamactl(&[&"convert", &"--to", &"gguf", &l2, &out2]);
    assert_eq!(code, 2, "{err}");
    // q8_0 is a GGUF type only.
    let (code, _, err) = llamactl(&[
        &"convert",
        &"--to",
        &"hf",
        &tiny,
        &d.path().join("hf"),
        &"--dtype",
        &"q8_0",
    ]);
    assert_eq!(code, 2, "{err}");
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["m.gguf"], "no .part or half-written outputs");
}

#[test]
fn inspect_and_verify_read_gguf() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.gguf");
    convert("gguf", &testdata().join("tiny-mp1"), &out, &[]);
    let (code, stdout, err) = llamactl(&[&"inspect", &out, &"--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["format"], "gguf");
    assert_eq!(doc["tensors"].as_array().unwrap().len(), 21);
    let embd = doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(embd["dtype"], "BF16");
    assert_eq!(embd["shape"], serde_json::json!([128256, 16]));
    assert_eq!(doc["metadata"]["general.architecture"], "llama");
    let (code, stdout, err) = llamactl(&[&"verify", &out, &"--json"]);
    assert_eq!(code, 0, "{stdout} {err}");
    // Cut the last tensor short: verify names it and fails.
    let len = std::fs::metadata(&out).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
    f.set_len(len - 100).unwrap();
    let (code, stdout, _) = llamactl(&[&"verify", &out, &"--json"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("runs past the end") || stdout.contains("run past the end"));
}

#[test]
fn interrupt_removes_the_part_file() {
    use std::os::unix::process::CommandExt;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.gguf");
    let part = d.path().join("m.gguf.part");
    let child = Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .args(["convert", "--to", "gguf"])
        .arg(testdata().join("tiny-mp1"))
        .arg(&out)
        .env("LLAMACTL_TEST_SLOW_MS", "40")
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !part.exists() && start.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(part.exists(), "the .part never appeared");
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let res = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "{err}");
    assert!(!part.exists() && !out.exists(), "{err}");
    assert!(err.contains("interrupted"), "{err}");
}
