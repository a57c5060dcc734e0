//! `llamactl verify` against corrupted copies of the fixtures: every problem kind is produced by a
//! real damaged file and must show up in the JSON report and the exit code.
use llamactl::checkpoint::{checklist, hashing, layout};
use llamactl::formats::pth::{self, PthFile, TensorSpec};
use llamactl::formats::safetensors;
use llamactl::formats::DType;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// A private copy of a fixture dir (symlinks copied as the files they point to).
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(testdata(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn llamactl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llamactl"));
    cmd.args(args).env_remove("GITHUB_ACTIONS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `verify --json` and return (exit code, report).
fn verify(dir: &Path, extra: &[&str]) -> (i32, Value) {
    let d = dir.to_str().unwrap();
    let mut args = vec!["verify", d, "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = llamactl(&args, &[]);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {err}"));
    (code, v)
}

fn kinds(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_owned())
        .collect();
    k.sort();
    k.dedup();
    k
}

fn details(v: &Value) -> String {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["detail"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expect exit 1 with exactly these problem kinds.
fn expect_problems(dir: &Path, extra: &[&str], want: &[&str]) -> Value {
    let (code, v) = verify(dir, extra);
    assert_eq!(kinds(&v), want, "{}", details(&v));
    assert_eq!(code, 1);
    assert_eq!(v["ok"], false);
    v
}

fn file_status(v: &Value, name: &str) -> Value {
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Rewrite checklist.chk to match the files now present (to isolate a structural problem).
fn regenerate_checklist(dir: &Path) {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name != "checklist.chk" {
            let md5 = hashing::md5_file(&dir.join(&name), &|_| {}).unwrap();
            entries.push(checklist::Entry { md5, name });
        }
    }
    std::fs::write(
        dir.join("checklist.chk"),
        checklist::render(&entries).unwrap(),
    )
    .unwrap();
}

type Tensors = Vec<(TensorSpec, Vec<u8>)>;

fn read_shard(path: &Path) -> Tensors {
    let f = PthFile::open(path).unwrap();
    f.tensors()
        .iter()
        .map(|t| {
            let spec = TensorSpec {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
            };
            (spec, f.bytes(t).unwrap().into_owned())
        })
        .collect()
}

/// Rewrite one shard through `edit`, then regenerate the checklist.
fn edit_shard(dir: &Path, shard: &str, edit: impl FnOnce(&mut Tensors)) {
    let path = dir.join(shard);
    let mut t = read_shard(&path);
    edit(&mut t);
    pth::write_small(&path, &t).unwrap();
    regenerate_checklist(dir);
}

fn tensor<'a>(t: &'a mut Tensors, name: &str) -> &'a mut (TensorSpec, Vec<u8>) {
    t.iter_mut().find(|(s, _)| s.name == name).unwrap()
}

#[test]
fn clean_fixtures_pass_with_full_json() {
    let (code, v) = verify(&testdata("tiny-mp1"), &["--deep"]);
    assert_eq!(code, 0, "{}", details(&v));
    assert_eq!(v["ok"], true);
    assert_eq!(v["format"], "meta");
    assert_eq!(v["problems"], json!([]));
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for f in files {
        assert_eq!(f["status"], "ok");
        assert_eq!(f["md5"], f["expected"]);
        assert_eq!(f["md5"].as_str().unwrap().len(), 32);
    }
    let checks: BTreeMap<String, String> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    for c in [
        "checksums",
        "params",
        "shards",
        "tensors",
        "tokenizer",
        "values",
    ] {
        assert_eq!(checks[c], "ok", "{c}: {checks:?}");
    }
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 21);
    let norm = tensors.iter().find(|t| t["name"] == "norm.weight").unwrap();
    assert_eq!(norm["file"], "consolidated.00.pth");
    assert_eq!(norm["dtype"], "BF16");
    assert_eq!(norm["shape"], json!([16]));
    assert_eq!(
        (norm["nan"].as_u64(), norm["inf"].as_u64()),
        (Some(0), Some(0))
    );
    let (min, max) = (norm["min"].as_f64().unwrap(), norm["max"].as_f64().unwrap());
    let (mean, std) = (
        norm["mean"].as_f64().unwrap(),
        norm["std"].as_f64().unwrap(),
    );
    assert!(min <= mean && mean <= max && std >= 0.0 && std <= max - min);

    // The other layouts: MP 2 with replicated norms, and Llama 2 (f16, column-split embedding,
    // rope.freqs, vocab -1); human output for one of them.
    for d in ["small-mp1", "small-mp2", "misc/llama2-mp2"] {
        let (code, v) = verify(&testdata(d), &["--deep", "--jobs", "1"]);
        assert_eq!(code, 0, "{d}: {}", details(&v));
    }
    let (code, out, _) = llamactl(&["verify", testdata("small-mp2").to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("replicas") && out.contains("result: OK"),
        "{out}"
    );
}

#[test]
fn unusable_input_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, err) = llamactl(
        &["verify", tmp.path().join("absent").to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("absent") && err.contains("no such file or directory"),
        "{err}"
    );
    std::fs::write(tmp.path().join("notes.txt"), "hi").unwrap();
    let (code, _, err) = llamactl(&["verify", tmp.path().to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("params.json") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn flipped_byte_is_an_md5_mismatch_naming_both_digests() {
    let d = copy_fixture("small-mp2");
    let p = d.path().join("consolidated.01.pth");
    let before = hashing::md5_file(&p, &|_| {}).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    // Low mantissa bit of a value in the middle of the tensor data: still a valid checkpoint.
    let mid = (bytes.len() / 2) & !1;
    bytes[mid] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    let after = hashing::md5_file(&p, &|_| {}).unwrap();
    let v = expect_problems(d.path(), &[], &["md5_mismatch"]);
    let f = file_status(&v, "consolidated.01.pth");
    assert_eq!(f["status"], "mismatch");
    assert_eq!(
        (f["md5"].as_str(), f["expected"].as_str()),
        (Some(&*after), Some(&*before))
    );
    let text = details(&v);
    assert!(text.contains(&before) && text.contains(&after), "{text}");
    assert_eq!(file_status(&v, "consolidated.00.pth")["status"], "ok");
}

#[test]
fn truncated_shard_is_corrupt() {
    let d = copy_fixture("small-mp2");
    let p = d.path().join("consolidated.00.pth");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let v = expect_problems(d.path(), &["--deep"], &["corrupt_shard", "md5_mismatch"]);
    assert!(details(&v).contains("consolidated.00.pth"));
    // The other shard is still checked and scanned.
    let tensors = v["tensors"].as_array().unwrap();
    assert!(!tensors.is_empty() && tensors.iter().all(|t| t["file"] == "consolidated.01.pth"));
}

#[test]
fn missing_shards_first_or_last() {
    // A gap in the numbering.
    let d = copy_fixture("small-mp2");
    std::fs::remove_file(d.path().join("consolidated.00.pth")).unwrap();
    let v = expect_problems(d.path(), &[], &["missing_file", "missing_shard"]);
    assert_eq!(file_status(&v, "consolidated.00.pth")["status"], "missing");
    // The last shard: no gap, but the shapes give the MP away, even without the checklist.
    let d = copy_fixture("small-mp2");
    std::fs::remove_file(d.path().join("consolidated.01.pth")).unwrap();
    let v = expect_problems(d.path(), &["--no-md5"], &["missing_shard"]);
    assert!(
        details(&v).contains("consolidated.01.pth is missing"),
        "{}",
        details(&v)
    );
}

#[test]
fn extra_tensor_is_unexpected() {
    let d = copy_fixture("small-mp1");
    edit_shard(d.path(), "consolidated.00.pth", |t| {
        t.push((
            TensorSpec {
                name: "layers.0.attention.bias".into(),
                dtype: DType::BF16,
                shape: vec![4],
            },
            vec![0; 8],
        ))
    });
    let v = expect_problems(d.path(), &[], &["unexpected_tensor"]);
    assert_eq!(v["problems"][0]["tensor"], "layers.0.attention.bias");
}

#[test]
fn wrong_shape_missing_tensor_and_wrong_dtype() {
    let d = copy_fixture("small-mp2");
    edit_shard(d.path(), "consolidated.01.pth", |t| {
        let w1 = tensor(t, "layers.1.feed_forward.w1.weight");
        w1.0.shape = vec![47, 32];
        w1.1.truncate(47 * 32 * 2);
    });
    let v = expect_problems(d.path(), &[], &["wrong_shape"]);
    let text = details(&v);
    assert!(
        text.contains("consolidated.01.pth")
            && text.contains("[47, 32]")
            && text.contains("[48, 32]"),
        "{text}"
    );

    let d = copy_fixture("small-mp1");
    edit_shard(d.path(), "consolidated.00.pth", |t| {
        t.retain(|(s, _)| s.name != "layers.1.attention.wk.weight");
        let wo = tensor(t, "layers.0.attention.wo.weight");
        let widened: Vec<u8> =
            wo.1.chunks_exact(2)
                .flat_map(|b| {
                    f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16).to_le_bytes()
                })
                .collect();
        wo.0.dtype = DType::F32;
        wo.1 = widened;
    });
    let v = expect_problems(d.path(), &[], &["missing_tensor", "wrong_dtype"]);
    let text = details(&v);
    assert!(
        text.contains("layers.1.attention.wk.weight") && text.contains("F32"),
        "{text}"
    );
}

#[test]
fn nan_and_inf_are_found_by_deep_only() {
    let d = copy_fixture("small-mp2");
    edit_shard(d.path(), "consolidated.00.pth", |t| {
        let wv = tensor(t, "layers.1.attention.wv.weight");
        wv.1[10..12].copy_from_slice(&0x7fc0u16.to_le_bytes()); // bf16 NaN
        wv.1[40..42].copy_from_slice(&0xff80u16.to_le_bytes()); // bf16 -Inf
    });
    let (code, v) = verify(d.path(), &[]);
    assert_eq!(code, 0, "{}", details(&v));
    let v = expect_problems(d.path(), &["--deep"], &["non_finite"]);
    let text = details(&v);
    assert!(text.contains("consolidated.00.pth") && text.contains("layers.1.attention.wv.weight"));
    assert!(text.contains("1 NaN and 1 Inf"), "{text}");
    let t = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "layers.1.attention.wv.weight" && t["file"] == "consolidated.00.pth")
        .unwrap();
    assert_eq!((t["nan"].as_u64(), t["inf"].as_u64()), (Some(1), Some(1)));
    assert!(t["min"].as_f64().unwrap().is_finite());
}

#[test]
fn replicated_norm_must_be_identical() {
    let d = copy_fixture("small-mp2");
    edit_shard(d.path(), "consolidated.01.pth", |t| {
        tensor(t, "layers.0.ffn_norm.weight").1[6] ^= 0x10;
    });
    let v = expect_problems(d.path(), &[], &["replica_mismatch"]);
    let p = &v["problems"][0];
    assert_eq!(p["tensor"], "layers.0.ffn_norm.weight");
    assert!(p["detail"]
        .as_str()
        .unwrap()
        .contains("consolidated.00.pth"));
}

#[test]
fn checklist_problems_bad_lines_unlisted_missing() {
    let d = copy_fixture("small-mp2");
    // Something outside the dir that a followed `..` line would read.
    let mut chk = std::fs::read_to_string(d.path().join("checklist.chk")).unwrap();
    chk.push_str("0123456789abcdef0123456789abcdef  ../outside.txt\n");
    chk.push_str("0123456789abcdef0123456789abcdef  /etc/hostname\n");
    chk.push_str("not a checklist line\n");
    chk.push_str("0123456789abcdef0123456789abcdef  tokenizer.model\n");
    std::fs::write(d.path().join("checklist.chk"), chk).unwrap();
    std::fs::write(d.path().join("notes.txt"), "mine").unwrap();
    let v = expect_problems(
        d.path(),
        &[],
        &["bad_checklist_line", "missing_file", "unlisted_file"],
    );
    let bad = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "bad_checklist_line")
        .count();
    assert_eq!(bad, 3);
    assert_eq!(file_status(&v, "tokenizer.model")["status"], "missing");
    assert_eq!(file_status(&v, "notes.txt")["status"], "unlisted");
    // Unsafe names never become file entries.
    let names: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("..") || n.starts_with('/')),
        "{names:?}"
    );

    // A Meta dir without a checklist cannot prove its integrity, unless md5 is skipped.
    std::fs::remove_file(d.path().join("checklist.chk")).unwrap();
    std::fs::remove_file(d.path().join("notes.txt")).unwrap();
    expect_problems(d.path(), &[], &["no_checklist"]);
    let (code, v) = verify(d.path(), &["--no-md5"]);
    assert_eq!(code, 0, "{}", details(&v));
}

#[test]
fn params_mp_and_tokenizer_problems() {
    // Inconsistent params.json.
    let d = copy_fixture("small-mp1");
    std::fs::write(
        d.path().join("params.json"),
        r#"{"dim": 30, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2, "vocab_size": 256, "multiple_of": 32, "norm_eps": 1e-05}"#,
    )
    .unwrap();
    regenerate_checklist(d.path());
    let v = expect_problems(d.path(), &[], &["invalid_params"]);
    assert!(details(&v).contains("not divisible"), "{}", details(&v));

    // Three shards: 8 heads do not split three ways.
    let d = copy_fixture("small-mp2");
    std::fs::copy(
        d.path().join("consolidated.01.pth"),
        d.path().join("consolidated.02.pth"),
    )
    .unwrap();
    regenerate_checklist(d.path());
    let v = expect_problems(d.path(), &[], &["invalid_mp"]);
    assert!(details(&v).contains("valid: 1, 2"), "{}", details(&v));

    // tokenizer.model: one rank short of vocab_size, then not a tiktoken file at all.
    let d = copy_fixture("tiny-mp1");
    let tok = std::fs::read_to_string(d.path().join("tokenizer.model")).unwrap();
    let short: String = tok
        .lines()
        .take(127_999)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(d.path().join("tokenizer.model"), short).unwrap();
    regenerate_checklist(d.path());
    let v = expect_problems(d.path(), &[], &["vocab_mismatch"]);
    assert!(details(&v).contains("127999"), "{}", details(&v));
    std::fs::write(d.path().join("tokenizer.model"), "IQ== 0\nnot-base64! 1\n").unwrap();
    regenerate_checklist(d.path());
    let v = expect_problems(d.path(), &[], &["invalid_tokenizer"]);
    assert!(details(&v).contains("line 2"), "{}", details(&v));
}

#[test]
fn github_annotations() {
    let d = copy_fixture("small-mp2");
    std::fs::write(d.path().join("notes.txt"), "x").unwrap();
    let dir = d.path().to_str().unwrap();
    let (code, out, _) = llamactl(&["verify", dir], &[("GITHUB_ACTIONS", "true")]);
    assert_eq!(code, 1);
    let line = out
        .lines()
        .find(|l| l.starts_with("::error "))
        .unwrap_or_else(|| panic!("no annotation in {out}"));
    assert!(
        line.contains("file=") && line.contains("notes.txt"),
        "{line}"
    );
    assert!(
        line.contains("::notes.txt: present but not listed"),
        "{line}"
    );
    // With --json the document stays parseable; annotations go to stderr.
    let (_, out, err) = llamactl(&["verify", dir, "--json"], &[("GITHUB_ACTIONS", "true")]);
    assert!(serde_json::from_str::<Value>(&out).is_ok());
    assert!(err.contains("::error file="), "{err}");
    let (_, out, _) = llamactl(&["verify", dir], &[]);
    assert!(!out.contains("::error"));
}

// ---------------------------------------------------------------------------------------------
// Hugging Face directories, built from the small fixture's tensors under HF names.

fn hf_config(tied: bool) -> Value {
    json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
        "intermediate_size": 96, "num_attention_heads": 8, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "rms_norm_eps": 1e-5, "vocab_size": 256, "rope_theta": 500000.0,
        "tie_word_embeddings": tied, "torch_dtype": "bfloat16"})
}

fn write_st(path: &Path, tensors: &[(String, DType, Vec<usize>, Vec<u8>)]) {
    let specs: Vec<(String, DType, Vec<usize>)> = tensors
        .iter()
        .map(|(n, d, s, _)| (n.clone(), *d, s.clone()))
        .collect();
    let md: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let mut f = std::fs::File::create(path).unwrap();
    safetensors::write(&mut f, &specs, &md, &mut |name, w| {
        let t = tensors.iter().find(|t| t.0 == name).unwrap();
        Ok(w.write_all(&t.3)?)
    })
    .unwrap();
}

/// An HF dir with the weights split over two files and an index; `edit` may change the tensor
/// list of each file before writing.
fn make_hf(
    tied: bool,
    edit: impl FnOnce(
        &mut Vec<(String, DType, Vec<usize>, Vec<u8>)>,
        &mut Vec<(String, DType, Vec<usize>, Vec<u8>)>,
    ),
) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let src = read_shard(&testdata("small-mp1/consolidated.00.pth"));
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (spec, data) in src {
        if tied && spec.name == "output.weight" {
            continue;
        }
        let hf = layout::meta_to_hf(&spec.name).unwrap();
        let t = (hf, spec.dtype, spec.shape, data);
        if spec.name.starts_with("layers.1.") || spec.name == "output.weight" {
            b.push(t);
        } else {
            a.push(t);
        }
    }
    edit(&mut a, &mut b);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let total: usize = a.iter().chain(&b).map(|t| t.3.len()).sum();
    let mut map = serde_json::Map::new();
    for (file, ts) in names.iter().zip([&a, &b]) {
        write_st(&d.path().join(file), ts);
        for t in ts.iter() {
            map.insert(t.0.clone(), json!(file));
        }
    }
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        serde_json::to_string_pretty(
            &json!({"metadata": {"total_size": total}, "weight_map": map}),
        )
        .unwrap(),
    )
    .unwrap();
    std::fs::write(d.path().join("config.json"), hf_config(tied).to_string()).unwrap();
    d
}

fn edit_index(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v["weight_map"].as_object_mut().unwrap());
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn hf_clean_and_tied() {
    for tied in [false, true] {
        let d = make_hf(tied, |_, _| {});
        let (code, v) = verify(d.path(), &["--deep"]);
        assert_eq!(code, 0, "tied={tied}: {}", details(&v));
        assert_eq!(v["format"], "hf");
        assert_eq!(
            v["tensors"].as_array().unwrap().len(),
            if tied { 20 } else { 21 }
        );
    }
    // Untied but lm_head absent.
    let d = make_hf(false, |_, b| b.retain(|t| t.0 != "lm_head.weight"));
    edit_index(d.path(), |m| {
        m.remove("lm_head.weight");
    });
    let v = expect_problems(d.path(), &[], &["missing_tensor"]);
    assert_eq!(v["problems"][0]["tensor"], "lm_head.weight");
}

#[test]
fn hf_index_problems() {
    let w = "model.layers.0.self_attn.q_proj.weight";
    // A stored tensor the index leaves out, and one it maps to the wrong file.
    let d = make_hf(false, |_, _| {});
    edit_index(d.path(), |m| {
        m.remove(w);
        m.insert(
            "model.norm.weight".into(),
            json!("model-00002-of-00002.safetensors"),
        );
    });
    let v = expect_problems(
        d.path(),
        &[],
        &["index_unlisted_tensor", "index_wrong_file"],
    );
    assert!(details(&v).contains(w));

    // A tensor listed twice (only visible in the raw JSON).
    let d = make_hf(false, |_, _| {});
    let p = d.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&p).unwrap().replacen(
        "\"weight_map\": {",
        &format!("\"weight_map\": {{\n    \"{w}\": \"model-00001-of-00002.safetensors\",",),
        1,
    );
    std::fs::write(&p, text).unwrap();
    expect_problems(d.path(), &[], &["index_duplicate"]);

    // A shard no index entry refers to, and a shard the index names that is gone.
    let d = make_hf(false, |_, _| {});
    std::fs::copy(
        d.path().join("model-00001-of-00002.safetensors"),
        d.path().join("model-00003-of-00003.safetensors"),
    )
    .unwrap();
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
    let v = expect_problems(d.path(), &[], &["dangling_shard", "missing_shard"]);
    let text = details(&v);
    assert!(text.contains("model-00003-of-00003") && text.contains("model-00002-of-00002"));
}

#[test]
fn hf_index_total_size_must_be_the_tensor_bytes() {
    let d = make_hf(false, |_, _| {});
    let p = d.path().join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let total = v["metadata"]["total_size"].as_u64().unwrap();
    v["metadata"]["total_size"] = json!(total + 2);
    std::fs::write(&p, v.to_string()).unwrap();
    let v = expect_problems(d.path(), &[], &["index_total_size"]);
    let text = details(&v);
    assert!(
        text.contains(&format!("total_size is {}", total + 2))
            && text.contains(&format!("hold {total} bytes")),
        "{text}"
    );
}

/// tiny-mp1 converted to an HF dir (real Llama 3 tokenizer files, instruct chat template).
fn converted_hf() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let dst = d.path().join("hf");
    let (code, _, err) = llamactl(
        &[
            "convert",
            "--to",
            "hf",
            "--instruct",
            testdata("tiny-mp1").to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    d
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn hf_tokenizer_files_against_config() {
    let d = converted_hf();
    let hf = d.path().join("hf");
    let (code, v) = verify(&hf, &["--no-md5"]);
    assert_eq!(code, 0, "{}", details(&v));
    let status = |v: &Value, name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status(&v, "tokenizer").as_deref(), Some("ok"));
    assert_eq!(status(&v, "chat template").as_deref(), Some("ok"));

    // A truncated tokenizer.json (a download cut short).
    let tok = std::fs::read(hf.join("tokenizer.json")).unwrap();
    std::fs::write(hf.join("tokenizer.json"), &tok[..tok.len() / 2]).unwrap();
    let v = expect_problems(&hf, &["--no-md5"], &["invalid_tokenizer"]);
    assert!(
        details(&v).contains("tokenizer.json does not load"),
        "{}",
        details(&v)
    );

    // The last special token gone: 128255 tokens for vocab_size 128256; an eos id it lacks.
    std::fs::write(hf.join("tokenizer.json"), &tok).unwrap();
    edit_json(&hf.join("tokenizer.json"), |v| {
        v["added_tokens"].as_array_mut().unwrap().pop();
    });
    edit_json(&hf.join("config.json"), |v| {
        v["eos_token_id"] = json!([128001, 200000])
    });
    let v = expect_problems(
        &hf,
        &["--no-md5"],
        &["missing_special_token", "vocab_mismatch"],
    );
    let text = details(&v);
    assert!(
        text.contains("128255 tokens")
            && text.contains("vocab_size 128256")
            && text.contains("eos_token_id 200000"),
        "{text}"
    );
}

#[test]
fn hf_tokenizer_config_and_chat_template() {
    let d = converted_hf();
    let hf = d.path().join("hf");
    let cfg = hf.join("tokenizer_config.json");
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, &good[..good.len() - 3]).unwrap();
    let v = expect_problems(&hf, &["--no-md5"], &["invalid_tokenizer_config"]);
    assert!(
        details(&v).contains("tokenizer_config.json"),
        "{}",
        details(&v)
    );

    std::fs::write(&cfg, &good).unwrap();
    edit_json(&cfg, |v| {
        v["chat_template"] = json!("{% for m in messages %}{{ m.content }}{% endfor");
    });
    let v = expect_problems(&hf, &["--no-md5"], &["invalid_chat_template"]);
    assert!(
        details(&v).contains("chat_template does not compile"),
        "{}",
        details(&v)
    );

    // The list form transformers also accepts: each template compiles on its own.
    edit_json(&cfg, |v| {
        v["chat_template"] = json!([
            {"name": "default", "template": "{{ bos_token }}"},
            {"name": "tool_use", "template": "{% if tools %}"}
        ]);
    });
    let v = expect_problems(&hf, &["--no-md5"], &["invalid_chat_template"]);
    assert!(details(&v).contains("\"tool_use\""), "{}", details(&v));
}

#[test]
fn hf_shapes_extras_truncation_nan() {
    let d = make_hf(false, |a, b| {
        let t = a.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        t.2 = vec![16];
        t.3.truncate(32);
        b.push((
            "model.layers.1.self_attn.q_proj.bias".into(),
            DType::BF16,
            vec![32],
            vec![0; 64],
        ));
    });
    let v = expect_problems(d.path(), &[], &["unexpected_tensor", "wrong_shape"]);
    assert!(details(&v).contains("[16]"));

    let d = make_hf(false, |_, b| {
        let t = b.iter_mut().find(|t| t.0 == "lm_head.weight").unwrap();
        t.3[0..2].copy_from_slice(&0x7f80u16.to_le_bytes());
    });
    let v = expect_problems(d.path(), &["--deep"], &["non_finite"]);
    assert!(
        details(&v).contains("lm_head.weight has 0 NaN and 1 Inf"),
        "{}",
        details(&v)
    );

    let d = make_hf(false, |_, _| {});
    let p = d.path().join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let v = expect_problems(d.path(), &[], &["corrupt_shard"]);
    assert!(
        details(&v).contains("model-00002-of-00002.safetensors"),
        "{}",
        details(&v)
    );
}

#[test]
fn fp8_release_verifies_with_dequantized_values() {
    // testdata/fp8-mp2 is torch-written like Meta's 405B fp8 release; the golden statistics are
    // torch's w.float() * scale[:, None] (scripts/make_fixtures.py).
    let (code, v) = verify(&testdata("fp8-mp2"), &["--deep"]);
    assert_eq!(code, 0, "{}", details(&v));
    let check = |name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap().to_string())
    };
    assert_eq!(check("fp8 scales").as_deref(), Some("ok"));
    assert_eq!(check("values").as_deref(), Some("ok"));
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("misc/fp8-mp2-dequant.json")).unwrap(),
    )
    .unwrap();
    let fp8: Vec<&Value> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["dtype"] == "F8_E4M3")
        .collect();
    assert_eq!(fp8.len(), golden.as_object().unwrap().len());
    for t in fp8 {
        let key = format!(
            "{}:{}",
            t["file"].as_str().unwrap(),
            t["name"].as_str().unwrap()
        );
        let g = &golden[&key];
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
        assert_eq!(f(t, "min"), f(g, "min"), "{key}");
        assert_eq!(f(t, "max"), f(g, "max"), "{key}");
        let std = f(g, "std");
        assert!((f(t, "mean") - f(g, "mean")).abs() < 1e-6 * std, "{key}");
        assert!((f(t, "std") - std).abs() < 1e-5 * std, "{key}");
    }
}

#[test]
fn fp8_scales_and_placement_problems() {
    // A scales file lost.
    let d = copy_fixture("fp8-mp2");
    std::fs::remove_file(d.path().join("fp8_scales_1.pt")).unwrap();
    regenerate_checklist(d.path());
    let v = expect_problems(d.path(), &[], &["missing_fp8_scales"]);
    assert!(
        details(&v).contains("consolidated.01.pth"),
        "{}",
        details(&v)
    );

    // One key gone, one vector a row short, one key nobody uses.
    let d = copy_fixture("fp8-mp2");
    let path = d.path().join("fp8_scales_0.pt");
    let mut scales = read_shard(&path);
    scales.retain(|(s, _)| s.name != "2_feed_forward.w3_0");
    let w1 = tensor(&mut scales, "1_feed_forward.w1_0");
    w1.0.shape = vec![63];
    w1.1.truncate(63 * 4);
    scales.push((
        TensorSpec {
            name: "9_feed_forward.w1_0".into(),
            dtype: DType::F32,
            shape: vec![1],
        },
        vec![0; 4],
    ));
    pth::write_small(&path, &scales).unwrap();
    regenerate_checklist(d.path());
    let v = expect_problems(d.path(), &[], &["invalid_fp8_scales"]);
    let text = details(&v);
    assert!(
        text.contains("no entry 2_feed_forward.w3_0")
            && text.contains("needs F32 [64]")
            && text.contains("unexpected entry 9_feed_forward.w1_0"),
        "{text}"
    );

    // bf16 where Meta's release has fp8, and fp8 in layer 0, which Meta keeps bf16.
    let d = copy_fixture("fp8-mp2");
    edit_shard(d.path(), "consolidated.00.pth", |t| {
        let w = tensor(t, "layers.2.feed_forward.w1.weight");
        w.0.dtype = DType::BF16;
        w.1 = w.1.iter().flat_map(|&b| [b, 0]).collect();
        let w = tensor(t, "layers.0.feed_forward.w3.weight");
        w.0.dtype = DType::F8E4M3;
        w.1 = w.1.chunks_exact(2).map(|c| c[1]).collect();
    });
    let v = expect_problems(d.path(), &[], &["wrong_dtype"]);
    let text = details(&v);
    assert!(
        text.contains("layers.2.feed_forward.w1.weight is BF16, but Meta's fp8 release stores FFN w1/w2/w3 of layers 1..2 as F8_E4M3")
            && text.contains("layers.0.feed_forward.w3.weight is F8_E4M3, but only FFN w1/w2/w3 of layers 1..2 are fp8"),
        "{text}"
    );
}

#[test]
fn params_that_disagree_with_every_shard_say_so_once() {
    // dim 64 in params.json for shards of dim 32: one problem listing both sides' dims, not a
    // missing shard and a wrong shape per tensor.
    let d = copy_fixture("small-mp1");
    std::fs::write(
        d.path().join("params.json"),
        r#"{"dim": 64, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2, "vocab_size": 256, "multiple_of": 32, "norm_eps": 1e-05}"#,
    )
    .unwrap();
    regenerate_checklist(d.path());
    let v = expect_problems(d.path(), &[], &["params_mismatch"]);
    assert_eq!(v["problems"].as_array().unwrap().len(), 1);
    let text = details(&v);
    assert!(
        text.contains("params.json and the shards disagree")
            && text.contains("norm [64]")
            && text.contains("norm [32]")
            && text.contains("wq [32, 32]"),
        "{text}"
    );
}

/// Spawn `args` with stderr piped (so progress is plain lines) and a 30 s progress interval; the
/// exit code and stderr, or a failure when it has not exited within 10 s: a command that fails
/// early must not wait for the progress thread's next tick (30 s away; the margin below it is for
/// a loaded machine running the suite in parallel, not a speed target).
fn exits_promptly(args: &[&str]) -> (i32, String) {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .args(args)
        .env("LLAMACTL_PROGRESS_INTERVAL_MS", "30000")
        .env_remove("GITHUB_ACTIONS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{args:?} still running after 10 s (the progress interval is 30 s)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The plain progress reporter never delays an exit: a stop that arrives before its thread first
/// waits must be seen (several runs, since the race is lost only sometimes).
#[test]
fn early_failures_exit_without_waiting_for_the_progress_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    // A Meta dir whose shard is cut short: convert fails on its first read.
    let cut = copy_fixture("tiny-mp1");
    let shard = cut.path().join("consolidated.00.pth");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..3000]).unwrap();
    let out = tmp.path().join("hf");
    for _ in 0..3 {
        let (code, err) = exits_promptly(&["verify", empty.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        let (code, err) = exits_promptly(&[
            "convert",
            "--to",
            "hf",
            cut.path().to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("consolidated.00.pth"), "{err}");
    }
}

/// A GGUF file (or any file that is not what the command reads) is named for what it is, not
/// reported as "not a directory" or "not a torch zip checkpoint".
#[test]
fn a_gguf_or_other_file_is_named_for_what_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("m.gguf");
    let g = gguf.to_str().unwrap();
    let src = testdata("tiny-mp1");
    let (code, _, err) = llamactl(&["convert", "--to", "gguf", src.to_str().unwrap(), g], &[]);
    assert_eq!(code, 0, "{err}");
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    for args in [
        vec!["reshard", "--mp", "1", g, o],
        vec!["convert", "--to", "hf", g, o],
        vec!["run", "--ckpt-dir", g, "--prompt", "x"],
    ] {
        let (code, _, err) = llamactl(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("m.gguf: is a GGUF file, not a model directory"),
            "{args:?}: {err}"
        );
    }
    // The same file in place of a shard of a Meta dir.
    let d = copy_fixture("tiny-mp1");
    let shard = d.path().join("consolidated.00.pth");
    std::fs::copy(&gguf, &shard).unwrap();
    for args in [
        vec!["reshard", "--mp", "1", d.path().to_str().unwrap(), o],
        vec!["convert", "--to", "hf", d.path().to_str().unwrap(), o],
    ] {
        let (code, _, err) = llamactl(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("consolidated.00.pth: is a GGUF file, not a torch zip checkpoint"),
            "{args:?}: {err}"
        );
    }
    let (code, report) = verify(d.path(), &["--no-md5"]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report["problems"]
            .to_string()
            .contains("is a GGUF file, not a torch zip checkpoint"),
        "{report}"
    );
    // A GGUF whose magic is damaged: named by its extension and first bytes.
    let mut bytes = std::fs::read(&gguf).unwrap();
    bytes[2] = b'X';
    std::fs::write(&gguf, &bytes).unwrap();
    let (code, _, err) = llamactl(&["verify", g], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "m.gguf: a GGUF file without the GGUF magic (it starts with bytes 47 47 58 46)"
        ),
        "{err}"
    );
}

/// `verify --jobs 0` is refused, as `reshard --jobs 0` is; a huge `--jobs` starts no more threads
/// than there is work and cores for.
#[test]
fn verify_jobs_are_checked() {
    let d = testdata("tiny-mp1");
    let d = d.to_str().unwrap();
    for cmd in [
        vec!["verify", d, "--jobs", "0"],
        vec!["reshard", "--mp", "1", d, "/nonexistent/out", "--jobs", "0"],
    ] {
        let (code, _, err) = llamactl(&cmd, &[]);
        assert_eq!(code, 2, "{cmd:?}: {err}");
        assert!(err.contains("--jobs must be at least 1"), "{cmd:?}: {err}");
    }
    let started = std::time::Instant::now();
    let (code, _, err) = llamactl(&["verify", d, "--deep", "--jobs", "20000"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
}
