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

fn llamactl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llamactl"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// A completion reaches a pipe token by token: the first generated text arrives while the rest
/// is still being generated (each position is slowed to 150 ms, so the whole run takes > 1.5 s).
#[test]
fn completion_streams_to_a_pipe() {
    use std::io::Read;
    let mut child = llamactl()
        .args([
            "run",
            "testdata/tiny-mp1",
            "--prompt",
            "The capital of France is",
        ])
        .args(["--max-gen-len", "12", "--ignore-eos", "--temperature", "0"])
        .env("LLAMACTL_TEST_SLOW_MS", "150")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    // The prompt line, "> ", then the first byte of generated text.
    while !seen.ends_with(b"\n> ") {
        assert_eq!(stdout.read(&mut byte).unwrap(), 1, "{seen:?}");
        seen.push(byte[0]);
    }
    assert_eq!(stdout.read(&mut byte).unwrap(), 1);
    let first = std::time::Instant::now();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let after = first.elapsed();
    assert!(child.wait().unwrap().success());
    assert!(
        after >= std::time::Duration::from_millis(750),
        "the first text came only {after:?} before the end"
    );
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("=========="), "{text}");
}

/// `run MODEL` like every other command, `--ckpt-dir` as its alias; no mode is a usage hint, not
/// hidden example prompts.
#[test]
fn run_takes_the_model_as_an_argument() {
    let run = |args: &[&str]| llamactl().arg("run").args(args).output().unwrap();
    let gen = [
        "--prompt",
        "Hello",
        "--max-gen-len",
        "4",
        "--temperature",
        "0",
        "--json",
    ];
    let positional = run(&[&["testdata/tiny-mp1"][..], &gen].concat());
    succeeds(&positional);
    let flag = run(&[&["--ckpt-dir", "testdata/tiny-mp1"][..], &gen].concat());
    succeeds(&flag);
    let results = |o: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["results"].clone()
    };
    assert_eq!(results(&positional), results(&flag));

    let bare = run(&["testdata/tiny-mp1"]);
    assert_eq!(bare.status.code(), Some(2));
    assert!(bare.stdout.is_empty());
    let err = String::from_utf8_lossy(&bare.stderr);
    for want in ["--prompt", "--chat", "--check", "--examples"] {
        assert!(err.contains(want), "{err}");
    }
    assert_eq!(err.lines().count(), 1, "{err}");

    let none = run(&["--prompt", "x"]);
    assert_eq!(none.status.code(), Some(2));
    let both = run(&[
        "testdata/tiny-mp1",
        "--ckpt-dir",
        "testdata/tiny-mp1",
        "--check",
    ]);
    assert_eq!(both.status.code(), Some(2));

    let help = run(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("run [OPTIONS] <MODEL>") || help.contains("[MODEL]"),
        "{help}"
    );
    assert!(help.contains("--examples"), "{help}");
}

fn chat_on_a_pty(data: &Path) -> crate::common::pty::Pty {
    let mut cmd = llamactl();
    cmd.args(["run", "testdata/run/hf-mha", "--chat", "--temperature", "0"])
        .args(["--max-gen-len", "4", "--max-seq-len", "128"])
        .env("XDG_DATA_HOME", data)
        .env("TERM", "xterm");
    crate::common::pty::Pty::spawn(cmd)
}

/// "(N new prompt tokens, M reused from the cache; ...)": (N, M) of the first such line in `text`.
fn turn_stats(text: &str) -> (usize, usize) {
    let (before, after) = text.rsplit_once(" new prompt tokens, ").expect("a turn");
    let new = before.rsplit('(').next().unwrap().parse().unwrap();
    let reused = after.split(' ').next().unwrap().parse().unwrap();
    (new, reused)
}

/// The REPL on a terminal: a message too long for --max-seq-len is refused and leaves the dialog
/// and its cache as they were (the next turn reuses all of the first); Up recalls earlier
/// messages, in this session and the next (the history file in the user's data dir).
#[test]
fn chat_repl_on_a_terminal() {
    use std::time::Duration;
    let long = Duration::from_secs(120);
    let data = tempfile::tempdir().unwrap();
    let mut pty = chat_on_a_pty(data.path());
    pty.expect("user> ", long);
    pty.send("/system Be brief.\r");
    pty.expect("(system prompt set; dialog cleared)", long);
    pty.expect("user> ", long);
    pty.send("Hello there\r");
    let (new1, reused1) = turn_stats(&pty.expect(" reused from the cache", long));
    assert_eq!(reused1, 0);
    pty.expect("user> ", long);
    pty.send(&format!("{}\r", "word ".repeat(150)));
    let refusal = pty.expect("Not sent; the dialog is as it was.", long);
    assert!(refusal.contains("--max-seq-len 128"), "{refusal}");
    pty.expect("user> ", long);
    pty.send("What is the capital of France?\r");
    let (_, reused2) = turn_stats(&pty.expect(" reused from the cache", long));
    assert!(
        reused2 >= new1,
        "turn 2 reused {reused2} of turn 1's {new1} tokens"
    );
    // Up four times: the /system line, typed first.
    pty.expect("user> ", long);
    pty.send("\x1b[A\x1b[A\x1b[A\x1b[A\r");
    pty.expect("(system prompt set; dialog cleared)", long);
    pty.expect("user> ", long);
    pty.send("/quit\r");
    assert_eq!(pty.wait(long), Some(0));
    assert!(data.path().join("llamactl/chat_history").is_file());

    // A new session recalls the last one: Up once is /quit, twice the recalled /system.
    let mut pty = chat_on_a_pty(data.path());
    pty.expect("user> ", long);
    pty.send("\x1b[A\x1b[A\r");
    pty.expect("(system prompt set; dialog cleared)", long);
    pty.send("\x04");
    assert_eq!(pty.wait(long), Some(0));
}

/// Piped input follows the same multi-line rules: a trailing backslash continues the line, and
/// `"""` lines hold a block; each is one message (the first turn's prompt is that of the dialog).
#[test]
fn chat_messages_span_lines() {
    use std::io::Write;
    let mut child = llamactl()
        .args(["run", "testdata/run/hf-mha", "--chat", "--temperature", "0"])
        .args(["--max-gen-len", "4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello \\\nthere\n\"\"\"\nWhat is\nthe capital?\n\"\"\"\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    succeeds(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    let turns: Vec<&str> = err.lines().filter(|l| l.contains(" reused from")).collect();
    assert_eq!(turns.len(), 2, "{err}");
    let (new, reused) = turn_stats(turns[0]);
    let mut tok = llamactl()
        .args([
            "tokenize",
            "--model",
            "testdata/run/hf-mha",
            "--chat",
            "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tok.stdin
        .take()
        .unwrap()
        .write_all(br#"[{"role": "user", "content": "Hello \nthere"}]"#)
        .unwrap();
    let tok = tok.wait_with_output().unwrap();
    succeeds(&tok);
    let v: serde_json::Value = serde_json::from_slice(&tok.stdout).unwrap();
    assert_eq!(new + reused, v["count"].as_u64().unwrap() as usize, "{err}");
}

/// The GGUF summary counts the tensors of each type, as the file holds them, and says why some are
/// not of the asked type (the tiny model's rows of 16 are not whole Q8_0 blocks).
#[test]
fn gguf_summary_counts_tensor_types() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    let conv = llamactl()
        .args(["convert", "--to", "gguf", "testdata/tiny-mp1"])
        .arg(&out)
        .args(["--dtype", "q8_0"])
        .output()
        .unwrap();
    succeeds(&conv);
    let err = String::from_utf8_lossy(&conv.stderr);
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("tensor types: "))
        .unwrap_or_else(|| panic!("{err}"));
    let doc = llamactl()
        .arg("inspect")
        .arg(&out)
        .arg("--json")
        .output()
        .unwrap();
    succeeds(&doc);
    let doc: serde_json::Value = serde_json::from_slice(&doc.stdout).unwrap();
    let mut want = std::collections::BTreeMap::new();
    for t in doc["tensors"].as_array().unwrap() {
        *want
            .entry(t["dtype"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let got: std::collections::BTreeMap<String, i32> = line
        .split(", ")
        .map(|p| {
            let (n, t) = p.split_once(' ').unwrap();
            (t.to_string(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(got, want, "{err}");
    assert!(
        want.contains_key("F16") && want.contains_key("Q8_0"),
        "{want:?}"
    );
    assert!(
        err.contains("F16: rows of 16 values are not whole Q8_0 blocks of 32"),
        "{err}"
    );
    assert!(err.contains("F32: 1-D tensors"), "{err}");
}

/// `tokenize --chat` shows the prompt as the model reads it, then its ids; the dialog can come
/// from a file.
#[test]
fn tokenize_chat_shows_the_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("dialog.json");
    std::fs::write(&file, r#"[{"role": "user", "content": "hi there"}]"#).unwrap();
    let run = |extra: &[&str]| {
        let o = llamactl()
            .args(["tokenize", "--model", "testdata/run/hf-mha", "--chat"])
            .arg(&file)
            .args(extra)
            .output()
            .unwrap();
        succeeds(&o);
        String::from_utf8(o.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    let text = run(&[]);
    let prompt = json["text"].as_str().unwrap();
    assert!(prompt.contains("hi there"), "{prompt}");
    assert!(text.starts_with(prompt), "{text}");
    let ids: Vec<String> = json["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let last = text.lines().last().unwrap();
    assert_eq!(last, ids.join(" "));
    assert!(
        text.contains(&format!("--- {} tokens:", ids.len())),
        "{text}"
    );
}

/// download against a host that refuses: the message counts the tries LLAMACTL_NET_RETRIES
/// allowed, and the model folder it made is gone again.
#[test]
fn download_counts_its_tries_and_leaves_no_empty_folder() {
    let policy = r#"{"Statement":[{"Condition":{"DateLessThan":{"AWS:EpochTime":4102444800}}}]}"#;
    let port = crate::common::child::refused_port();
    let url = format!(
        "http://127.0.0.1:{port}/*?Policy={}&Signature=SIGx~&Key-Pair-Id=APKATEST",
        crate::common::cdn::cloudfront_b64(policy.as_bytes())
    );
    let tmp = tempfile::tempdir().unwrap();
    for (retries, want) in [
        ("0", "after 1 try "),
        ("1", "after 2 tries "),
        ("8", "after 3 tries "),
    ] {
        let o = llamactl()
            .args(["download", "--url", &url, "--models", "8B", "--dir"])
            .arg(tmp.path().join("new/models"))
            .env("LLAMACTL_NET_RETRIES", retries)
            .env_remove("LLAMACTL_RETRIES")
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(4));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{retries}: {err}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// Ctrl-C on the terminal while a reply is written stops that reply (the REPL goes on, the turn's
/// line says "stopped"); Ctrl-C at the prompt leaves with 130, as the default SIGINT would.
#[test]
fn chat_ctrl_c_stops_a_reply_then_leaves() {
    use std::time::Duration;
    let long = Duration::from_secs(120);
    let data = tempfile::tempdir().unwrap();
    let mut cmd = llamactl();
    cmd.args(["run", "testdata/run/hf-mha", "--chat", "--ignore-eos"])
        .args(["--max-gen-len", "100", "--max-seq-len", "256"])
        .env("XDG_DATA_HOME", data.path())
        .env("TERM", "xterm")
        .env("LLAMACTL_TEST_SLOW_MS", "100");
    let mut pty = crate::common::pty::Pty::spawn(cmd);
    pty.expect("user> ", long);
    pty.send("Tell me a long story\r");
    pty.expect("assistant> ", long);
    std::thread::sleep(Duration::from_millis(500));
    pty.send("\x03");
    let turn = pty.expect(" tokens/s)", long);
    assert!(turn.contains("(stopped; "), "{turn}");
    let (generated, _) = turn
        .rsplit_once("cache; ")
        .and_then(|(_, r)| r.split_once(" generated"))
        .unwrap();
    let generated: usize = generated
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{turn:?}"));
    assert!(generated < 100, "{turn}");
    pty.expect("user> ", long);
    pty.send("\x03");
    assert_eq!(pty.wait(long), Some(130));
}
