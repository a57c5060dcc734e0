#!/usr/bin/env bash
# Benchmark `llamactl reshard` against its anchors, side by side in one run:
#   (a) torch: llama-models' own load-time resharding (maybe_reshard_state_dict -> reshard_mp) for
#       every new rank, then torch.save, in one process;
#   (b) cp of the same bytes (the source's .pth files), as the I/O ceiling. coreutils 9 cp copies
#       with copy_file_range, inside the kernel; a tool that must hash what it writes cannot, so
#       `dd bs=256K` (read + write through userspace, no hashing) is timed too.
# on a Llama-3.2-1B-shaped bf16 checkpoint with random weights (dim 2048, 16 layers, 32 heads,
# 8 kv heads, hidden 8192, vocab 128256; 2.9 GB with an untied output.weight), MP 1 -> 2 and 2 -> 1.
#
# Usage: scripts/bench/reshard.sh [WORK_DIR]    (needs ~15 GB free there; removed at the end)
# Env:   KEEP=1 keeps WORK_DIR (and reuses a checkpoint generated there before);
#        ROUNDS=N repeats every run N times (interleaved) and reports medians (default 1);
#        PY=/root/venvs/ref/bin/python  CACHE=cold|warm (cold drops the page cache before every
#        run when /proc/sys/vm/drop_caches is writable, else falls back to warm: every run starts
#        after a full read of its input, so all are cached equally)
#
# Reports wall time and peak RSS (/usr/bin/time -v) of each run, throughput as output bytes per
# second, and the ratios the issue asks for: ours/torch wall time, ours/cp throughput. Ours also
# md5-hashes everything it writes (checklist.chk) and fsyncs it; torch and cp do neither, so each
# anchor is also timed followed by `sync` of its output files ("+sync" rows).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PY:-/root/venvs/ref/bin/python}"
BIN="$ROOT/target/release/llamactl"
W="${1:-$(mktemp -d /tmp/llamactl-bench-reshard.XXXXXX)}"
mkdir -p "$W"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$W"' EXIT
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install -y time" >&2; exit 2; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release)

CACHE="${CACHE:-cold}"
if [ "$CACHE" = cold ] && ! (sync && echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then
  echo "cannot drop the page cache here; using warm runs" >&2
  CACHE=warm
fi

if [ ! -s "$W/mp1/params.json" ]; then
echo "== generating the checkpoint in $W (torch, bf16 random) =="
"$PY" - "$W/mp1" <<'EOF'
import json, os, sys, torch
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
p = {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
     "ffn_dim_multiplier": 1.5, "multiple_of": 256, "norm_eps": 1e-05, "rope_theta": 500000.0,
     "use_scaled_rope": True}
dim, hd, hidden, kv = 2048, 64, 8192, 8 * 64
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32).to(torch.bfloat16)
sd = {"tok_embeddings.weight": r(128256, dim)}
for l in range(16):
    sd[f"layers.{l}.attention.wq.weight"] = r(dim, dim)
    sd[f"layers.{l}.attention.wk.weight"] = r(kv, dim)
    sd[f"layers.{l}.attention.wv.weight"] = r(kv, dim)
    sd[f"layers.{l}.attention.wo.weight"] = r(dim, dim)
    sd[f"layers.{l}.feed_forward.w1.weight"] = r(hidden, dim)
    sd[f"layers.{l}.feed_forward.w2.weight"] = r(dim, hidden)
    sd[f"layers.{l}.feed_forward.w3.weight"] = r(hidden, dim)
    sd[f"layers.{l}.attention_norm.weight"] = r(dim)
    sd[f"layers.{l}.ffn_norm.weight"] = r(dim)
sd["norm.weight"] = r(dim)
sd["output.weight"] = r(128256, dim)
torch.save(sd, os.path.join(out, "consolidated.00.pth"))
json.dump(p, open(os.path.join(out, "params.json"), "w"))
EOF
fi
# The MP 2 input, made once by our tool (not timed; checked against torch below).
[ -s "$W/mp2/params.json" ] || "$BIN" reshard --mp 2 "$W/mp1" "$W/mp2" 2>/dev/null

cat > "$W/torch_reshard.py" <<'EOF'
# What a user does today: llama-models' load-time resharding for every new rank, then torch.save.
import json, os, shutil, sys, torch
import llama_models.checkpoint as ck
src, dst, new_mp = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dst)
paths = sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".pth"))
n_kv = json.load(open(os.path.join(src, "params.json")))["n_kv_heads"]
for rank in range(new_mp):
    ck.get_model_parallel_world_size = lambda: new_mp
    ck.get_model_parallel_rank = lambda: rank
    sd = ck.maybe_reshard_state_dict(paths, n_kv, mmap=True)
    torch.save(sd, os.path.join(dst, f"consolidated.{rank:02d}.pth"))
    del sd
shutil.copy(os.path.join(src, "params.json"), dst)
EOF

prep() {  # input dir
  if [ "$CACHE" = cold ]; then sync; echo 3 > /proc/sys/vm/drop_caches; else cat "$1"/*.pth > /dev/null; fi
}

# run NAME INPUT_DIR OUTPUT_DIR CMD...: times CMD, prints one result row, keeps numbers in $W/rows.
run() {
  local name=$1 in=$2 out=$3; shift 3
  rm -rf "$out"
  prep "$in"
  /usr/bin/time -v -o "$W/time.txt" "$@" > /dev/null 2> "$W/err.txt" || { cat "$W/err.txt" >&2; exit 1; }
  local wall rss bytes
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$W/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$W/time.txt")
  bytes=$(cat "$out"/*.pth | wc -c)
  printf "%-24s %8.2f s %8s MiB %9.0f MB/s\n" "$name" "$wall" "$rss" "$(echo "$bytes / $wall / 1000000" | bc -l)"
  echo "$name $wall $rss $bytes" >> "$W/rows"
}

verify() {  # ours torch: every tensor equal
  "$PY" - "$1" "$2" <<'EOF'
import os, sys, torch
a, b = sys.argv[1], sys.argv[2]
fa = sorted(f for f in os.listdir(a) if f.endswith(".pth"))
assert fa == sorted(f for f in os.listdir(b) if f.endswith(".pth")), "different shard files"
n = 0
for f in fa:
    x = torch.load(os.path.join(a, f), weights_only=True, mmap=True)
    y = torch.load(os.path.join(b, f), weights_only=True, mmap=True)
    assert list(x) == [k for k in x if k in y] and set(x) == set(y), f
    for k in x:
        assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape and torch.equal(x[k], y[k]), (f, k)
        n += 1
print(f"   ours == torch: {n} tensors identical (torch.load weights_only=True, mmap=True)")
EOF
}

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), cache: $CACHE =="
echo "input: $(du -sh "$W/mp1" | cut -f1) MP 1, torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
: > "$W/rows"
for round in $(seq "${ROUNDS:-1}"); do
[ "${ROUNDS:-1}" = 1 ] || echo "== round $round =="
for case in "1 2" "2 1"; do
  set -- $case
  a=$1 b=$2
  echo "== MP $a -> $b =="
  run "ours $a->$b" "$W/mp$a" "$W/ours" "$BIN" reshard --mp "$b" "$W/mp$a" "$W/ours"
  run "torch $a->$b" "$W/mp$a" "$W/torch" "$PY" "$W/torch_reshard.py" "$W/mp$a" "$W/torch" "$b"
  run "torch+sync $a->$b" "$W/mp$a" "$W/torch" sh -c "'$PY' '$W/torch_reshard.py' '$W/mp$a' '$W/torch' $b && sync '$W'/torch/*"
  [ "$round" != 1 ] || verify "$W/ours" "$W/torch"
  rm -rf "$W/torch"
  run "cp $a->$b" "$W/mp$a" "$W/cp" sh -c "mkdir '$W/cp' && cp '$W/mp$a'/*.pth '$W/cp/'"
  run "cp+sync $a->$b" "$W/mp$a" "$W/cp" sh -c "mkdir '$W/cp' && cp '$W/mp$a'/*.pth '$W/cp/' && sync '$W'/cp/*"
  run "dd $a->$b" "$W/mp$a" "$W/cp" sh -c "mkdir '$W/cp' && for f in '$W/mp$a'/*.pth; do dd if=\$f of='$W'/cp/\$(basename \$f) bs=256K status=none; done"
  # The same bytes through userspace with the md5 a checklist needs: what any hashing copier pays.
  run "dd+md5sum $a->$b" "$W/mp$a" "$W/cp" sh -c "mkdir '$W/cp' && for f in '$W/mp$a'/*.pth; do dd if=\$f bs=256K status=none | tee '$W'/cp/\$(basename \$f) | md5sum > /dev/null; done"
  rm -rf "$W/cp" "$W/ours"
done
done

echo "== ratios (targets: ours peak RSS <= 256 MiB, wall <= 0.8x torch, throughput >= 70% of cp) =="
awk '
  # Median over rounds of each run; the ratios are of medians.
  function median(list,   v, n, i, j, t) {
    n = split(list, v, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j] < v[j-1]; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
    return n % 2 ? v[(n+1)/2] : (v[n/2] + v[n/2+1]) / 2
  }
  { k=$1" "$2; walls[k]=walls[k]" "$3; rsss[k]=rsss[k]" "$4; bytes[k]=$5; n[k]++ }
  END {
    for (k in walls) { wall[k]=median(walls[k]); rss[k]=median(rsss[k]) }
    for (c in wall) if (c ~ /^ours /) {
      split(c, p, " "); d=p[2]
      tp = bytes[c]/wall[c]
      printf "%s (%d rounds, medians): peak RSS ours %d MiB, torch %d MiB | wall ours %.2f s, torch %.2f s, ours/torch %.2f (vs torch+sync %.2f) | throughput ours/cp %.0f%% (cp %.2f s; vs cp+sync %.0f%%, vs dd %.0f%%, vs dd+md5sum %.0f%%)\n",
        d, n[c], rss[c], rss["torch "d], wall[c], wall["torch "d], wall[c]/wall["torch "d], wall[c]/wall["torch+sync "d],
        100*tp/(bytes["cp "d]/wall["cp "d]), wall["cp "d], 100*tp/(bytes["cp+sync "d]/wall["cp+sync "d]),
        100*tp/(bytes["dd "d]/wall["dd "d]), 100*tp/(bytes["dd+md5sum "d]/wall["dd+md5sum "d])
    }
  }' "$W/rows"
