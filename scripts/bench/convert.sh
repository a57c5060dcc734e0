#!/usr/bin/env bash
# Benchmark `llamactl convert --to hf` against transformers 4.44.2's convert_llama_weights_to_hf
# and against `cp`, side by side in one run, on a Llama 3.2 1B-shaped bf16 checkpoint (dim 2048,
# 16 layers, 32 heads / 8 kv, hidden 8192, vocab 128256, untied: ~3 GB of random weights made with
# torch, deleted afterwards). Every command is timed to the point its output is on disk (`sync`
# after the ones that don't fsync themselves) with the source already in the page cache.
#
# Targets (issue 5): peak RSS <= 256 MiB, wall <= 0.8x transformers' script, throughput >= 70% of cp.
#
# Usage: scripts/bench/convert.sh            (needs target/release/llamactl and /root/venvs/conv)
# Env:   BENCH_DIR (scratch, default /tmp; needs ~12 GB), PY (python with torch + transformers 4.44.2),
#        SKIP_ORACLE=1 to leave out transformers (then no wall ratio).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LLAMACTL="${LLAMACTL:-$ROOT/target/release/llamactl}"
PY="${PY:-/root/venvs/conv/bin/python}"
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/bench-convert.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SRC="$WORK/Llama3.2-1B-shaped"

echo "generating the 1B-shaped checkpoint in $SRC ..." >&2
"$PY" "$ROOT/scripts/bench/make_1b_meta.py" "$SRC" "$ROOT/testdata/tokenizer.model"
BYTES=$(stat -c %s "$SRC/consolidated.00.pth")
cat "$SRC"/* > /dev/null   # page cache warm for every contender alike

# The same weights without tokenizer.model: separates the tokenizer files' cost from the weights'.
mkdir "$WORK/weights-only"
ln -s "$SRC/consolidated.00.pth" "$SRC/params.json" "$WORK/weights-only/"

# time_it NAME DST CMD...: wall seconds (through a sync of what CMD wrote) and max RSS (KiB);
# repeated runs keep the median wall and the largest RSS.
declare -A WALLS RSS
time_it() {
    local name="$1" dst="$2"; shift 2
    local log="$WORK/$name.time"
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$log" "$@" > "$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out" >&2; exit 1; }
    find "$dst" -type f -exec sync {} +
    t1=$(date +%s.%N)
    WALLS[$name]="${WALLS[$name]:-} $(echo "$t1 - $t0" | bc -l)"
    local rss
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
    if [ "$rss" -gt "${RSS[$name]:-0}" ]; then RSS[$name]=$rss; fi
    rm -rf "$dst"
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

REPS="${REPS:-3}"
for _ in $(seq "$REPS"); do   # interleaved, so load changes on the shared machine hit all alike
    time_it cp "$WORK/cp" cp -r "$SRC" "$WORK/cp"
    time_it llamactl "$WORK/ours" "$LLAMACTL" convert --to hf "$SRC" "$WORK/ours"
    time_it llamactl-weights "$WORK/ours-w" "$LLAMACTL" convert --to hf "$WORK/weights-only" "$WORK/ours-w"
done
if [ -z "${SKIP_ORACLE:-}" ]; then
    # --model_size 8B only selects "1 shard"; from_pretrained's low_cpu_mem_usage needs `accelerate`,
    # which is dropped (it changes how the model is materialised, not what is written).
    time_it transformers "$WORK/oracle" "$PY" -c '
import sys
import transformers.models.llama.convert_llama_weights_to_hf as c
orig = c.LlamaForCausalLM.from_pretrained
def fp(*a, **k):
    k.pop("low_cpu_mem_usage", None)
    return orig(*a, **k)
c.LlamaForCausalLM.from_pretrained = fp
sys.argv = ["convert"] + sys.argv[1:]
c.main()' --input_dir "$SRC" --model_size 8B --llama_version 3.1 --output_dir "$WORK/oracle"
fi
declare -A WALL
for n in "${!WALLS[@]}"; do WALL[$n]=$(echo "${WALLS[$n]}" | median); done

echo
echo "host: $(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg) (shared machine: other jobs compete)"
echo "checkpoint: $(numfmt --to=iec "$BYTES") consolidated.00.pth"
echo "median of $REPS interleaved runs (transformers: 1 run); all walls: $(for n in "${!WALLS[@]}"; do printf '%s:%s; ' "$n" "${WALLS[$n]}"; done)"
printf "%-17s %9s %12s %12s\n" tool wall_s MB_per_s peak_RSS_MiB
for n in cp llamactl llamactl-weights transformers; do
    [ -n "${WALL[$n]:-}" ] || continue
    printf "%-17s %9.2f %12.0f %12.1f\n" "$n" "${WALL[$n]}" "$(echo "$BYTES / ${WALL[$n]} / 1000000" | bc -l)" \
        "$(echo "${RSS[$n]} / 1024" | bc -l)"
done
echo
python3 - "${WALL[cp]}" "${WALL[llamactl]}" "${WALL[transformers]:-0}" "${RSS[llamactl]}" "${WALL[llamactl-weights]}" <<'EOF'
import sys
cp, ours, hf, rss, weights = (float(x) for x in sys.argv[1:])
ok = True
def line(label, value, target, good):
    global ok
    ok &= good
    print(f"{label:40s} {value:>10s}   target {target:10s} {'ok' if good else 'MISSED'}")
line("peak RSS llamactl", f"{rss/1024:.1f} MiB", "<= 256 MiB", rss / 1024 <= 256)
if hf > 0:
    line("wall llamactl / transformers", f"{ours/hf:.3f}", "<= 0.8", ours / hf <= 0.8)
line("throughput llamactl / cp", f"{cp/ours:.2f}", ">= 0.70", cp / ours >= 0.70)
print(f"(weights only, no tokenizer files: throughput / cp = {cp/weights:.2f})")
sys.exit(0 if ok else 1)
EOF
