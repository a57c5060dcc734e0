#!/usr/bin/env bash
# Benchmark `llamactl convert --to gguf --dtype T` (T: llama-quantize file types) against llama.cpp:
#   ours      llamactl from the Meta dir to T, one step
#   pipeline  llama.cpp's convert_hf_to_gguf.py (HF dir -> bf16 GGUF) + llama-quantize (bf16 -> T)
#   lq        llama-quantize alone, from the converter's bf16 GGUF
#   ours-gguf llamactl from that same bf16 GGUF (the like-for-like of lq)
# Same thread count for all (llama-quantize gets nproc threads, llamactl uses every core). The HF
# dir is made by `llamactl convert --to hf` (untimed). Walls are timed until the output is on disk
# (`sync`), the sources in the page cache; peak RSS is /usr/bin/time's maximum resident set.
# Checkpoint: SRC (a Meta dir), else the Llama 3.2 1B-shaped bf16 checkpoint of
# scripts/bench/make_1b_meta.py generated here.
#
# Targets (issue 20): ours <= 0.5x pipeline, ours-gguf <= 1.0x lq, peak RSS <= 256 MiB.
#
# Usage: scripts/bench/gguf_quant.sh
# Env:   SRC, TYPES (default "q4_k_m q8_0 q6_k"), ROUNDS (default 1), LLAMA_CPP (source tree with
#        gguf-py and build/bin/llama-quantize, default /work/ref/llama.cpp), PY (python with torch,
#        numpy, default /work/ref/venv/bin/python), LLAMACTL, BENCH_DIR (scratch, ~8 GB, default /tmp).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LLAMACTL="${LLAMACTL:-$ROOT/target/release/llamactl}"
PY="${PY:-/work/ref/venv/bin/python}"
LLAMA_CPP="${LLAMA_CPP:-/work/ref/llama.cpp}"
ROUNDS="${ROUNDS:-1}"
TYPES="${TYPES:-q4_k_m q8_0 q6_k}"
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/bench-gguf-quant.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
NPROC=$(nproc)

if [ -z "${SRC:-}" ]; then
    SRC="$WORK/Llama3.2-1B-shaped"
    echo "generating the 1B-shaped checkpoint in $SRC ..." >&2
    "$PY" "$ROOT/scripts/bench/make_1b_meta.py" "$SRC" "$ROOT/testdata/tokenizer.model"
fi
HF="$WORK/hf"
"$LLAMACTL" convert --to hf "$SRC" "$HF" > /dev/null 2>&1
BF16="$WORK/bf16.gguf"
cat "$SRC"/* "$HF"/* > /dev/null

declare -A WALLS RSS SAME
# time_it NAME OUT CMD...: wall seconds through a sync of OUT, max RSS (KiB); OUT kept.
time_it() {
    local name="$1" out="$2"; shift 2
    local log="$WORK/$name.time" t0 t1 rss
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$log" "$@" > "$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out" >&2; exit 1; }
    sync "$out"
    t1=$(date +%s.%N)
    WALLS[$name]="${WALLS[$name]:-} $(echo "$t1 - $t0" | bc -l)"
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
    if [ "$rss" -gt "${RSS[$name]:-0}" ]; then RSS[$name]=$rss; fi
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for _ in $(seq "$ROUNDS"); do
    rm -f "$BF16"
    time_it converter "$BF16" env PYTHONPATH="$LLAMA_CPP/gguf-py" "$PY" \
        "$LLAMA_CPP/convert_hf_to_gguf.py" "$HF" --outtype bf16 --outfile "$BF16"
    cat "$BF16" > /dev/null
    for t in $TYPES; do
        T=$(echo "$t" | tr a-z A-Z)
        time_it "ours-$t" "$WORK/ours.gguf" "$LLAMACTL" convert --to gguf "$SRC" "$WORK/ours.gguf" --dtype "$t" --force
        time_it "lq-$t" "$WORK/lq.gguf" "$LLAMA_CPP/build/bin/llama-quantize" "$BF16" "$WORK/lq.gguf" "$T" "$NPROC"
        time_it "ours-gguf-$t" "$WORK/ours-gguf.gguf" "$LLAMACTL" convert --to gguf "$BF16" "$WORK/ours-gguf.gguf" --dtype "$t" --force
        if cmp -s "$WORK/ours-gguf.gguf" "$WORK/lq.gguf"; then SAME[$t]=identical; else SAME[$t]=DIFFERENT; fi
        rm -f "$WORK/ours.gguf" "$WORK/lq.gguf" "$WORK/ours-gguf.gguf"
    done
done 2>&1
declare -A WALL
for n in "${!WALLS[@]}"; do WALL[$n]=$(echo "${WALLS[$n]}" | median); done

echo
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $NPROC cores; load avg at the end $(cut -d' ' -f1-3 /proc/loadavg) (shared machine)"
echo "checkpoint: $SRC ($(du -shL "$SRC" | cut -f1)); median of $ROUNDS round(s); converter (HF -> bf16 GGUF): ${WALL[converter]} s, peak RSS $((RSS[converter] / 1024)) MiB"
printf "%-8s %10s %12s %8s %12s %10s %14s %14s %10s\n" type ours_s pipeline_s ratio ours_gguf_s lq_s ratio_vs_lq ours_RSS_MiB lq_RSS_MiB
ok=1
for t in $TYPES; do
    o=${WALL[ours-$t]} l=${WALL[lq-$t]} g=${WALL[ours-gguf-$t]}
    p=$(echo "${WALL[converter]} + $l" | bc -l)
    r1=$(echo "$o / $p" | bc -l) r2=$(echo "$g / $l" | bc -l)
    rss=$(( (RSS[ours-$t] > RSS[ours-gguf-$t] ? RSS[ours-$t] : RSS[ours-gguf-$t]) / 1024 ))
    printf "%-8s %10.1f %12.1f %8.3f %12.1f %10.1f %14.3f %14d %10d  %s\n" "$t" "$o" "$p" "$r1" "$g" "$l" "$r2" \
        "$rss" "$((RSS[lq-$t] / 1024))" "bytes vs llama-quantize: ${SAME[$t]}"
    if [ "$(echo "$r1 > 0.5 || $r2 > 1.0" | bc -l)" = 1 ] || [ "$rss" -gt 256 ]; then ok=0; fi
done
echo "targets: ours/pipeline <= 0.5, ours-gguf/lq <= 1.0, peak RSS <= 256 MiB: $([ $ok = 1 ] && echo met || echo MISSED)"
