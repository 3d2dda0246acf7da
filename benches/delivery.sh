#!/usr/bin/env bash
# At-least-once against exactly-once on one machine and one broker, interleaved: each round,
# for each mode, a fresh daemon (defaults, shipped model; exactly-once with EOS_COMMIT_MS
# transactions, 100 ms unless set) labels COUNT GoEmotions test comments produced at once (a
# backlog), then RATE_COUNT produced at RATE/s (below capacity); this tree's load generator
# reads the events back (read_committed, so exactly-once events count once their transaction
# commits). Prints, per run: burst throughput and the share of the burst's wall time the
# inference workers were idle (1 - emostream_inference_seconds_sum / (workers x wall)); p50/p99
# at RATE/s; and, exactly-once, transactions committed and their mean commit time.
#
#   benches/delivery.sh ROUNDS
#
# DAEMON=path/to/emostream compares another build (e.g. an older commit's) on the same runs.
# Needs the local broker (scripts/kafka.sh start) and ORT_DYLIB_PATH (scripts/setup-ort.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${1:-3}
count=${COUNT:-5427}
rate=${RATE:-300}
rate_count=${RATE_COUNT:-3000}
model=${MODEL:-models/goemotions-minilm-l6}
workers=${WORKERS:-2}
eos_commit_ms=${EOS_COMMIT_MS:-100}
daemon_bin=${DAEMON:-target/release/emostream}
cargo build --release --bins --quiet
: "${ORT_DYLIB_PATH:=$(scripts/setup-ort.sh)}"; export ORT_DYLIB_PATH
loadgen=target/release/emostream-loadgen
port=19465
# The sum of a metric's samples on /metrics (0 when absent).
metric() { curl -fs "localhost:$port/metrics" | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { printf "%.6f", s + 0 }'; }
for r in $(seq 1 "$rounds"); do
  for mode in at_least_once exactly_once; do
    run=delivery-$(date +%s%N)
    in=$run-in out=$run-out dlq=$run-dlq
    "$loadgen" --create-topics "$dlq" --input-topic "$in" --output-topic "$out" --count 0 >/dev/null 2>&1 || true
    commit_ms=1000
    [ "$mode" = exactly_once ] && commit_ms=$eos_commit_ms
    EMOSTREAM__KAFKA__INPUT_TOPICS=$in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$out EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$dlq \
    EMOSTREAM__KAFKA__GROUP_ID=$run EMOSTREAM__KAFKA__DELIVERY=$mode EMOSTREAM__KAFKA__TRANSACTIONAL_ID=$run \
    EMOSTREAM__KAFKA__COMMIT_INTERVAL_MS=$commit_ms EMOSTREAM__BATCHING__INFERENCE_WORKERS=$workers \
    EMOSTREAM__MODEL__DIR=$model EMOSTREAM__ADMIN__BIND=127.0.0.1:$port \
      "$daemon_bin" run 2>/dev/null &
    daemon=$!
    for _ in $(seq 1 120); do curl -fs "localhost:$port/readyz" >/dev/null 2>&1 && break; sleep 0.25; done
    busy0=$(metric emostream_inference_seconds_sum); t0=$(date +%s.%N)
    burst=$("$loadgen" --input-topic "$in" --output-topic "$out" --count "$count" --rate 0 --samples 0 | grep -E "throughput" | tr '\n' ' ')
    busy1=$(metric emostream_inference_seconds_sum); t1=$(date +%s.%N)
    idle=$(awk -v b0="$busy0" -v b1="$busy1" -v t0="$t0" -v t1="$t1" -v w="$workers" 'BEGIN { printf "%.1f%%", 100 * (1 - (b1 - b0) / (w * (t1 - t0))) }')
    steady=$("$loadgen" --input-topic "$in" --output-topic "$out" --count "$rate_count" --rate "$rate" --samples 0 | grep -E "p50" | tr '\n' ' ')
    txn=""
    if [ "$mode" = exactly_once ]; then
      n=$(metric 'emostream_transaction_commit_seconds_count'); s=$(metric 'emostream_transaction_commit_seconds_sum')
      txn=$(awk -v n="$n" -v s="$s" 'BEGIN { printf "%d transactions (%d ms each), mean commit %.1f ms", n, '"$commit_ms"', (n > 0 ? 1000 * s / n : 0) }')
    fi
    kill -TERM "$daemon"; wait "$daemon" || true
    echo "round $r  $mode  burst: $burst workers idle $idle of the burst"
    echo "round $r  $mode  at $rate/s: $steady $txn"
  done
done
