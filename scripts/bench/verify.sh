#!/usr/bin/env bash
# Benchmark `llamactl verify` against `md5sum -c checklist.chk` on the same files, in one run.
#
# Writes a random Llama-3.2-1B-shaped bf16 Meta checkpoint at MP 4 (4 shards of ~750 MB, 3 GB;
# examples/bench_checkpoint.rs), warms the page cache, then times, alternating, best of $ROUNDS:
#   md5sum -c checklist.chk               the anchor (one file after another, one core)
#   llamactl verify DIR                   md5 of the files on all cores + structure checks
#   llamactl verify DIR --jobs 1          one file at a time: single-stream md5 throughput
#   md5sum -c / llamactl verify on the same model at MP 1: one 3 GB file, which no number of
#                                         cores can split (verify overlaps reading and hashing)
#   llamactl verify DIR --deep --no-md5   structure + NaN/Inf/stats scan of every value
# and prints the ratios the issue asks for, with wall and CPU (user+sys) seconds. Deletes the
# checkpoint at the end (KEEP=1 keeps it).
#
# Usage: scripts/bench/verify.sh [WORK_PARENT]   (default /tmp)
#   CORES=0,1 pins every contender to those CPUs (taskset), to measure "a 2-core machine" on a
#   bigger idle host. ROUNDS (default 3).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
BIN=$ROOT/target/release/llamactl
GEN=$ROOT/target/release/examples/bench_checkpoint
[ -x "$BIN" ] || cargo build --release
[ -x "$GEN" ] || cargo build --release --example bench_checkpoint
PIN=()
[ -n "${CORES:-}" ] && PIN=(taskset -c "$CORES")
WORK=$(mktemp -d "${1:-/tmp}/verify-bench.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
CKPT=$WORK/Llama-3.2-1B-random

echo "== writing a random bf16 Llama-3.2-1B-shaped checkpoint, MP 4, into $CKPT"
"$GEN" "$CKPT" 4
ONE=$WORK/Llama-3.2-1B-random-mp1
"$GEN" "$ONE" 1
for d in "$CKPT" "$ONE"; do
  cp "$ROOT/testdata/tokenizer.model" "$d/"
  (cd "$d" && md5sum consolidated.*.pth params.json tokenizer.model > checklist.chk)
  ls -l "$d"
done
BYTES=$(du -cb "$CKPT"/* | tail -1 | cut -f1)
BYTES1=$(du -cb "$ONE"/* | tail -1 | cut -f1)

# Everything from the page cache, for every contender.
cat "$CKPT"/* "$ONE"/* > /dev/null

# run TOOL...: "wall cpu" seconds of one run (output discarded, exit code checked).
run() {
  local tf TIMEFORMAT='%R %U %S'
  tf=$(mktemp)
  { time "${PIN[@]}" "$@" > /dev/null 2>&1; } 2> "$tf" || { echo "FAILED: $*" >&2; rm -f "$tf"; exit 1; }
  awk '{ printf "%.2f %.2f", $1, $2 + $3 }' "$tf"
  rm -f "$tf"
}
# best WALL_CPU...: the pair with the smallest wall time.
best() { printf '%s\n' "$@" | sort -g | head -1; }

declare -a T_SUM T_V T_V1 T_DEEP T_SUM1 T_ONE
echo "== timing, $ROUNDS rounds, alternating; pinned to: ${CORES:-no}; $(nproc) cores visible; load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$ROUNDS"); do
  T_SUM+=("$(cd "$CKPT" && run md5sum -c checklist.chk)")
  T_V+=("$(run "$BIN" verify "$CKPT")")
  T_V1+=("$(run "$BIN" verify "$CKPT" --jobs 1)")
  T_DEEP+=("$(run "$BIN" verify "$CKPT" --deep --no-md5)")
  T_SUM1+=("$(cd "$ONE" && run md5sum -c checklist.chk)")
  T_ONE+=("$(run "$BIN" verify "$ONE")")
  echo "round $i (wall cpu): md5sum -c ${T_SUM[-1]} | verify ${T_V[-1]} | verify --jobs 1 ${T_V1[-1]} | verify --deep --no-md5 ${T_DEEP[-1]} | MP 1: md5sum -c ${T_SUM1[-1]} | verify ${T_ONE[-1]}"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
S=$(best "${T_SUM[@]}"); V=$(best "${T_V[@]}"); V1=$(best "${T_V1[@]}"); D=$(best "${T_DEEP[@]}")
S1=$(best "${T_SUM1[@]}"); O=$(best "${T_ONE[@]}")
# One full run for the record: the deep pass must find the checkpoint clean.
"${PIN[@]}" "$BIN" verify "$CKPT" --deep
awk -v b="$BYTES" -v b1="$BYTES1" -v s="$S" -v v="$V" -v v1="$V1" -v d="$D" -v s1="$S1" -v o="$O" 'BEGIN {
  split(s, S, " "); split(v, V, " "); split(v1, V1, " "); split(d, D, " "); split(s1, S1, " "); split(o, O, " ")
  mb = b / 1e6
  printf "\n%-34s %8s %8s %10s\n", "best of rounds", "wall s", "cpu s", "MB/s wall"
  printf "%-34s %8.2f %8.2f %10.0f\n", "md5sum -c checklist.chk", S[1], S[2], mb / S[1]
  printf "%-34s %8.2f %8.2f %10.0f\n", "llamactl verify", V[1], V[2], mb / V[1]
  printf "%-34s %8.2f %8.2f %10.0f\n", "llamactl verify --jobs 1", V1[1], V1[2], mb / V1[1]
  printf "%-34s %8.2f %8.2f %10.0f\n", "llamactl verify --deep --no-md5", D[1], D[2], mb / D[1]
  printf "%-34s %8.2f %8.2f %10.0f\n", "MP 1: md5sum -c checklist.chk", S1[1], S1[2], b1 / 1e6 / S1[1]
  printf "%-34s %8.2f %8.2f %10.0f\n", "MP 1: llamactl verify", O[1], O[2], b1 / 1e6 / O[1]
  printf "\nverify wall / md5sum wall            %.2f  (target <= 0.60)\n", V[1] / S[1]
  printf "  by CPU seconds, if both cores were ours: %.2f  ((verify cpu / 2) / md5sum cpu; an estimate, not a timing)\n", V[2] / 2 / S[2]
  printf "single-stream md5 throughput ratio   %.2f  (md5sum wall / verify --jobs 1 wall; target >= 0.95)\n", S[1] / V1[1]
  printf "  same, by CPU seconds               %.2f  (md5sum cpu / verify --jobs 1 cpu)\n", S[2] / V1[2]
  printf "single-file md5 throughput ratio     %.2f  (MP 1, one 3 GB file: md5sum wall / verify wall; target >= 0.95)\n", S1[1] / O[1]
  printf "  same, by CPU seconds               %.2f\n", S1[2] / O[2]
  printf "deep scan / md5 pass throughput      %.2f  (verify wall / verify --deep --no-md5 wall; target >= 0.50)\n", V[1] / D[1]
}'
