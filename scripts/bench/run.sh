#!/usr/bin/env bash
# Benchmark: `llamactl run` vs Meta's llama-models model.py on torch CPU, side by side in one run.
# Same weights (a ~116M-parameter Llama-3-shaped model with random weights: dim 384, 8 layers, 6 heads,
# 2 kv heads, vocab 128256, generated here and deleted afterwards), f32 compute, batch 1, the same
# prompt ids (~128 tokens), greedy, the same number of decode steps. Meta's side runs the model.py
# Transformer with the generation.py loop (prefill = one forward over the prompt, then one position per
# step, KV cache). Reports prefill and decode tokens/s for both and the ratios (target >= 1.5).
#   PYTHON=/root/venvs/ref/bin/python THREADS=1 scripts/bench/run.sh [STEPS] [REPEATS]
# Both sides get the same THREADS (default: all cores): RAYON_NUM_THREADS for candle, OMP_NUM_THREADS and
# torch.set_num_threads for torch. On a shared, oversubscribed machine torch's OpenMP threads spin-wait
# badly, so compare THREADS=1 there too. Both sides run alternately REPEATS times; the best of each is kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/root/venvs/ref/bin/python}
STEPS=${1:-64}
REPEATS=${2:-3}
THREADS=${THREADS:-$(nproc)}
export RAYON_NUM_THREADS=$THREADS
W=$(mktemp -d /tmp/llamactl-run-bench.XXXX)
trap 'rm -rf "$W"' EXIT
cargo build --release --quiet
BIN=target/release/llamactl
CKPT="$W/ckpt"
mkdir -p "$CKPT"
cp testdata/tokenizer.model "$CKPT/tokenizer.model"

"$PY" - "$CKPT" <<'PY'
import json, sys, torch
d = sys.argv[1]
params = {"dim": 384, "n_layers": 8, "n_heads": 6, "n_kv_heads": 2, "vocab_size": 128256,
          "multiple_of": 256, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}
dim, hd = 384, 64
hidden = int(2 * 4 * dim / 3); hidden = int(1.3 * hidden); hidden = 256 * ((hidden + 255) // 256)
g = torch.Generator().manual_seed(0)
def w(*s): return (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16)
sd = {"tok_embeddings.weight": w(128256, dim)}
for l in range(8):
    p = f"layers.{l}."
    sd[p + "attention.wq.weight"] = w(6 * hd, dim)
    sd[p + "attention.wk.weight"] = w(2 * hd, dim)
    sd[p + "attention.wv.weight"] = w(2 * hd, dim)
    sd[p + "attention.wo.weight"] = w(dim, 6 * hd)
    sd[p + "feed_forward.w1.weight"] = w(hidden, dim)
    sd[p + "feed_forward.w2.weight"] = w(dim, hidden)
    sd[p + "feed_forward.w3.weight"] = w(hidden, dim)
    sd[p + "attention_norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
    sd[p + "ffn_norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
sd["norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
sd["output.weight"] = w(128256, dim)
torch.save(sd, f"{d}/consolidated.00.pth")
json.dump(params, open(f"{d}/params.json", "w"))
print(f"model: {sum(v.numel() for v in sd.values()) / 1e6:.1f}M parameters", file=sys.stderr)
PY

PROMPT="The history of the printing press begins in the fifteenth century, when Johannes Gutenberg \
combined movable metal type, oil-based inks and a wooden screw press into a system that could produce \
books far faster than scribes. Within fifty years presses were running in more than two hundred cities \
across Europe, and the price of books fell sharply. Scholars argue about how much the new technology \
changed the way people thought, but few doubt that it made ideas travel faster than ever before, and \
that the consequences"

ours() {
  "$BIN" run --ckpt-dir "$CKPT" --prompt "$PROMPT" --temperature 0 --max-gen-len "$STEPS" \
    --max-batch-size 1 --max-seq-len 512 --device cpu --dtype f32 --json 2>/dev/null
}
ours > "$W/ours.json"
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join(map(str, d["results"][0]["prompt_tokens"])))' \
  "$W/ours.json" > "$W/prompt_ids.txt"

meta() {
  OMP_NUM_THREADS=$THREADS "$PY" - "$CKPT" "$W/prompt_ids.txt" "$STEPS" "$THREADS" <<'PY' 2>/dev/null
import json, os, sys, time
os.environ.setdefault("MASTER_ADDR", "127.0.0.1"); os.environ.setdefault("MASTER_PORT", "29544")
import torch, torch.distributed as dist
from fairscale.nn.model_parallel.initialize import initialize_model_parallel
from llama_models.llama3.args import ModelArgs
from llama_models.llama3.model import Transformer
ckpt, ids_file, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
dist.init_process_group("gloo", rank=0, world_size=1); initialize_model_parallel(1)
torch.set_default_dtype(torch.float32)
params = json.load(open(f"{ckpt}/params.json"))
model = Transformer(ModelArgs(max_seq_len=512, max_batch_size=1, **params))
sd = torch.load(f"{ckpt}/consolidated.00.pth", map_location="cpu", weights_only=True)
model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
model.eval()
ids = [int(x) for x in open(ids_file).read().split()]
tokens = torch.tensor([ids])
with torch.inference_mode():
    model.forward(tokens[:, :8], 0)  # warm-up (allocations, thread pool)
    t0 = time.perf_counter()
    logits = model.forward(tokens, 0)
    prefill = time.perf_counter() - t0
    nxt = torch.argmax(logits[:, -1], dim=-1)
    out = [int(nxt)]
    t0 = time.perf_counter()
    for pos in range(len(ids), len(ids) + steps - 1):
        logits = model.forward(nxt.reshape(1, 1), pos)
        nxt = torch.argmax(logits[:, -1], dim=-1)
        out.append(int(nxt))
    decode = time.perf_counter() - t0
print(json.dumps({"prefill_tokens_per_s": len(ids) / prefill, "decode_tokens_per_s": (steps - 1) / decode,
                  "tokens": out}))
PY
}

best_ours_p=0; best_ours_d=0; best_meta_p=0; best_meta_d=0
for i in $(seq "$REPEATS"); do
  ours > "$W/ours.json"
  meta | tail -n 1 > "$W/meta.json"   # fairscale prints its set-up lines on stdout
  read -r op od < <("$PY" -c 'import json,sys; s=json.load(open(sys.argv[1]))["stats"]; print(s["prefill_tokens_per_s"], s["decode_tokens_per_s"])' "$W/ours.json")
  read -r mp md < <("$PY" -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["prefill_tokens_per_s"], s["decode_tokens_per_s"])' "$W/meta.json")
  echo "round $i: llamactl prefill $op decode $od | model.py prefill $mp decode $md (tokens/s)"
  best_ours_p=$("$PY" -c "print(max($best_ours_p, $op))"); best_ours_d=$("$PY" -c "print(max($best_ours_d, $od))")
  best_meta_p=$("$PY" -c "print(max($best_meta_p, $mp))"); best_meta_d=$("$PY" -c "print(max($best_meta_d, $md))")
done
# Same weights, same prompt, greedy: the generated ids should agree too.
"$PY" -c '
import json, sys
a = json.load(open(sys.argv[1]))["results"][0]["tokens"]; b = json.load(open(sys.argv[2]))["tokens"]
n = min(len(a), len(b)); same = sum(x == y for x, y in zip(a[:n], b[:n]))
print(f"greedy tokens equal at {same}/{n} positions")' "$W/ours.json" "$W/meta.json"
echo "prompt tokens: $(wc -w < "$W/prompt_ids.txt"), decode steps: $STEPS, threads: $THREADS of $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" -c "
op, od, mp, md = $best_ours_p, $best_ours_d, $best_meta_p, $best_meta_d
print(f'best llamactl: prefill {op:.1f} tok/s, decode {od:.1f} tok/s')
print(f'best model.py: prefill {mp:.1f} tok/s, decode {md:.1f} tok/s')
print(f'ratio (llamactl / model.py): prefill {op / mp:.2f}x, decode {od / md:.2f}x  (target >= 1.5)')"
