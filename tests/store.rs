//! The model store: `ls`, `show`, `rm`, `prune` over a Meta checkpoint folder (HOME's
//! `.llama/checkpoints`), an HF cache written by `pull` from the local Hub (tests/common/hub.rs)
//! and GGUF files written by `convert`; locks held by real child processes.

use crate::common::child;
use crate::common::hub::{CommitSpec, FileSpec, Hub, RepoSpec};
use crate::common::noise::noise;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const REPO: &str = "meta-llama/Store-Llama";
const BIG: &str = "org/Big";

fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(20)
}

/// Two revisions that share `model.safetensors` (one blob) and differ in the rest.
fn repos() -> Vec<RepoSpec> {
    let weights = noise(300_000, 11);
    let commit = |s: u8, config: &[u8], pth: Vec<u8>| CommitSpec {
        sha: sha(s),
        files: vec![
            FileSpec::small("config.json", config),
            FileSpec::lfs("model.safetensors", weights.clone()),
            FileSpec::small("original/params.json", b"{\"dim\": 64}"),
            FileSpec::lfs("original/consolidated.00.pth", pth),
        ],
    };
    vec![
        RepoSpec {
            id: REPO.into(),
            commits: vec![
                commit(
                    0xa1,
                    br#"{"torch_dtype": "bfloat16", "v": 1}"#,
                    noise(200_000, 12),
                ),
                commit(
                    0xb2,
                    br#"{"torch_dtype": "bfloat16", "v": 2}"#,
                    noise(200_000, 13),
                ),
            ],
            refs: vec![("main".into(), sha(0xb2)), ("v1".into(), sha(0xa1))],
            gated_token: None,
        },
        RepoSpec {
            id: BIG.into(),
            commits: vec![CommitSpec {
                sha: sha(0xe5),
                files: vec![FileSpec::lfs("big.bin", noise(1_500_000, 14))],
            }],
            refs: vec![("main".into(), sha(0xe5))],
            gated_token: None,
        },
    ]
}

struct Env {
    hub: Hub,
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            hub: Hub::start(repos()),
            home: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(env.checkpoints()).unwrap();
        env
    }

    fn checkpoints(&self) -> PathBuf {
        self.home.path().join(".llama/checkpoints")
    }

    fn repo_root(&self, repo: &str) -> PathBuf {
        self.home
            .path()
            .join("hf/hub")
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_llamactl"));
        c.args(args);
        for k in [
            "HF_TOKEN",
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_HUB_OFFLINE",
            "XDG_CACHE_HOME",
            "LLAMA_STACK_CONFIG_DIR",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            c.env_remove(k);
        }
        c.env("HOME", self.home.path())
            .env("HF_HOME", self.home.path().join("hf"))
            .env("HF_ENDPOINT", &self.hub.endpoint)
            .current_dir(self.home.path())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// The tiny Meta checkpoint in the store as `Llama-3-8B` (catalog `8B`), its shard also
    /// hard-linked into `Llama-3-8B-copy`.
    fn store_model(&self) -> PathBuf {
        let dst = self.checkpoints().join("Llama-3-8B");
        std::fs::create_dir_all(&dst).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tiny-mp1");
        for f in [
            "consolidated.00.pth",
            "params.json",
            "checklist.chk",
            "tokenizer.model",
        ] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        let copy = self.checkpoints().join("Llama-3-8B-copy");
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::copy(dst.join("params.json"), copy.join("params.json")).unwrap();
        let _ = std::fs::remove_file(copy.join("consolidated.00.pth"));
        std::fs::hard_link(
            dst.join("consolidated.00.pth"),
            copy.join("consolidated.00.pth"),
        )
        .unwrap();
        dst
    }

    fn pull_both_revisions(&self) {
        self.ok(&["pull", REPO, "--revision", "v1"]);
        self.ok(&["pull", REPO]);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn entry<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {doc:#}"))
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// Every snapshot link of every repo resolves and every ref names a snapshot: what
/// huggingface_hub's scan_cache_dir() needs to report no warning.
fn assert_cache_consistent(cache: &Path) {
    for repo in std::fs::read_dir(cache).unwrap().flatten() {
        let root = repo.path();
        if !repo.file_name().to_string_lossy().starts_with("models--") {
            continue;
        }
        assert!(root.join("snapshots").is_dir(), "{}", root.display());
        for r in std::fs::read_dir(root.join("refs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let commit = std::fs::read_to_string(r.path()).unwrap();
            assert!(
                root.join("snapshots").join(&commit).is_dir(),
                "{:?} -> {commit}",
                r.path()
            );
        }
        let mut stack = vec![root.join("snapshots")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if e.file_type().unwrap().is_dir() {
                    stack.push(p);
                } else {
                    assert!(
                        std::fs::read(&p).is_ok(),
                        "{} does not resolve",
                        p.display()
                    );
                }
            }
        }
    }
}

#[test]
fn table_lists_store_cache_and_gguf_with_shared_bytes_once() {
    let env = Env::new();
    let model = env.store_model();
    env.pull_both_revisions();
    let gguf = env.checkpoints().join("tiny-bf16.gguf");
    env.ok(&["convert", "--to", "gguf", "8B", gguf.to_str().unwrap()]);

    let doc = env.json(&["ls", "--json"]);
    let meta = entry(&doc, "Llama-3-8B");
    assert_eq!(meta["formats"], serde_json::json!(["meta"]));
    assert_eq!(
        (meta["dtype"].as_str(), meta["mp"].as_u64()),
        (Some("BF16"), Some(1))
    );
    assert_eq!(meta["catalog"], "8B");
    assert_eq!(meta["verified"], "never");
    let shard = size(&model.join("consolidated.00.pth"));
    let meta_bytes: u64 = [
        "consolidated.00.pth",
        "params.json",
        "checklist.chk",
        "tokenizer.model",
    ]
    .iter()
    .map(|f| size(&model.join(f)))
    .sum();
    assert_eq!(meta["bytes"].as_u64(), Some(meta_bytes));

    let repo = entry(&doc, REPO);
    assert_eq!(repo["formats"], serde_json::json!(["meta", "hf"]));
    assert_eq!(repo["dtype"], "BF16");
    let revs = repo["revisions"].as_array().unwrap();
    assert_eq!(revs.len(), 2);
    // Six distinct blobs: two configs, two .pth, one params.json, the shared weights once.
    let blobs = env.repo_root(REPO).join("blobs");
    let on_disk: u64 = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| size(&e.path()))
        .sum();
    assert_eq!(repo["files"].as_u64(), Some(6));
    assert_eq!(repo["bytes"].as_u64(), Some(on_disk));
    for r in revs {
        assert_eq!(r["files"].as_u64(), Some(4));
        assert!(r["bytes"].as_u64().unwrap() > 500_000);
    }
    assert_eq!(
        entry(&doc, "tiny-bf16.gguf")["formats"],
        serde_json::json!(["gguf"])
    );
    assert_eq!(entry(&doc, "tiny-bf16.gguf")["dtype"], "BF16");

    // The hard-linked shard is paid for once in the total.
    let copy = entry(&doc, "Llama-3-8B-copy")["bytes"].as_u64().unwrap();
    let sum: u64 = doc["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(doc["total_bytes"].as_u64(), Some(sum - shard));
    assert!(copy >= shard);

    // The table: one line per model, the total, and `list --downloaded` says the same.
    let table = env.ok(&["ls", "--revisions"]);
    assert!(table.starts_with("NAME"), "{table}");
    for needle in [
        "Llama-3-8B ",
        "tiny-bf16.gguf",
        REPO,
        "hf cache (main, v1)",
        "Meta+HF",
        "@a1a1",
    ] {
        assert!(table.contains(needle), "{needle}: {table}");
    }
    let listed = env.ok(&["list", "--downloaded"]);
    assert_eq!(
        listed.lines().count(),
        table.lines().count() - 2,
        "{listed}"
    );

    // --verify hashes: the checklist matches, so the folder is recorded as verified.
    env.ok(&["ls", "--verify"]);
    let doc = env.json(&["ls", "--json"]);
    assert_eq!(entry(&doc, "Llama-3-8B")["verified"], "verified");
    std::fs::write(model.join("params.json"), b"{}").unwrap();
    let doc = env.json(&["ls", "--json"]);
    assert_eq!(entry(&doc, "Llama-3-8B")["verified"], "changed");
}

#[test]
fn show_describes_each_format_and_says_what_it_resolved() {
    let env = Env::new();
    env.store_model();
    let gguf = env.checkpoints().join("tiny.gguf");
    env.ok(&["convert", "--to", "gguf", "8B", gguf.to_str().unwrap()]);
    let hf = env.home.path().join("tiny-hf");
    env.ok(&["convert", "--to", "hf", "Llama-3-8B", hf.to_str().unwrap()]);

    let o = env.run(&["show", "8B", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("model: 8B -> "), "{}", text(&o));
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (d["format"].as_str(), d["mp"].as_u64()),
        (Some("meta"), Some(1))
    );
    let p = &d["params"];
    assert_eq!(
        (
            p["dim"].as_u64(),
            p["n_layers"].as_u64(),
            p["n_heads"].as_u64()
        ),
        (Some(16), Some(2), Some(4))
    );
    assert_eq!(
        (p["n_kv_heads"].as_u64(), p["vocab_size"].as_u64()),
        (Some(2), Some(128256))
    );
    assert_eq!(p["context_length"].as_u64(), Some(8192));
    assert_eq!(d["dtypes"]["attention"], serde_json::json!(["BF16"]));
    let stops: Vec<u64> = d["tokenizer"]["stop_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(stops, [128001, 128009]);
    assert_eq!(d["generation"]["temperature"].as_f64(), Some(0.6));
    assert_eq!(d["files"].as_array().unwrap().len(), 4);

    let d = env.json(&["show", hf.to_str().unwrap(), "--json"]);
    assert_eq!(d["format"], "hf");
    assert_eq!(d["params"]["dim"].as_u64(), Some(16));
    assert_eq!(d["generation"]["source"], "generation_config.json");

    let d = env.json(&["show", "tiny.gguf", "--json"]);
    assert_eq!(
        (d["format"].as_str(), d["file_type"].as_str()),
        (Some("gguf"), Some("BF16"))
    );
    assert_eq!(d["params"]["n_layers"].as_u64(), Some(2));
    assert_eq!(d["dtypes"]["norm"], serde_json::json!(["F32"]));
    assert_eq!(d["tokenizer"]["bos"]["id"].as_u64(), Some(128000));

    let o = env.run(&["show", "Llama3.1-70B"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("not on this machine"), "{}", text(&o));
    let o = env.run(&["show", "no/such-repo"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("llamactl pull no/such-repo"),
        "{}",
        text(&o)
    );
}

#[test]
fn rm_of_one_revision_keeps_the_blob_another_uses() {
    let env = Env::new();
    env.pull_both_revisions();
    let root = env.repo_root(REPO);
    let shared = env.hub.sha256_of(REPO, "main", "model.safetensors");
    let v1_only = env
        .hub
        .sha256_of(REPO, "v1", "original/consolidated.00.pth");

    let dry = env.ok(&["rm", REPO, "--revision", "v1", "--dry-run", "--json"]);
    let dry: Value = serde_json::from_str(&dry).unwrap();
    let paths: Vec<&str> = dry["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert!(paths.iter().any(|p| p.ends_with("refs/v1")), "{paths:?}");
    assert!(paths.iter().any(|p| p.ends_with(&v1_only)), "{paths:?}");
    assert!(!paths.iter().any(|p| p.ends_with(&shared)), "{paths:?}");
    assert!(root.join("refs/v1").exists(), "a dry run removes nothing");
    let v1_config = br#"{"torch_dtype": "bfloat16", "v": 1}"#.len() as u64;
    assert_eq!(dry["freed_bytes"].as_u64(), Some(200_000 + v1_config));

    let out = env.ok(&["rm", REPO, "--revision", "v1"]);
    assert!(out.contains("freed"), "{out}");
    assert!(!root.join("refs/v1").exists());
    assert!(!root.join("snapshots").join(sha(0xa1)).exists());
    assert!(root.join("blobs").join(&shared).exists());
    assert!(!root.join("blobs").join(&v1_only).exists());
    assert_cache_consistent(root.parent().unwrap());
    let main = root.join("snapshots").join(sha(0xb2));
    assert_eq!(
        std::fs::read(main.join("model.safetensors")).unwrap().len(),
        300_000
    );
    // The rest resolves offline, as a later run would use it.
    let o = env
        .cmd(&["pull", REPO])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The last revision takes the whole repo; a GGUF file goes alone; a non-model is refused.
    env.ok(&["rm", REPO, "--yes"]);
    assert!(!root.exists());
    let not_model = env.home.path().join("notes");
    std::fs::create_dir_all(&not_model).unwrap();
    std::fs::write(not_model.join("a.txt"), b"x").unwrap();
    let o = env.run(&["rm", not_model.to_str().unwrap(), "--yes"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a model"), "{}", text(&o));
    assert!(not_model.join("a.txt").exists());
    let o = env.run(&["rm", "nothing-here"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn rm_refuses_while_a_pull_holds_the_repo() {
    let env = Env::new();
    env.hub.set_throttle(300_000);
    let mut pull = env
        .cmd(&["pull", BIG])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sha = env.hub.sha256_of(BIG, "main", "big.bin");
    let partial = env
        .repo_root(BIG)
        .join("blobs")
        .join(format!("{sha}.incomplete"));
    child::wait_for_bytes(&mut pull, &partial, 100_000);
    let o = env.run(&["rm", env.repo_root(BIG).to_str().unwrap(), "--yes"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("in use by a running download, pull or convert"),
        "{}",
        text(&o)
    );
    // prune leaves the part alone too, even with --partials.
    let o = env.run(&["prune", "--partials"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(partial.exists(), "{}", text(&o));
    env.hub.set_throttle(0);
    assert!(pull.wait().unwrap().success());
    env.ok(&["rm", BIG, "--yes"]);
    assert!(!env.repo_root(BIG).exists());
}

#[test]
fn prune_removes_leftovers_but_not_a_live_runs_temp_dir() {
    let env = Env::new();
    env.store_model();
    env.pull_both_revisions();
    let root = env.repo_root(REPO);
    // Leftovers: a dead run's temp dir, a blob no snapshot uses, a stale part.
    let dead = env.checkpoints().join(".Llama-3-8B-hf.tmp-4294967295-1-aa");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("consolidated.00.pth"), vec![0u8; 1000]).unwrap();
    std::fs::write(root.join("blobs/0123abcd"), b"orphan").unwrap();
    std::fs::write(root.join("blobs/4567cdef.incomplete"), b"half").unwrap();
    std::fs::write(env.checkpoints().join("Llama-3-8B/extra.pth.part"), b"half").unwrap();

    // A live run: reshard into the store, slowed so that its temp dir is there for a while.
    let dst = env.checkpoints().join("Llama-3-8B-mp2");
    let mut live = env
        .cmd(&["reshard", "--mp", "2", "8B", dst.to_str().unwrap()])
        .env("LLAMACTL_TEST_SLOW_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ck = env.checkpoints();
    let live_tmp = || {
        std::fs::read_dir(&ck)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p != &dead
                    && p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(".Llama-3-8B-mp2.tmp-")
            })
    };
    child::wait_until(&mut live, || live_tmp().is_some());
    let tmp = live_tmp().unwrap();

    let dry: Value = serde_json::from_str(&env.ok(&["prune", "--dry-run", "--json"])).unwrap();
    let listed: Vec<String> = dry["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(dead.exists() && root.join("blobs/0123abcd").exists());

    let out = env.ok(&["prune"]);
    assert!(!dead.exists(), "{out}");
    assert!(!root.join("blobs/0123abcd").exists());
    assert!(
        root.join("blobs/4567cdef.incomplete").exists(),
        "parts stay without --partials"
    );
    assert!(tmp.exists(), "the live run's temp dir stays: {out}");
    assert!(live.wait().unwrap().success(), "the live run finishes");
    assert!(dst.join("consolidated.01.pth").exists());
    env.ok(&["prune", "--partials"]);
    assert!(!root.join("blobs/4567cdef.incomplete").exists());
    assert!(!env.checkpoints().join("Llama-3-8B/extra.pth.part").exists());

    // --revisions: v1 is detached once its ref is gone; the blob main shares stays.
    std::fs::remove_file(root.join("refs/v1")).unwrap();
    env.ok(&["prune", "--revisions"]);
    assert!(!root.join("snapshots").join(sha(0xa1)).exists());
    assert_cache_consistent(root.parent().unwrap());
    let doc = env.json(&["ls", "--json"]);
    assert!(doc["warnings"].as_array().unwrap().is_empty(), "{doc:#}");
}

#[test]
fn rm_killed_midway_leaves_both_caches_readable() {
    let env = Env::new();
    for delay_ms in [150, 400, 700] {
        env.pull_both_revisions();
        let model = env.store_model();
        let mut rm = env
            .cmd(&["rm", REPO, "--revision", "v1", "--yes"])
            .env("LLAMACTL_TEST_SLOW_MS", "250")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = rm.kill();
        rm.wait().unwrap();
        assert_cache_consistent(&env.home.path().join("hf/hub"));
        let rm = env
            .cmd(&["rm", "Llama-3-8B", "--yes"])
            .env("LLAMACTL_TEST_SLOW_MS", "250")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms / 2));
        child::kill_9(rm);
        // Either still whole or gone from its name: never half a folder under it.
        if model.exists() {
            assert!(
                model.join("consolidated.00.pth").exists() && model.join("params.json").exists()
            );
        }
        let doc = env.json(&["ls", "--json"]);
        assert!(doc["warnings"].as_array().unwrap().is_empty(), "{doc:#}");
        env.ok(&["prune"]);
        let left: Vec<_> = std::fs::read_dir(env.checkpoints())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        assert!(
            left.is_empty(),
            "prune removes what a killed rm left: {left:?}"
        );
        let trash: Vec<_> = std::fs::read_dir(env.home.path().join("hf/hub/.locks"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .map(|e| e.path())
            .collect();
        assert!(
            trash.is_empty(),
            "prune removes what a killed rm left: {trash:?}"
        );
    }
}
