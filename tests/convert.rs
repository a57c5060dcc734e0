//! `llamactl convert` end to end: round trips on the torch-written fixtures, the q/k permutation
//! against an independent reshape, sharding and the index, tied embeddings, casts, refusals.
use llamactl::checkpoint::layout::{self, Split};
use llamactl::checkpoint::{ModelDir, Params};
use llamactl::formats::pth::{self, TensorSpec};
use llamactl::formats::safetensors::{self as st, Index, SafetensorsFile};
use llamactl::formats::DType;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Run llamactl; returns (exit code, stderr).
fn llamactl(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn convert_ok(to: &str, src: &Path, dst: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"convert", &"--to", &to];
    for e in extra {
        args.push(e);
    }
    args.push(&src);
    args.push(&dst);
    let (code, err) = llamactl(&args);
    assert_eq!(code, 0, "convert --to {to} {}: {err}", src.display());
    err
}

/// Every tensor of a Meta or HF dir by Meta name, in its own q/k layout.
fn tensors(dir: &Path) -> BTreeMap<String, (DType, Vec<usize>, Vec<u8>)> {
    let m = ModelDir::open(dir).unwrap();
    m.tensor_names()
        .unwrap()
        .into_iter()
        .map(|n| {
            let t = m.read_tensor(&n).unwrap();
            (n, (t.dtype, t.shape, t.data))
        })
        .collect()
}

/// Meta -> HF row order written out the long way: view [heads, hd/2, 2, dim], swap the middle axes.
fn permute_rows(data: &[u8], rows: usize, row_bytes: usize, head_dim: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for head in 0..rows / head_dim {
        for i in 0..2 {
            for pair in 0..head_dim / 2 {
                let r = head * head_dim + 2 * pair + i;
                out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
            }
        }
    }
    out
}

fn safetensors_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    v
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn meta_hf_meta_reproduces_every_tensor() {
    for fixture in ["small-mp1", "small-mp2", "tiny-mp1"] {
        let src = testdata().join(fixture);
        let tmp = tempfile::tempdir().unwrap();
        let (hf, back) = (tmp.path().join("hf"), tmp.path().join("back"));
        convert_ok("hf", &src, &hf, &[]);
        convert_ok("meta", &hf, &back, &[]);

        let orig = tensors(&src);
        let p = Params::read(&src.join("params.json")).unwrap();
        let hd = p.head_dim();
        // The HF files hold q/k with rows permuted, everything else byte for byte.
        let hf_dir = ModelDir::open(&hf).unwrap();
        for (name, (dtype, shape, data)) in &orig {
            let t = hf_dir.read_tensor(name).unwrap();
            assert_eq!((t.dtype, &t.shape), (*dtype, shape), "{fixture} {name}");
            let want = if name.ends_with("wq.weight") || name.ends_with("wk.weight") {
                permute_rows(data, shape[0], shape[1] * dtype.size(), hd)
            } else {
                data.clone()
            };
            assert!(t.data == want, "{fixture}: HF {name} differs");
        }
        assert_eq!(tensors(&back), orig, "{fixture}: Meta -> HF -> Meta");

        // The Meta dir is complete: checklist over what was written, params giving the same sizes.
        let back_p = Params::read(&back.join("params.json")).unwrap();
        assert_eq!(back_p.ffn_hidden(), p.ffn_hidden());
        assert_eq!((back_p.dim, back_p.kv_heads()), (p.dim, p.kv_heads()));
        let (entries, bad) = llamactl::checkpoint::checklist::read(&back.join("checklist.chk"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(bad.is_empty());
        for e in &entries {
            let got =
                llamactl::checkpoint::hashing::md5_file(&back.join(&e.name), &|_| {}).unwrap();
            assert_eq!(got, e.md5, "{}", e.name);
        }
        assert!(entries.iter().any(|e| e.name == "consolidated.00.pth"));

        let config = json(&hf.join("config.json"));
        assert_eq!(config["architectures"][0], "LlamaForCausalLM");
        assert_eq!(config["intermediate_size"], p.ffn_hidden());
        assert_eq!(config["tie_word_embeddings"], false);
        assert_eq!(config["torch_dtype"], "bfloat16");
        assert_eq!(config["max_position_embeddings"], 8192);
    }
}

#[test]
fn hf_meta_hf_reproduces_files_and_shards_like_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let (hf, meta, hf2) = (
        tmp.path().join("hf"),
        tmp.path().join("meta"),
        tmp.path().join("hf2"),
    );
    // small-mp1's largest tensors are 16 KiB (embedding, output); 20 KB forces several shards.
    convert_ok(
        "hf",
        &testdata().join("small-mp2"),
        &hf,
        &["--max-shard-size", "20KB"],
    );
    convert_ok("meta", &hf, &meta, &[]);
    convert_ok("hf", &meta, &hf2, &["--max-shard-size", "20KB"]);

    let files = safetensors_files(&hf);
    assert!(files.len() > 2, "{files:?}");
    for f in &files {
        let a = std::fs::read(f).unwrap();
        let b = std::fs::read(hf2.join(f.file_name().unwrap())).unwrap();
        assert!(a == b, "{} differs after HF -> Meta -> HF", f.display());
    }
    for name in [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
    ] {
        assert_eq!(
            std::fs::read(hf.join(name)).unwrap(),
            std::fs::read(hf2.join(name)).unwrap(),
            "{name}"
        );
    }

    // The index: every tensor once, in the file that holds it, total = tensor bytes.
    let index = Index::read(&hf.join("model.safetensors.index.json")).unwrap();
    let n = files.len();
    let mut total = 0u64;
    let mut seen = 0;
    let mut sizes_in_order = Vec::new();
    for (k, f) in files.iter().enumerate() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("model-{:05}-of-{n:05}.safetensors", k + 1));
        let bytes = std::fs::read(f).unwrap();
        // Readable by the safetensors crate, with transformers' metadata.
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        let stf = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut shard_bytes = 0;
        for (tname, view) in stf.tensors() {
            assert_eq!(index.weight_map[&tname], name);
            shard_bytes += view.data().len() as u64;
            seen += 1;
        }
        assert!(shard_bytes <= 20_000, "{name}: {shard_bytes} bytes");
        total += shard_bytes;
        sizes_in_order.push(shard_bytes);
    }
    assert_eq!(seen, index.weight_map.len());
    assert_eq!(index.metadata.total_size, total);
    // Greedy: no shard could have taken the first tensor of the next one.
    let st0 = SafetensorsFile::open(&files[1]).unwrap();
    let first_of_next = index
        .weight_map
        .iter()
        .filter(|(_, f)| **f == files[1].file_name().unwrap().to_string_lossy())
        .map(|(t, _)| st0.get(t).unwrap().nbytes() as u64)
        .min()
        .unwrap();
    assert!(sizes_in_order[0] + first_of_next > 20_000);

    // Unsharded output is one model.safetensors and no index, as transformers writes it.
    let single = tmp.path().join("single");
    convert_ok("hf", &testdata().join("small-mp1"), &single, &[]);
    assert_eq!(
        safetensors_files(&single),
        vec![single.join("model.safetensors")]
    );
    assert!(!single.join("model.safetensors.index.json").exists());
}

/// An HF tensor: name, dtype, shape, bytes.
type RawHf = (String, DType, Vec<usize>, Vec<u8>);
type EditTensors = Box<dyn Fn(&mut Vec<RawHf>)>;
type EditConfig = Box<dyn Fn(&mut Value)>;

/// Rewrite an HF dir's weights as one model.safetensors, editing the tensor set and config.
fn rewrite_hf(
    src: &Path,
    dst: &Path,
    edit: &mut dyn FnMut(&mut Vec<RawHf>),
    config: &mut dyn FnMut(&mut Value),
) {
    std::fs::create_dir_all(dst).unwrap();
    let mut ts = Vec::new();
    for f in safetensors_files(src) {
        let s = SafetensorsFile::open(&f).unwrap();
        for t in s.tensors() {
            ts.push((
                t.name.clone(),
                t.dtype,
                t.shape.clone(),
                s.bytes(&t.name).unwrap().to_vec(),
            ));
        }
    }
    edit(&mut ts);
    let specs: Vec<(String, DType, Vec<usize>)> = ts
        .iter()
        .map(|(n, d, s, _)| (n.clone(), *d, s.clone()))
        .collect();
    let data: BTreeMap<String, Vec<u8>> = ts.into_iter().map(|(n, _, _, b)| (n, b)).collect();
    let md: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let mut out = Vec::new();
    st::write(&mut out, &specs, &md, &mut |name, w| {
        Ok(w.write_all(&data[name])?)
    })
    .unwrap();
    std::fs::write(dst.join("model.safetensors"), out).unwrap();
    let mut c = json(&src.join("config.json"));
    config(&mut c);
    std::fs::write(dst.join("config.json"), c.to_string()).unwrap();
}

#[test]
fn tied_embeddings_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    convert_ok("hf", &testdata().join("small-mp1"), &hf, &[]);
    // A Llama 3.2-style HF model: no lm_head, tie_word_embeddings, newer rope_parameters style.
    let tied = tmp.path().join("tied");
    rewrite_hf(
        &hf,
        &tied,
        &mut |ts| ts.retain(|t| t.0 != "lm_head.weight"),
        &mut |c| {
            c["tie_word_embeddings"] = true.into();
            let theta = c.as_object_mut().unwrap().remove("rope_theta").unwrap();
            c.as_object_mut().unwrap().remove("rope_scaling");
            c["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": theta});
        },
    );
    let meta = tmp.path().join("meta");
    let err = convert_ok("meta", &tied, &meta, &[]);
    assert!(err.contains("tied"), "{err}");
    let m = tensors(&meta);
    assert_eq!(m["output.weight"], m["tok_embeddings.weight"]);
    assert_eq!(
        Params::read(&meta.join("params.json")).unwrap().rope_theta,
        Some(500000.0)
    );

    let back = tmp.path().join("back");
    convert_ok("hf", &meta, &back, &[]);
    let config = json(&back.join("config.json"));
    assert_eq!(config["tie_word_embeddings"], true);
    let s = SafetensorsFile::open(&back.join("model.safetensors")).unwrap();
    assert!(s.get("lm_head.weight").is_none());
    assert!(s.get("model.embed_tokens.weight").is_some());
    // And the tied HF dir reads as the same model.
    assert_eq!(tensors(&back), tensors(&tied));
}

/// A Meta checkpoint (MP 1) with the small fixture's shape; `value(name, i)` gives element i.
fn write_meta(dir: &Path, dtype: DType, value: &dyn Fn(&str, usize) -> f32, skip: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        testdata().join("small-mp1/params.json"),
        dir.join("params.json"),
    )
    .unwrap();
    let p = Params::read(&dir.join("params.json")).unwrap();
    let tensors: Vec<(TensorSpec, Vec<u8>)> = layout::meta_weights(&p, 256, Split::Rows, false)
        .into_iter()
        .filter(|w| Some(w.name.as_str()) != skip)
        .map(|w| {
            let n: usize = w.full_shape.iter().product();
            let data: Vec<u8> = (0..n)
                .flat_map(|i| {
                    let v = value(&w.name, i);
                    match dtype {
                        DType::F32 => v.to_le_bytes().to_vec(),
                        DType::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                        _ => half::f16::from_f32(v).to_le_bytes().to_vec(),
                    }
                })
                .collect();
            (
                TensorSpec {
                    name: w.name,
                    dtype,
                    shape: w.full_shape,
                },
                data,
            )
        })
        .collect();
    pth::write_small(&dir.join("consolidated.00.pth"), &tensors).unwrap();
}

#[test]
fn casts_count_f16_overflow_and_round_trip_through_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big");
    // Every 7th value of w2 in layer 1 is beyond f16's range (65504).
    let big = |name: &str, i: usize| {
        if name == "layers.1.feed_forward.w2.weight" && i.is_multiple_of(7) {
            -1.0e6
        } else {
            ((i % 97) as f32 - 48.0) / 16.0
        }
    };
    write_meta(&src, DType::BF16, &big, None);
    let expected = (32 * 96usize).div_ceil(7);
    let hf16 = tmp.path().join("hf16");
    let err = convert_ok("hf", &src, &hf16, &["--dtype", "f16"]);
    assert!(
        err.contains(&format!("{expected} values")) && err.contains("layers.1.mlp.down_proj"),
        "{err}"
    );
    let s = SafetensorsFile::open(&hf16.join("model.safetensors")).unwrap();
    let w2 = s.bytes("model.layers.1.mlp.down_proj.weight").unwrap();
    let vals: Vec<f32> = w2
        .chunks(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    assert!(vals.iter().all(|v| v.is_finite()));
    assert_eq!(vals[0], -65504.0);
    assert_eq!(json(&hf16.join("config.json"))["torch_dtype"], "float16");

    // bf16 -> f32 -> bf16 is exact.
    let (hf32, back) = (tmp.path().join("hf32"), tmp.path().join("back"));
    let err = convert_ok("hf", &src, &hf32, &["--dtype", "f32"]);
    assert!(!err.contains("clamped"), "{err}");
    convert_ok("meta", &hf32, &back, &["--dtype", "bf16"]);
    assert_eq!(tensors(&back), tensors(&src));
    let m = ModelDir::open(&hf32).unwrap();
    assert_eq!(m.read_tensor("norm.weight").unwrap().dtype, DType::F32);
}

#[test]
fn refusals_and_unsupported_inputs_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let small = testdata().join("small-mp1");
    let hf = tmp.path().join("hf");
    convert_ok("hf", &small, &hf, &[]);

    // Non-empty destination without --force; replaced with it.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"x").unwrap();
    let (code, err) = llamactl(&[&"convert", &"--to", &"hf", &small, &busy]);
    assert_eq!(code, 2);
    assert!(err.contains("--force") && err.lines().count() == 1, "{err}");
    assert!(err.starts_with("error:"), "{err}");
    assert!(busy.join("keep").exists());
    convert_ok("hf", &small, &busy, &["--force"]);
    assert!(!busy.join("keep").exists() && busy.join("config.json").exists());

    // Destination inside the source.
    let src_copy = tmp.path().join("srccopy");
    std::fs::create_dir(&src_copy).unwrap();
    for f in ["params.json", "consolidated.00.pth"] {
        std::fs::copy(small.join(f), src_copy.join(f)).unwrap();
    }
    let (code, err) = llamactl(&[&"convert", &"--to", &"hf", &src_copy, &src_copy.join("out")]);
    assert_eq!(code, 2);
    assert!(err.contains("inside the source"), "{err}");
    assert!(!src_copy.join("out").exists());

    let cases: Vec<(&str, EditTensors, EditConfig, &str)> = vec![
        (
            "mistral",
            Box::new(|_| {}),
            Box::new(|c| c["architectures"] = serde_json::json!(["MistralForCausalLM"])),
            "MistralForCausalLM",
        ),
        (
            "bias",
            Box::new(|ts| {
                ts.push((
                    "model.layers.0.self_attn.q_proj.bias".into(),
                    DType::BF16,
                    vec![32],
                    vec![0; 64],
                ))
            }),
            Box::new(|_| {}),
            "bias",
        ),
        (
            "missing",
            Box::new(|ts| ts.retain(|t| t.0 != "model.layers.1.mlp.up_proj.weight")),
            Box::new(|_| {}),
            "model.layers.1.mlp.up_proj.weight is missing",
        ),
        (
            "extra-layer",
            Box::new(|ts| {
                ts.push((
                    "model.layers.2.input_layernorm.weight".into(),
                    DType::BF16,
                    vec![32],
                    vec![0; 64],
                ))
            }),
            Box::new(|_| {}),
            "model.layers.2.input_layernorm.weight",
        ),
        (
            "misshapen",
            Box::new(|ts| {
                for t in ts.iter_mut() {
                    if t.0 == "model.norm.weight" {
                        t.2 = vec![16];
                        t.3.truncate(32);
                    }
                }
            }),
            Box::new(|_| {}),
            "has shape [16]",
        ),
    ];
    for (label, edit, cfg, want) in cases {
        let bad = tmp.path().join(label);
        rewrite_hf(&hf, &bad, &mut |ts| edit(ts), &mut |c| cfg(c));
        let out = tmp.path().join(format!("{label}-out"));
        let (code, err) = llamactl(&[&"convert", &"--to", &"meta", &bad, &out]);
        assert_eq!(code, 2, "{label}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(
            errors.len() == 1 && errors[0].contains(want),
            "{label}: {err}"
        );
        assert!(!out.exists(), "{label}: output left behind");
    }

    // A Meta checkpoint missing a tensor names it and writes nothing.
    let holey = tmp.path().join("holey");
    write_meta(
        &holey,
        DType::BF16,
        &|_, _| 0.5,
        Some("layers.0.attention.wk.weight"),
    );
    let out = tmp.path().join("holey-out");
    let (code, err) = llamactl(&[&"convert", &"--to", &"hf", &holey, &out]);
    assert_eq!(code, 2);
    assert!(err.contains("layers.0.attention.wk.weight"), "{err}");
    assert!(!out.exists());
    // Llama 2 (vocab_size -1, embedding split by columns) is named as unsupported.
    let (code, err) = llamactl(&[
        &"convert",
        &"--to",
        &"hf",
        &testdata().join("misc/llama2-mp2"),
        &out,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("Llama 2"), "{err}");
}

#[test]
fn fp8_checkpoints_are_refused_and_nothing_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("hf");
    let src = testdata().join("fp8-mp2");
    let (code, err) = llamactl(&[&"convert", &"--to", &"hf", &src, &dst]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("fp8")
            && err.contains("layers.1.feed_forward.w1.weight")
            && err.contains("w2"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
