#!/usr/bin/env bash
# Wall time of `llamactl pull` vs Python `huggingface_hub.snapshot_download`, same repo, same
# local Hub (examples/hub_server.rs: 127.0.0.1, LFS files redirected to a second "CDN" port),
# fresh cache each, one run each. Target: ratio llamactl/python <= 0.8.
#
#   cargo build --release --bin llamactl --example hub_server
#   scripts/bench/pull.sh            # env: SIZES_MB="200 150 100 50", PYTHON=..., JOBS=
#
# Both use their default parallelism unless JOBS is set (then llamactl --jobs JOBS and
# snapshot_download max_workers=JOBS). llamactl also checks every LFS file's sha256 while
# streaming and fsyncs each blob; huggingface_hub's plain-HTTP path does neither.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LLAMACTL="$ROOT/target/release/llamactl"
SERVER="$ROOT/target/release/examples/hub_server"
PYTHON="${PYTHON:-/root/venvs/ref/bin/python}"
SIZES_MB="${SIZES_MB:-200 150 100 50}"
JOBS="${JOBS:-}"
REPO="bench/Llama-Bench"

for exe in "$LLAMACTL" "$SERVER"; do
    [[ -x "$exe" ]] || { echo "$exe: missing; run cargo build --release --bin llamactl --example hub_server" >&2; exit 2; }
done

work="$(mktemp -d /tmp/pull-bench.XXXXXX)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The repo: a few large (LFS) files plus the small ones a model repo has.
mkdir -p "$work/repo/original"
i=0
total=0
for mb in $SIZES_MB; do
    i=$((i + 1))
    head -c "$((mb * 1024 * 1024))" /dev/urandom > "$work/repo/model-0000$i-of-0000${#SIZES_MB}.safetensors"
    total=$((total + mb))
done
echo '{"model_type": "llama"}' > "$work/repo/config.json"
echo '{"bos_token": "<|begin_of_text|>"}' > "$work/repo/tokenizer_config.json"
echo '{"dim": 4096}' > "$work/repo/original/params.json"
cat "$work"/repo/*.safetensors > /dev/null # page cache warm for both runs

"$SERVER" --repo "$REPO" --dir "$work/repo" > "$work/server.out" &
server_pid=$!
for _ in $(seq 100); do grep -q HF_ENDPOINT "$work/server.out" 2>/dev/null && break; sleep 0.05; done
endpoint="$(sed -n 's/^HF_ENDPOINT=//p' "$work/server.out")"
[[ -n "$endpoint" ]] || { echo "hub_server did not start" >&2; exit 1; }

clean_env=(env -u HF_TOKEN -u HF_HUB_CACHE -u HF_HUB_OFFLINE -u XDG_CACHE_HOME
           HF_ENDPOINT="$endpoint" HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1)

now() { date +%s.%N; }

echo "repo: $(ls "$work/repo" | wc -l) top-level entries, ${total} MiB of LFS files ($SIZES_MB MiB), server $endpoint"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) (shared machine: expect noise)"

sync
t0=$(now)
"${clean_env[@]}" HF_HOME="$work/hf-py" HF_HUB_DISABLE_PROGRESS_BARS=1 "$PYTHON" -c '
import sys
from huggingface_hub import snapshot_download
kw = {"max_workers": int(sys.argv[2])} if sys.argv[2] else {}
print(snapshot_download(sys.argv[1], **kw))
' "$REPO" "$JOBS" > "$work/py.out"
t1=$(now)
sync
jobs_arg=()
[[ -n "$JOBS" ]] && jobs_arg=(--jobs "$JOBS")
t2=$(now)
"${clean_env[@]}" HF_HOME="$work/hf-ll" "$LLAMACTL" pull "$REPO" "${jobs_arg[@]}" > "$work/ll.out" 2> "$work/ll.err"
t3=$(now)
sync

py_snap="$(tail -n1 "$work/py.out")"
ll_snap="$(tail -n1 "$work/ll.out")"
if ! diff <(cd "$py_snap" && find -L . -type f | sort | xargs sha256sum) \
          <(cd "$ll_snap" && find -L . -type f | sort | xargs sha256sum) > /dev/null; then
    echo "the two snapshots differ" >&2
    exit 1
fi

awk -v py="$(echo "$t1 - $t0" | bc)" -v ll="$(echo "$t3 - $t2" | bc)" -v mb="$total" -v jobs="${JOBS:-default}" 'BEGIN {
    printf "huggingface_hub.snapshot_download: %7.2f s  (%6.0f MiB/s)  max_workers=%s\n", py, mb / py, (jobs == "default" ? "8 (default)" : jobs);
    printf "llamactl pull:                     %7.2f s  (%6.0f MiB/s)  --jobs %s\n", ll, mb / ll, (jobs == "default" ? "4 (default)" : jobs);
    printf "ratio llamactl/python (wall): %.2f  (target <= 0.8); snapshots identical\n", ll / py;
}'
