//! The checkpoint layer against torch-written fixtures (testdata/, made by scripts/make_fixtures.py)
//! and against bad input.
use llamactl::checkpoint::{self, meta::MetaDir, ModelDir};
use llamactl::formats::pth::{self, PthFile, TensorSpec};
use llamactl::formats::DType;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn llamactl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llamactl"))
}

#[test]
fn every_fixture_reads_exactly_as_torch_wrote_it() {
    let mut checked = 0;
    for entry in std::fs::read_dir(testdata().join("golden")).unwrap() {
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        let file = testdata().join(golden["file"].as_str().unwrap());
        let p = PthFile::open(&file).unwrap();
        let want = golden["tensors"].as_array().unwrap();
        assert_eq!(p.tensors().len(), want.len(), "{}", file.display());
        for (t, g) in p.tensors().iter().zip(want) {
            assert_eq!(t.name, g["name"].as_str().unwrap());
            assert_eq!(t.dtype.name(), g["dtype"].as_str().unwrap());
            let shape: Vec<usize> = serde_json::from_value(g["shape"].clone()).unwrap();
            assert_eq!(t.shape, shape, "{} {}", file.display(), t.name);
            let bytes = p.bytes(t).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                g["sha256"].as_str().unwrap(),
                "{} {}",
                file.display(),
                t.name
            );
        }
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} golden files");
}

#[test]
fn shared_storage_views_keep_their_offsets() {
    let p = PthFile::open(&testdata().join("small-mp1/consolidated.00.pth")).unwrap();
    let a = p.get("layers.0.attention_norm.weight").unwrap();
    let n = p.get("norm.weight").unwrap();
    assert_eq!(a.storage_key, n.storage_key);
    assert_eq!(n.storage_offset, 64);
    let v = PthFile::open(&testdata().join("misc/views.pth")).unwrap();
    let t = v.get("transposed").unwrap();
    assert!(!t.is_contiguous());
    assert!(v.data_offset(t).is_err());
}

#[test]
fn meta_dirs_merge_shards_to_the_same_tensors() {
    let one = ModelDir::open(&testdata().join("small-mp1")).unwrap();
    let two = ModelDir::open(&testdata().join("small-mp2")).unwrap();
    for name in one.tensor_names().unwrap() {
        let a = one.read_tensor(&name).unwrap();
        let b = two.read_tensor(&name).unwrap();
        assert_eq!(a.shape, b.shape, "{name}");
        assert_eq!(a.data, b.data, "{name}");
    }
    let m = MetaDir::open(&testdata().join("small-mp2")).unwrap();
    for name in m.names() {
        m.check_replicas(&name).unwrap();
    }
    // Llama 2 splits the embedding on dim 1; detected from shapes.
    let l2 = MetaDir::open(&testdata().join("misc/llama2-mp2")).unwrap();
    assert_eq!(l2.embed_split().unwrap(), checkpoint::layout::Split::Cols);
    assert_eq!(l2.vocab().unwrap(), 128);
}

#[test]
fn written_checkpoints_round_trip_large_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("consolidated.00.pth");
    let tensors: Vec<(TensorSpec, Vec<u8>)> = (0..1200)
        .map(|i| {
            (
                TensorSpec {
                    name: format!("t.{i}"),
                    dtype: DType::F16,
                    shape: vec![i % 5 + 1, 3],
                },
                (0..(i % 5 + 1) * 6).map(|b| (b + i) as u8).collect(),
            )
        })
        .collect();
    pth::write_small(&path, &tensors).unwrap();
    let p = PthFile::open(&path).unwrap();
    for ((spec, data), t) in tensors.iter().zip(p.tensors()) {
        assert_eq!(spec.name, t.name);
        assert_eq!(p.bytes(t).unwrap().as_ref(), &data[..]);
        assert_eq!(p.data_offset(t).unwrap() % 64, 0);
    }
}

fn stderr_of(args: &[&str]) -> (i32, String) {
    let out = llamactl().args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_reports_dirs_and_files() {
    let out = llamactl()
        .args(["inspect", "--json"])
        .arg(testdata().join("small-mp2"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["format"], "meta");
    assert_eq!(doc["shards"], 2);
    assert_eq!(doc["params"]["n_kv_heads"], 2);
    // `tensors`: as each shard stores them; `merged`: the model's, once each and whole.
    let t = &doc["tensors"][0];
    assert_eq!(t["name"], "tok_embeddings.weight");
    assert_eq!(t["shape"], serde_json::json!([128, 32]));
    assert_eq!(t["shard"], 0);
    assert_eq!(t["dtype"], "BF16");
    let n = doc["merged"].as_array().unwrap().len();
    assert_eq!(doc["tensors"].as_array().unwrap().len(), 2 * n);
    assert_eq!(doc["tensors"][n]["shard"], 1);
    let m = &doc["merged"][0];
    assert_eq!(m["name"], "tok_embeddings.weight");
    assert_eq!(m["shape"], serde_json::json!([256, 32]));
    assert_eq!(m["split"], "rows");
    let text = |args: &[&str]| {
        let out = llamactl().args(args).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let mp2 = testdata().join("small-mp2");
    let mp2 = mp2.to_str().unwrap();
    // The table: one row per tensor by default, one per shard and tensor with --shards.
    let rows = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("layers.0.attention.wq"))
            .count()
    };
    let merged = text(&["inspect", mp2]);
    assert_eq!(rows(&merged), 1, "{merged}");
    assert!(merged.contains("[256, 32]           rows"), "{merged}");
    assert_eq!(rows(&text(&["inspect", "--shards", mp2])), 2);
    // One shard file is its own rank.
    let one = format!("{mp2}/consolidated.01.pth");
    let one: serde_json::Value = serde_json::from_str(&text(&["inspect", "--json", &one])).unwrap();
    assert_eq!(one["tensors"][0]["shard"], 1);
    let out = llamactl()
        .args(["inspect", "--json"])
        .arg(testdata().join("misc/f32.pth"))
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["format"], "pth");
    assert_eq!(doc["total_bytes"], 4 * 24 + 4);
    assert_eq!(doc["params"], serde_json::Value::Null);
}

/// A minimal stored zip with one entry, for hostile-archive tests.
fn zip_with(name: &str, data: &[u8], method: u16) -> Vec<u8> {
    let crc = crc32fast::hash(data);
    let mut z = Vec::new();
    z.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00");
    z.extend_from_slice(&method.to_le_bytes());
    z.extend_from_slice(&[0; 4]);
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&(data.len() as u32).to_le_bytes());
    z.extend_from_slice(&(data.len() as u32).to_le_bytes());
    z.extend_from_slice(&(name.len() as u16).to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(data);
    let cd = z.len();
    z.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00");
    z.extend_from_slice(&method.to_le_bytes());
    z.extend_from_slice(&[0; 4]);
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&(data.len() as u32).to_le_bytes());
    z.extend_from_slice(&(data.len() as u32).to_le_bytes());
    z.extend_from_slice(&(name.len() as u16).to_le_bytes());
    z.extend_from_slice(&[0; 12]);
    z.extend_from_slice(&0u32.to_le_bytes());
    z.extend_from_slice(name.as_bytes());
    let cd_len = z.len() - cd;
    z.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x00");
    z.extend_from_slice(&(cd_len as u32).to_le_bytes());
    z.extend_from_slice(&(cd as u32).to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

#[test]
fn hostile_and_broken_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();
    cases.push((
        write("traversal.pth", &zip_with("../x", b"hi", 0)),
        "unsafe path",
    ));
    cases.push((
        write("deflated.pth", &zip_with("a/data/0", b"hi", 8)),
        "deflated",
    ));
    let mut evil = vec![0x80, 2, b'c'];
    evil.extend_from_slice(b"os\nsystem\nX\x02\x00\x00\x00ls\x85R.");
    cases.push((
        write("evil.pth", &zip_with("evil/data.pkl", &evil, 0)),
        "os.system",
    ));
    let good = std::fs::read(testdata().join("misc/f16.pth")).unwrap();
    cases.push((write("truncated.pth", &good[..good.len() - 40]), "zip"));
    cases.push((
        write(
            "legacy.pth",
            b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19",
        ),
        "re-save",
    ));
    let st = b"\xff\xff\x00\x00\x00\x00\x00\x00{}";
    cases.push((write("long.safetensors", st), "header claims"));
    for (path, needle) in cases {
        let (code, err) = stderr_of(&["inspect", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(path.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let bad = dir.path().join("badparams");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("params.json"), r#"{"dim": "4096"}"#).unwrap();
    std::fs::copy(
        testdata().join("small-mp1/consolidated.00.pth"),
        bad.join("consolidated.00.pth"),
    )
    .unwrap();
    let err = match ModelDir::open(&bad) {
        Ok(_) => panic!("wrong params type accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("params.json") && err.contains("invalid"),
        "{err}"
    );
}

/// A file writer that turns runs of zeros into holes, so a > 4 GiB checkpoint costs no disk.
struct SparseFile(std::fs::File);

impl std::io::Write for SparseFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::Seek;
        if buf.iter().all(|&b| b == 0) {
            self.0.seek(std::io::SeekFrom::Current(buf.len() as i64))?;
            Ok(buf.len())
        } else {
            self.0.write(buf)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn zip64_records_and_offsets_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("consolidated.00.pth");
    let big = (1usize << 32) + 100; // a record past 4 GiB, and every later offset past it too
    let specs = vec![
        TensorSpec {
            name: "big".into(),
            dtype: DType::U8,
            shape: vec![big],
        },
        TensorSpec {
            name: "after".into(),
            dtype: DType::F32,
            shape: vec![2],
        },
    ];
    let f = SparseFile(std::fs::File::create(&path).unwrap());
    let mut w = pth::PthWriter::new(f, "consolidated.00", specs).unwrap();
    let zeros = vec![0u8; 8 << 20];
    w.write_tensor(&mut |o| {
        let mut left = big;
        while left > 0 {
            let n = left.min(zeros.len());
            o.write_all(&zeros[..n])?;
            left -= n;
        }
        Ok(())
    })
    .unwrap();
    let after: Vec<u8> = [7.0f32, 8.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    w.write_tensor(&mut |o| Ok(o.write_all(&after)?)).unwrap();
    w.finish().unwrap();
    let p = PthFile::open(&path).unwrap();
    let t = p.get("big").unwrap();
    assert_eq!(t.shape, vec![big]);
    let a = p.get("after").unwrap();
    assert!(p.data_offset(a).unwrap() > u32::MAX as u64);
    assert_eq!(p.bytes(a).unwrap().as_ref(), &after[..]);
}

#[test]
fn list_shows_405b_variants_and_an_fp8_folder_state() {
    let d = tempfile::tempdir().unwrap();
    // A 405B fp8 download as Meta lays it out: 8 shards, 8 scales files, params, tokenizer, checklist.
    let folder = d.path().join("Llama-3.1-405B");
    std::fs::create_dir(&folder).unwrap();
    let mut files: Vec<String> = (0..8).map(|r| format!("consolidated.{r:02}.pth")).collect();
    files.extend((0..8).map(|r| format!("fp8_scales_{r}.pt")));
    files.extend(["params.json", "tokenizer.model", "checklist.chk"].map(String::from));
    for f in &files {
        std::fs::write(folder.join(f), b"x").unwrap();
    }
    let list = |json: bool| {
        let mut cmd = llamactl();
        cmd.arg("list").arg("--dir").arg(d.path());
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let model = |doc: &serde_json::Value, name: &str| -> serde_json::Value {
        doc["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed"))
    };
    let doc: serde_json::Value = serde_json::from_str(&list(true)).unwrap();
    let fp8 = model(&doc, "Llama3.1-405B");
    assert_eq!(
        (fp8["status"].as_str(), fp8["mp"].as_u64()),
        (Some("present"), Some(8))
    );
    assert_eq!(fp8["fp8"], true);
    assert_eq!(model(&doc, "Llama3.1-405B:bf16-mp16")["mp"], 16);
    assert_eq!(model(&doc, "Llama3.1-405B:bf16-mp8")["status"], "absent");
    std::fs::remove_file(folder.join("fp8_scales_3.pt")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&list(true)).unwrap();
    let fp8 = model(&doc, "Llama3.1-405B");
    assert_eq!(fp8["status"], "partial");
    assert_eq!(
        (
            fp8["files_present"].as_u64(),
            fp8["files_expected"].as_u64()
        ),
        (Some(18), Some(19))
    );
    let table = list(false);
    for name in [
        "Llama3.1-405B-Instruct:bf16-mp8",
        "Llama-3.1-405B-Instruct-MP16",
        "Llama3.2-1B-Instruct",
        "Llama3.2-3B-Instruct",
    ] {
        assert!(table.contains(name), "{name} missing from:\n{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("Llama3.1-405B "))
        .unwrap();
    assert!(row.contains("partial 18/19"), "{row}");
}
