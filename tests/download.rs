//! `llamactl download` and `llamactl list` against a real HTTP server on 127.0.0.1 that emulates
//! Meta's CloudFront links (see tests/common/cdn.rs), with fault injection.

use crate::common::cdn::{Cdn, Fault};
use crate::common::child;
use crate::common::noise::noise;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PTH: &str = "8b_pre_trained/consolidated.00.pth";

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

/// One model's files on the server, with a matching checklist; returns (file name, content).
fn put_model(cdn: &Cdn, remote: &str, shards: usize, shard_size: usize) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = (0..shards)
        .map(|i| {
            let mut data = noise(shard_size, remote.len() as u64 * 31 + i as u64);
            data[..4].copy_from_slice(b"PK\x03\x04");
            (format!("consolidated.{i:02}.pth"), data)
        })
        .collect();
    files.push((
        "params.json".into(),
        br#"{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256}"#
            .to_vec(),
    ));
    files.push(("tokenizer.model".into(), noise(20_000, 7)));
    let checklist: String = files
        .iter()
        .map(|(n, d)| format!("{}  {n}\n", md5_hex(d)))
        .collect();
    for (n, d) in &files {
        cdn.put(&format!("{remote}/{n}"), d.clone());
    }
    cdn.put(
        &format!("{remote}/checklist.chk"),
        checklist.clone().into_bytes(),
    );
    files.push(("checklist.chk".into(), checklist.into_bytes()));
    files
}

fn put_top(cdn: &Cdn) {
    cdn.put(
        "LICENSE",
        b"META LLAMA 3 COMMUNITY LICENSE AGREEMENT\n".to_vec(),
    );
    cdn.put(
        "USE_POLICY",
        b"Meta Llama 3 Acceptable Use Policy\n".to_vec(),
    );
}

/// A CDN with the top-level files and the 8B model (one shard of `size` bytes); the model's files.
fn cdn_with_8b(size: usize) -> (Cdn, Vec<(String, Vec<u8>)>) {
    let cdn = Cdn::start();
    put_top(&cdn);
    let files = put_model(&cdn, "8b_pre_trained", 1, size);
    (cdn, files)
}

fn llamactl(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llamactl"));
    c.args(args)
        .env("LLAMACTL_READ_TIMEOUT_MS", "600")
        .env("LLAMACTL_CONNECT_TIMEOUT_MS", "1000")
        .env("LLAMACTL_RETRY_BASE_MS", "20")
        .env("LLAMACTL_RETRY_MAX_MS", "100")
        .env("LLAMACTL_RETRIES", "3")
        .env("LLAMACTL_PROGRESS_INTERVAL_MS", "200")
        .env_remove("LLAMA_DOWNLOAD_URL")
        .stdin(Stdio::null());
    without_proxies(&mut c);
    c
}

/// The local servers are reached directly, whatever proxies the environment names.
fn without_proxies(c: &mut Command) {
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
}

fn download_cmd(url: &str, models: &str, dir: &Path, extra: &[&str]) -> Command {
    let dir = dir.to_str().expect("utf-8 temp path");
    let mut args = vec!["download", "--url", url, "--models", models, "--dir", dir];
    args.extend_from_slice(extra);
    llamactl(&args)
}

fn download(url: &str, models: &str, dir: &Path, extra: &[&str]) -> Output {
    download_cmd(url, models, dir, extra)
        .output()
        .expect("run llamactl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// No credential of a link appears anywhere in what the binary printed.
fn assert_no_secrets(o: &Output, url: &str) {
    let all = text(o);
    for key in ["Policy=", "Signature=", "Key-Pair-Id="] {
        let value = url
            .split(key)
            .nth(1)
            .and_then(|v| v.split('&').next())
            .expect("test link has the parameter");
        assert!(!all.contains(value), "{key} value leaked:\n{all}");
    }
    assert!(!all.contains("APKATESTKEYPAIR"), "{all}");
}

/// The last stderr line: every failure must end with exactly one reason line.
fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

fn catalog_verified(dir: &Path, name: &str) -> bool {
    let l = llamactl(&["list", "--json", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
    doc["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == name && m["status"] == "verified")
}

fn parts_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".part") {
                out.push(p);
            }
        }
    }
    out
}

fn assert_model(dir: &Path, folder: &str, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let got = std::fs::read(dir.join(folder).join(name))
            .unwrap_or_else(|e| panic!("{folder}/{name}: {e}"));
        assert!(got == *data, "{folder}/{name} differs");
    }
}

#[test]
fn full_download_layout_list_and_no_refetch() {
    let cdn = Cdn::start();
    put_top(&cdn);
    let m8 = put_model(&cdn, "8b_pre_trained", 1, 300_000);
    let m70 = put_model(&cdn, "70b_instruction_tuned", 8, 20_000);
    let url = cdn.link(24 * 3600, None);
    let dir = tempfile::tempdir().unwrap();
    let o = download(&url, "8b,70B-Instruct", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("link expires"), "{}", text(&o));
    assert_no_secrets(&o, &url);
    assert!(dir.path().join("LICENSE").is_file() && dir.path().join("USE_POLICY").is_file());
    assert_model(dir.path(), "Meta-Llama-3-8B", &m8);
    assert_model(dir.path(), "Meta-Llama-3-70B-Instruct", &m70);
    assert!(parts_under(dir.path()).is_empty());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("Meta-Llama-3-8B\n") && stdout.contains("Meta-Llama-3-70B-Instruct\n"));
    // The checklist came before any weight of its model.
    let log = cdn.requests();
    let pos = |p: &str| log.iter().position(|r| r.path == p).unwrap();
    assert!(pos("8b_pre_trained/checklist.chk") < pos(PTH));

    let l = llamactl(&["list", "--json", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(l.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
    let status = |name: &str| {
        doc["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(status("8B"), "verified");
    assert_eq!(status("70B-instruct"), "verified");
    assert_eq!(status("8B-instruct"), "absent");

    // A second run finds everything verified and asks the server nothing.
    let before = cdn.requests().len();
    let o = download(&url, "8B,70b-instruct", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(cdn.requests().len(), before);

    // A local file changed after verification is no longer "verified" in the listing.
    let params = dir.path().join("Meta-Llama-3-8B/params.json");
    std::fs::write(&params, b"{}").unwrap();
    let l = llamactl(&["list", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&l.stdout);
    let row = table.lines().find(|l| l.starts_with("8B ")).unwrap();
    assert!(row.contains("present"), "{table}");
}

#[test]
fn input_errors_before_any_request() {
    let cdn = Cdn::start();
    put_top(&cdn);
    let dir = tempfile::tempdir().unwrap();
    let url = cdn.link(3600, None);

    let o = download(&url, "8B,13B", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        last_line(&o).contains("unknown model \"13B\""),
        "{}",
        text(&o)
    );

    // No URL and no terminal: a clear error instead of a prompt.
    let o = llamactl(&[
        "download",
        "--models",
        "8B",
        "--dir",
        dir.path().to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(last_line(&o).contains("LLAMA_DOWNLOAD_URL"), "{}", text(&o));

    // URL from the environment, but no models and no terminal.
    let o = llamactl(&["download", "--dir", dir.path().to_str().unwrap()])
        .env("LLAMA_DOWNLOAD_URL", &url)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(last_line(&o).contains("--models"), "{}", text(&o));
    assert_no_secrets(&o, &url);

    // A malformed manifest: a one-line error that does not quote the link's credentials.
    let mpath = dir.path().join("bad.json");
    std::fs::write(&mpath, serde_json::json!({"files": url}).to_string()).unwrap();
    let o = llamactl(&["download", "--manifest", mpath.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        last_line(&o).contains("not a download manifest"),
        "{}",
        text(&o)
    );
    assert_no_secrets(&o, &url);

    // An expired link is refused before the first byte, with its expiry.
    let old = cdn.link(-120, None);
    let o = download(&old, "8B", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(last_line(&o).contains("expired"), "{}", text(&o));
    assert_no_secrets(&o, &old);
    assert!(cdn.requests().is_empty(), "{:?}", cdn.requests());
}

#[test]
fn resume_after_kill_fetches_each_byte_about_once() {
    let size = 4 << 20;
    let (cdn, files) = cdn_with_8b(size);
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    cdn.throttle(Some(1 << 20));
    let mut child = download_cmd(&url, "8B", dir.path(), &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let part = dir.path().join("Meta-Llama-3-8B/consolidated.00.pth.part");
    child::wait_for_bytes(&mut child, &part, size as u64 / 4);
    child::kill_9(child);
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < size as u64);
    resume_fetches_each_byte_about_once(&cdn, &url, dir.path(), &files, size);
    let resumed = cdn.requests().into_iter().rfind(|r| r.path == PTH).unwrap();
    assert_eq!(resumed.status, 206);
    assert!(resumed.if_range.is_some(), "resume without If-Range");
}

#[test]
fn used_up_link_stops_then_a_new_link_resumes() {
    let size = 1 << 20;
    let (cdn, files) = cdn_with_8b(size);
    // LICENSE, USE_POLICY, checklist.chk, the shard: then the count is used up.
    let first = cdn.link(3600, Some(4));
    cdn.fault(PTH, Fault::DropAfter(size as u64 / 2));
    let dir = tempfile::tempdir().unwrap();
    let o = download(&first, "8B", dir.path(), &["--jobs", "1"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let line = last_line(&o);
    assert!(
        line.contains("expired or its download count is used up") && line.contains("resumes"),
        "{line}"
    );
    assert_no_secrets(&o, &first);
    // No retry storm: one refused request, then nothing more.
    let refused = cdn.requests().iter().filter(|r| r.status == 403).count();
    assert_eq!(refused, 1, "{:?}", cdn.requests());
    let part = dir.path().join("Meta-Llama-3-8B/consolidated.00.pth.part");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0, "partial file not kept");

    let second = cdn.link(3600, None);
    let before = cdn.served(PTH);
    let o = download(&second, "8B", dir.path(), &["--jobs", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_model(dir.path(), "Meta-Llama-3-8B", &files);
    // Only the missing tail came over the wire.
    assert_eq!(cdn.served(PTH) - before, size as u64 - kept);
    assert!(text(&o).contains("resumed"), "{}", text(&o));
}

#[test]
fn corrupted_server_file_fails_with_both_digests() {
    let (cdn, files) = cdn_with_8b(200_000);
    let mut bad = files[0].1.clone();
    bad[1000] ^= 0xff;
    cdn.put(PTH, bad.clone());
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    let o = download(&url, "8B", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let line = last_line(&o);
    assert!(line.contains("consolidated.00.pth"), "{line}");
    assert!(
        line.contains(&md5_hex(&files[0].1)) && line.contains(&md5_hex(&bad)),
        "{line}"
    );
    assert!(!dir
        .path()
        .join("Meta-Llama-3-8B/consolidated.00.pth")
        .exists());
    assert!(parts_under(dir.path()).is_empty());
    // Fetched again once after the first mismatch, not more.
    assert_eq!(cdn.served(PTH), 2 * bad.len() as u64);
    // The other files still arrived and verified.
    assert!(dir.path().join("Meta-Llama-3-8B/params.json").is_file());
}

#[test]
fn transient_faults_are_survived() {
    let size = 400_000;
    let (cdn, files) = cdn_with_8b(size);
    cdn.fault(PTH, Fault::DropAfter(100_000));
    cdn.fault(PTH, Fault::Status500);
    cdn.fault(PTH, Fault::Stall(150_000, Duration::from_secs(3)));
    cdn.fault(PTH, Fault::ShortBody(50_000));
    cdn.fault("8b_pre_trained/params.json", Fault::Status500);
    cdn.fault("8b_pre_trained/tokenizer.model", Fault::LongerLength(5000));
    cdn.fault("8b_pre_trained/checklist.chk", Fault::ShortBody(40));
    cdn.fault("LICENSE", Fault::DropAfter(3));
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    let o = download(&url, "8B", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_model(dir.path(), "Meta-Llama-3-8B", &files);
    assert_no_secrets(&o, &url);
    // Every retry resumed from where the bytes stopped instead of starting over.
    let tries: Vec<_> = cdn
        .requests()
        .into_iter()
        .filter(|r| r.path == PTH)
        .collect();
    assert_eq!(tries.len(), 5, "{tries:?}");
    assert!(tries[0].range.is_none());
    assert!(tries[1..].iter().all(|r| r.range.is_some()), "{tries:?}");
}

#[test]
fn persistent_failures_exit_with_their_codes() {
    let (cdn, _) = cdn_with_8b(50_000);
    let url = cdn.link(3600, None);

    // Always 500: network failure after the retries, part kept, exit 4.
    for _ in 0..10 {
        cdn.fault(PTH, Fault::Status500);
    }
    let dir = tempfile::tempdir().unwrap();
    let o = download(&url, "8B", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        last_line(&o).contains("network failure after 4 attempts"),
        "{}",
        text(&o)
    );
    assert_no_secrets(&o, &url);
    let pth_requests = cdn.requests().iter().filter(|r| r.path == PTH).count();
    assert_eq!(pth_requests, 4);

    // An HTML page where a weight should be: never stored under the weight's name, even unverified.
    let (cdn, _) = cdn_with_8b(50_000);
    cdn.fault(PTH, Fault::Html);
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    let o = download(&url, "8B", dir.path(), &["--no-verify"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        last_line(&o).contains("page instead of the file"),
        "{}",
        text(&o)
    );
    assert!(!dir
        .path()
        .join("Meta-Llama-3-8B/consolidated.00.pth")
        .exists());

    // A model the link does not include: 404 for it, and the other model still arrives.
    let dir2 = tempfile::tempdir().unwrap();
    let o = download(&url, "70B,8B", dir2.path(), &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        last_line(&o).contains("not part of this download link"),
        "{}",
        text(&o)
    );
    assert!(catalog_verified(dir2.path(), "8B"), "{}", text(&o));

    // Nothing listening: connection refused, retried, exit 4, URL redacted.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = url.replace(&cdn.addr.port().to_string(), &port.to_string());
    let o = download(&dead, "8B", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert_no_secrets(&o, &dead);
    assert!(text(&o).contains("Signature=REDACTED"), "{}", text(&o));
}

#[test]
fn complete_part_is_finished_with_416_and_manifest_works() {
    let cdn = Cdn::start();
    put_top(&cdn);
    let files = put_model(&cdn, "8b_instruction_tuned", 1, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("Meta-Llama-3-8B-Instruct");
    std::fs::create_dir_all(&folder).unwrap();
    // A run killed between the last byte and the rename leaves a complete part.
    std::fs::write(folder.join("consolidated.00.pth.part"), &files[0].1).unwrap();

    // A manifest: one file with its own link, the rest from a `*` link, expiry given.
    let link = cdn.link(3600, None);
    let manifest = serde_json::json!({
        "models": ["8b-instruct"],
        "url": link,
        "files": {
            "Meta-Llama-3-8B-Instruct/params.json": link.replace('*', "8b_instruction_tuned/params.json"),
        },
        "expires_on": "2099-01-01T00:00:00Z",
    });
    let mpath = dir.path().join("manifest.json");
    std::fs::write(&mpath, manifest.to_string()).unwrap();
    let o = llamactl(&[
        "download",
        "--manifest",
        mpath.to_str().unwrap(),
        "--dir",
        dir.path().to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("2099"), "{}", text(&o));
    assert_no_secrets(&o, &link);
    assert_model(dir.path(), "Meta-Llama-3-8B-Instruct", &files);
    assert_eq!(cdn.served("8b_instruction_tuned/consolidated.00.pth"), 0);
    let r = cdn
        .requests()
        .into_iter()
        .find(|r| r.path == "8b_instruction_tuned/consolidated.00.pth")
        .unwrap();
    assert_eq!(r.status, 416);
}

#[test]
fn changed_object_restarts_and_locked_part_is_refused() {
    let size = 300_000;
    let (cdn, files) = cdn_with_8b(size);
    cdn.fault(PTH, Fault::DropAfter(size as u64 / 2));
    let link = cdn.link(3600, Some(4));
    let dir = tempfile::tempdir().unwrap();
    let o = download(&link, "8B", dir.path(), &["--jobs", "1"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let part = dir.path().join("Meta-Llama-3-8B/consolidated.00.pth.part");
    assert!(part.is_file());

    // While another process holds the part, a second download of it is refused.
    let held = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let link2 = cdn.link(3600, None);
    let o = download(&link2, "8B", dir.path(), &["--jobs", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        last_line(&o).contains("another process is downloading this file"),
        "{}",
        text(&o)
    );
    drop(held);

    // The object was re-uploaded (new ETag): If-Range no longer matches, the server sends all of
    // it with 200, and the kept prefix is dropped instead of being spliced onto the new bytes.
    cdn.set_etag(PTH, "\"v2\"");
    let o = download(&link2, "8B", dir.path(), &["--jobs", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_model(dir.path(), "Meta-Llama-3-8B", &files);
    let last = cdn.requests().into_iter().rfind(|r| r.path == PTH).unwrap();
    assert!(last.range.is_some() && last.status == 200, "{last:?}");

    // A manifest size far above what the server sends marks the body as an error page.
    let dir = tempfile::tempdir().unwrap();
    let manifest = serde_json::json!({
        "url": link2,
        "models": ["8B"],
        "sizes": {"Meta-Llama-3-8B/consolidated.00.pth": 10 * size},
    });
    let mpath = dir.path().join("m.json");
    std::fs::write(&mpath, manifest.to_string()).unwrap();
    let d = dir.path().to_str().unwrap();
    let o = llamactl(&[
        "download",
        "--manifest",
        mpath.to_str().unwrap(),
        "--dir",
        d,
    ])
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(last_line(&o).contains("were expected"), "{}", text(&o));
    assert!(!dir
        .path()
        .join("Meta-Llama-3-8B/consolidated.00.pth")
        .exists());
}

/// The engine as a library (what `pull` builds on): sha256 verification, resume from a part,
/// extra headers, small GETs.
#[test]
fn engine_api_for_other_commands() {
    use llamactl::net::config::NetConfig;
    use llamactl::net::download::{FileRequest, HashKind, Http, HttpError};
    use llamactl::progress::Silent;
    use sha2::Digest;

    let cdn = Cdn::start();
    let data = noise(500_000, 99);
    cdn.put("repo/model.safetensors", data.clone());
    cdn.fault("repo/model.safetensors", Fault::ShortBody(123_456));
    let link = cdn.link(3600, None);
    let url = link.replace('*', "repo/model.safetensors");
    let http = Http::new(NetConfig {
        retry_base: Duration::from_millis(5),
        ..NetConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("sub/model.safetensors");
    let mut req = FileRequest::new(url.clone(), dest.clone());
    req.hash = HashKind::Sha256;
    req.expected_digest = Some(hex::encode(sha2::Sha256::digest(&data)));
    req.expected_size = Some(data.len() as u64);
    req.headers = vec![("Authorization".into(), "Bearer hf_secret".into())];
    let got = http.download_to_file(&req, &Silent).unwrap();
    assert_eq!(got.size, data.len() as u64);
    assert_eq!(got.digest, req.expected_digest);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!llamactl::net::download::part_path(&dest).exists());

    // A wrong expected digest: fetched twice, then a typed error; nothing under the final name.
    let dest2 = dir.path().join("other.bin");
    let mut bad = FileRequest::new(url.clone(), dest2.clone());
    bad.hash = HashKind::Sha256;
    bad.expected_digest = Some("00".repeat(32));
    match http.download_to_file(&bad, &Silent) {
        Err(e @ HttpError::Mismatch { .. }) => assert_eq!(e.exit_code(), 1),
        other => panic!("{other:?}"),
    }
    assert!(!dest2.exists());

    let (_, body) = http
        .get_small(&link.replace('*', "repo/model.safetensors"), &[], 1 << 20)
        .unwrap();
    assert_eq!(body, data);
    match http.get_small(&link.replace('*', "missing.json"), &[], 1024) {
        Err(e @ HttpError::NotFound { .. }) => {
            assert!(!e.to_string().contains("SIGxyz"), "{e}");
            assert_eq!(e.exit_code(), 3);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn file_missing_from_checklist_is_kept_with_a_warning() {
    let (cdn, files) = cdn_with_8b(10_000);
    let checklist: String = files
        .iter()
        .filter(|(n, _)| n != "tokenizer.model" && n != "checklist.chk")
        .map(|(n, d)| format!("{}  {n}\n", md5_hex(d)))
        .collect();
    cdn.put("8b_pre_trained/checklist.chk", checklist.into_bytes());
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    let o = download(&url, "8B", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("tokenizer.model: not listed in checklist.chk"),
        "{}",
        text(&o)
    );
    assert!(dir.path().join("Meta-Llama-3-8B/tokenizer.model").is_file());
}

/// Segment progress recorded in the part's meta file: bytes on disk by its account.
/// After a kill: the final file is not there, and the next run (at full speed) completes the
/// model while the CDN serves about each byte once.
fn resume_fetches_each_byte_about_once(
    cdn: &Cdn,
    url: &str,
    dir: &Path,
    files: &[(String, Vec<u8>)],
    size: usize,
) -> Output {
    assert!(!dir.join("Meta-Llama-3-8B/consolidated.00.pth").exists());
    cdn.throttle(None);
    let o = download(url, "8B", dir, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_model(dir, "Meta-Llama-3-8B", files);
    let served = cdn.served(PTH);
    assert!(
        served as f64 <= 1.05 * size as f64,
        "served {served} bytes for a {size}-byte file"
    );
    o
}

fn segment_bytes(meta: &Path) -> u64 {
    std::fs::read_to_string(meta)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v["segments"].as_array().map(|segs| {
                segs.iter()
                    .map(|s| s["done"].as_u64().unwrap_or(0) - s["start"].as_u64().unwrap_or(0))
                    .sum()
            })
        })
        .unwrap_or(0)
}

#[test]
fn several_connections_per_file_with_faults_and_kill() {
    let size = 2 << 20;
    let (cdn, files) = cdn_with_8b(size);
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    // The first ranged request (segment 0) drops mid-way: only that segment retries.
    cdn.fault(PTH, Fault::DropAfter(100_000));
    let o = download_cmd(&url, "8B", dir.path(), &["--connections", "4"])
        .env("LLAMACTL_SEGMENT_MIN_BYTES", "200000")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_model(dir.path(), "Meta-Llama-3-8B", &files);
    let ranges: Vec<String> = cdn
        .requests()
        .into_iter()
        .filter(|r| r.path == PTH)
        .filter_map(|r| r.range)
        .collect();
    assert!(ranges.len() >= 5, "{ranges:?}");
    let starts_at_zero = ranges.iter().filter(|r| r.starts_with("bytes=0-")).count();
    assert_eq!(starts_at_zero, 1, "segment 0 restarted: {ranges:?}");
    assert!(ranges
        .iter()
        .any(|r| r == &format!("bytes={}-{}", size / 2, 3 * size / 4 - 1)));

    // Kill mid-way, then resume: each segment continues from its recorded progress.
    let size = 4 << 20;
    let (cdn, files) = cdn_with_8b(size);
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    cdn.throttle(Some(128 << 10));
    let mut child = download_cmd(&url, "8B", dir.path(), &["--connections", "4"])
        .env("LLAMACTL_SEGMENT_MIN_BYTES", "500000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let meta = dir
        .path()
        .join("Meta-Llama-3-8B/consolidated.00.pth.part.meta");
    child::wait_until(&mut child, || segment_bytes(&meta) >= size as u64 / 4);
    child::kill_9(child);
    // Resuming needs no --connections: the recorded segments decide.
    let o = resume_fetches_each_byte_about_once(&cdn, &url, dir.path(), &files, size);
    assert!(text(&o).contains("resumed"), "{}", text(&o));
}

#[test]
fn unreachable_host_fails_fast_naming_host_and_cause() {
    let policy = r#"{"Statement":[{"Condition":{"DateLessThan":{"AWS:EpochTime":4102444800}}}]}"#;
    let query = format!(
        "Policy={}&Signature=SIGsecretVALUE~&Key-Pair-Id=APKATESTKEYPAIR",
        crate::common::cdn::cloudfront_b64(policy.as_bytes())
    );
    let port = child::refused_port();
    for (host, cause) in [
        (format!("127.0.0.1:{port}"), "connection refused"),
        ("nonexistent.invalid".to_string(), "DNS lookup failed"),
    ] {
        let scheme = if host.contains(':') { "http" } else { "https" };
        let url = format!("{scheme}://{host}/*?{query}");
        let dir = tempfile::tempdir().unwrap();
        // The default timeouts and retries: only the proxies of the environment are removed.
        let mut c = Command::new(env!("CARGO_BIN_EXE_llamactl"));
        c.args(["download", "--url", &url, "--models", "8B,70B", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null());
        without_proxies(&mut c);
        for v in ["LLAMACTL_RETRIES", "LLAMACTL_CONNECT_TIMEOUT_MS"] {
            c.env_remove(v);
        }
        let started = Instant::now();
        let o = c.output().unwrap();
        let took = started.elapsed();
        assert_eq!(o.status.code(), Some(4), "{}", text(&o));
        assert!(took <= Duration::from_secs(15), "{host}: took {took:?}");
        let line = last_line(&o);
        assert!(
            line.contains(&format!("cannot reach {host}: {cause}")),
            "{}",
            text(&o)
        );
        assert_no_secrets(&o, &url);
        // One line for the whole run, however many files hit the same wall.
        let errors = text(&o).lines().filter(|l| l.starts_with("error:")).count();
        assert_eq!(errors, 1, "{}", text(&o));
        assert!(
            parts_under(dir.path()).is_empty(),
            "{:?}",
            parts_under(dir.path())
        );
        eprintln!("{host}: exit 4 after {took:?}");
    }
}

#[test]
fn sigint_keeps_resumable_parts_and_exits_130() {
    use std::os::unix::process::CommandExt;
    let (cdn, _) = cdn_with_8b(4 << 20);
    cdn.throttle(Some(256 << 10));
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    let mut child = download_cmd(&url, "8B", dir.path(), &[])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let part = dir.path().join("Meta-Llama-3-8B/consolidated.00.pth.part");
    child::wait_for_bytes(&mut child, &part, 100_000);
    let err = child::interrupt(child);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("interrupted by SIGINT: kept ") && last.contains("partial download(s)"),
        "{err}"
    );
    assert!(
        !err.contains(url.split("Signature=").nth(1).unwrap()),
        "{err}"
    );
    assert!(std::fs::metadata(&part).unwrap().len() >= 100_000);
    assert!(!dir
        .path()
        .join("Meta-Llama-3-8B/consolidated.00.pth")
        .exists());
}

/// Run `c` with stdout and stderr piped; `None` when it is still running after `limit` (then
/// killed), so that a regression fails the test instead of hanging it.
fn output_within(c: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn llamactl");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

/// A server that sends a few bytes and then stalls, on every request: each try's bytes are far
/// below the floor rate, so they count toward the retry budget and the command gives up (exit 4),
/// naming the rate, instead of starting the count over after every few bytes.
#[test]
fn few_bytes_then_a_stall_on_every_request_is_given_up() {
    let (cdn, _) = cdn_with_8b(50_000);
    for _ in 0..12 {
        cdn.fault(PTH, Fault::Stall(100, Duration::from_secs(5)));
    }
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let o = output_within(
        &mut download_cmd(&url, "8B", dir.path(), &[]),
        Duration::from_secs(30),
    )
    .expect("download still running after 30 s");
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let line = last_line(&o);
    assert!(line.contains("network failure after 4 attempts"), "{line}");
    assert!(
        line.contains("below the floor rate of 16.0 KiB/s"),
        "{line}"
    );
    assert!(line.contains("its part (400 B) is kept"), "{line}");
    let tries = cdn.requests().iter().filter(|r| r.path == PTH).count();
    assert_eq!(tries, 4, "{}", text(&o));
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_no_secrets(&o, &url);
}

/// A body that never stalls but moves below the floor rate is cut after the rate window, and
/// those tries count as failures too.
#[test]
fn a_trickle_below_the_floor_rate_is_cut_and_given_up() {
    let (cdn, _) = cdn_with_8b(50_000);
    for _ in 0..6 {
        cdn.fault(PTH, Fault::Trickle(2000));
    }
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    let mut c = download_cmd(&url, "8B", dir.path(), &[]);
    c.env("LLAMACTL_NET_MIN_RATE_BYTES", "8192")
        .env("LLAMACTL_NET_MIN_RATE_WINDOW_S", "0.5");
    // At 2 kB/s the 50 kB shard would take 25 s.
    let o = output_within(&mut c, Duration::from_secs(15)).expect("still running after 15 s");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let line = last_line(&o);
    assert!(line.contains("too slow"), "{line}");
    assert!(line.contains("below the floor rate of 8.0 KiB/s"), "{line}");
    // Each try resumed where the last one stopped.
    let tries: Vec<_> = cdn
        .requests()
        .into_iter()
        .filter(|r| r.path == PTH)
        .collect();
    assert_eq!(tries.len(), 4, "{tries:?}");
    assert!(tries[1..].iter().all(|r| r.range.is_some()), "{tries:?}");

    // A bad value for the new settings is refused like the others.
    let mut c = download_cmd(&url, "8B", dir.path(), &[]);
    c.env("LLAMACTL_NET_MIN_RATE_WINDOW_S", "0");
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        last_line(&o).contains("LLAMACTL_NET_MIN_RATE_WINDOW_S"),
        "{}",
        text(&o)
    );
}

/// LICENSE and USE_POLICY are held to the same rule as the weights: an HTML page served with 200
/// is the CDN's error page, never saved under the file's name nor reported ok.
#[test]
fn html_page_for_license_or_use_policy_is_not_saved() {
    for name in ["LICENSE", "USE_POLICY"] {
        let (cdn, _) = cdn_with_8b(20_000);
        cdn.fault(name, Fault::Html);
        let url = cdn.link(3600, None);
        let dir = tempfile::tempdir().unwrap();
        let o = download(&url, "8B", dir.path(), &[]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert!(
            last_line(&o).contains(&format!("{name}: "))
                && last_line(&o).contains("page instead of the file"),
            "{}",
            text(&o)
        );
        assert!(!dir.path().join(name).exists(), "{name} saved");
        assert!(!text(&o).contains(&format!("ok    {name}")), "{}", text(&o));
    }
}

/// A failure that left no part does not claim to have kept one.
#[test]
fn a_failure_without_a_part_says_nothing_was_kept() {
    let (cdn, _) = cdn_with_8b(50_000);
    for _ in 0..10 {
        cdn.fault(PTH, Fault::Status500);
    }
    let url = cdn.link(3600, None);
    let dir = tempfile::tempdir().unwrap();
    let o = download(&url, "8B", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let line = last_line(&o);
    assert!(!line.contains("is kept"), "{line}");
    assert!(line.contains("nothing of it was kept"), "{line}");
    assert!(parts_under(dir.path()).is_empty());
}

/// `http://user:PASS@host/…`: the password (any userinfo) never appears in what is printed.
#[test]
fn userinfo_in_the_url_is_redacted() {
    let (cdn, files) = cdn_with_8b(20_000);
    let link = cdn.link(3600, None);
    let url = link.replacen("http://", "http://alice:S3cretPass@", 1);
    let dir = tempfile::tempdir().unwrap();
    let o = download(&url, "8B", dir.path(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_model(dir.path(), "Meta-Llama-3-8B", &files);
    assert!(
        text(&o).contains("http://REDACTED@127.0.0.1"),
        "{}",
        text(&o)
    );
    // Failures print the URL too: a 404 behind the link and a host that refuses connections.
    cdn.remove("LICENSE");
    let dead = url.replace(
        &cdn.addr.port().to_string(),
        &child::refused_port().to_string(),
    );
    for u in [&url, &dead] {
        let dir = tempfile::tempdir().unwrap();
        let o = download(u, "8B", dir.path(), &[]);
        assert_ne!(o.status.code(), Some(0), "{}", text(&o));
        assert!(!text(&o).contains("S3cretPass"), "{}", text(&o));
        assert!(!text(&o).contains("alice"), "{}", text(&o));
        assert_no_secrets(&o, u);
    }
}
