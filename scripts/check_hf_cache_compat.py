#!/usr/bin/env python3
"""Show that `llamactl pull` and Python huggingface_hub share one cache, both ways.

Runs the local Hub (examples/hub_server.rs, the server the tests use) over a small repo with LFS
and regular files, then:
  (a) `llamactl pull` fills cache A; huggingface_hub with HF_HUB_OFFLINE=1 resolves files and the
      snapshot from A (hf_hub_download, snapshot_download, try_to_load_from_cache, scan_cache_dir);
  (b) huggingface_hub.snapshot_download fills cache B from the same server; `llamactl pull` with
      HF_HUB_OFFLINE=1 resolves the snapshot from B.
  (c) two revisions that share a blob (v1, then main with new config and .pth): `llamactl ls --json`
      reports the repos, revisions, refs, file counts and sizes scan_cache_dir() reports;
  (d) after `llamactl rm --revision v1`, `llamactl prune` (an orphan blob, a dead run's temp dir) and
      `llamactl prune --revisions`, scan_cache_dir() has no warnings and every file of what remains
      loads with hf_hub_download(local_files_only=True); `llamactl rm REPO` leaves no trace.
Exits non-zero on the first disagreement.

Usage (needs huggingface_hub, e.g. /root/venvs/ref/bin/python):
  cargo build --release --bin llamactl --example hub_server
  /root/venvs/ref/bin/python scripts/check_hf_cache_compat.py
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
LLAMACTL = TARGET / "release" / "llamactl"
SERVER = TARGET / "release" / "examples" / "hub_server"
REPO = "meta-llama/Compat-Llama"
COMMIT = "c0ffee00" * 5

FILES = {
    "config.json": b'{"model_type": "llama", "hidden_size": 64}\n',
    "tokenizer_config.json": b'{"bos_token": "<|begin_of_text|>"}\n',
    "model.safetensors": os.urandom(3 << 20),
    "original/params.json": b'{"dim": 64, "n_layers": 2}\n',
    "original/consolidated.00.pth": os.urandom(2 << 20),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.pop("TRANSFORMERS_OFFLINE", None)
    env["HF_HUB_DISABLE_XET"] = "1"
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env.update(extra)
    return env


def pull(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LLAMACTL), "pull", REPO, *args], env=env, capture_output=True, text=True
    )


# Python side, run in a fresh interpreter so huggingface_hub reads HF_HOME/HF_HUB_OFFLINE at import.
PY_OFFLINE = r"""
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache, scan_cache_dir
repo = sys.argv[1]
out = {
    "params": hf_hub_download(repo, "original/params.json"),
    "weights": hf_hub_download(repo, "model.safetensors", revision="main"),
    "snapshot": snapshot_download(repo),
    "try_cache": try_to_load_from_cache(repo, "config.json"),
}
info = [r for r in scan_cache_dir().repos if r.repo_id == repo][0]
out["scan"] = {
    "refs": sorted(ref for rev in info.revisions for ref in rev.refs),
    "commits": sorted(rev.commit_hash for rev in info.revisions),
    "nb_files": info.nb_files,
    "size_on_disk": info.size_on_disk,
}
print(json.dumps(out))
"""

PY_ONLINE = r"""
import sys
from huggingface_hub import snapshot_download
print(snapshot_download(sys.argv[1]))
"""


PY_SCAN = r"""
import json, sys
from huggingface_hub import scan_cache_dir
info = scan_cache_dir()
print(json.dumps({
    "warnings": [str(w) for w in info.warnings],
    "repos": {r.repo_id: {
        "size_on_disk": r.size_on_disk,
        "nb_files": r.nb_files,
        "revisions": {v.commit_hash: {"refs": sorted(v.refs), "nb_files": v.nb_files,
                                      "size_on_disk": v.size_on_disk} for v in r.revisions},
    } for r in info.repos},
}))
"""

PY_LOAD = r"""
import json, sys
from huggingface_hub import hf_hub_download
repo, rev, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print(json.dumps({f: open(hf_hub_download(repo, f, revision=rev, local_files_only=True), "rb").read().hex()
                  for f in files}))
"""


def py(code: str, env: dict, *args: str) -> dict:
    run = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"python failed: {run.stderr.strip()[-800:]}")
    return json.loads(run.stdout)


def llamactl(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LLAMACTL), *args], env=env, capture_output=True, text=True)


def serve(src: Path, commit: str, branch: str):
    server = subprocess.Popen(
        [str(SERVER), "--repo", REPO, "--dir", str(src), "--commit", commit, "--branch", branch],
        stdout=subprocess.PIPE,
        text=True,
    )
    return server, server.stdout.readline().strip().split("=", 1)[1]


def our_table(env: dict) -> dict:
    run = llamactl(env, "ls", "--json")
    check(run.returncode == 0, "llamactl ls --json exits 0", run.stderr.strip())
    doc = json.loads(run.stdout)
    return {
        m["name"]: {
            "size_on_disk": m["bytes"],
            "nb_files": m["files"],
            "revisions": {r["commit"]: {"refs": sorted(r["refs"]), "nb_files": r["files"],
                                        "size_on_disk": r["bytes"]} for r in m["revisions"]},
        }
        for m in doc["models"] if m["place"] == "hf-cache"
    }


def check(cond: bool, what: str, detail: str = "") -> None:
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        sys.exit(f"        {detail}")


def main() -> None:
    for exe in (LLAMACTL, SERVER):
        if not exe.exists():
            sys.exit(f"{exe}: missing; run `cargo build --release --bin llamactl --example hub_server`")
    import huggingface_hub

    print(f"huggingface_hub {huggingface_hub.__version__}, llamactl {LLAMACTL}")
    with tempfile.TemporaryDirectory(prefix="hf-compat-") as tmp:
        tmp = Path(tmp)
        src = tmp / "repo"
        for name, data in FILES.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        server = subprocess.Popen(
            [str(SERVER), "--repo", REPO, "--dir", str(src), "--commit", COMMIT],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = server.stdout.readline().strip()
            endpoint = line.split("=", 1)[1]
            print(f"local Hub: {endpoint} serving {REPO}@main = {COMMIT}, {len(FILES)} files "
                  f"({sum(len(d) for d in FILES.values())} bytes; >= 1 MiB are LFS)")

            print("\n(a) cache filled by `llamactl pull`, read by huggingface_hub offline")
            home_a = tmp / "hf-a"
            run = pull(clean_env(HF_HOME=str(home_a), HF_ENDPOINT=endpoint))
            check(run.returncode == 0, "llamactl pull exits 0", run.stderr.strip())
            snap_a = run.stdout.strip().splitlines()[-1]
            print(f"        llamactl pull -> {snap_a}")
            py = subprocess.run(
                [sys.executable, "-c", PY_OFFLINE, REPO],
                env=clean_env(HF_HOME=str(home_a), HF_HUB_OFFLINE="1"),
                capture_output=True,
                text=True,
            )
            check(py.returncode == 0, "huggingface_hub (HF_HUB_OFFLINE=1) runs", py.stderr.strip()[-800:])
            got = json.loads(py.stdout)
            print(f"        snapshot_download      -> {got['snapshot']}")
            print(f"        hf_hub_download        -> {got['params']}")
            print(f"        scan_cache_dir         -> {got['scan']}")
            check(got["snapshot"] == snap_a, "snapshot_download (offline) returns the folder pull printed")
            check(Path(got["params"]).read_bytes() == FILES["original/params.json"],
                  "hf_hub_download('original/params.json') reads the bytes the Hub served")
            check(sha256(Path(got["weights"]).read_bytes()) == sha256(FILES["model.safetensors"]),
                  "hf_hub_download('model.safetensors', revision='main') has the LFS sha256")
            check(got["try_cache"] == str(Path(snap_a) / "config.json"), "try_to_load_from_cache finds config.json")
            check(got["scan"]["refs"] == ["main"] and got["scan"]["commits"] == [COMMIT]
                  and got["scan"]["nb_files"] == len(FILES),
                  "scan_cache_dir sees refs=['main'], the commit and every blob")

            print("\n(b) cache filled by huggingface_hub.snapshot_download, read by `llamactl pull` offline")
            home_b = tmp / "hf-b"
            py = subprocess.run(
                [sys.executable, "-c", PY_ONLINE, REPO],
                env=clean_env(HF_HOME=str(home_b), HF_ENDPOINT=endpoint),
                capture_output=True,
                text=True,
            )
            check(py.returncode == 0, "snapshot_download from the local Hub", py.stderr.strip()[-800:])
            snap_b = py.stdout.strip().splitlines()[-1]
            print(f"        snapshot_download      -> {snap_b}")
            offline = clean_env(HF_HOME=str(home_b), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
            run = pull(offline)
            check(run.returncode == 0, "llamactl pull (HF_HUB_OFFLINE=1) exits 0", run.stderr.strip())
            print(f"        llamactl pull offline  -> {run.stdout.strip().splitlines()[-1]}")
            print(f"        its stderr: {run.stderr.strip()}")
            check(run.stdout.strip().splitlines()[-1] == snap_b, "pull (offline) prints the snapshot huggingface_hub made")
            for name, data in FILES.items():
                check((Path(snap_b) / name).read_bytes() == data, f"{name} in that snapshot matches the Hub's bytes")
            run = pull(offline, "--include", "original/*")
            check(run.returncode == 0 and run.stdout.strip().endswith(snap_b), "pull --include 'original/*' (offline) resolves too")
            run = pull(offline, "--revision", COMMIT)
            check(run.returncode == 0 and run.stdout.strip().endswith(snap_b), "pull --revision <commit> (offline) resolves too")
            run = pull(offline, "--revision", "v2")
            check(run.returncode == 2, "pull --revision v2 (offline, not cached) exits 2", run.stderr.strip())
            print(f"        its stderr: {run.stderr.strip()}")
        finally:
            server.kill()
            server.wait()
        store_checks(tmp, src)
    print("\nall checks passed: one cache, both directions, and one view of it")


def store_checks(tmp: Path, src: Path) -> None:
    commit_v1, commit_main = "1111aaaa" * 5, "2222bbbb" * 5
    home = tmp / "hf-c"
    base = clean_env(HF_HOME=str(home), HOME=str(tmp / "home"))
    base.pop("LLAMA_STACK_CONFIG_DIR", None)
    print("\n(c) two revisions sharing a blob: `llamactl ls` vs scan_cache_dir()")
    for commit, branch in ((commit_v1, "v1"), (commit_main, "main")):
        if branch == "main":
            (src / "config.json").write_bytes(b'{"model_type": "llama", "hidden_size": 64, "v": 2}\n')
            (src / "original" / "consolidated.00.pth").write_bytes(os.urandom(2 << 20))
        server, endpoint = serve(src, commit, branch)
        try:
            run = pull(dict(base, HF_ENDPOINT=endpoint), "--revision", branch)
            check(run.returncode == 0, f"llamactl pull --revision {branch} exits 0", run.stderr.strip())
        finally:
            server.kill()
            server.wait()
    offline = dict(base, HF_HUB_OFFLINE="1")
    theirs = py(PY_SCAN, offline)
    ours = our_table(offline)
    print(f"        scan_cache_dir: {json.dumps(theirs['repos'])}")
    print(f"        llamactl ls:    {json.dumps(ours)}")
    check(theirs["warnings"] == [], "scan_cache_dir reports no warnings", str(theirs["warnings"]))
    check(ours == theirs["repos"], "same repos, revisions, refs, file counts and sizes")
    shared = [r for r in theirs["repos"][REPO]["revisions"].values()]
    check(sum(r["size_on_disk"] for r in shared) > theirs["repos"][REPO]["size_on_disk"],
          "the shared blob counts once in the repo size (both revisions hold it)")

    print("\n(d) after llamactl rm / prune: no warnings, what remains loads offline")
    names = sorted(FILES)
    run = llamactl(offline, "rm", REPO, "--revision", "v1", "--yes")
    check(run.returncode == 0, "llamactl rm REPO --revision v1 exits 0", run.stderr.strip())
    print("        " + run.stdout.strip().replace("\n", "\n        "))
    after = py(PY_SCAN, offline)
    check(after["warnings"] == [], "scan_cache_dir: no warnings after rm --revision", str(after["warnings"]))
    check(list(after["repos"][REPO]["revisions"]) == [commit_main], "only main's revision is left")
    check(our_table(offline) == after["repos"], "llamactl ls still agrees with scan_cache_dir")
    loaded = py(PY_LOAD, offline, REPO, "main", json.dumps(names))
    check(bytes.fromhex(loaded["model.safetensors"]) == FILES["model.safetensors"],
          "hf_hub_download(local_files_only=True) loads every file of main; the shared blob survived")
    repo_root = home / "hub" / ("models--" + REPO.replace("/", "--"))
    (repo_root / "blobs" / "0123456789abcdef").write_bytes(b"orphan")
    dead = home / "hub" / ".locks" / ".x.tmp-4294967295-1-aa"
    dead.mkdir(parents=True)
    (dead / "f").write_bytes(b"left by a killed run")
    run = llamactl(offline, "prune", "--revisions")
    check(run.returncode == 0, "llamactl prune --revisions exits 0", run.stderr.strip())
    print("        " + run.stdout.strip().replace("\n", "\n        "))
    check(not (repo_root / "blobs" / "0123456789abcdef").exists() and not dead.exists(),
          "prune removed the orphan blob and the dead run's temp dir")
    after = py(PY_SCAN, offline)
    check(after["warnings"] == [], "scan_cache_dir: no warnings after prune", str(after["warnings"]))
    loaded = py(PY_LOAD, offline, REPO, "main", json.dumps(names))
    check(len(loaded) == len(names), "every file of main still loads with local_files_only=True")
    run = llamactl(offline, "rm", REPO, "--yes")
    check(run.returncode == 0, "llamactl rm REPO exits 0", run.stderr.strip())
    after = py(PY_SCAN, offline)
    check(after["warnings"] == [] and REPO not in after["repos"], "scan_cache_dir: the repo is gone, no warnings")


if __name__ == "__main__":
    main()
