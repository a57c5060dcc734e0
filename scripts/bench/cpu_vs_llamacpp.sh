#!/usr/bin/env bash
# Benchmark: `llamactl run` on the CPU against llama.cpp (`llama-bench`) on the same weights, same thread
# count, in one run: interleaved rounds, medians, ratios.
#
# The model: a random Llama-3.2-1B-shaped bf16 checkpoint (dim 2048, 16 layers, 32 heads, 8 kv heads,
# ffn_dim_multiplier 1.5, multiple_of 256, vocab 128256, untied output), written by
# `examples/bench_checkpoint.rs` as a Meta MP 1 dir, converted by `llamactl convert --to hf`, and by
# llama.cpp's own `convert_hf_to_gguf.py` to a bf16 GGUF. Workloads as `llama-bench -p 64 -n 32`: a
# 64-token and a 512-token prompt (prefill tok/s; `-p 64 -n 32` and `-p 512 -n 32`) and 32 generated
# tokens (decode tok/s); llamactl ignores stop tokens so it always decodes 32. llama-bench's `-n 32`
# decodes from an empty context, llamactl after its prompt (every token also reads the prompt's keys and
# values), so llama-bench's decode also runs at the prompt's depth (`-p 0 -n 32 -d N`) and the table gives
# both ratios.
#
# Kernel paths: the bf16 runs repeat for every instruction set this CPU can run (`LLAMACTL_CPU_ISA`:
# avx512, avx2, portable), each against llama.cpp built for that same instruction set: the native build
# (`$LLAMA_CPP/build`) for the best one, and `$LLAMA_CPP/build-avx2` (configured with GGML_NATIVE=OFF,
# GGML_AVX2/FMA/F16C=ON, GGML_AVX512=OFF; see docs/DESIGN.md) for AVX2 on an AVX-512 machine. The
# portable path has no llama.cpp counterpart here (its row shows llamactl alone) unless
# LLAMA_CPP_PORTABLE names a build dir of llama.cpp without AVX.
#
# Memory: llamactl's peak RssAnon (process memory) and RssFile (mapped checkpoint pages), sampled from
# /proc every 20 ms, for the Meta MP 1 dir and the HF dir.
#
# Quantized rows: the bf16 GGUF quantized by llama.cpp's `llama-quantize` to each of $GGUF_TYPES (default
# Q8_0 and Q4_K_M); `llamactl run` and `llama-bench` on the same file, llama-bench also with `--repack 0`
# where it has that flag (its weights then stay in the map, as ours do, instead of an interleaved copy in
# process memory; peak RssAnon is reported for every run). For decode, the GB/s of weights read
# per second (every matrix once per token; the embedding table only one row) against the machine's read
# bandwidth, measured by a small multi-threaded C reader of a 1 GiB array (cc -O3 -march=native -fopenmp).
#
#   LLAMA_CPP=/path/to/llama.cpp  (source tree, with build/bin/llama-bench; see docs/DESIGN.md)
#   PYTHON=/path/to/python        (with numpy, torch, safetensors, sentencepiece for the converter)
#   scripts/bench/cpu_vs_llamacpp.sh [WORK_DIR]
# Env: ROUNDS (default 3), THREADS (default "1 <nproc>"), PROMPTS (default "64 512"), ISAS (default:
# every path this CPU has), GGUF_TYPES (default "Q8_0 Q4_K_M"; "" skips them), KEEP=1 keeps WORK_DIR's
# model files.
set -euo pipefail
cd "$(dirname "$0")/../.."
LLAMA_CPP=${LLAMA_CPP:?set LLAMA_CPP to a llama.cpp source tree with build/bin/llama-bench}
PY=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-"1 $(nproc)"}
PROMPTS=${PROMPTS:-"64 512"}
flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]]; }
if has avx512f; then BEST=avx512; elif has avx2 && has fma && has f16c; then BEST=avx2; else BEST=portable; fi
case $BEST in
  avx512) ISAS=${ISAS:-"avx512 avx2 portable"} ;;
  avx2) ISAS=${ISAS:-"avx2 portable"} ;;
  *) ISAS=${ISAS:-"portable"} ;;
esac
# The llama.cpp build for each path (empty: none).
llama_build() {
  if [ "$1" = "$BEST" ]; then echo "$LLAMA_CPP/build"
  elif [ "$1" = avx2 ]; then echo "${LLAMA_CPP_AVX2:-$LLAMA_CPP/build-avx2}"
  else echo "${LLAMA_CPP_PORTABLE:-}"; fi
}
W=${1:-/tmp/llamactl-cpu-bench}
mkdir -p "$W"
T=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$T/release/llamactl
cargo build --release --quiet --bin llamactl --example bench_checkpoint

META="$W/meta-1b"
HF="$W/hf-1b"
GGUF="$W/1b-bf16.gguf"
if [ ! -f "$META/consolidated.00.pth" ]; then
  "$T/release/examples/bench_checkpoint" "$META" 1 >&2
  cp testdata/tokenizer.model "$META/"
fi
[ -f "$HF/config.json" ] || "$BIN" convert --to hf "$META" "$HF" >&2
[ -f "$GGUF" ] || PYTHONPATH="$LLAMA_CPP/gguf-py" "$PY" "$LLAMA_CPP/convert_hf_to_gguf.py" "$HF" \
  --outtype bf16 --outfile "$GGUF" >&2

# Prompts of exactly N tokens (with <|begin_of_text|>): words are added until the count is reached.
prompt_of() {
  local p="" n=0 w
  for w in $(yes "the quick brown fox jumps over a lazy dog while" | head -n $(($1 / 5 + 8)) | tr '\n' ' '); do
    p="$p $w"
    n=$("$BIN" tokenize --model "$META" --bos --json "$p" | grep -o '"count": *[0-9]*' | grep -o '[0-9]*$')
    [ "$n" -ge "$1" ] && break
  done
  [ "$n" -eq "$1" ] || { echo "could not build a $1-token prompt (got $n)" >&2; exit 1; }
  echo "$p"
}
declare -A PROMPT
for p in $PROMPTS; do PROMPT[$p]=$(prompt_of "$p"); done
P0=${PROMPTS%% *} # the HF-dir, memory and GGUF rows: the first prompt size and the first path
I0=${ISAS%% *}

# Run a command, sampling its peak RssAnon / RssFile (kB) into $W/mem.
source scripts/bench/peak_rss.sh
sampled() {
  "$@" > "$W/out.json" 2> "$W/err.log" &
  local pid=$!
  peak_rss "$pid" > "$W/mem"
  wait "$pid" || { cat "$W/err.log" >&2; return 1; }
}

ours() { # DIR THREADS [ISA] [PROMPT_TOKENS] -> "prefill decode anon_kB file_kB"
  local isa=${3:-$BEST} p=${4:-64}
  LLAMACTL_CPU_ISA=$isa sampled "$BIN" run --ckpt-dir "$1" --threads "$2" --prompt "${PROMPT[$p]}" \
    --max-gen-len 32 --max-batch-size 1 --max-seq-len $((p + 64)) --temperature 0 --ignore-eos --json
  grep -q "\"kernels\": *\"$isa\"" "$W/out.json" || { echo "LLAMACTL_CPU_ISA=$isa did not run $isa kernels" >&2; exit 1; }
  local pf dc
  pf=$(grep -o '"prefill_tokens_per_s": *[0-9.]*' "$W/out.json" | grep -o '[0-9.]*$')
  dc=$(grep -o '"decode_tokens_per_s": *[0-9.]*' "$W/out.json" | grep -o '[0-9.]*$')
  echo "$pf $dc $(cat "$W/mem")"
}

theirs() { # THREADS [FILE] [BUILD] [PROMPT_TOKENS] [llama-bench flag] -> "prefill decode anon_kB file_kB"
  local build=${3:-$LLAMA_CPP/build}
  # shellcheck disable=SC2086 # $5: one optional flag and its value
  sampled "$build/bin/llama-bench" -m "${2:-$GGUF}" -t "$1" -p "${4:-64}" -n 32 -r 1 -o json ${5:-}
  "$PY" - "$W/out.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
pp = [r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0][0]
tg = [r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0][0]
print(f"{pp:.2f} {tg:.2f}", end=" ")
PY
  cat "$W/mem"
}

theirs_at_depth() { # THREADS BUILD DEPTH -> decode tok/s of 32 tokens after DEPTH tokens of context
  sampled "$2/bin/llama-bench" -m "$GGUF" -t "$1" -p 0 -n 32 -d "$3" -r 1 -o json
  "$PY" -c 'import json, sys; print("%.2f" % json.load(open(sys.argv[1]))[0]["avg_ts"])' "$W/out.json"
}

GGUF_TYPES=${GGUF_TYPES-"Q8_0 Q4_K_M"}
# llama.cpp's CPU backend copies some quantized types (Q4_K among them) into interleaved rows in process
# memory at load ("repack"); where its llama-bench can turn that off, the quantized rows also run it with
# the weights read in place from the map, as llamactl reads them.
INPLACE=""
if "$LLAMA_CPP/build/bin/llama-bench" --help 2>&1 | grep -q -- '--repack'; then INPLACE="--repack 0"; fi
for q in $GGUF_TYPES; do
  [ -f "$W/1b-$q.gguf" ] || "$LLAMA_CPP/build/bin/llama-quantize" "$GGUF" "$W/1b-$q.gguf" "$q" > /dev/null 2>&1
done

source scripts/bench/median.sh

# The page cache: how a file came into it decides whether its maps can use 2 MiB entries (a file read
# back by readahead sits in large folios; one just written in small pieces may not), which moved
# single-thread decode by up to 30% between files here. So every model file is read back the same way
# before the rounds: caches dropped (where this user may), then one sequential read of each.
sync
if [ -w /proc/sys/vm/drop_caches ]; then echo 1 > /proc/sys/vm/drop_caches; fi
cat "$META"/*.pth "$HF"/*.safetensors "$GGUF" "$W"/1b-*.gguf > /dev/null

: > "$W/results"
for r in $(seq "$ROUNDS"); do
  for t in $THREADS; do
    for isa in $ISAS; do
      for p in $PROMPTS; do
        echo "round $r, $t thread(s), $isa, $p-token prompt" >&2
        read -r pf dc anon file <<<"$(ours "$META" "$t" "$isa" "$p")"
        echo "meta-$isa-$p $t $pf $dc $anon $file" >> "$W/results"
        lb=$(llama_build "$isa")
        if [ -n "$lb" ]; then
          read -r lpf ldc _ <<<"$(theirs "$t" "$GGUF" "$lb" "$p")"
          echo "llamacpp-$isa-$p $t $lpf $ldc $(theirs_at_depth "$t" "$lb" "$p")" >> "$W/results"
        fi
      done
    done
    read -r pf dc anon file <<<"$(ours "$HF" "$t" "$I0" "$P0")"
    echo "hf $t $pf $dc $anon $file" >> "$W/results"
    for q in $GGUF_TYPES; do
      read -r pf dc anon file <<<"$(ours "$W/1b-$q.gguf" "$t" "$BEST" "$P0")"
      echo "ours-$q $t $pf $dc $anon $file" >> "$W/results"
      read -r lpf ldc anon file <<<"$(theirs "$t" "$W/1b-$q.gguf" "" "$P0")"
      echo "theirs-$q $t $lpf $ldc $anon $file" >> "$W/results"
      if [ -n "$INPLACE" ]; then
        read -r lpf ldc anon file <<<"$(theirs "$t" "$W/1b-$q.gguf" "" "$P0" "$INPLACE")"
        echo "inplace-$q $t $lpf $ldc $anon $file" >> "$W/results"
      fi
    done
  done
done
col() { awk -v w="$1" -v t="$2" -v c="$3" '$1==w && $2==t {print $c}' "$W/results" | median; }
mib() { echo "$1 / 1024" | bc -l; }

# Read bandwidth: each thread sums its share of a 1 GiB array of integers, best of 5 passes. (An
# integer sum vectorizes; a floating-point one is a chain of dependent adds and measured the adder's
# latency, about a third of the real bandwidth.)
cat > "$W/bw.c" <<'C'
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
int main(int argc, char **argv) {
  size_t n = (size_t)1 << 27; uint64_t *a = malloc(n * sizeof *a); double best = 0;
  int threads = atoi(argv[1]);
  #pragma omp parallel for num_threads(threads)
  for (size_t i = 0; i < n; i++) a[i] = i;
  for (int r = 0; r < 5; r++) {
    uint64_t s = 0; double t0 = omp_get_wtime();
    #pragma omp parallel for reduction(+:s) num_threads(threads)
    for (size_t i = 0; i < n; i++) s += a[i];
    double gbs = n * sizeof *a / (omp_get_wtime() - t0) / 1e9;
    if (gbs > best) best = gbs;
    if (s == 1) puts("");
  }
  printf("%.1f\n", best);
}
C
cc -O3 -march=native -fopenmp "$W/bw.c" -o "$W/bw"
declare -A BW
for t in $THREADS; do BW[$t]=$("$W/bw" "$t"); done

# bf16: bytes one token reads = every matrix once, the embedding table only one row.
weights=$(du -bL "$META/consolidated.00.pth" | cut -f1)
read -r dim vocab <<<"$("$PY" -c 'import json,sys; p=json.load(open(sys.argv[1])); print(p["dim"], p["vocab_size"])' "$META/params.json")"
per_token=$((weights - 2 * dim * vocab))
echo
echo "1B-shaped bf16 checkpoint ($((weights / 1048576)) MiB, $((per_token / 1048576)) MiB read per token), $ROUNDS interleaved rounds, medians; $(nproc) cores"
echo "each kernel path against llama.cpp built for the same instruction set; decode GB/s = bytes per token x tok/s"
echo "llama.cpp dc: its decode from an empty context (llama-bench -n 32) / at the prompt's depth (-d N);"
echo "decode x against each; llamactl decodes after the prompt"
printf '%-7s %-9s %6s %10s %9s %10s %13s %9s %14s %13s\n' threads kernels prompt "prefill/s" "decode/s" \
  "llama.cpp pf" "llama.cpp dc" "prefill x" "decode x" "decode GB/s"
for t in $THREADS; do
  for isa in $ISAS; do
    for p in $PROMPTS; do
      pf=$(col "meta-$isa-$p" "$t" 3)
      dc=$(col "meta-$isa-$p" "$t" 4)
      gbs=$(echo "$per_token * $dc / 1000000000" | bc -l)
      if grep -q "^llamacpp-$isa-$p " "$W/results"; then
        lp=$(col "llamacpp-$isa-$p" "$t" 3)
        ld=$(col "llamacpp-$isa-$p" "$t" 4)
        ldd=$(col "llamacpp-$isa-$p" "$t" 5)
        printf '%-7s %-9s %6s %10.1f %9.2f %12.1f %6.2f / %5.2f %8.2fx %6.2fx / %5.2fx %6.1f of %4.1f\n' "$t" "$isa" \
          "$p" "$pf" "$dc" "$lp" "$ld" "$ldd" "$(echo "$pf / $lp" | bc -l)" "$(echo "$dc / $ld" | bc -l)" \
          "$(echo "$dc / $ldd" | bc -l)" "$gbs" "${BW[$t]}"
      else
        printf '%-7s %-9s %6s %10.1f %9.2f %12s %13s %9s %14s %6.1f of %4.1f\n' "$t" "$isa" "$p" "$pf" "$dc" - - - - \
          "$gbs" "${BW[$t]}"
      fi
    done
  done
done
echo "(targets: prefill and decode >= 1.0x of llama.cpp on every path; read bandwidth from a 1 GiB array)"
echo
printf '%-8s %-26s %10s %10s %12s %12s\n' threads run prefill/s decode/s "RssAnon MiB" "RssFile MiB"
for t in $THREADS; do
  for who in "meta-$I0-$P0" hf; do
    printf '%-8s %-26s %10.1f %10.2f %12.0f %12.0f\n' "$t" "llamactl (${who%%-*} dir)" "$(col "$who" "$t" 3)" \
      "$(col "$who" "$t" 4)" "$(mib "$(col "$who" "$t" 5)")" "$(mib "$(col "$who" "$t" 6)")"
  done
  printf '%-8s RssAnon of the Meta dir run: %.1f%% of the weights (target <= 25%%)\n' "$t" \
    "$(echo "$(col "meta-$I0-$P0" "$t" 5) * 1024 * 100 / $weights" | bc -l)"
done
if [ -n "$GGUF_TYPES" ]; then
  echo
  echo "GGUF files quantized by llama-quantize from the bf16 GGUF; decode GB/s = weight bytes read per token x tok/s"
  printf '%-8s %-24s %10s %10s %10s %12s\n' threads run prefill/s decode/s "GB/s" "RssAnon MiB"
fi
for t in $THREADS; do
  bw=${BW[$t]}
  for q in $GGUF_TYPES; do
    f="$W/1b-$q.gguf"
    # Bytes one token reads: every tensor but the embedding table (one row of it).
    per_token=$("$BIN" inspect --json "$f" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
ts = sorted(d["tensors"], key=lambda t: t["offset"])
ends = [t["offset"] for t in ts[1:]] + [d["total_bytes"]]
embd = [e - t["offset"] for t, e in zip(ts, ends) if t["name"] == "token_embd.weight"][0]
print(d["total_bytes"] - embd)')
    size=$(du -bL "$f" | cut -f1)
    for who in ours theirs inplace; do
      grep -q "^$who-$q $t " "$W/results" || continue
      pf=$(col "$who-$q" "$t" 3)
      dc=$(col "$who-$q" "$t" 4)
      an=$(col "$who-$q" "$t" 5)
      gbs=$(echo "$per_token * $dc / 1000000000" | bc -l)
      case $who in
        ours) name="llamactl $q" ;;
        theirs) name="llama.cpp $q" ;;
        *) name="llama.cpp $q, in place" ;;
      esac
      printf '%-8s %-24s %10.1f %10.1f %10.1f %12.0f\n' "$t" "$name" "$pf" "$dc" "$gbs" "$(mib "$an")"
    done
    ratios() { # WHO -> "prefill x, decode x" of llamactl against WHO
      printf 'prefill %.2fx, decode %.2fx' "$(echo "$(col "ours-$q" "$t" 3) / $(col "$1-$q" "$t" 3)" | bc -l)" \
        "$(echo "$(col "ours-$q" "$t" 4) / $(col "$1-$q" "$t" 4)" | bc -l)"
    }
    printf '%-8s %s ratios (llamactl / llama.cpp): %s (targets >= 1.0); RssAnon %.1f%% of the file (target <= 25%%); read bandwidth %s GB/s\n' \
      "$t" "$q" "$(ratios theirs)" "$(echo "$(col "ours-$q" "$t" 5) * 1024 * 100 / $size" | bc -l)" "$bw"
    if grep -q "^inplace-$q $t " "$W/results"; then
      printf '%-8s %s against llama.cpp with its weights in place (%s): %s\n' "$t" "$q" "$INPLACE" "$(ratios inplace)"
    fi
  done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "${KEEP:-0}" = 1 ] || rm -rf "$META" "$HF" "$GGUF" "$W"/1b-*.gguf
