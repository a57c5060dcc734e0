#!/usr/bin/env bash
# Benchmark: `llamactl run` on the CPU against llama.cpp (`llama-bench`) on the same weights, same thread
# count, in one run: interleaved rounds, medians, ratios.
#
# The model: a random Llama-3.2-1B-shaped bf16 checkpoint (dim 2048, 16 layers, 32 heads, 8 kv heads,
# ffn_dim_multiplier 1.5, multiple_of 256, vocab 128256, untied output), written by
# `examples/bench_checkpoint.rs` as a Meta MP 1 dir, converted by `llamactl convert --to hf`, and by
# llama.cpp's own `convert_hf_to_gguf.py` to a bf16 GGUF. Workloads as `llama-bench -p 64 -n 32`: a
# 64-token prompt (prefill tok/s) and 32 generated tokens (decode tok/s); llamactl ignores stop tokens so
# it always decodes 32.
#
# Memory: llamactl's peak RssAnon (process memory) and RssFile (mapped checkpoint pages), sampled from
# /proc every 20 ms, for the Meta MP 1 dir and the HF dir.
#
#   LLAMA_CPP=/path/to/llama.cpp  (source tree, with build/bin/llama-bench; see docs/DESIGN.md)
#   PYTHON=/path/to/python        (with numpy, torch, safetensors, sentencepiece for the converter)
#   scripts/bench/cpu_vs_llamacpp.sh [WORK_DIR]
# Env: ROUNDS (default 3), THREADS (default "1 <nproc>"), KEEP=1 keeps WORK_DIR's model files.
set -euo pipefail
cd "$(dirname "$0")/../.."
LLAMA_CPP=${LLAMA_CPP:?set LLAMA_CPP to a llama.cpp source tree with build/bin/llama-bench}
PY=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-"1 $(nproc)"}
W=${1:-/tmp/llamactl-cpu-bench}
mkdir -p "$W"
BIN=$PWD/target/release/llamactl
cargo build --release --quiet --bin llamactl --example bench_checkpoint

META="$W/meta-1b"
HF="$W/hf-1b"
GGUF="$W/1b-bf16.gguf"
if [ ! -f "$META/consolidated.00.pth" ]; then
  target/release/examples/bench_checkpoint "$META" 1 >&2
  cp testdata/tokenizer.model "$META/"
fi
[ -f "$HF/config.json" ] || "$BIN" convert --to hf "$META" "$HF" >&2
[ -f "$GGUF" ] || PYTHONPATH="$LLAMA_CPP/gguf-py" "$PY" "$LLAMA_CPP/convert_hf_to_gguf.py" "$HF" \
  --outtype bf16 --outfile "$GGUF" >&2

# A prompt of exactly 64 tokens (with <|begin_of_text|>): words are added until the count is reached.
PROMPT=""
for w in $(yes "the quick brown fox jumps over a lazy dog while" | head -n 40 | tr '\n' ' '); do
  PROMPT="$PROMPT $w"
  n=$("$BIN" tokenize --model "$META" --bos --json "$PROMPT" | grep -o '"count": *[0-9]*' | grep -o '[0-9]*$')
  [ "$n" -ge 64 ] && break
done
[ "$n" -eq 64 ] || { echo "could not build a 64-token prompt (got $n)" >&2; exit 1; }

# Run a command, sampling its peak RssAnon / RssFile (kB) into $W/mem.
sampled() {
  "$@" > "$W/out.json" 2> "$W/err.log" &
  local pid=$! anon=0 file=0 a f
  while kill -0 "$pid" 2>/dev/null; do
    a=$(awk '/^RssAnon/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    f=$(awk '/^RssFile/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${a:-0}" -gt "$anon" ] && anon=$a
    [ "${f:-0}" -gt "$file" ] && file=$f
    sleep 0.02
  done
  wait "$pid" || { cat "$W/err.log" >&2; return 1; }
  echo "$anon $file" > "$W/mem"
}

ours() { # DIR THREADS -> "prefill decode anon_kB file_kB"
  sampled "$BIN" run --ckpt-dir "$1" --threads "$2" --prompt "$PROMPT" --max-gen-len 32 --max-batch-size 1 \
    --max-seq-len 128 --temperature 0 --ignore-eos --json
  local pf dc
  pf=$(grep -o '"prefill_tokens_per_s": *[0-9.]*' "$W/out.json" | grep -o '[0-9.]*$')
  dc=$(grep -o '"decode_tokens_per_s": *[0-9.]*' "$W/out.json" | grep -o '[0-9.]*$')
  echo "$pf $dc $(cat "$W/mem")"
}

theirs() { # THREADS -> "prefill decode"
  "$LLAMA_CPP/build/bin/llama-bench" -m "$GGUF" -t "$1" -p 64 -n 32 -r 1 -o json > "$W/lb.json" 2>/dev/null
  "$PY" - "$W/lb.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
pp = [r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0][0]
tg = [r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0][0]
print(f"{pp:.2f} {tg:.2f}")
PY
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

: > "$W/results"
for r in $(seq "$ROUNDS"); do
  for t in $THREADS; do
    echo "round $r, $t thread(s)" >&2
    read -r pf dc anon file <<<"$(ours "$META" "$t")"
    echo "meta $t $pf $dc $anon $file" >> "$W/results"
    read -r lpf ldc <<<"$(theirs "$t")"
    echo "llamacpp $t $lpf $ldc" >> "$W/results"
    read -r pf dc anon file <<<"$(ours "$HF" "$t")"
    echo "hf $t $pf $dc $anon $file" >> "$W/results"
  done
done

weights=$(du -b "$META/consolidated.00.pth" | cut -f1)
echo
echo "1B-shaped bf16 checkpoint ($((weights / 1048576)) MiB), $ROUNDS interleaved rounds, medians; $(nproc) cores"
printf '%-8s %-26s %10s %10s %12s %12s\n' threads run prefill/s decode/s "RssAnon MiB" "RssFile MiB"
for t in $THREADS; do
  for who in meta hf llamacpp; do
    pf=$(awk -v w=$who -v t=$t '$1==w && $2==t {print $3}' "$W/results" | median)
    dc=$(awk -v w=$who -v t=$t '$1==w && $2==t {print $4}' "$W/results" | median)
    if [ $who = llamacpp ]; then
      printf '%-8s %-26s %10.1f %10.1f\n' "$t" "llama.cpp bf16 GGUF" "$pf" "$dc"
    else
      an=$(awk -v w=$who -v t=$t '$1==w && $2==t {print $5}' "$W/results" | median)
      fi=$(awk -v w=$who -v t=$t '$1==w && $2==t {print $6}' "$W/results" | median)
      printf '%-8s %-26s %10.1f %10.1f %12.0f %12.0f\n' "$t" "llamactl ($who dir)" "$pf" "$dc" \
        "$(echo "$an / 1024" | bc -l)" "$(echo "$fi / 1024" | bc -l)"
    fi
  done
  mp=$(awk -v t=$t '$1=="meta" && $2==t {print $3}' "$W/results" | median)
  md=$(awk -v t=$t '$1=="meta" && $2==t {print $4}' "$W/results" | median)
  lp=$(awk -v t=$t '$1=="llamacpp" && $2==t {print $3}' "$W/results" | median)
  ld=$(awk -v t=$t '$1=="llamacpp" && $2==t {print $4}' "$W/results" | median)
  an=$(awk -v t=$t '$1=="meta" && $2==t {print $5}' "$W/results" | median)
  printf '%-8s ratios (Meta dir / llama.cpp): prefill %.2fx (target >= 0.8), decode %.2fx (target >= 1.0); RssAnon %.1f%% of weights (target <= 25%%)\n' \
    "$t" "$(echo "$mp / $lp" | bc -l)" "$(echo "$md / $ld" | bc -l)" "$(echo "$an * 1024 * 100 / $weights" | bc -l)"
done
[ "${KEEP:-0}" = 1 ] || rm -rf "$META" "$HF" "$GGUF"
