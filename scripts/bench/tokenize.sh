#!/usr/bin/env bash
# Encode throughput of llamactl's tokenizer vs Python tiktoken, side by side in one run.
#
#   scripts/bench/tokenize.sh [PYTHON]      (PYTHON defaults to /root/venvs/ref/bin/python)
#
# Builds a >= 10 MB mixed corpus (Python stdlib sources: code + English prose in comments and
# docstrings; plus seeded random text over Latin, Cyrillic, Arabic, CJK and emoji), then encodes
# it with: llamactl on one thread and on all threads; tiktoken.Encoding built from the same
# tokenizer.model, pattern and special tokens (one encode call, one thread inside); and Meta's
# llama_models Tokenizer.encode (tiktoken under Meta's 400k-char windows). llamactl must produce
# Meta's ids (count + sha256); plain tiktoken, which has no windows, differs only where Meta's
# 400,000-char windows cut a word. Prints MB/s and the ratios llamactl / tiktoken.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-/root/venvs/ref/bin/python}
MODEL=testdata/tokenizer.model
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CORPUS=$WORK/corpus.txt

"$PY" - "$CORPUS" <<'PYEOF'
import sys, sysconfig, pathlib, random
out = pathlib.Path(sys.argv[1])
parts, n = [], 0
for p in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
    try:
        t = p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        continue
    parts.append(t); n += len(t.encode())
    if n > 8_000_000:
        break
rng = random.Random(1234)
ranges = [(0x61, 0x7a), (0x430, 0x44f), (0x627, 0x64a), (0x4e00, 0x9fff), (0x3041, 0x3096), (0x1f600, 0x1f64f)]
words = []
for _ in range(400_000):
    lo, hi = ranges[rng.randrange(len(ranges))]
    words.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))))
parts.append(" ".join(words) + "\n")
out.write_text("".join(parts), encoding="utf-8")
print(f"corpus: {out.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
PYEOF

cargo build --release --example tokenize_tool >/dev/null 2>&1 || cargo build --release --example tokenize_tool
RUST_JSON=$(target/release/examples/tokenize_tool bench "$MODEL" "$CORPUS" 3)

"$PY" - "$MODEL" "$CORPUS" "$RUST_JSON" <<'PYEOF'
import hashlib, json, os, struct, sys, time
import tiktoken
from tiktoken.load import load_tiktoken_bpe
model, corpus, rust = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
text = open(corpus, encoding="utf-8").read()
mb = len(text.encode()) / 1e6
pat = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
t0 = time.perf_counter()
ranks = load_tiktoken_bpe(model)
specials = {f"<|special_{i}|>": len(ranks) + i for i in range(256)}
enc = tiktoken.Encoding(name="llama3", pat_str=pat, mergeable_ranks=ranks, special_tokens=specials)
load_s = time.perf_counter() - t0

def digest(ids):
    return hashlib.sha256(struct.pack(f"<{len(ids)}I", *ids)).hexdigest()

def best(f, n=3):
    b, ids = float("inf"), None
    for _ in range(n):
        t = time.perf_counter(); ids = f(); b = min(b, time.perf_counter() - t)
    return b, ids

tk_s, tk_ids = best(lambda: enc.encode_ordinary(text))
from llama_models.llama3.tokenizer import Tokenizer
meta = Tokenizer(__import__("pathlib").Path(model))
meta_s, meta_ids = best(lambda: meta.encode(text, bos=False, eos=False))

r1, rn = rust["runs"][0], rust["runs"][-1]
print(f"corpus {mb:.1f} MB; machine: {os.cpu_count()} cores, shared (load {os.getloadavg()[0]:.1f})")
print(f"{'impl':40s} {'MB/s':>8s} {'ids':>10s}  sha256[:12]")
rows = [
    ("llamactl, 1 thread", r1["mb_per_s"], r1["count"], r1["sha256"]),
    (f"llamactl, {rn['threads']} threads", rn["mb_per_s"], rn["count"], rn["sha256"]),
    ("python tiktoken encode_ordinary", mb / tk_s, len(tk_ids), digest(tk_ids)),
    ("python llama_models Tokenizer.encode", mb / meta_s, len(meta_ids), digest(meta_ids)),
]
for name, rate, n, h in rows:
    print(f"{name:40s} {rate:8.2f} {n:10d}  {h[:12]}")
print(f"load: llamactl {rust['load_s']:.2f} s, tiktoken {load_s:.2f} s")
same = rows[0][3] == rows[1][3] == rows[3][3]
print(f"llamactl ids identical to llama_models': {same}")
print(f"plain tiktoken (no windows): {len(tk_ids) - len(meta_ids):+d} ids vs Meta's windowed encode")
print(f"ratio llamactl(1 thread) / tiktoken: {r1['mb_per_s'] / (mb / tk_s):.2f}")
print(f"ratio llamactl({rn['threads']} threads) / tiktoken: {rn['mb_per_s'] / (mb / tk_s):.2f}")
print(f"ratio llamactl(1 thread) / llama_models: {r1['mb_per_s'] / (mb / meta_s):.2f}")
sys.exit(0 if same else 1)
PYEOF
