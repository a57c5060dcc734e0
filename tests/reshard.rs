//! `llamactl reshard` end to end: golden outputs from Meta's llama-models oracle
//! (scripts/make_reshard_golden.py), round trips, non-multiple MP changes against slices computed
//! here, the output directory, and refusals that must leave no destination behind.
use llamactl::checkpoint::{checklist, hashing};
use llamactl::formats::pth::{self, PthFile, TensorSpec};
use llamactl::formats::DType;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn reshard(mp: usize, src: &Path, dst: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .arg("reshard")
        .arg("--mp")
        .arg(mp.to_string())
        .arg(src)
        .arg(dst)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Exit 2 with a one-line message containing `want`.
fn refused(out: Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(want), "expected {want:?} in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pth"))
        .collect();
    v.sort();
    v
}

type Tensor = (String, DType, Vec<usize>, Vec<u8>);
/// Tensors to write with `pth::write_small`.
type Written = Vec<(TensorSpec, Vec<u8>)>;
type Edit = dyn Fn(&mut Written);
/// name, full shape, split dim (None = replicated), full bytes.
type SynthTensor = (String, Vec<usize>, Option<usize>, Vec<u8>);

/// Every shard's tensors in file order.
fn read_dir_tensors(dir: &Path) -> Vec<Vec<Tensor>> {
    shard_files(dir)
        .iter()
        .map(|p| {
            let f = PthFile::open(p).unwrap();
            f.tensors()
                .iter()
                .map(|t| {
                    let b = f.bytes(t).unwrap().into_owned();
                    (t.name.clone(), t.dtype, t.shape.clone(), b)
                })
                .collect()
        })
        .collect()
}

/// No `.NAME.tmp-*` folder left beside a destination.
fn no_temp_dirs(parent: &Path) {
    for e in std::fs::read_dir(parent).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".tmp-"), "temp dir {n} left behind");
    }
}

#[test]
fn outputs_match_the_oracle_goldens() {
    let mut cases = 0;
    for entry in std::fs::read_dir(testdata().join("reshard")).unwrap() {
        let path = entry.unwrap().path();
        let g: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut cur = testdata().join(g["src"].as_str().unwrap());
        for (i, step) in g["steps"].as_array().unwrap().iter().enumerate() {
            let out = tmp.path().join(format!("step{i}"));
            ok(reshard(step.as_u64().unwrap() as usize, &cur, &out, &[]));
            cur = out;
        }
        let got = read_dir_tensors(&cur);
        let want = g["shards"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{}", path.display());
        for (shard, w) in got.iter().zip(want) {
            let wt = w["tensors"].as_array().unwrap();
            assert_eq!(shard.len(), wt.len());
            for ((name, dtype, shape, bytes), w) in shard.iter().zip(wt) {
                let ctx = format!("{} {} {name}", path.display(), w["file"]);
                assert_eq!(name, w["name"].as_str().unwrap(), "{ctx}");
                assert_eq!(dtype.name(), w["dtype"].as_str().unwrap(), "{ctx}");
                let ws: Vec<usize> = serde_json::from_value(w["shape"].clone()).unwrap();
                assert_eq!(shape, &ws, "{ctx}");
                assert_eq!(
                    hex::encode(Sha256::digest(bytes)),
                    w["sha256"].as_str().unwrap(),
                    "{ctx}"
                );
            }
        }
        cases += 1;
    }
    assert!(cases >= 9, "only {cases} golden cases");
}

#[test]
fn round_trips_reproduce_the_source_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let trips: &[(&str, &[usize])] = &[
        ("small-mp1", &[2, 1]),
        ("small-mp1", &[8, 1]),
        ("small-mp2", &[4, 2]),
        ("small-mp2", &[1, 8, 2]),
        ("misc/llama2-mp2", &[1, 2]),
        ("misc/llama2-mp2", &[4, 2]),
    ];
    for (i, (src, steps)) in trips.iter().enumerate() {
        let src = testdata().join(src);
        let mut cur = src.clone();
        for (j, &mp) in steps.iter().enumerate() {
            let out = tmp.path().join(format!("t{i}-{j}"));
            ok(reshard(mp, &cur, &out, &[]));
            assert_eq!(shard_files(&out).len(), mp);
            cur = out;
        }
        assert_eq!(
            read_dir_tensors(&cur),
            read_dir_tensors(&src),
            "{} via {steps:?}",
            src.display()
        );
    }
}

#[test]
fn output_dir_has_every_file_and_a_checklist_hashed_while_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = testdata().join("tiny-mp1");
    let dst = tmp.path().join("out");
    let out = ok(reshard(2, &src, &dst, &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    // Not a terminal: plain lines, one per finished shard.
    assert!(
        err.contains("consolidated.01.pth: ") && !err.contains('\r'),
        "{err}"
    );

    let mut names: Vec<String> = std::fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "checklist.chk",
            "consolidated.00.pth",
            "consolidated.01.pth",
            "params.json",
            "tokenizer.model"
        ]
    );
    let (entries, bad) = checklist::read(&dst.join("checklist.chk")).unwrap();
    assert!(bad.is_empty());
    assert_eq!(entries.len(), 4);
    for e in &entries {
        assert_eq!(
            e.md5,
            hashing::md5_file(&dst.join(&e.name), &|_| {}).unwrap(),
            "{}",
            e.name
        );
    }
    assert_eq!(
        std::fs::read(dst.join("params.json")).unwrap(),
        std::fs::read(src.join("params.json")).unwrap()
    );
    // The source's tokenizer.model is a symlink; the output holds the file itself.
    let tok = dst.join("tokenizer.model");
    assert!(tok.symlink_metadata().unwrap().file_type().is_file());
    assert_eq!(
        std::fs::read(&tok).unwrap(),
        std::fs::read(testdata().join("tokenizer.model")).unwrap()
    );
    let f = PthFile::open(&dst.join("consolidated.01.pth")).unwrap();
    assert_eq!(f.prefix(), "consolidated.01");
    assert_eq!(
        f.get("tok_embeddings.weight").unwrap().shape,
        vec![128256 / 2, 16]
    );
    no_temp_dirs(tmp.path());
}

#[test]
fn jobs_do_not_change_a_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let src = testdata().join("small-mp1");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    ok(reshard(4, &src, &a, &["--jobs", "1"]));
    ok(reshard(4, &src, &b, &["--jobs", "3"]));
    for name in [
        "consolidated.00.pth",
        "consolidated.03.pth",
        "checklist.chk",
        "params.json",
    ] {
        assert_eq!(
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
            "{name}"
        );
    }
    // No tokenizer.model in the source: none in the output, and the checklist doesn't name one.
    assert!(!a.join("tokenizer.model").exists());
    let chk = std::fs::read_to_string(a.join("checklist.chk")).unwrap();
    assert_eq!(chk.lines().count(), 5);
}

/// A synthetic model written here, so MP sizes that are not multiples of each other (2 <-> 3)
/// exist, checked against slices computed in this test from the full tensors.
struct Synthetic {
    dir: PathBuf,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    /// F32, row-major.
    tensors: Vec<SynthTensor>,
}

impl Synthetic {
    fn new(dir: &Path, n_heads: usize, n_kv: usize) -> Self {
        let (dim, vocab, hidden) = (48, 96, 144); // multiple_of 24: int(2*4*48/3) = 128 -> 144
        let hd = dim / n_heads;
        let mut tensors = Vec::new();
        let mut add = |name: String, shape: Vec<usize>, split: Option<usize>| {
            let seed = tensors.len() as f32 * 1000.0;
            let n: usize = shape.iter().product();
            let data: Vec<u8> = (0..n)
                .flat_map(|i| (seed + i as f32).to_le_bytes())
                .collect();
            tensors.push((name, shape, split, data));
        };
        add("tok_embeddings.weight".into(), vec![vocab, dim], Some(0));
        add(
            "layers.0.attention.wq.weight".into(),
            vec![dim, dim],
            Some(0),
        );
        add(
            "layers.0.attention.wk.weight".into(),
            vec![n_kv * hd, dim],
            Some(0),
        );
        add(
            "layers.0.attention.wv.weight".into(),
            vec![n_kv * hd, dim],
            Some(0),
        );
        add(
            "layers.0.attention.wo.weight".into(),
            vec![dim, dim],
            Some(1),
        );
        add(
            "layers.0.feed_forward.w1.weight".into(),
            vec![hidden, dim],
            Some(0),
        );
        add(
            "layers.0.feed_forward.w2.weight".into(),
            vec![dim, hidden],
            Some(1),
        );
        add(
            "layers.0.feed_forward.w3.weight".into(),
            vec![hidden, dim],
            Some(0),
        );
        add("layers.0.attention_norm.weight".into(), vec![dim], None);
        add("layers.0.ffn_norm.weight".into(), vec![dim], None);
        add("norm.weight".into(), vec![dim], None);
        add("output.weight".into(), vec![vocab, dim], Some(0));
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("params.json"),
            format!(
                r#"{{"dim": {dim}, "n_layers": 1, "n_heads": {n_heads}, "n_kv_heads": {n_kv}, "vocab_size": {vocab}, "multiple_of": 24, "norm_eps": 1e-05}}"#
            ),
        )
        .unwrap();
        let me = Self {
            dir: dir.to_path_buf(),
            n_heads,
            n_kv,
            head_dim: hd,
            tensors,
        };
        let full: Written = me
            .tensors
            .iter()
            .map(|(n, s, _, d)| (spec(n, s), d.clone()))
            .collect();
        pth::write_small(&dir.join("consolidated.00.pth"), &full).unwrap();
        me
    }

    /// What rank `rank` of `mp` must hold, sliced from the full tensors.
    fn expected(&self, mp: usize, rank: usize) -> Vec<Tensor> {
        self.tensors
            .iter()
            .map(|(name, shape, split, data)| {
                let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
                let kv = name.ends_with("wk.weight") || name.ends_with("wv.weight");
                let (r, c) = match split {
                    None => (0..rows, 0..cols),
                    Some(0) if kv && mp > self.n_kv => {
                        // GQA: the kv head of this rank's first query head.
                        let head = rank * (self.n_heads / mp) / (self.n_heads / self.n_kv);
                        (head * self.head_dim..(head + 1) * self.head_dim, 0..cols)
                    }
                    Some(0) => (rank * rows / mp..(rank + 1) * rows / mp, 0..cols),
                    Some(_) => (0..rows, rank * cols / mp..(rank + 1) * cols / mp),
                };
                let mut bytes = Vec::new();
                for i in r.clone() {
                    bytes
                        .extend_from_slice(&data[(i * cols + c.start) * 4..(i * cols + c.end) * 4]);
                }
                let out_shape = if shape.len() == 1 {
                    shape.clone()
                } else {
                    vec![r.len(), c.len()]
                };
                (name.clone(), DType::F32, out_shape, bytes)
            })
            .collect()
    }

    fn check(&self, dir: &Path, mp: usize) {
        let got = read_dir_tensors(dir);
        assert_eq!(got.len(), mp);
        for (rank, shard) in got.iter().enumerate() {
            assert_eq!(shard, &self.expected(mp, rank), "MP {mp} rank {rank}");
        }
    }
}

fn spec(name: &str, shape: &[usize]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
    }
}

#[test]
fn any_valid_mp_change_including_non_multiples() {
    let tmp = tempfile::tempdir().unwrap();
    // 6 heads, 6 kv heads: MP 1, 2, 3, 6 are valid; 2 <-> 3 are not multiples of each other.
    let m = Synthetic::new(&tmp.path().join("mha"), 6, 6);
    let mut cur = m.dir.clone();
    for (i, mp) in [2, 3, 2, 6, 3, 1].into_iter().enumerate() {
        let out = tmp.path().join(format!("mha{i}"));
        ok(reshard(mp, &cur, &out, &[]));
        m.check(&out, mp);
        cur = out;
    }
    // 6 heads over 3 kv heads: MP 6 gives each kv head to two ranks; back down removes the copies.
    let g = Synthetic::new(&tmp.path().join("gqa"), 6, 3);
    let mut cur = g.dir.clone();
    for (i, mp) in [6, 3, 6, 1].into_iter().enumerate() {
        let out = tmp.path().join(format!("gqa{i}"));
        ok(reshard(mp, &cur, &out, &[]));
        g.check(&out, mp);
        cur = out;
    }
    // 6 heads / 3 kv heads at MP 2 would split a kv head between ranks.
    refused(
        reshard(2, &g.dir, &tmp.path().join("no"), &[]),
        "valid MP sizes: 1, 3, 6",
    );
}

#[test]
fn refuses_bad_requests_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = testdata().join("small-mp2");
    let dst = tmp.path().join("out");
    refused(reshard(3, &src, &dst, &[]), "valid MP sizes: 1, 2, 4, 8");
    refused(reshard(16, &src, &dst, &[]), "MP 16 does not fit");
    refused(reshard(0, &src, &dst, &[]), "--mp must be at least 1");
    refused(
        reshard(2, &tmp.path().join("nope"), &dst, &[]),
        "nope: no such file or directory",
    );
    assert!(!dst.exists());

    // A non-empty destination needs --force, which then replaces it whole.
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("old.txt"), b"old").unwrap();
    refused(reshard(2, &src, &dst, &[]), "not empty");
    assert!(dst.join("old.txt").exists());
    ok(reshard(2, &src, &dst, &["--force"]));
    assert!(!dst.join("old.txt").exists() && dst.join("consolidated.01.pth").exists());

    // Destination inside the source, or the source inside the destination (--force would delete it).
    let copy = tmp.path().join("outer/src");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["params.json", "consolidated.00.pth", "consolidated.01.pth"] {
        std::fs::copy(src.join(f), copy.join(f)).unwrap();
    }
    refused(
        reshard(1, &copy, &copy.join("mp1"), &[]),
        "inside the source",
    );
    refused(
        reshard(1, &copy, &copy, &["--force"]),
        "is the source directory",
    );
    refused(
        reshard(1, &copy, &tmp.path().join("outer"), &["--force"]),
        "contains the source",
    );
    refused(
        reshard(1, &copy, &copy.join("new/../../src/x"), &[]),
        "inside the source",
    );
    assert!(copy.join("consolidated.01.pth").exists());
    assert!(!copy.join("mp1").exists());
    no_temp_dirs(tmp.path());
}

/// small-mp2 copied to `dir` with shard 1 rewritten by `edit`.
fn broken_copy(dir: &Path, edit: impl Fn(&mut Written)) {
    std::fs::create_dir_all(dir).unwrap();
    let src = testdata().join("small-mp2");
    std::fs::copy(src.join("params.json"), dir.join("params.json")).unwrap();
    std::fs::copy(
        src.join("consolidated.00.pth"),
        dir.join("consolidated.00.pth"),
    )
    .unwrap();
    let f = PthFile::open(&src.join("consolidated.01.pth")).unwrap();
    let mut tensors: Written = f
        .tensors()
        .iter()
        .map(|t| {
            (
                TensorSpec {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                },
                f.bytes(t).unwrap().into_owned(),
            )
        })
        .collect();
    edit(&mut tensors);
    pth::write_small(&dir.join("consolidated.01.pth"), &tensors).unwrap();
}

#[test]
fn refuses_inconsistent_shards_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let find = |v: &mut Written, name: &str| v.iter().position(|(s, _)| s.name == name).unwrap();
    let cases: Vec<(&str, Box<Edit>, &str)> = vec![
        (
            "missing",
            Box::new(move |v| {
                let i = find(v, "output.weight");
                v.remove(i);
            }),
            "tensor output.weight is missing",
        ),
        (
            "extra",
            Box::new(|v| v.push((spec("extra.weight", &[2]), vec![0; 8]))),
            "has tensor extra.weight which",
        ),
        (
            "replica",
            Box::new(move |v| {
                let i = find(v, "norm.weight");
                v[i].1[0] ^= 1;
            }),
            "norm.weight differs between",
        ),
        (
            "shape",
            Box::new(move |v| {
                let i = find(v, "layers.0.attention.wq.weight");
                v[i].0.shape = vec![64, 8];
            }),
            "layers.0.attention.wq.weight has shape [64, 8], expected [16, 32]",
        ),
        (
            "dtype",
            Box::new(move |v| {
                let i = find(v, "layers.1.feed_forward.w2.weight");
                v[i].0.dtype = DType::F16;
            }),
            "layers.1.feed_forward.w2.weight is F16 but BF16",
        ),
    ];
    for (name, edit, want) in cases {
        let src = tmp.path().join(name);
        broken_copy(&src, edit);
        let dst = tmp.path().join(format!("{name}-out"));
        let out = reshard(1, &src, &dst, &[]);
        refused(out, want);
        assert!(!dst.exists(), "{name}");
    }

    // A gap in the shard numbering.
    let gap = tmp.path().join("gap");
    broken_copy(&gap, |_| {});
    std::fs::remove_file(gap.join("consolidated.00.pth")).unwrap();
    refused(
        reshard(1, &gap, &tmp.path().join("gap-out"), &[]),
        "consolidated.00.pth is missing",
    );

    // MP 4 over 2 kv heads repeats each kv head on two ranks; going down checks the copies.
    let mp4 = tmp.path().join("mp4");
    ok(reshard(4, &testdata().join("small-mp2"), &mp4, &[]));
    let f = PthFile::open(&mp4.join("consolidated.01.pth")).unwrap();
    let tensors: Written = f
        .tensors()
        .iter()
        .map(|t| {
            let mut b = f.bytes(t).unwrap().into_owned();
            if t.name == "layers.0.attention.wk.weight" {
                b[5] ^= 0x40;
            }
            (
                TensorSpec {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                },
                b,
            )
        })
        .collect();
    drop(f);
    pth::write_small(&mp4.join("consolidated.01.pth"), &tensors).unwrap();
    refused(
        reshard(2, &mp4, &tmp.path().join("mp4-out"), &[]),
        "layers.0.attention.wk.weight differs between",
    );
    assert!(!tmp.path().join("mp4-out").exists());
    no_temp_dirs(tmp.path());
}

#[test]
fn killed_run_leaves_no_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // About 70 MB, so the run is still writing when it is killed.
    let (dim, vocab, hidden) = (512, 32768, 1536);
    std::fs::write(
        src.join("params.json"),
        format!(
            r#"{{"dim": {dim}, "n_layers": 1, "n_heads": 8, "n_kv_heads": 8, "vocab_size": {vocab}, "multiple_of": 256, "norm_eps": 1e-05}}"#
        ),
    )
    .unwrap();
    let t = |name: &str, shape: &[usize]| {
        let n: usize = shape.iter().product();
        (
            TensorSpec {
                name: name.into(),
                dtype: DType::BF16,
                shape: shape.to_vec(),
            },
            (0..n * 2).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
        )
    };
    let tensors = vec![
        t("tok_embeddings.weight", &[vocab, dim]),
        t("layers.0.attention.wq.weight", &[dim, dim]),
        t("layers.0.attention.wk.weight", &[dim, dim]),
        t("layers.0.attention.wv.weight", &[dim, dim]),
        t("layers.0.attention.wo.weight", &[dim, dim]),
        t("layers.0.feed_forward.w1.weight", &[hidden, dim]),
        t("layers.0.feed_forward.w2.weight", &[dim, hidden]),
        t("layers.0.feed_forward.w3.weight", &[hidden, dim]),
        t("layers.0.attention_norm.weight", &[dim]),
        t("layers.0.ffn_norm.weight", &[dim]),
        t("norm.weight", &[dim]),
        t("output.weight", &[vocab, dim]),
    ];
    pth::write_small(&src.join("consolidated.00.pth"), &tensors).unwrap();
    drop(tensors);

    let dst = tmp.path().join("dst");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .args(["reshard", "--mp", "2", "--jobs", "1"])
        .arg(&src)
        .arg(&dst)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as the first shard is being written into the temp dir.
    let started = std::time::Instant::now();
    'wait: loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "reshard finished before it could be killed"
        );
        assert!(started.elapsed().as_secs() < 60);
        for e in std::fs::read_dir(tmp.path()).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".dst.tmp-")
                && p.join("consolidated.00.pth").exists()
            {
                break 'wait;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dst.exists());
}

#[test]
fn fp8_checkpoints_are_refused_and_nothing_is_created() {
    // testdata/fp8-mp2: torch-written like Meta's 405B fp8 release (scripts/make_fixtures.py).
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    for mp in [1, 2, 4] {
        let out = reshard(mp, &testdata().join("fp8-mp2"), &dst, &[]);
        refused(out, "fp8");
    }
    let err = String::from_utf8_lossy(&reshard(1, &testdata().join("fp8-mp2"), &dst, &[]).stderr)
        .into_owned();
    assert!(
        err.contains("layers.1.feed_forward.w1.weight") && err.contains("w2"),
        "{err}"
    );
    assert!(!dst.exists());
    no_temp_dirs(tmp.path());
}
