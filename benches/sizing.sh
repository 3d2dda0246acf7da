#!/usr/bin/env bash
# Per-replica throughput for sizing (docs/deploy.md "Sizing"): the daemon with its defaults on a
# backlog of BACKLOG comments, for the shipped model and for a RoBERTa-base-shaped one (768 wide,
# 12 layers; random weights, fp32 — the work per comment is a base model's), the rate taken from
# emostream_labelled_total between 10% and 90% of the backlog. Prints comments/s per replica and
# per vCPU with the CPU named.
#
#   benches/sizing.sh        (BACKLOG=30000 for the shipped model, SHAPED_BACKLOG=1500)
#
# Needs the local broker (scripts/kafka.sh start) and ORT_DYLIB_PATH (scripts/setup-ort.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
: "${ORT_DYLIB_PATH:=$(scripts/setup-ort.sh)}"; export ORT_DYLIB_PATH
cargo build --release --bins --quiet
shaped=.cache/bench/roberta-base-shaped
if [ ! -f "$shaped/model.onnx" ]; then
  rm -rf "$shaped"; mkdir -p "$(dirname "$shaped")"
  EMOSTREAM_SHAPED_OUT=$PWD/$shaped cargo test --release --quiet --test export_parity -- \
    --ignored write_a_roberta_base_shaped_model_for_the_sizing_bench >/dev/null
fi
loadgen=target/release/emostream-loadgen
port=19468
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) vCPU, $(grep -o -w -E 'avx512_vnni|amx_int8|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
metric() { curl -fs "localhost:$port/metrics" | awk -v m="$1" '$1==m {print $2}'; }
measure() {
  local model=$1 backlog=$2 run in out dlq daemon n lo hi t_lo n_lo t_hi n_hi now
  run=sizing-$(date +%s%N); in=$run-in out=$run-out dlq=$run-dlq
  "$loadgen" --create-topics "$dlq" --input-topic "$in" --output-topic "$out" --count "$backlog" \
    --rate 0 --samples 0 --idle-timeout 1 >/dev/null 2>&1 || true
  EMOSTREAM__KAFKA__INPUT_TOPICS=$in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$out EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$dlq \
  EMOSTREAM__KAFKA__GROUP_ID=$run EMOSTREAM__MODEL__DIR=$model EMOSTREAM__ADMIN__BIND=127.0.0.1:$port \
    target/release/emostream run >/dev/null 2>&1 &
  daemon=$!
  lo=$((backlog / 10)) hi=$((backlog * 9 / 10)) t_lo=""
  while :; do
    n=$(metric emostream_labelled_total || true); n=${n:-0}; n=${n%.*}
    now=$(date +%s.%N)
    if [ -z "$t_lo" ] && [ "$n" -ge "$lo" ]; then t_lo=$now; n_lo=$n; fi
    [ "$n" -ge "$hi" ] && break
    t_hi=$now; n_hi=$n
    sleep 1
  done
  rss=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$daemon/status)
  kill -TERM "$daemon"; wait "$daemon" || true
  python3 -c "r = ($n_hi - $n_lo) / ($t_hi - $t_lo); print(f'$model: {r:.0f} comments/s per replica (defaults: 2 workers x 1 thread), {r / $(nproc):.0f}/s per vCPU, peak RSS ${rss} MiB, backlog $backlog')"
}
measure models/goemotions-minilm-l6 "${BACKLOG:-30000}"
measure "$shaped" "${SHAPED_BACKLOG:-1500}"
