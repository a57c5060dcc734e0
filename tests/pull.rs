//! `llamactl pull` against a real HTTP Hub on 127.0.0.1 (tests/common/hub.rs), through HF_ENDPOINT.

use crate::common::child;
use crate::common::hub::{CommitSpec, Fault, FileSpec, Hub, Logged, RepoSpec};
use crate::common::noise::noise;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TINY: &str = "meta-llama/Tiny-Llama";
const GATED: &str = "meta-llama/Gated-Llama";
const CORRUPT: &str = "org/Corrupt";
const BIG: &str = "org/Big";
const SECRET: &str = "hf_TESTSECRETtoken0123456789";

fn sha(n: u8) -> String {
    format!("{:02x}", n).repeat(20)
}

fn repos() -> Vec<RepoSpec> {
    let weights = noise(300_000, 1);
    let pth_old = noise(200_000, 2);
    let pth_new = noise(200_000, 3);
    let commit_a = CommitSpec {
        sha: sha(0xa1),
        files: vec![
            FileSpec::small("config.json", b"{\"version\": 1}"),
            FileSpec::lfs("model.safetensors", weights.clone()),
            FileSpec::small("original/params.json", b"{\"dim\": 64}"),
            FileSpec::lfs("original/consolidated.00.pth", pth_old),
        ],
    };
    let commit_b = CommitSpec {
        sha: sha(0xb2),
        files: vec![
            FileSpec::small("config.json", b"{\"version\": 2}"),
            FileSpec::small("README.md", b"# Tiny Llama\n"),
            FileSpec::lfs("model.safetensors", weights),
            FileSpec::small("original/params.json", b"{\"dim\": 64}"),
            FileSpec::lfs("original/consolidated.00.pth", pth_new),
        ],
    };
    vec![
        RepoSpec {
            id: TINY.into(),
            commits: vec![commit_a, commit_b],
            refs: vec![("main".into(), sha(0xb2)), ("v1".into(), sha(0xa1))],
            gated_token: None,
        },
        RepoSpec {
            id: GATED.into(),
            commits: vec![CommitSpec {
                sha: sha(0xc3),
                files: vec![
                    FileSpec::small("config.json", b"{}"),
                    FileSpec::lfs("model.safetensors", noise(50_000, 4)),
                ],
            }],
            refs: vec![("main".into(), sha(0xc3))],
            gated_token: Some(SECRET.into()),
        },
        RepoSpec {
            id: CORRUPT.into(),
            commits: vec![CommitSpec {
                sha: sha(0xd4),
                files: vec![
                    FileSpec::small("config.json", b"{}"),
                    FileSpec::lfs("model.safetensors", noise(100_000, 5)).corrupted(),
                ],
            }],
            refs: vec![("main".into(), sha(0xd4))],
            gated_token: None,
        },
        RepoSpec {
            id: BIG.into(),
            commits: vec![CommitSpec {
                sha: sha(0xe5),
                files: vec![FileSpec::lfs("big.bin", noise(1_500_000, 6))],
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
        Env {
            hub: Hub::start(repos()),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn hf_home(&self) -> PathBuf {
        self.home.path().join("hf")
    }

    fn repo_root(&self, repo: &str) -> PathBuf {
        self.hf_home()
            .join("hub")
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_llamactl"));
        c.arg("pull").args(args);
        for k in [
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_TOKEN_PATH",
            "XDG_CACHE_HOME",
        ] {
            c.env_remove(k);
        }
        c.env("HF_HOME", self.hf_home())
            .env("HF_ENDPOINT", &self.hub.endpoint)
            .env("LLAMACTL_NET_RETRIES", "3")
            .env("LLAMACTL_NET_BACKOFF_MS", "10")
            .env("LLAMACTL_NET_TIMEOUT_S", "5");
        c
    }

    /// What the CDN was asked, in order.
    fn cdn_requests(&self) -> Vec<Logged> {
        let log = self.hub.log().into_iter();
        log.filter(|l| l.server == "cdn").collect()
    }

    fn pull(&self, args: &[&str]) -> Run {
        self.pull_with(args, |_| {})
    }

    fn pull_with(&self, args: &[&str], f: impl FnOnce(&mut Command)) -> Run {
        let mut c = self.cmd(args);
        f(&mut c);
        Run(c.output().unwrap())
    }
}

struct Run(Output);

impl Run {
    fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Assert that stderr contains `text`.
    fn says(&self, text: &str) {
        assert!(self.stderr().contains(text), "{}", self.stderr());
    }
    fn last_line(&self) -> String {
        self.stdout().lines().last().unwrap_or("").to_string()
    }
    fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code(),
            code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(p).unwrap();
    hex::encode(sha2::Sha256::digest(&bytes))
}

/// Every file of a snapshot: its relative link target and its bytes.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(dir) {
        out.push(
            e.strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/"),
        );
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The run printed `ROOT/snapshots/COMMIT`, and `refs/REV` holds the commit with no newline
/// (huggingface_hub reads it untrimmed).
fn pulled_snapshot(run: &Run, root: &Path, rev: &str, commit: &str) -> PathBuf {
    let snap = root.join("snapshots").join(commit);
    assert_eq!(PathBuf::from(run.last_line()), snap);
    let written = std::fs::read_to_string(root.join("refs").join(rev)).unwrap();
    assert_eq!(written, commit);
    snap
}

#[test]
fn full_pull_fills_the_huggingface_cache_layout() {
    let env = Env::new();
    let run = env.pull(&[TINY]).expect(0);
    let root = env.repo_root(TINY);
    let snap = pulled_snapshot(&run, &root, "main", &sha(0xb2));
    assert_eq!(
        snapshot_files(&snap),
        [
            "README.md",
            "config.json",
            "model.safetensors",
            "original/consolidated.00.pth",
            "original/params.json"
        ]
    );
    // LFS files: relative links to blobs named by their sha256.
    for (file, up) in [
        ("model.safetensors", "../../"),
        ("original/consolidated.00.pth", "../../../"),
    ] {
        let want = env.hub.sha256_of(TINY, "main", file);
        let link = std::fs::read_link(snap.join(file)).unwrap();
        assert_eq!(link, PathBuf::from(format!("{up}blobs/{want}")));
        assert_eq!(sha256_file(&snap.join(file)), want);
    }
    let link = std::fs::read_link(snap.join("config.json")).unwrap();
    assert!(link.starts_with("../../blobs/"), "{link:?}");
    assert_eq!(
        std::fs::read(snap.join("config.json")).unwrap(),
        b"{\"version\": 2}"
    );
    let leftovers: Vec<_> = walk(&root.join("blobs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The CDN rejects requests carrying a token, and every LFS body came from it.
    let cdn_gets = env.hub.log().iter().filter(|l| l.server == "cdn").count();
    assert_eq!(cdn_gets, 2);

    // A second run finds everything in place: only the listing is asked for.
    env.hub.clear_log();
    let again = env.pull(&[TINY]).expect(0);
    assert_eq!(again.last_line(), run.last_line());
    let log = env.hub.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].path.starts_with("/api/models/"));
}

#[test]
fn include_and_exclude_select_files() {
    let env = Env::new();
    let run = env.pull(&[TINY, "--include", "original/*"]).expect(0);
    assert_eq!(
        snapshot_files(Path::new(&run.last_line())),
        ["original/consolidated.00.pth", "original/params.json"]
    );

    let env = Env::new();
    let run = env
        .pull(&[TINY, "--include", "original/", "--exclude", "*.pth"])
        .expect(0);
    assert_eq!(
        snapshot_files(Path::new(&run.last_line())),
        ["original/params.json"]
    );
    assert!(env.hub.log().iter().all(|l| l.server != "cdn"));

    let env = Env::new();
    let run = env
        .pull(&[
            TINY,
            "--exclude",
            "*.safetensors",
            "--exclude",
            "original/*",
        ])
        .expect(0);
    assert_eq!(
        snapshot_files(Path::new(&run.last_line())),
        ["README.md", "config.json"]
    );

    let run = env.pull(&[TINY, "--include", "*.gguf"]).expect(2);
    assert!(
        run.stderr()
            .contains("no file matches --include \"*.gguf\""),
        "{}",
        run.stderr()
    );
    assert_eq!(run.stderr().lines().count(), 1, "{}", run.stderr());
}

#[test]
fn revision_pins_a_branch_tag_or_commit() {
    let env = Env::new();
    env.pull(&[TINY]).expect(0);
    let root = env.repo_root(TINY);

    // A tag: its own ref and snapshot; the unchanged weights blob is linked, not fetched again.
    env.hub.clear_log();
    let run = env.pull(&[TINY, "--revision", "v1"]).expect(0);
    let snap_a = pulled_snapshot(&run, &root, "v1", &sha(0xa1));
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main")).unwrap(),
        sha(0xb2)
    );
    assert_eq!(
        std::fs::read(snap_a.join("config.json")).unwrap(),
        b"{\"version\": 1}"
    );
    let cdn: Vec<_> = env.cdn_requests();
    assert_eq!(cdn.len(), 1, "only the changed .pth is fetched: {cdn:?}");
    run.says("model.safetensors: linked");
    assert_eq!(
        std::fs::read_link(snap_a.join("model.safetensors")).unwrap(),
        std::fs::read_link(
            root.join("snapshots")
                .join(sha(0xb2))
                .join("model.safetensors")
        )
        .unwrap()
    );

    // A commit hash: no ref is written for it.
    let env = Env::new();
    let run = env.pull(&[TINY, "--revision", &sha(0xa1)]).expect(0);
    assert_eq!(
        PathBuf::from(run.last_line()),
        env.repo_root(TINY).join("snapshots").join(sha(0xa1))
    );
    let refs = env.repo_root(TINY).join("refs");
    assert!(!refs.exists() || std::fs::read_dir(&refs).unwrap().count() == 0);

    let run = env.pull(&[TINY, "--revision", "v9"]).expect(2);
    run.says("revision \"v9\" not found");
    let run = env.pull(&["meta-llama/Nope"]).expect(2);
    run.says("repository not found");
    let run = env.pull(&["not a repo"]).expect(2);
    run.says("not a Hub repo id");
}

#[test]
fn resumes_a_blob_after_kill_9() {
    let env = Env::new();
    env.hub.set_throttle(400_000);
    let mut child = env
        .cmd(&[BIG])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sha256 = env.hub.sha256_of(BIG, "main", "big.bin");
    let blobs = env.repo_root(BIG).join("blobs");
    let partial = blobs.join(format!("{sha256}.incomplete"));
    child::wait_for_bytes(&mut child, &partial, 300_000);
    child::kill_9(child);
    let had = std::fs::metadata(&partial).unwrap().len();
    assert!(had > 0 && had < 1_500_000, "{had}");
    assert!(!blobs.join(&sha256).exists());

    env.hub.set_throttle(0);
    env.hub.clear_log();
    let run = env.pull(&[BIG]).expect(0);
    let cdn: Vec<_> = env.cdn_requests();
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    assert_eq!(
        cdn[0].range.as_deref(),
        Some(format!("bytes={had}-").as_str())
    );
    run.says("resum");
    assert_eq!(sha256_file(&blobs.join(&sha256)), sha256);
    assert!(!partial.exists());
}

#[test]
fn sha256_mismatch_exits_1_and_stores_nothing() {
    let env = Env::new();
    let run = env.pull(&[CORRUPT]).expect(1);
    run.says("sha256 mismatch");
    let sha256 = env.hub.sha256_of(CORRUPT, "main", "model.safetensors");
    let root = env.repo_root(CORRUPT);
    assert!(!root.join("blobs").join(&sha256).exists());
    assert!(!root
        .join("blobs")
        .join(format!("{sha256}.incomplete"))
        .exists());
    assert!(!root
        .join("snapshots")
        .join(sha(0xd4))
        .join("model.safetensors")
        .exists());
    assert!(run.stdout().is_empty());
}

#[test]
fn gated_repo_needs_a_token_and_the_token_is_never_printed() {
    let env = Env::new();
    let no_token = env.pull(&[GATED]).expect(3);
    let err = no_token.stderr();
    assert!(err.contains("accept the license"), "{err}");
    assert_eq!(
        err.matches("accept the license").count(),
        1,
        "said once: {err}"
    );
    assert!(
        err.contains(&format!("{}/{GATED}", env.hub.endpoint)),
        "{err}"
    );
    assert!(err.contains("token"), "{err}");

    let wrong = "hf_WRONGtoken9876543210";
    let bad = env.pull_with(&[GATED], |c| {
        c.env("HF_TOKEN", wrong);
    });
    let bad = bad.expect(3);
    assert!(!bad.stderr().contains(wrong) && !bad.stdout().contains(wrong));

    let by_flag = env.pull(&[GATED, "--token", SECRET]).expect(0);
    let file = std::fs::read(Path::new(&by_flag.last_line()).join("model.safetensors")).unwrap();
    assert_eq!(file.len(), 50_000);

    let env2 = Env::new();
    std::fs::create_dir_all(env2.hf_home()).unwrap();
    std::fs::write(env2.hf_home().join("token"), format!("{SECRET}\n")).unwrap();
    let by_file = env2.pull(&[GATED]).expect(0);
    by_file.says("token from");
    // The CDN never saw the token (it answers 400 to any Authorization header).
    assert!(env2
        .hub
        .log()
        .iter()
        .filter(|l| l.server == "cdn")
        .all(|l| !l.auth));
    assert!(env2
        .hub
        .log()
        .iter()
        .filter(|l| l.path.contains("/resolve/"))
        .all(|l| l.auth));

    for run in [&no_token, &bad, &by_flag, &by_file] {
        assert!(!run.stdout().contains(SECRET), "{}", run.stdout());
        assert!(!run.stderr().contains(SECRET), "{}", run.stderr());
    }
}

#[test]
fn offline_mode_serves_from_the_cache() {
    let env = Env::new();
    let online = env.pull(&[TINY]).expect(0);
    env.hub.clear_log();
    let offline = |args: &[&str]| {
        env.pull_with(args, |c| {
            c.env("HF_HUB_OFFLINE", "1")
                .env("HF_ENDPOINT", "http://127.0.0.1:9");
        })
    };
    let run = offline(&[TINY]).expect(0);
    assert_eq!(run.last_line(), online.last_line());
    let run = offline(&[TINY, "--revision", &sha(0xb2), "--include", "original/*"]).expect(0);
    assert_eq!(run.last_line(), online.last_line());

    let run = offline(&[TINY, "--revision", "v1"]).expect(2);
    run.says("not in the cache");
    let run = offline(&[GATED]).expect(2);
    run.says("not in the cache");
    let run = offline(&[TINY, "--include", "*.gguf"]).expect(2);
    run.says("no file matches");
    assert!(env.hub.log().is_empty());

    // A snapshot whose blob went missing is reported, not served.
    let blob = env.repo_root(TINY).join("blobs").join(env.hub.sha256_of(
        TINY,
        "main",
        "model.safetensors",
    ));
    std::fs::remove_file(blob).unwrap();
    let run = offline(&[TINY]).expect(2);
    run.says("model.safetensors: broken link");
}

#[test]
fn retries_transient_failures_then_gives_up_with_exit_4() {
    let env = Env::new();
    env.hub.push_fault(Fault::Status(503));
    env.hub.push_fault(Fault::CutAfter(200_000));
    env.hub
        .push_fault(Fault::StallAfter(300_000, Duration::from_secs(3)));
    env.hub.push_fault(Fault::Status(403)); // an expired signed URL: resolve again
    let run = env.pull_with(&[BIG], |c| {
        c.env("LLAMACTL_NET_TIMEOUT_S", "0.5");
    });
    let run = run.expect(0);
    assert_eq!(env.hub.faults_left(), 0);
    let err = run.stderr();
    assert!(err.contains("HTTP 503"), "{err}");
    assert!(err.contains("asking the Hub for a new one"), "{err}");
    let ranges: Vec<_> = env.cdn_requests().into_iter().map(|l| l.range).collect();
    assert_eq!(ranges.len(), 5, "{ranges:?}");
    // The cut came after at most 200000 bytes; the next request resumes from what arrived.
    let resumed: u64 = ranges[2]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{ranges:?}"));
    assert!(resumed > 0 && resumed <= 200_000, "{ranges:?}");
    let sha256 = env.hub.sha256_of(BIG, "main", "big.bin");
    assert_eq!(
        sha256_file(&env.repo_root(BIG).join("blobs").join(&sha256)),
        sha256
    );
    // Signed URLs' query strings never reach the output.
    assert!(!err.contains("test-signature"), "{err}");

    let env = Env::new();
    for _ in 0..10 {
        env.hub.push_fault(Fault::Status(500));
    }
    let run = env
        .pull_with(&[BIG], |c| {
            c.env("LLAMACTL_NET_RETRIES", "2");
        })
        .expect(4);
    run.says("giving up after 3 tries");
    assert_eq!(env.hub.faults_left(), 7);
    assert!(!run.stderr().contains("test-signature"), "{}", run.stderr());
}

#[test]
fn local_dir_gets_plain_files() {
    let env = Env::new();
    let dir = env.home.path().join("Tiny-Llama");
    let run = env
        .pull(&[TINY, "--local-dir", dir.to_str().unwrap(), "--jobs", "2"])
        .expect(0);
    let dir = dir.canonicalize().unwrap();
    assert_eq!(PathBuf::from(run.last_line()), dir);
    let meta = std::fs::symlink_metadata(dir.join("original/consolidated.00.pth")).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        sha256_file(&dir.join("model.safetensors")),
        env.hub.sha256_of(TINY, "main", "model.safetensors")
    );
    let md = std::fs::read_to_string(dir.join(".cache/huggingface/download/config.json.metadata"))
        .unwrap();
    assert_eq!(md.lines().next(), Some(sha(0xb2).as_str()));
    assert!(!env.hf_home().join("hub").exists());

    env.hub.clear_log();
    env.pull(&[TINY, "--local-dir", dir.to_str().unwrap()])
        .expect(0);
    assert_eq!(env.hub.log().len(), 1, "{:?}", env.hub.log());
}

#[test]
fn hf_hub_cache_overrides_hf_home() {
    let env = Env::new();
    let cache = env.home.path().join("elsewhere");
    let run = env
        .pull_with(&[TINY, "--include", "*.json"], |c| {
            c.env("HF_HUB_CACHE", &cache);
        })
        .expect(0);
    let snap = cache
        .join("models--meta-llama--Tiny-Llama/snapshots")
        .join(sha(0xb2));
    assert_eq!(PathBuf::from(run.last_line()), snap);
    assert_eq!(
        snapshot_files(&snap),
        ["config.json", "original/params.json"]
    );
    assert!(!env.hf_home().join("hub").exists());
}

fn files_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect()
}

#[test]
fn unreachable_endpoint_fails_fast_naming_host_and_cause() {
    let env = Env::new();
    let port = child::refused_port();
    for (endpoint, host, cause) in [
        (
            format!("http://127.0.0.1:{port}"),
            format!("127.0.0.1:{port}"),
            "connection refused",
        ),
        (
            "https://nonexistent.invalid".to_string(),
            "nonexistent.invalid".to_string(),
            "DNS lookup failed",
        ),
    ] {
        for local_dir in [false, true] {
            let out = env.home.path().join("local");
            let started = Instant::now();
            // The default timeouts and retries.
            let run = env.pull_with(&[TINY], |c| {
                c.env("HF_ENDPOINT", &endpoint)
                    .env("HF_TOKEN", SECRET)
                    .env_remove("LLAMACTL_NET_RETRIES")
                    .env_remove("LLAMACTL_NET_BACKOFF_MS")
                    .env_remove("LLAMACTL_NET_TIMEOUT_S");
                if local_dir {
                    c.arg("--local-dir").arg(&out);
                }
            });
            let took = started.elapsed();
            let run = run.expect(4);
            assert!(took <= Duration::from_secs(15), "{endpoint}: took {took:?}");
            let err = run.stderr();
            let last = err.lines().last().unwrap_or("");
            assert!(
                last.contains(&format!("cannot reach {host}: {cause}")),
                "{err}"
            );
            assert!(!err.contains(SECRET), "{err}");
            assert!(files_named(env.home.path(), ".incomplete").is_empty());
            eprintln!("{endpoint}: exit 4 after {took:?}");
        }
    }
}

#[test]
fn bad_repo_ids_are_refused_before_any_request() {
    let env = Env::new();
    for id in [
        "meta-llama//x",
        "meta-llama/Meta--Llama",
        "org-/x",
        "a/b/c",
        "org/x.",
    ] {
        let run = env.pull(&[id]).expect(2);
        run.says("not a Hub repo id");
    }
    assert!(env.hub.log().is_empty(), "{:?}", env.hub.log().len());
}

#[test]
fn sigint_keeps_the_partial_blob_and_exits_130() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    env.hub.set_throttle(400_000);
    let mut child = env
        .cmd(&[BIG])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sha256 = env.hub.sha256_of(BIG, "main", "big.bin");
    let partial = env
        .repo_root(BIG)
        .join("blobs")
        .join(format!("{sha256}.incomplete"));
    child::wait_for_bytes(&mut child, &partial, 100_000);
    let err = child::interrupt(child);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("interrupted by SIGINT: kept 1 partial download(s)"),
        "{err}"
    );
    assert!(std::fs::metadata(&partial).unwrap().len() >= 100_000);
}
