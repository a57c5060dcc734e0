#!/usr/bin/env bash
# Benchmark: stream a >= 2 GB torch checkpoint through llamactl's PthWriter (bytes read with pread
# from the source shard) vs `cp` of the same file on the same disk, one run, warm page cache for both.
# Reports wall time, throughput ratio (target >= 0.5 of cp) and peak RSS (target <= 256 MiB).
#   PYTHON=/path/to/python-with-torch scripts/bench/pth_write.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
W=${1:-$(mktemp -d /tmp/llamactl-bench.XXXX)}
mkdir -p "$W"
trap 'rm -rf "$W"' EXIT
cargo build --release --quiet --example pth_copy
SRC="$W/consolidated.00.pth"
"$PY" - "$SRC" <<'PY'
import sys, torch
# Llama-3.2-1B-shaped bf16 weights (dim 2048, 16 layers, hidden 8192, vocab 128256): ~2.5 GB.
g = torch.Generator().manual_seed(0)
sd = {"tok_embeddings.weight": torch.empty(128256, 2048, dtype=torch.bfloat16).normal_(generator=g)}
for l in range(16):
    for n, s in [("attention.wq", (2048, 2048)), ("attention.wk", (512, 2048)), ("attention.wv", (512, 2048)),
                 ("attention.wo", (2048, 2048)), ("feed_forward.w1", (8192, 2048)), ("feed_forward.w2", (2048, 8192)),
                 ("feed_forward.w3", (8192, 2048))]:
        sd[f"layers.{l}.{n}.weight"] = torch.empty(*s, dtype=torch.bfloat16).normal_(generator=g)
    sd[f"layers.{l}.attention_norm.weight"] = torch.ones(2048, dtype=torch.bfloat16)
    sd[f"layers.{l}.ffn_norm.weight"] = torch.ones(2048, dtype=torch.bfloat16)
sd["norm.weight"] = torch.ones(2048, dtype=torch.bfloat16)
sd["output.weight"] = torch.empty(128256, 2048, dtype=torch.bfloat16).normal_(generator=g)
torch.save(sd, sys.argv[1])
PY
BYTES=$(stat -c %s "$SRC")
cat "$SRC" > /dev/null   # warm the page cache so both runs read from memory
run() { # label, command...
  local label=$1; shift
  rm -f "$W/out.pth"; sync
  /usr/bin/time -f "%e %M" -o "$W/time.txt" "$@"; sync
  read -r secs kb < "$W/time.txt"
  echo "$label $secs $kb"
}
CP=$(run cp cp "$SRC" "$W/out.pth")
OURS=$(run llamactl target/release/examples/pth_copy copy "$SRC" "$W/out.pth")
cmp -s <("$PY" -c "import torch,sys; sd=torch.load(sys.argv[1], weights_only=True, mmap=True); print(sorted((k, v.shape) for k, v in sd.items()))" "$SRC") \
       <("$PY" -c "import torch,sys; sd=torch.load(sys.argv[1], weights_only=True, mmap=True); print(sorted((k, v.shape) for k, v in sd.items()))" "$W/out.pth") \
  && echo "output loads in torch (mmap=True) with the same tensors"
read -r _ cps cpk <<< "$CP"; read -r _ os ok <<< "$OURS"
awk -v b="$BYTES" -v cs="$cps" -v os="$os" -v ok="$ok" -v ck="$cpk" 'BEGIN {
  printf "checkpoint %.2f GB\n", b/1e9
  printf "cp        %6.2f s  %7.1f MB/s  peak RSS %6.1f MiB\n", cs, b/cs/1e6, ck/1024
  printf "llamactl  %6.2f s  %7.1f MB/s  peak RSS %6.1f MiB\n", os, b/os/1e6, ok/1024
  printf "throughput ratio llamactl/cp = %.2f (target >= 0.50); RSS target <= 256 MiB\n", cs/os }'
