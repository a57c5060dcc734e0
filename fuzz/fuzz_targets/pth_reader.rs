#![no_main]
//! Any bytes as a `.pth` file: open it and read every tensor it claims to have.
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(data).expect("write");
    if let Ok(p) = llamactl::formats::pth::PthFile::open(f.path()) {
        for t in p.tensors() {
            let _ = p.bytes(t);
            let _ = p.data_offset(t);
        }
    }
});
