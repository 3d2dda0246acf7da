#!/usr/bin/env bash
# Issue 14's yardstick, in one run on one machine: ONNX Runtime alone on the model (same
# thread budget as the daemon's inference: EMOSTREAM_BENCH_THREADS, default 2; batches sorted
# by length over the whole split), the daemon on a backlog (BACKLOG comments produced before
# it starts; rate from its own emostream_labelled_total between the first and the last event),
# and the daemon at RATE comments/s (default: half the backlog rate; p50/p99 from the load
# generator), ROUNDS times interleaved; then the ratios.
#
#   benches/throughput.sh [ROUNDS]          (BACKLOG=20000, MODEL=models/goemotions-minilm-l6)
#
# Needs the local broker (scripts/kafka.sh start) and ORT_DYLIB_PATH (scripts/setup-ort.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${1:-3}
backlog=${BACKLOG:-20000}
model=${MODEL:-models/goemotions-minilm-l6}
threads=${EMOSTREAM_BENCH_THREADS:-2}
: "${ORT_DYLIB_PATH:=$(scripts/setup-ort.sh)}"; export ORT_DYLIB_PATH
cargo build --release --bins --quiet
cargo bench --bench inference --no-run --quiet 2>/dev/null
loadgen=target/release/emostream-loadgen
port=19466
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; model $model; ORT threads $threads"
metric() { curl -fs "localhost:$port/metrics" | awk -v m="$1" '$1==m {print $2}'; }
for r in $(seq 1 "$rounds"); do
  # 1. ONNX Runtime alone.
  ort=$(EMOSTREAM_BENCH_MODELS=$model EMOSTREAM_BENCH_THREADS=$threads cargo bench --bench inference --quiet 2>/dev/null \
        | sed -n 's/^ORT batch 32: *\([0-9]*\) comments\/s.*/\1/p')
  # 2. The daemon on a backlog.
  run=throughput-$(date +%s%N)
  in=$run-in out=$run-out dlq=$run-dlq
  "$loadgen" --create-topics "$dlq" --input-topic "$in" --output-topic "$out" --count "$backlog" \
    --rate 0 --samples 0 --idle-timeout 1 >/dev/null 2>&1 || true
  EMOSTREAM__KAFKA__INPUT_TOPICS=$in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$out EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$dlq \
  EMOSTREAM__KAFKA__GROUP_ID=$run EMOSTREAM__MODEL__DIR=$model EMOSTREAM__ADMIN__BIND=127.0.0.1:$port \
    target/release/emostream run >/dev/null 2>&1 &
  daemon=$!
  trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
  t0=""; n0=0
  while :; do
    n=$(metric emostream_labelled_total || true); n=${n:-0}; n=${n%.*}
    now=$(date +%s.%N)
    if [ -z "$t0" ] && [ "$n" -gt 0 ]; then t0=$now; n0=$n; fi
    [ "$n" -ge "$backlog" ] && break
    sleep 0.1
  done
  daemon_rate=$(python3 -c "print(($backlog - $n0) / ($now - $t0))")
  rss=$(ps -o rss= -p "$daemon" | tr -d ' ')
  # 3. The same daemon at a set rate below capacity.
  rate=${RATE:-$(python3 -c "print(round($daemon_rate / 2))")}
  lat=$("$loadgen" --input-topic "$in" --output-topic "$out" --count $((rate * 10)) --rate "$rate" --samples 0 \
        | sed -n 's/^latency.*p50 \([0-9.]*\) s, p99 \([0-9.]*\) s.*/\1 \2/p')
  kill -TERM "$daemon"; wait "$daemon" || true
  printf 'round %s  ORT alone b32 %s/s  daemon backlog %.0f/s (%.0f%% of ORT)  RSS %s MiB  at %s/s p50/p99 %s s\n' \
    "$r" "$ort" "$daemon_rate" "$(python3 -c "print(100 * $daemon_rate / $ort)")" "$((rss / 1024))" "$rate" "$lat"
done
