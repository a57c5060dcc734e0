#!/usr/bin/env bash
# Benchmark `llamactl convert --to gguf` from the Meta dir against llama.cpp's convert_hf_to_gguf.py
# from the HF dir of the same weights (made by `llamactl convert --to hf`, untimed), and against
# `cp` of the checkpoint, in one run, rounds interleaved, medians reported. The checkpoint is a
# Llama 3.2 1B-shaped bf16 Meta dir (dim 2048, 16 layers, 32 heads / 8 kv, ffn_dim_multiplier 1.5,
# multiple_of 256, vocab 128256, random weights): SRC if given, else generated with torch here.
# Every command is timed until its output is on disk (`sync` of what it wrote), source in the page
# cache. Peak RSS is the max RSS /usr/bin/time reports (llamactl reads with pread: no mapped pages).
#
# Targets (issue 16): wall <= 0.2x llama.cpp's converter, peak RSS <= 256 MiB; throughput vs cp.
#
# Usage: scripts/bench/gguf.sh
# Env:   SRC (Meta dir), LLAMA_CPP (source tree with gguf-py, default /work/refs/llama.cpp),
#        PY (python with torch, transformers, numpy; default /root/venvs/ref/bin/python),
#        ROUNDS (default 3), BENCH_DIR (scratch, default /tmp; needs ~10 GB), DTYPE (default bf16).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LLAMACTL="${LLAMACTL:-$ROOT/target/release/llamactl}"
PY="${PY:-/root/venvs/ref/bin/python}"
LLAMA_CPP="${LLAMA_CPP:-/work/refs/llama.cpp}"
ROUNDS="${ROUNDS:-3}"
DTYPE="${DTYPE:-bf16}"
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/bench-gguf.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

if [ -z "${SRC:-}" ]; then
    SRC="$WORK/Llama3.2-1B-shaped"
    echo "generating the 1B-shaped checkpoint in $SRC ..." >&2
    "$PY" "$ROOT/scripts/bench/make_1b_meta.py" "$SRC" "$ROOT/testdata/tokenizer.model"
fi
HF="$WORK/hf"
"$LLAMACTL" convert --to hf "$SRC" "$HF" > /dev/null 2>&1
BYTES=$(stat -c %s "$SRC/consolidated.00.pth")
cat "$SRC"/* "$HF"/* > /dev/null   # page cache warm for every contender alike

# time_it NAME OUT CMD...: wall seconds through a sync of OUT, and max RSS (KiB); OUT removed after.
declare -A WALLS RSS
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
    rm -f "$out"
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for _ in $(seq "$ROUNDS"); do   # interleaved, so load changes on the shared machine hit all alike
    time_it cp "$WORK/cp.pth" cp "$SRC/consolidated.00.pth" "$WORK/cp.pth"
    time_it llamactl "$WORK/ours.gguf" "$LLAMACTL" convert --to gguf "$SRC" "$WORK/ours.gguf" --dtype "$DTYPE"
    time_it llama.cpp "$WORK/ref.gguf" env PYTHONPATH="$LLAMA_CPP/gguf-py" "$PY" \
        "$LLAMA_CPP/convert_hf_to_gguf.py" "$HF" --outtype "$DTYPE" --outfile "$WORK/ref.gguf"
done
declare -A WALL
for n in "${!WALLS[@]}"; do WALL[$n]=$(echo "${WALLS[$n]}" | median); done
OUT_BYTES=$("$LLAMACTL" convert --to gguf "$SRC" "$WORK/size.gguf" --dtype "$DTYPE" 2>/dev/null >/dev/null; stat -c %s "$WORK/size.gguf")

echo
echo "host: $(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg) (shared machine: other jobs compete)"
echo "checkpoint: $SRC, $(numfmt --to=iec "$BYTES") consolidated.00.pth -> $(numfmt --to=iec "$OUT_BYTES") GGUF ($DTYPE)"
echo "median of $ROUNDS interleaved rounds; all walls: $(for n in cp llamactl llama.cpp; do printf '%s:%s; ' "$n" "${WALLS[$n]}"; done)"
printf "%-10s %9s %12s %13s\n" tool wall_s MB_out_per_s peak_RSS_MiB
for n in cp llamactl llama.cpp; do
    b=$OUT_BYTES; [ "$n" = cp ] && b=$BYTES
    printf "%-10s %9.2f %12.0f %13.1f\n" "$n" "${WALL[$n]}" "$(echo "$b / ${WALL[$n]} / 1000000" | bc -l)" \
        "$(echo "${RSS[$n]} / 1024" | bc -l)"
done
echo
python3 - "${WALL[cp]}" "${WALL[llamactl]}" "${WALL[llama.cpp]}" "${RSS[llamactl]}" "$BYTES" "$OUT_BYTES" <<'EOF'
import sys
cp, ours, ref, rss, src_b, out_b = (float(x) for x in sys.argv[1:])
ok = True
def line(label, value, target, good):
    global ok
    ok &= good
    print(f"{label:40s} {value:>10s}   target {target:10s} {'ok' if good else 'MISSED'}")
line("peak RSS llamactl", f"{rss/1024:.1f} MiB", "<= 256 MiB", rss / 1024 <= 256)
line("wall llamactl / llama.cpp converter", f"{ours/ref:.3f}", "<= 0.2", ours / ref <= 0.2)
print(f"{'throughput llamactl / cp (bytes written/s)':40s} {(out_b/ours)/(src_b/cp):>10.2f}")
sys.exit(0 if ok else 1)
EOF
