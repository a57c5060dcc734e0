#!/usr/bin/env bash
# `run --check` on an 8B-shaped bf16 HF dir on this machine: the weights are a sparse safetensors file
# of zeros (examples/sparse_checkpoint.rs: a real header, then a hole), so it costs no disk and no
# download, but `run` maps, reads and computes with all 16 GB of it exactly as with real weights.
# Prints the machine's memory, the check's result and stats, and the peak RssAnon / RssFile sampled from
# /proc every 20 ms.
#   scripts/bench/check_8b.sh [WORK_DIR]      (KEEP=1 keeps WORK_DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-/tmp/llamactl-8b}
T=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet --bin llamactl --example sparse_checkpoint
[ -f "$W/model.safetensors" ] || "$T/release/examples/sparse_checkpoint" "$W" 8b
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) memory;" \
  "weights $(du --apparent-size -b "$W/model.safetensors" | awk '{printf "%.1f GB", $1/1e9}') (on disk: $(du -h "$W/model.safetensors" | cut -f1))"
start=$(date +%s.%N)
"$T/release/llamactl" run --ckpt-dir "$W" --tokenizer-path testdata/tokenizer.model --check --json \
  > "$W/check.json" 2> "$W/check.err" &
pid=$!
source scripts/bench/peak_rss.sh
read -r anon file <<<"$(peak_rss "$pid")"
rc=0; wait "$pid" || rc=$?
cat "$W/check.err"
grep -E '"ok"|_per_s|peak|mapped' "$W/check.json" || true
echo "exit $rc in $(echo "$(date +%s.%N) - $start" | bc) s; peak RssAnon $((anon / 1024)) MiB, peak RssFile $((file / 1024)) MiB"
[ "${KEEP:-0}" = 1 ] || rm -rf "$W"
exit $rc
