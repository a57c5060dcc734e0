//! The tokenizer against golden ids from Meta's own code (scripts/make_tokenizer_golden.py), and
//! `llamactl tokenize` end to end.
use llamactl::tokenizer::chat::{encode_dialog_prompt, render_chat_template, ChatFormat, Message};
use llamactl::tokenizer::hf_files::{tiktoken_model_from_tokenizer_json, write_hf_tokenizer_files};
use llamactl::tokenizer::{py_isspace, AllowedSpecial, SpecialNames, Tokenizer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_path() -> PathBuf {
    root().join("testdata/tokenizer.model")
}

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(&model_path()).unwrap())
}

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let data = std::fs::read(root().join("testdata/tokenizer/golden.json")).unwrap();
        serde_json::from_slice(&data).unwrap()
    })
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn allowed(v: &Value) -> AllowedSpecial {
    match v.as_str().unwrap() {
        "all" => AllowedSpecial::All,
        _ => AllowedSpecial::None,
    }
}

/// The generator of scripts/make_tokenizer_golden.py, so the big inputs are not committed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn random_unicode(seed: u64, min_bytes: usize) -> String {
    const SPACES: [char; 11] = [
        ' ', '\t', '\n', '\r', '\u{a0}', '\u{3000}', '\u{2003}', '\x0b', '\x0c', '\x1c', '\u{85}',
    ];
    let mut rng = SplitMix64(seed);
    let mut s = String::new();
    while s.len() < min_bytes {
        let bucket = rng.next() % 100;
        let v = rng.next();
        let cp = match bucket {
            0..=7 => SPACES[(v % SPACES.len() as u64) as usize] as u32,
            8..=44 => 0x20 + (v % 95) as u32,
            45..=61 => 0x80 + (v % (0x800 - 0x80)) as u32,
            62..=76 => 0x4E00 + (v % (0xA000 - 0x4E00)) as u32,
            77..=86 => 0x1F300 + (v % (0x1FB00 - 0x1F300)) as u32,
            _ => {
                let cp = (v % 0x110000) as u32;
                if (0xD800..0xE000).contains(&cp) {
                    cp + 0x800
                } else {
                    cp
                }
            }
        };
        s.push(char::from_u32(cp).unwrap());
    }
    s
}

#[test]
fn golden_corpus_is_identical_to_metas() {
    let cases = golden()["cases"].as_array().unwrap();
    assert!(cases.len() >= 300, "corpus has {} strings", cases.len());
    let mut bad = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let got = tok()
            .encode(
                text,
                c["bos"].as_bool().unwrap(),
                c["eos"].as_bool().unwrap(),
                allowed(&c["allowed"]),
            )
            .unwrap();
        if got != ids_of(&c["ids"]) {
            bad.push(text.chars().take(60).collect::<String>());
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ: {bad:?}",
        bad.len(),
        cases.len()
    );
}

#[test]
fn golden_big_inputs_are_identical_to_metas() {
    for g in golden()["generated"].as_array().unwrap() {
        let text = match g["kind"].as_str().unwrap() {
            "random_unicode" => random_unicode(
                g["seed"].as_u64().unwrap(),
                g["min_bytes"].as_u64().unwrap() as usize,
            ),
            _ => g["unit"]
                .as_str()
                .unwrap()
                .repeat(g["times"].as_u64().unwrap() as usize),
        };
        assert_eq!(text.len() as u64, g["n_bytes"].as_u64().unwrap(), "{g}");
        let ids = tok()
            .encode(&text, false, false, AllowedSpecial::None)
            .unwrap();
        let head = ids_of(&g["head"]);
        assert_eq!(
            &ids[..head.len().min(ids.len())],
            &head[..],
            "{}",
            g["kind"]
        );
        assert_eq!(
            ids.len() as u64,
            g["count"].as_u64().unwrap(),
            "{}",
            g["kind"]
        );
        let mut h = Sha256::new();
        for id in &ids {
            h.update(id.to_le_bytes());
        }
        assert_eq!(hex::encode(h.finalize()), g["sha256"].as_str().unwrap());
        // Decoding gives the text back.
        assert_eq!(tok().decode(&ids).unwrap(), text);
    }
}

#[test]
fn golden_chat_prompts_are_identical_to_metas() {
    for c in golden()["chat"].as_array().unwrap() {
        let dialog: Vec<Message> = serde_json::from_value(c["dialog"].clone()).unwrap();
        let got = encode_dialog_prompt(tok(), &dialog).unwrap();
        assert_eq!(got, ids_of(&c["ids"]), "{dialog:?}");
    }
}

#[test]
fn golden_decodes_are_identical_to_metas() {
    for d in golden()["decode"].as_array().unwrap() {
        let ids = ids_of(&d["ids"]);
        assert_eq!(
            tok().decode(&ids).unwrap(),
            d["text"].as_str().unwrap(),
            "{ids:?}"
        );
        // Streaming gives the same text, a piece at a time.
        let mut s = tok().stream_decoder();
        let mut text = String::new();
        for &id in &ids {
            text += &s.push(id).unwrap();
        }
        text += &s.finish().unwrap();
        assert_eq!(text, d["text"].as_str().unwrap(), "stream {ids:?}");
    }
}

#[test]
fn chat_templates_render_like_transformers() {
    let cases = golden()["templates"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let msgs: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        let got = render_chat_template(
            c["template"].as_str().unwrap(),
            &msgs,
            c["bos_token"].as_str().unwrap(),
            c["eos_token"].as_str().unwrap(),
            c["add_generation_prompt"].as_bool().unwrap(),
        )
        .unwrap();
        assert_eq!(got, c["text"].as_str().unwrap(), "{}", c["template"]);
    }
}

/// A word-level (not BPE, not byte-level) tokenizer.json in `dir` with the vocabulary `vocab`
/// (a JSON object) and `[UNK]` for unknown words.
fn word_level_tokenizer_json(dir: &Path, vocab: &str) -> PathBuf {
    let p = dir.join("tokenizer.json");
    let doc = format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,
            "model":{{"type":"WordLevel","vocab":{vocab},"unk_token":"[UNK]"}}}}"#
    );
    std::fs::write(&p, doc).unwrap();
    p
}

#[test]
fn a_non_byte_level_tokenizer_json_works_behind_the_same_interface() {
    let dir = tempfile::tempdir().unwrap();
    word_level_tokenizer_json(dir.path(), r#"{"hello":0,"world":1,"[UNK]":2}"#);
    let t = Tokenizer::from_model_dir(dir.path()).unwrap();
    assert_eq!(t.n_vocab(), 3);
    assert_eq!(
        t.encode("hello world", false, false, AllowedSpecial::None)
            .unwrap(),
        vec![0, 1]
    );
    assert_eq!(t.decode(&[0, 1, 0]).unwrap(), "hello world hello");
    assert_eq!(t.token_id("world"), Some(1));
    assert_eq!(t.bos_id(), None);
    let err = t
        .encode("hello", true, false, AllowedSpecial::None)
        .unwrap_err();
    assert!(
        err.to_string().contains("no beginning-of-text token"),
        "{err}"
    );
    let mut s = t.stream_decoder();
    let streamed: Vec<String> = [0, 1, 0].iter().map(|&i| s.push(i).unwrap()).collect();
    assert_eq!(
        streamed.concat() + &s.finish().unwrap(),
        "hello world hello"
    );
    assert!(t
        .decode(&[7])
        .unwrap_err()
        .to_string()
        .contains("token id 7 is outside"));
    // No chat template and no Llama 3 header tokens: a clear error, not a wrong prompt.
    let fmt = ChatFormat::for_model_dir(dir.path()).unwrap();
    let err = fmt
        .encode(&t, &[Message::new("user", "hello")])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot use the Llama 3 chat format"),
        "{err}"
    );
}

#[test]
fn special_tokens_and_whitespace_match_metas_tables() {
    let table = golden()["special_tokens"].as_object().unwrap();
    assert_eq!(table.len(), 256);
    for (name, id) in table {
        assert_eq!(
            tok().token_id(name),
            Some(id.as_u64().unwrap() as u32),
            "{name}"
        );
        let id = id.as_u64().unwrap() as u32;
        assert_eq!(tok().decode(&[id]).unwrap(), *name);
        assert!(tok().is_special(id));
    }
    let isspace: Vec<u32> = ids_of(&golden()["isspace"]);
    let ours: Vec<u32> = (0..0x110000u32)
        .filter_map(char::from_u32)
        .filter(|&c| py_isspace(c))
        .map(|c| c as u32)
        .collect();
    assert_eq!(ours, isspace);
}

#[test]
fn known_ids_from_design() {
    let t = tok();
    assert_eq!(
        t.encode(
            "This is a test sentence.",
            false,
            false,
            AllowedSpecial::None
        )
        .unwrap(),
        vec![2028, 374, 264, 1296, 11914, 13]
    );
    assert_eq!(t.token_id("user"), Some(882));
    assert_eq!(t.token_id("system"), Some(9125));
    assert_eq!(t.token_id("assistant"), Some(78191));
    assert_eq!(t.token_id("\n\n"), Some(271));
    assert_eq!(t.n_vocab(), 128256);
    assert_eq!(t.bos_id(), Some(128000));
    assert_eq!(t.eos_id(), Some(128001));
    assert_eq!(t.token_id("<|start_header_id|>"), Some(128006));
    assert_eq!(t.token_id("<|end_header_id|>"), Some(128007));
    assert_eq!(t.token_id("<|eot_id|>"), Some(128009));
    assert_eq!(t.stop_ids(), &[128001, 128008, 128009]);
    // Special-token text in content stays text unless allowed.
    let plain = t
        .encode("<|eot_id|>", false, false, AllowedSpecial::None)
        .unwrap();
    assert!(plain.len() > 1 && plain.iter().all(|&i| i < 128000));
    assert_eq!(
        t.encode("<|eot_id|>", false, false, AllowedSpecial::All)
            .unwrap(),
        vec![128009]
    );
}

#[test]
fn llama3_names_for_llama3_dirs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(model_path(), dir.path().join("tokenizer.model")).unwrap();
    std::fs::write(
        dir.path().join("params.json"),
        r#"{"dim": 4096, "rope_theta": 500000.0}"#,
    )
    .unwrap();
    let t = Tokenizer::from_model_dir(dir.path()).unwrap();
    assert_eq!(t.special_names(), Some(SpecialNames::Llama3));
    assert_eq!(t.token_id("<|reserved_special_token_4|>"), Some(128008));
    assert_eq!(t.token_id("<|reserved_special_token_250|>"), Some(128255));
    assert_eq!(t.token_id("<|eom_id|>"), None);
    assert_eq!(t.stop_ids(), &[128001, 128009]);
    std::fs::write(
        dir.path().join("params.json"),
        r#"{"dim": 4096, "use_scaled_rope": true}"#,
    )
    .unwrap();
    let t = Tokenizer::from_model_dir(dir.path()).unwrap();
    assert_eq!(t.special_names(), Some(SpecialNames::Llama31));
    assert_eq!(t.token_id("<|eom_id|>"), Some(128008));
}

#[test]
fn stream_decoder_holds_split_characters() {
    let t = tok();
    // The four bytes of one emoji as four byte tokens, then "x".
    let byte_token = |b: u8| {
        (0..128000u32)
            .find(|&i| t.token_bytes(i).as_deref() == Some(&[b][..]))
            .unwrap()
    };
    let byte_ids: Vec<u32> = "😀x".bytes().map(byte_token).collect();
    let mut s = t.stream_decoder();
    let outs: Vec<String> = byte_ids.iter().map(|&i| s.push(i).unwrap()).collect();
    assert_eq!(outs, vec!["", "", "", "😀", "x"]);
    let ids = t
        .encode("é 😀 中文", false, false, AllowedSpecial::None)
        .unwrap();
    let mut s = t.stream_decoder();
    let all: String = ids.iter().map(|&i| s.push(i).unwrap()).collect();
    assert_eq!(all + &s.finish().unwrap(), "é 😀 中文");
    // An unfinished character at the end becomes U+FFFD, as in decode.
    let mut s = t.stream_decoder();
    assert_eq!(s.push(byte_ids[0]).unwrap(), "");
    assert_eq!(s.finish().unwrap(), "\u{FFFD}");
}

#[test]
fn bad_tokenizer_files_are_refused_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.model");
    let real = std::fs::read_to_string(model_path()).unwrap();
    let mut lines: Vec<&str> = real.lines().collect();
    lines[41] = "Kg== not-a-rank";
    std::fs::write(&p, lines.join("\n")).unwrap();
    let err = format!("{:#}", Tokenizer::from_file(&p).unwrap_err());
    assert!(
        err.contains("line 42: rank \"not-a-rank\" is not a number"),
        "{err}"
    );
    std::fs::write(
        &p,
        [
            0x0a, 0x09, b'<', b'u', b'n', b'k', b'>', 0x15, 0, 0, 0, 0, 0x18, 2, 0, 0, 0, 0, 0,
        ],
    )
    .unwrap();
    let err = format!("{:#}", Tokenizer::from_file(&p).unwrap_err());
    assert!(err.contains("SentencePiece"), "{err}");
    let err = format!(
        "{:#}",
        Tokenizer::from_file(&dir.path().join("missing.model")).unwrap_err()
    );
    assert!(err.contains("missing.model: cannot read"), "{err}");
    let err = format!(
        "{:#}",
        Tokenizer::from_model_dir(dir.path().join("nope").as_path()).unwrap_err()
    );
    assert!(err.contains("not a directory"), "{err}");
}

/// A fresh temp dir with the HF tokenizer files convert writes; removed when dropped.
fn hf_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_hf_tokenizer_files(&model_path(), d.path(), true, 8192).unwrap();
    d
}

#[test]
fn hf_files_encode_like_meta_and_round_trip() {
    let tmp = hf_dir();
    let dir = tmp.path();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let hf = Tokenizer::from_model_dir(dir).unwrap();
    assert_eq!(hf.n_vocab(), 128256);
    assert_eq!(hf.bos_id(), Some(128000));
    assert_eq!(hf.eos_id(), Some(128009));
    assert!(hf.stop_ids().contains(&128009));
    let cases = golden()["cases"].as_array().unwrap();
    // Hugging Face's 3.1 files keep 128005 and 128011.. as reserved tokens where llama-models (the
    // oracle) names <|step_id|> and <|image|>, so those names are special in only one of them.
    let hf_names_differ = |t: &str| {
        ["<|step_id|>", "<|image|>", "reserved_special"]
            .iter()
            .any(|n| t.contains(n))
    };
    for c in cases
        .iter()
        .filter(|c| c["text"].as_str().unwrap().len() < 2000)
    {
        let text = c["text"].as_str().unwrap();
        if c["allowed"] == "all" && hf_names_differ(text) {
            continue;
        }
        let want = ids_of(&c["ids"]);
        let got = hf
            .encode(
                text,
                c["bos"].as_bool().unwrap(),
                false,
                allowed(&c["allowed"]),
            )
            .unwrap();
        let want_no_eos = if c["eos"].as_bool().unwrap() {
            &want[..want.len() - 1]
        } else {
            &want[..]
        };
        assert_eq!(got, want_no_eos, "{text:?}");
        assert_eq!(hf.decode(&got).unwrap(), tok().decode(&got).unwrap());
    }
    // The instruct template renders Meta's layout, so chat ids agree too.
    let fmt = ChatFormat::for_model_dir(dir).unwrap();
    assert!(matches!(fmt, ChatFormat::Template { .. }));
    for c in golden()["chat"].as_array().unwrap() {
        let dialog: Vec<Message> = serde_json::from_value(c["dialog"].clone()).unwrap();
        if dialog
            .iter()
            .any(|m| m.content.contains("<|") || m.role == "tool")
        {
            // A template renders text, so injected header text would become special; and it
            // writes the role as given, where Meta writes "ipython" for "tool".
            continue;
        }
        assert_eq!(
            fmt.encode(&hf, &dialog).unwrap(),
            encode_dialog_prompt(tok(), &dialog).unwrap()
        );
    }
    // And back: the rebuilt tokenizer.model is byte-identical to Meta's.
    let back = tiktoken_model_from_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
    assert!(back == std::fs::read(model_path()).unwrap());
}

#[test]
fn tokenizer_json_round_trip_and_refusals_on_a_small_vocabulary() {
    use base64::Engine;
    use llamactl::tokenizer::hf_files::tokenizer_json;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut model = String::new();
    for b in 0..=255u8 {
        model += &format!("{} {b}\n", b64.encode([b]));
    }
    for (i, t) in ["ab", "abc", "  "].iter().enumerate() {
        model += &format!("{} {}\n", b64.encode(t), 256 + i);
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tokenizer.model");
    let tok = Tokenizer::from_tiktoken_bytes(model.as_bytes(), &src, SpecialNames::Llama3).unwrap();
    let json = tokenizer_json(&tok).unwrap();
    let p = dir.path().join("tokenizer.json");
    let write = |v: &Value| std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    write(&json);
    assert_eq!(
        tiktoken_model_from_tokenizer_json(&p).unwrap(),
        model.as_bytes()
    );
    // The HF file encodes like the tiktoken model.
    let hf = Tokenizer::from_file(&p).unwrap();
    for text in ["abcab  c", "xabc\n\n  ab"] {
        assert_eq!(
            hf.encode(text, false, false, AllowedSpecial::None).unwrap(),
            tok.encode(text, false, false, AllowedSpecial::None)
                .unwrap()
        );
    }
    let refused = |v: &Value| {
        write(v);
        tiktoken_model_from_tokenizer_json(&p)
            .unwrap_err()
            .to_string()
    };
    let mut other = json.clone();
    other["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = Value::from(r"\w+|\s+");
    assert!(refused(&other).contains("pre-split pattern is not Llama 3's"));
    let mut other = json.clone();
    other["model"]["merges"].as_array_mut().unwrap().reverse();
    assert!(refused(&other).contains("out of rank order"));
    let mut other = json.clone();
    other["model"]["merges"]
        .as_array_mut()
        .unwrap()
        .push(Value::from("a c"));
    assert!(refused(&other).contains("does not follow from the ranks"));
    let mut other = json.clone();
    other["added_tokens"][0]["id"] = Value::from(5);
    assert!(refused(&other).contains("outside the 256 special-token slots"));
    let mut other = json.clone();
    other["normalizer"] = serde_json::json!({"type": "NFC"});
    assert!(refused(&other).contains("normalizer"));
    let mut other = json.clone();
    other["model"]["vocab"]["ab"] = Value::from(0);
    assert!(refused(&other).contains("used twice"));
}

#[test]
fn non_tiktoken_tokenizer_json_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = word_level_tokenizer_json(dir.path(), r#"{"a":0,"[UNK]":1}"#);
    let err = tiktoken_model_from_tokenizer_json(&p)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not BPE"), "{err}");
    let err = tiktoken_model_from_tokenizer_json(&dir.path().join("x.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
}

// ---- the command ----

fn llamactl(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llamactl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit before reading stdin (bad arguments); a broken pipe is fine then.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn cli_encodes_text_and_stdin() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let o = llamactl(
        &["tokenize", "--tokenizer", m, "This is a test sentence."],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "2028 374 264 1296 11914 13\n");
    let o = llamactl(
        &["tokenize", "--tokenizer", m, "--json", "--bos"],
        "This is a test sentence.".as_bytes(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        ids_of(&v["ids"]),
        vec![128000, 2028, 374, 264, 1296, 11914, 13]
    );
    assert_eq!(v["count"], 7);
    let o = llamactl(
        &["tokenize", "--tokenizer", m, "--special", "<|eot_id|>"],
        b"",
    );
    assert_eq!(stdout(&o), "128009\n");
}

#[test]
fn cli_decodes_and_formats_chat() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let o = llamactl(
        &[
            "tokenize",
            "--tokenizer",
            m,
            "--decode",
            "2028",
            "374",
            "264",
            "1296",
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "This is a test");
    let o = llamactl(
        &["tokenize", "--tokenizer", m, "--decode"],
        b"[128000, 2028]",
    );
    assert_eq!(stdout(&o), "<|begin_of_text|>This");
    let dialog = r#"[{"role":"system","content":"Always answer with Haiku"},{"role":"user","content":"I am going to Paris, what should I see?"}]"#;
    let o = llamactl(
        &["tokenize", "--tokenizer", m, "--chat", "--json"],
        dialog.as_bytes(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let want = golden()["chat"][1]["ids"].clone();
    assert_eq!(v["ids"], want);
    assert!(v["text"]
        .as_str()
        .unwrap()
        .ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
    // An HF dir gives the same chat prompt through its template.
    let hf = hf_dir();
    let o = llamactl(
        &[
            "tokenize",
            "--model",
            hf.path().to_str().unwrap(),
            "--chat",
            "--json",
        ],
        dialog.as_bytes(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ids"], want);
}

#[test]
fn cli_bad_input_is_a_clear_error() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let cases: [(&[&str], &[u8], &str); 7] = [
        (&["tokenize", "hi"], b"", "pass --model DIR"),
        (
            &["tokenize", "--tokenizer", m],
            b"ab\xffcd",
            "stdin: not valid UTF-8 (first bad byte at offset 2)",
        ),
        (
            &["tokenize", "--tokenizer", m, "--chat"],
            b"[]",
            "no messages",
        ),
        (
            &["tokenize", "--tokenizer", m, "--chat"],
            br#"[{"role":"robot","content":"x"}]"#,
            "unknown role \"robot\"",
        ),
        (
            &["tokenize", "--tokenizer", m, "--chat"],
            b"not json",
            "expected a JSON list",
        ),
        (
            &["tokenize", "--tokenizer", m, "--decode", "999999"],
            b"",
            "token id 999999 is outside the vocabulary",
        ),
        (
            &[
                "tokenize",
                "--tokenizer",
                "/nonexistent/tokenizer.model",
                "x",
            ],
            b"",
            "/nonexistent/tokenizer.model: cannot read",
        ),
    ];
    for (args, input, want) in cases {
        let o = llamactl(args, input);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(o.stdout.is_empty());
    }
}
