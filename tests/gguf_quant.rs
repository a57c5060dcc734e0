//! Quantized GGUF output (`convert --to gguf --dtype q4_k_m` and the other llama-quantize types)
//! against golden files that scripts/check_gguf.py wrote with llama.cpp: the block quantizers
//! against ggml's own (`ggml_quantize_chunk`) on rows chosen to hit ties, zero blocks, constant
//! rows and outliers, and whole files against `llama-quantize` run on the converter's output.
use llamactl::formats::quant::{self, quantize_rows};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn golden(name: &str) -> Value {
    let p = testdata().join("gguf").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

#[test]
fn quantizers_equal_ggml_byte_for_byte() {
    let g = golden("quants.json");
    let bytes = hex::decode(g["input_f32_hex"].as_str().unwrap()).unwrap();
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let cols = g["cols"].as_u64().unwrap() as usize;
    let types = g["quantized_hex"].as_object().unwrap();
    assert_eq!(types.len(), 10);
    for (name, want) in types {
        let t = quant::TYPES
            .into_iter()
            .find(|t| t.name() == *name)
            .unwrap();
        let want = hex::decode(want.as_str().unwrap()).unwrap();
        let mut got = vec![0u8; want.len()];
        quantize_rows(t, &x, cols, &mut got);
        let row = t.row_bytes(cols as u64).unwrap() as usize;
        for (r, (a, b)) in got.chunks(row).zip(want.chunks(row)).enumerate() {
            let first = a.iter().zip(b).position(|(x, y)| x != y);
            assert!(
                first.is_none(),
                "{name} row {r}: first differing byte {first:?}"
            );
        }
    }
}

use crate::gguf::{assert_matches_golden, convert, llamactl};

const TYPES: [&str; 14] = [
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s",
    "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
];

#[test]
fn every_type_from_a_gguf_source_equals_llama_quantize() {
    // Rows of whole 256-blocks: every k-quant is used as such, the _M mixes raise attn_v/ffn_down.
    let d = tempfile::tempdir().unwrap();
    let src = testdata().join("gguf").join("k256-bf16.gguf");
    for t in TYPES {
        let out = d.path().join(format!("{t}.gguf"));
        convert("gguf", &src, &out, &["--dtype", t]);
        assert_matches_golden(&out, &format!("k256-{t}.json"));
    }
    // Names are case-insensitive, as llama-quantize's.
    let out = d.path().join("upper.gguf");
    convert("gguf", &src, &out, &["--dtype", "Q4_K_M"]);
    assert_matches_golden(&out, "k256-q4_k_m.json");
}

#[test]
fn meta_dirs_take_the_fallback_types_of_llama_quantize() {
    // tiny-mp1's rows hold 16 or 64 values: k-quants fall back to 32-blocks or F16, the output
    // to Q8_0 or F16. From MP 1 and from MP 2 the file is the same.
    let d = tempfile::tempdir().unwrap();
    let tiny = testdata().join("tiny-mp1");
    for t in ["q4_k_m", "q4_0", "q6_k"] {
        let out = d.path().join(format!("{t}.gguf"));
        convert("gguf", &tiny, &out, &["--dtype", t, "--base"]);
        assert_matches_golden(&out, &format!("tiny-mp1-{t}.json"));
    }
    let mp2 = d.path().join("tiny-mp1");
    let (code, _, err) = llamactl(&[&"reshard", &"--mp", &"2", &tiny, &mp2]);
    assert_eq!(code, 0, "{err}");
    let out = d.path().join("mp2.gguf");
    convert("gguf", &mp2, &out, &["--dtype", "q4_k_m", "--base"]);
    assert_matches_golden(&out, "tiny-mp1-q4_k_m.json");
}

#[test]
fn importance_matrix_types_and_quantized_sources_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let tiny = testdata().join("tiny-mp1");
    let out = d.path().join("x.gguf");
    let (code, _, err) = llamactl(&[
        &"convert", &"--to", &"gguf", &tiny, &out, &"--dtype", &"iq4_xs",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("importance matrix"), "{err}");
    let (code, _, err) = llamactl(&[
        &"convert", &"--to", &"hf", &tiny, &out, &"--dtype", &"q4_k_m",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--to gguf"), "{err}");
    // A quantized GGUF is not re-quantized (llama-quantize wants --allow-requantize for that).
    let q = d.path().join("q.gguf");
    convert(
        "gguf",
        &testdata().join("gguf").join("k256-bf16.gguf"),
        &q,
        &["--dtype", "q8_0"],
    );
    let (code, _, err) = llamactl(&[&"convert", &"--to", &"gguf", &q, &out, &"--dtype", &"q4_0"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("Q8_0") && err.contains("f32, f16 and bf16"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
}

#[test]
fn fp8_weights_dequantize_as_torch_does() {
    // convert --to hf --dtype f32 from Meta's fp8 layout: each rank's block of an fp8 matrix is
    // w.float() * scale[row]; min and max equal torch's (scripts/make_fixtures.py), mean and std
    // to rounding.
    let d = tempfile::tempdir().unwrap();
    let src = testdata().join("fp8-mp2");
    let hf = d.path().join("hf");
    let (code, _, err) = llamactl(&[&"convert", &"--to", &"hf", &src, &hf, &"--dtype", &"f32"]);
    assert_eq!(code, 0, "{err}");
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(testdata().join("misc").join("fp8-mp2-dequant.json")).unwrap(),
    )
    .unwrap();
    let st = llamactl::formats::safetensors::SafetensorsFile::open(&hf.join("model.safetensors"))
        .unwrap();
    let proj = [("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")];
    let mut checked = 0;
    for (key, g) in golden.as_object().unwrap() {
        let (file, name) = key.split_once(':').unwrap();
        let rank: usize = file[13..15].parse().unwrap();
        let layer = name.split('.').nth(1).unwrap();
        let w = name.split('.').nth(3).unwrap();
        let hf_proj = proj.iter().find(|p| p.0 == w).unwrap().1;
        let t = st
            .tensors()
            .find(|t| t.name == format!("model.layers.{layer}.mlp.{hf_proj}.weight"))
            .unwrap()
            .clone();
        let mut bytes = vec![0u8; t.nbytes()];
        st.source()
            .read_exact_at(&mut bytes, st.data_offset(&t.name).unwrap())
            .unwrap();
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (rows, cols) = (t.shape[0], t.shape[1]);
        // w1/w3 are split by rows across the 2 ranks, w2 by columns.
        let block: Vec<f32> = (0..rows)
            .flat_map(|r| (0..cols).map(move |c| (r, c)))
            .filter(|&(r, c)| {
                if w == "w2" {
                    c / (cols / 2) == rank
                } else {
                    r / (rows / 2) == rank
                }
            })
            .map(|(r, c)| v[r * cols + c])
            .collect();
        let min = block.iter().fold(f32::MAX, |a, &b| a.min(b));
        let max = block.iter().fold(f32::MIN, |a, &b| a.max(b));
        let mean = block.iter().map(|&x| f64::from(x)).sum::<f64>() / block.len() as f64;
        let f = |k: &str| g[k].as_f64().unwrap();
        assert_eq!(f64::from(min), f("min"), "{key}");
        assert_eq!(f64::from(max), f("max"), "{key}");
        assert!((mean - f("mean")).abs() < 1e-6 * f("std"), "{key}");
        checked += 1;
    }
    assert_eq!(checked, golden.as_object().unwrap().len());
}
