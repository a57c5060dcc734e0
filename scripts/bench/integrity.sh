#!/usr/bin/env bash
# What checking the source while reading it costs: reshard (split and merge) and convert --to hf
# with two builds, side by side in one run, interleaved rounds, medians, ratios NEW/OLD:
#   OLD  a llamactl that reads .pth shards unchecked
#   NEW  this tree's, which checks every zip record's CRC-32 and checklist.chk's md5 as it reads
# on a Llama-3.2-1B-shaped bf16 checkpoint (made by scripts/bench/reshard.sh with KEEP=1, or any
# Meta dir), with a checklist.chk so the md5 is checked too.
#
# Two cache states: WARM (the shards in the page cache, so hashing is the bottleneck: md5 runs at
# ~0.7 GB/s per file on one core, and a file's md5 cannot be split across cores) and COLD (page cache
# dropped before every run, as when a model is bigger than the RAM: needs root).
#
# Usage: scripts/bench/integrity.sh OLD_BINARY MP1_DIR [WORK_DIR]
# Env:   ROUNDS=N (default 3), CACHE="warm cold" (default "warm", cold needs root)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OLD="$1"; MP1="$2"; W="${3:-$(mktemp -d /tmp/llamactl-bench-integrity.XXXXXX)}"
NEW="$ROOT/target/release/llamactl"
ROUNDS="${ROUNDS:-3}"
CACHE="${CACHE:-warm}"
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install -y time" >&2; exit 2; }
mkdir -p "$W"
[ -s "$MP1/checklist.chk" ] || (cd "$MP1" && md5sum consolidated.*.pth params.json > checklist.chk)
[ -s "$W/mp2/params.json" ] || "$NEW" reshard --mp 2 "$MP1" "$W/mp2" 2>/dev/null

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) ($(nproc) cores)"
echo "flags: $(grep -m1 -o 'avx512[a-z]*\|avx2\|fma\|f16c' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$W/results"
runs=("reshard --mp 2 $MP1" "reshard --mp 1 $W/mp2" "convert --to hf $MP1")
names=("reshard 1->2" "reshard 2->1" "convert --to hf")
for r in $(seq "$ROUNDS"); do
  for c in $CACHE; do
    for i in "${!runs[@]}"; do
      for b in OLD NEW; do
        bin=$([ $b = OLD ] && echo "$OLD" || echo "$NEW")
        rm -rf "$W/out"
        sync
        if [ "$c" = cold ]; then
          echo 1 > /proc/sys/vm/drop_caches
        else
          cat "$MP1"/consolidated.*.pth "$W"/mp2/consolidated.*.pth > /dev/null  # warm, equally
        fi
        /usr/bin/time -f "%e %M" -o "$W/t" $bin ${runs[$i]} "$W/out" 2>/dev/null >/dev/null
        echo "$c-$i $b $(cat "$W/t")" >> "$W/results"
      done
    done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$W/results" "$CACHE" "${names[@]}" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
caches, names = sys.argv[2].split(), sys.argv[3:]
print(f"{'run':<24}{'OLD s':>8}{'NEW s':>8}{'NEW/OLD':>9}{'OLD MiB':>9}{'NEW MiB':>9}")
for c in caches:
    for i, n in enumerate(names):
        k = f"{c}-{i}"
        t = {b: [float(r[2]) for r in rows if r[0] == k and r[1] == b] for b in ("OLD", "NEW")}
        m = {b: [int(r[3]) / 1024 for r in rows if r[0] == k and r[1] == b] for b in ("OLD", "NEW")}
        o, w = st.median(t["OLD"]), st.median(t["NEW"])
        print(f"{n + ' (' + c + ')':<24}{o:>8.2f}{w:>8.2f}{w / o:>9.2f}"
              f"{st.median(m['OLD']):>9.0f}{st.median(m['NEW']):>9.0f}")
PY
