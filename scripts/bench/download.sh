#!/usr/bin/env bash
# Benchmark: `llamactl download` vs download.sh's procedure (wget --continue per file, then
# md5sum -c per model), same local server, same files, one run, reported as wall-time ratios.
#
# The server is the test CDN (tests/common/cdn.rs) as examples/cdn_server.rs: Range/If-Range,
# signed-style link with a `*`. Two models: 8B-like (1 shard) and 70B-like (8 shards), random data
# with a matching checklist.chk each, BENCH_MB in total (default 1024).
#
# Usage: scripts/bench/download.sh            (env: BENCH_MB, BENCH_DIR, BENCH_REPEAT, LLAMACTL)
# Note: on a shared machine other processes skew wall times; run it when the box is quiet, and read
# the ratios (measured back to back in this run), not the absolute seconds.
set -euo pipefail

cd "$(dirname "$0")/../.."
MB=${BENCH_MB:-1024}
WORK=${BENCH_DIR:-$(mktemp -d /tmp/llamactl-bench.XXXXXX)}
LLAMACTL=${LLAMACTL:-target/release/llamactl}
SERVER=${CDN_SERVER:-target/release/examples/cdn_server}

command -v wget >/dev/null || { echo "needs wget (apt-get install -y wget)" >&2; exit 2; }
if [[ ! -x $LLAMACTL || ! -x $SERVER ]]; then
    cargo build --release --bin llamactl --example cdn_server >&2
fi

SRV=$WORK/srv
mkdir -p "$SRV/8b_pre_trained" "$SRV/70b_pre_trained"
big=$((MB / 2))
small=$((MB / 2 / 8))
if [[ ! -f $SRV/8b_pre_trained/checklist.chk ]]; then
    echo "generating ${MB} MiB of test files in $SRV" >&2
    head -c 7000 /dev/urandom >"$SRV/LICENSE"
    head -c 5000 /dev/urandom >"$SRV/USE_POLICY"
    head -c $((big << 20)) /dev/urandom >"$SRV/8b_pre_trained/consolidated.00.pth"
    for i in 0 1 2 3 4 5 6 7; do
        head -c $((small << 20)) /dev/urandom >"$SRV/70b_pre_trained/consolidated.0$i.pth"
    done
    for m in 8b_pre_trained 70b_pre_trained; do
        echo '{"dim": 4096}' >"$SRV/$m/params.json"
        head -c 2000000 /dev/urandom >"$SRV/$m/tokenizer.model"
        (cd "$SRV/$m" && md5sum consolidated.*.pth params.json tokenizer.model >checklist.chk)
    done
fi

rm -f "$WORK/url"
"$SERVER" "$SRV" >"$WORK/url.tmp" 2>"$WORK/server.log" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -s $WORK/url.tmp ]] && break; sleep 0.1; done
URL=$(cat "$WORK/url.tmp")
[[ $URL == http* ]] || { echo "the server did not start: $(cat "$WORK/server.log")" >&2; exit 2; }

# download.sh's procedure, file by file as it does it.
seed() {
    local out=$1
    rm -rf "$out" && mkdir -p "$out"
    wget -q --continue "${URL/'*'/LICENSE}" -O "$out/LICENSE"
    wget -q --continue "${URL/'*'/USE_POLICY}" -O "$out/USE_POLICY"
    for pair in "8b_pre_trained:Meta-Llama-3-8B:0" "70b_pre_trained:Meta-Llama-3-70B:7"; do
        IFS=: read -r remote local last <<<"$pair"
        mkdir -p "$out/$local"
        wget -q --continue "${URL/'*'/$remote/tokenizer.model}" -O "$out/$local/tokenizer.model"
        for s in $(seq -f "0%g" 0 "$last"); do
            wget -q --continue "${URL/'*'/$remote/consolidated.$s.pth}" -O "$out/$local/consolidated.$s.pth"
        done
        wget -q --continue "${URL/'*'/$remote/params.json}" -O "$out/$local/params.json"
        wget -q --continue "${URL/'*'/$remote/checklist.chk}" -O "$out/$local/checklist.chk"
        (cd "$out/$local" && md5sum -c checklist.chk >/dev/null)
    done
}

ours() {
    local out=$1
    shift
    rm -rf "$out"
    LLAMACTL_PROGRESS_INTERVAL_MS=600000 "$LLAMACTL" download --url "$URL" --models 8B,70B \
        --dir "$out" "$@" >/dev/null 2>"$WORK/llamactl.log"
}

now() { date +%s.%N; }
timeit() {
    local t0 t1
    t0=$(now)
    "$@"
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Interleaved repetitions (BENCH_REPEAT, default 1): on a busy machine the median of each is steadier.
REPEAT=${BENCH_REPEAT:-1}
seeds=() ours4=() ours1=()
for r in $(seq "$REPEAT"); do
    echo "run $r/$REPEAT: cores $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    seeds+=("$(timeit seed "$WORK/out-seed")")
    ours4+=("$(timeit ours "$WORK/out-ours")")
    ours1+=("$(timeit ours "$WORK/out-ours1" --jobs 1)")
    cmp "$WORK/out-seed/Meta-Llama-3-8B/consolidated.00.pth" "$WORK/out-ours/Meta-Llama-3-8B/consolidated.00.pth"
    cmp "$WORK/out-seed/Meta-Llama-3-70B/consolidated.07.pth" "$WORK/out-ours1/Meta-Llama-3-70B/consolidated.07.pth"
    echo "  seed ${seeds[-1]} s, llamactl ${ours4[-1]} s, --jobs 1 ${ours1[-1]} s" >&2
done
t_seed=$(median "${seeds[@]}")
t_ours=$(median "${ours4[@]}")
t_ours1=$(median "${ours1[@]}")

printf 'files: %s MiB in 2 models (1 + 8 shards); median of %s run(s)\n' "$MB" "$REPEAT"
printf 'download.sh procedure (wget --continue + md5sum -c): %.2f s\n' "$t_seed"
printf 'llamactl download --jobs 4 (default):               %.2f s  ratio %.2f\n' "$t_ours" "$(awk -v a="$t_ours" -v b="$t_seed" 'BEGIN { print a / b }')"
printf 'llamactl download --jobs 1:                         %.2f s  ratio %.2f\n' "$t_ours1" "$(awk -v a="$t_ours1" -v b="$t_seed" 'BEGIN { print a / b }')"
rm -rf "$WORK/out-seed" "$WORK/out-ours" "$WORK/out-ours1"
