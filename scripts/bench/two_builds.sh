#!/usr/bin/env bash
# Two llamactl builds side by side on the everyday operations, to show that a change (a refactor, a
# new check) leaves their speed within noise: verify, reshard MP 1 -> 2, convert --to hf, convert
# --to gguf, run (prefill and decode tok/s). Interleaved rounds (old, new, old, new ...), medians,
# ratios new / old (wall time: < 1 is faster; tok/s: > 1 is faster).
#
# Usage: scripts/bench/two_builds.sh OLD_BIN NEW_BIN META_DIR [WORK_DIR]
#   META_DIR: a Meta checkpoint at MP 1 with tokenizer.model (e.g. the 1B-shaped one that
#   cpu_vs_llamacpp.sh makes); a checklist.chk is written beside hard links of its files in
#   WORK_DIR (default /tmp/two_builds; needs free space for one output of the model's size).
#   Env: ROUNDS (default 3), THREADS for run (default: all cores).
# The source stays in the page cache between commands (read once before the rounds), so the
# figures are CPU and write speed, not the disk's read speed. Name the machine with the figures.
set -euo pipefail
OLD=$(realpath "$1"); NEW=$(realpath "$2"); SRC=$(realpath "$3"); W=${4:-/tmp/two_builds}
ROUNDS=${ROUNDS:-3}; THREADS=${THREADS:-$(nproc)}
rm -rf "$W"; mkdir -p "$W/src"
for f in "$SRC"/*; do ln "$f" "$W/src/" 2>/dev/null || cp "$f" "$W/src/"; done
(cd "$W/src" && rm -f checklist.chk && md5sum -- * > "$W/checklist.chk" && mv "$W/checklist.chk" .)
cat "$W/src"/* > /dev/null

# One timed command: prints wall seconds (the output, if any, is removed afterwards).
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > "$W/out.txt" 2> "$W/err.txt" || { echo "failed: $*" >&2; cat "$W/err.txt" >&2; exit 1; }
  t1=$(date +%s.%N)
  rm -rf "$W/o" "$W/o.gguf"
  echo "$t1 - $t0" | bc
}
tok_s() { # BIN -> "prefill decode"
  "$1" run "$W/src" --threads "$THREADS" --prompt "the quick brown fox jumps over a lazy dog while" \
    --max-gen-len 32 --temperature 0 --json 2> /dev/null |
    python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(s["prefill_tokens_per_s"], s["decode_tokens_per_s"])'
}

declare -A R
ops="verify reshard to_hf to_gguf prefill decode"
for r in $(seq "$ROUNDS"); do
  for b in old new; do
    bin=$OLD; [ $b = new ] && bin=$NEW
    echo "round $r: $b" >&2
    R[$b,verify]+=" $(timed "$bin" verify "$W/src")"
    R[$b,reshard]+=" $(timed "$bin" reshard --mp 2 "$W/src" "$W/o")"
    R[$b,to_hf]+=" $(timed "$bin" convert --to hf "$W/src" "$W/o")"
    R[$b,to_gguf]+=" $(timed "$bin" convert --to gguf "$W/src" "$W/o.gguf")"
    read -r pf dc < <(tok_s "$bin")
    R[$b,prefill]+=" $pf"; R[$b,decode]+=" $dc"
  done
done
source "$(dirname "$0")/median.sh"
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $ROUNDS rounds, medians"
printf '%-9s %10s %10s %8s   %s\n' op old new new/old unit
for op in $ops; do
  o=$(echo "${R[old,$op]}" | median); n=$(echo "${R[new,$op]}" | median)
  unit="s (wall)"; case $op in prefill | decode) unit="tok/s" ;; esac
  printf '%-9s %10.2f %10.2f %8.2f   %s\n' "$op" "$o" "$n" "$(echo "$n / $o" | bc -l)" "$unit"
done
rm -rf "$W"
