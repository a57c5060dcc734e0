//! Hostile use of the writing commands: `--force` on what it must never replace, an empty
//! destination, corrupt source bytes (flipped, or not what checklist.chk says), tensors that do not
//! match params.json. Each case drives the real binary on real files.
use llamactl::formats::pth::PthFile;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn llamactl(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .current_dir(cwd)
        .args(args)
        .env("LLAMACTL_PROGRESS_INTERVAL_MS", "50")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit `code` with one line that contains `want`.
fn fails(out: &Output, code: i32, want: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(want), "expected {want:?} in: {err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains(want),
        "one error line: {err}"
    );
}

fn succeeds(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
}

/// A copy of a testdata checkpoint (symlinks followed) in `dir`.
fn copy_of(name: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(testdata().join(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    dir.to_path_buf()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn force_never_replaces_the_working_directory_or_its_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_of("small-mp2", &tmp.path().join("src"));
    let b = tmp.path().join("a/b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("notes.txt"), b"mine").unwrap();
    std::fs::write(tmp.path().join("a/keep.txt"), b"mine too").unwrap();
    let s = src.to_str().unwrap();
    for (dst, what) in [
        (".", "is the current directory"),
        ("..", "contains the current directory"),
        ("../b/.", "is the current directory"),
    ] {
        fails(
            &llamactl(&b, &["reshard", "--mp", "1", s, dst, "--force"]),
            2,
            what,
        );
        fails(
            &llamactl(&b, &["convert", "--to", "hf", s, dst, "--force"]),
            2,
            what,
        );
    }
    fails(
        &llamactl(&b, &["reshard", "--mp", "1", s, "/", "--force"]),
        2,
        "contains the source directory",
    );
    assert_eq!(listing(&b), ["notes.txt"]);
    assert_eq!(listing(&tmp.path().join("a")), ["b", "keep.txt"]);
}

#[test]
fn force_swaps_a_full_destination_only_when_the_new_one_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let src = testdata().join("small-mp2");
    let dst = tmp.path().join("out");
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("old.txt"), b"old").unwrap();
    // A failing run leaves the old output alone.
    let bad = copy_of("small-mp2", &tmp.path().join("bad"));
    std::fs::write(bad.join("params.json"), b"{\"dim\": 32}").unwrap();
    let out = llamactl(
        tmp.path(),
        &[
            "reshard",
            "--mp",
            "1",
            bad.to_str().unwrap(),
            "out",
            "--force",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(listing(&dst), ["old.txt"]);
    succeeds(&llamactl(
        tmp.path(),
        &[
            "reshard",
            "--mp",
            "1",
            src.to_str().unwrap(),
            "out",
            "--force",
        ],
    ));
    assert!(!dst.join("old.txt").exists() && dst.join("consolidated.00.pth").exists());
    // Nothing but the output is left beside it.
    assert_eq!(listing(tmp.path()), ["bad", "out"]);
}

#[test]
fn an_existing_empty_destination_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let src = testdata().join("small-mp2");
    let s = src.to_str().unwrap();
    for (cmd, dir) in [
        (vec!["reshard", "--mp", "1"], "resharded"),
        (vec!["convert", "--to", "hf"], "hf"),
    ] {
        std::fs::create_dir(tmp.path().join(dir)).unwrap();
        let mut args = cmd.clone();
        args.extend([s, dir]);
        succeeds(&llamactl(tmp.path(), &args));
        assert!(!listing(&tmp.path().join(dir)).is_empty());
    }
    assert!(tmp.path().join("resharded/consolidated.00.pth").exists());
    assert!(tmp.path().join("hf/config.json").exists());
}

#[test]
fn a_gguf_is_never_written_into_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_of("tiny-mp1", &tmp.path().join("src"));
    let s = src.to_str().unwrap();
    let inside = src.join("out.gguf");
    fails(
        &llamactl(
            tmp.path(),
            &["convert", "--to", "gguf", s, inside.to_str().unwrap()],
        ),
        2,
        "inside the source directory",
    );
    fails(
        &llamactl(tmp.path(), &["convert", "--to", "gguf", s, "outdir/"]),
        2,
        "names a directory",
    );
    assert!(!inside.exists() && !tmp.path().join("outdir").exists());
}

/// Byte ranges of tensor data in a shard.
fn tensor_ranges(shard: &Path) -> Vec<(u64, u64)> {
    let f = PthFile::open(shard).unwrap();
    f.tensors()
        .iter()
        .map(|t| {
            let at = f.data_offset(t).unwrap();
            (at, at + t.nbytes() as u64)
        })
        .collect()
}

/// `n` offsets spread over the tensor data of `shard`, from a fixed seed.
fn offsets_in_tensors(shard: &Path, n: usize, seed: u64) -> Vec<u64> {
    let ranges = tensor_ranges(shard);
    let total: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    let mut x = seed;
    (0..n)
        .map(|_| {
            // xorshift: reproducible without a dependency.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut k = x % total;
            for &(a, b) in &ranges {
                if k < b - a {
                    return a + k;
                }
                k -= b - a;
            }
            unreachable!()
        })
        .collect()
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x04;
    std::fs::write(path, bytes).unwrap();
}

/// Flip one byte at each offset in turn (checklist.chk removed, so only the zip's CRC-32 can
/// tell) and run every writing command: each must refuse, naming the shard, and leave no output.
fn sweep(fixture: &str, shard: &str, n: usize, commands: &[&[&str]]) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_of(fixture, &tmp.path().join("src"));
    std::fs::remove_file(src.join("checklist.chk")).unwrap();
    let pristine = std::fs::read(src.join(shard)).unwrap();
    let mut refused = 0;
    for at in offsets_in_tensors(&src.join(shard), n, 0x9e37_79b9_7f4a_7c15) {
        flip(&src.join(shard), at);
        for cmd in commands {
            let mut args = cmd.to_vec();
            args.extend([src.to_str().unwrap(), "out"]);
            let out = llamactl(tmp.path(), &args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "offset {at}, {cmd:?}: {err}");
            assert!(err.contains(shard) && err.contains("CRC-32"), "{err}");
            assert!(!tmp.path().join("out").exists());
            refused += 1;
        }
        std::fs::write(src.join(shard), &pristine).unwrap();
    }
    refused
}

#[test]
fn a_flipped_byte_in_any_tensor_fails_reshard_and_convert() {
    let n = sweep(
        "small-mp2",
        "consolidated.01.pth",
        50,
        &[
            &["reshard", "--mp", "1"],
            &["reshard", "--mp", "4"],
            &["convert", "--to", "hf"],
        ],
    );
    assert_eq!(n, 150);
    let n = sweep(
        "tiny-mp1",
        "consolidated.00.pth",
        8,
        &[&["convert", "--to", "gguf", "--dtype", "q8_0"]],
    );
    assert_eq!(n, 8);
}

#[test]
fn bytes_that_differ_from_the_checklist_are_not_blessed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_of("small-mp2", &tmp.path().join("src"));
    let s = src.to_str().unwrap();
    // A byte of the zip's own bookkeeping, which no CRC-32 covers and only the md5 sees: the
    // 'Z' padding torch puts before a record's data to align it.
    let shard = src.join("consolidated.00.pth");
    let bytes = std::fs::read(&shard).unwrap();
    let pad = tensor_ranges(&shard)
        .into_iter()
        .map(|(a, _)| a - 1)
        .find(|&at| bytes[at as usize] == b'Z')
        .expect("some record is padded");
    flip(&shard, pad);
    let out = llamactl(tmp.path(), &["reshard", "--mp", "1", s, "out"]);
    fails(&out, 1, "checklist.chk");
    assert!(stderr(&out).contains("consolidated.00.pth"));
    std::fs::copy(testdata().join("small-mp2/consolidated.00.pth"), &shard).unwrap();

    // params.json edited after the checklist was made.
    let params = std::fs::read_to_string(src.join("params.json")).unwrap();
    std::fs::write(src.join("params.json"), params.replace("1e-05", "1e-06")).unwrap();
    let out = llamactl(tmp.path(), &["reshard", "--mp", "1", s, "out"]);
    fails(&out, 1, "params.json");
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn tensors_must_match_params_json() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_of("small-mp2", &tmp.path().join("src"));
    std::fs::remove_file(src.join("checklist.chk")).unwrap();
    let params = std::fs::read_to_string(src.join("params.json")).unwrap();
    std::fs::write(
        src.join("params.json"),
        params.replace("\"n_layers\": 2", "\"n_layers\": 3"),
    )
    .unwrap();
    let s = src.to_str().unwrap();
    for cmd in [&["reshard", "--mp", "1"][..], &["convert", "--to", "hf"]] {
        let mut args = cmd.to_vec();
        args.extend([s, "out"]);
        fails(&llamactl(tmp.path(), &args), 2, "layers.2.");
    }

    // A shard whose state dict is empty.
    std::fs::write(src.join("params.json"), &params).unwrap();
    for shard in ["consolidated.00.pth", "consolidated.01.pth"] {
        llamactl::formats::pth::write_small(&src.join(shard), &[]).unwrap();
    }
    let out = llamactl(tmp.path(), &["reshard", "--mp", "1", s, "out"]);
    fails(&out, 2, "is missing");
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn a_missing_last_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_of("small-mp2", &tmp.path().join("src"));
    std::fs::remove_file(src.join("consolidated.01.pth")).unwrap();
    let s = src.to_str().unwrap();
    fails(
        &llamactl(tmp.path(), &["reshard", "--mp", "2", s, "out"]),
        2,
        "checklist.chk lists consolidated.01.pth, missing from the directory",
    );
    std::fs::remove_file(src.join("checklist.chk")).unwrap();
    fails(
        &llamactl(tmp.path(), &["reshard", "--mp", "2", s, "out"]),
        2,
        "are shards missing?",
    );
}

#[test]
fn outputs_honour_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let src = testdata().join("tiny-mp1");
    let bin = env!("CARGO_BIN_EXE_llamactl");
    let script = format!(
        "umask 022 && {bin} convert --to hf {s} hf && {bin} reshard --mp 1 {s} mp1 \
         && {bin} convert --to gguf {s} m.gguf && {bin} convert --to meta hf meta",
        s = src.display()
    );
    let out = Command::new("sh")
        .current_dir(tmp.path())
        .args(["-c", &script])
        .output()
        .unwrap();
    succeeds(&out);
    let mut files = vec![tmp.path().join("m.gguf")];
    for dir in ["hf", "mp1", "meta"] {
        for e in std::fs::read_dir(tmp.path().join(dir)).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    for dir in ["hf", "mp1", "meta"] {
        files.push(tmp.path().join(dir));
    }
    for f in files {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        let want = if f.is_dir() { 0o755 } else { 0o644 };
        assert_eq!(mode, want, "{}: mode {mode:o}", f.display());
    }
}
