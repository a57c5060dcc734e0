//! What users of other tools take for granted: output files readable like any file they create,
//! `--version` saying what the binary was built with.
use std::path::{Path, PathBuf};
use std::process::Command;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn succeeds(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_names_the_features_built_in() {
    let out = Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .arg("--version")
        .output()
        .unwrap();
    succeeds(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("llamactl {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let want = if cfg!(feature = "cuda") {
        "features: cuda"
    } else {
        "features: none"
    };
    assert!(text.contains(want), "{text}");
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
