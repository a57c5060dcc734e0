#![no_main]
//! Any bytes as a `.safetensors` file: open it and read every tensor it claims to have.
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(data).expect("write");
    if let Ok(s) = llamactl::formats::safetensors::SafetensorsFile::open(f.path()) {
        let names: Vec<String> = s.tensors().map(|t| t.name.clone()).collect();
        for n in names {
            let _ = s.bytes(&n);
        }
    }
});
