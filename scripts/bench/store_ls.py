#!/usr/bin/env python3
"""Benchmark `llamactl ls` (the table of every model on disk) on a synthetic store of 50 models
and about 2,000 files, against huggingface_hub's scan_cache_dir() and `du -sb` on the same roots.

The store (in a temp dir, all files tiny, shards hard-linked so sizes count inodes once):
  20 Meta folders in $LLAMA_STACK_CONFIG_DIR/checkpoints: 8 `consolidated.NN.pth` (a real tiny
     torch file from testdata/, hard-linked), params.json, tokenizer.model, checklist.chk, and the
     verified record `ls --verify` writes (so the listing takes the record path, not hashing);
  20 HF cache repos, each with 2 revisions of 35 files that share 30 blobs (40 blobs and 70
     snapshot links per repo) and refs main + v1;
  10 GGUF files (one converted from testdata/tiny-mp1, copied).
Then, alternating, $ROUNDS rounds (default 15) of:
  llamactl ls            the table (the < 0.2 s target)
  llamactl ls --json     the same as JSON
  scan_cache_dir()       huggingface_hub on the HF cache part only, in a warm interpreter
                         (import not counted), the anchor for the HF part
  du -sb ROOTS           the directory walk any listing needs, as a floor
and prints medians and ratios. CPU, load and flags are printed with the numbers.

Usage: CARGO_TARGET_DIR=... /work/ref/venv/bin/python scripts/bench/store_ls.py
"""
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
LLAMACTL = TARGET / "release" / "llamactl"
ROUNDS = int(os.environ.get("ROUNDS", "15"))


def md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def meta_folders(ck: Path, n: int) -> int:
    shard = ROOT / "testdata" / "small-mp1" / "consolidated.00.pth"
    tok = ROOT / "testdata" / "tokenizer.model"
    files = 0
    for i in range(n):
        d = ck / f"Bench-Meta-{i:02d}"
        d.mkdir(parents=True)
        for r in range(8):
            os.link(shard, d / f"consolidated.{r:02d}.pth")
        os.link(tok, d / "tokenizer.model")
        (d / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4,
                                                   "n_kv_heads": 2, "vocab_size": 128256,
                                                   "norm_eps": 1e-5, "rope_theta": 500000.0}))
        names = sorted(p.name for p in d.iterdir())
        (d / "checklist.chk").write_text("".join(f"{md5(d / x)}  {x}\n" for x in names))
        files += len(names) + 1
    return files


def hf_repos(hub: Path, n: int) -> int:
    files = 0
    for i in range(n):
        root = hub / f"models--bench--Repo-{i:02d}"
        blobs = root / "blobs"
        blobs.mkdir(parents=True)
        shared = []
        for k in range(30):
            data = f"repo {i} shared file {k}\n".encode() * 20
            name = hashlib.sha256(data).hexdigest()
            (blobs / name).write_bytes(data)
            shared.append((f"shards/part-{k:02d}.bin", name))
        for rev, ref in ((f"{i:02d}" + "a" * 38, "v1"), (f"{i:02d}" + "b" * 38, "main")):
            own = []
            for k in range(5):
                data = f"repo {i} rev {ref} file {k}\n".encode()
                name = hashlib.sha256(data).hexdigest()
                (blobs / name).write_bytes(data)
                own.append((f"config-{k}.json", name))
            snap = root / "snapshots" / rev
            for path, blob in shared + own:
                link = snap / path
                link.parent.mkdir(parents=True, exist_ok=True)
                depth = path.count("/") + 2
                os.symlink(Path(*[".."] * depth) / "blobs" / blob, link)
            (root / "refs").mkdir(exist_ok=True)
            (root / "refs" / ref).write_text(rev)
            files += 35
        files += 40
    return files


def ggufs(ck: Path, n: int, env: dict, tmp: Path) -> int:
    src = tmp / "tiny"
    shutil.copytree(ROOT / "testdata" / "tiny-mp1", src, symlinks=False)
    one = tmp / "one.gguf"
    subprocess.run([str(LLAMACTL), "convert", "--to", "gguf", str(src), str(one)], env=env,
                   check=True, capture_output=True)
    for i in range(n):
        shutil.copy(one, ck / f"bench-{i:02d}.gguf")
    return n


def timed(cmd: list, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    if not LLAMACTL.exists():
        sys.exit(f"{LLAMACTL}: missing; cargo build --release")
    from huggingface_hub import scan_cache_dir

    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        tmp = Path(tmp)
        home = tmp / "llama"
        ck = home / "checkpoints"
        hub = tmp / "hf" / "hub"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LLAMA_STACK"))}
        env.update(LLAMA_STACK_CONFIG_DIR=str(home), HF_HOME=str(tmp / "hf"), HOME=str(tmp))
        files = meta_folders(ck, 20) + hf_repos(hub, 20) + ggufs(ck, 10, env, tmp)
        subprocess.run([str(LLAMACTL), "ls", "--verify"], env=env, check=True, capture_output=True)
        doc = json.loads(subprocess.run([str(LLAMACTL), "ls", "--json"], env=env, check=True,
                                        capture_output=True, text=True).stdout)
        models = doc["models"]
        verified = sum(m["verified"] == "verified" for m in models)
        print(f"store: {len(models)} models ({verified} verified), {files} files, "
              f"{doc['total_bytes']} bytes on disk (shared counted once)")
        print(f"cpu: {cpu()}; load before: {Path('/proc/loadavg').read_text().strip()}")
        print(f"binary: {LLAMACTL} (release profile)")

        os.environ["HF_HUB_CACHE"] = str(hub)
        scan_cache_dir(hub)  # warm the interpreter
        runs = {"llamactl ls": [], "llamactl ls --json": [], "scan_cache_dir (HF part)": [],
                "du -sb (all roots)": []}
        for _ in range(ROUNDS):
            runs["llamactl ls"].append(timed([str(LLAMACTL), "ls"], env))
            runs["llamactl ls --json"].append(timed([str(LLAMACTL), "ls", "--json"], env))
            t = time.perf_counter()
            scan_cache_dir(hub)
            runs["scan_cache_dir (HF part)"].append(time.perf_counter() - t)
            runs["du -sb (all roots)"].append(timed(["du", "-sb", str(ck), str(hub)], env))
        ours = statistics.median(runs["llamactl ls"])
        print(f"\n{ROUNDS} interleaved rounds, medians (min..max):")
        for name, ts in runs.items():
            med = statistics.median(ts)
            print(f"  {name:26} {med * 1000:8.1f} ms  ({min(ts) * 1000:.1f}..{max(ts) * 1000:.1f})"
                  f"  ratio to llamactl ls: {med / ours:5.2f}")
        print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
        print(f"target < 200 ms: {'met' if ours < 0.2 else 'NOT met'} ({ours * 1000:.1f} ms)")


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
