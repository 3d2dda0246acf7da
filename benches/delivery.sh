#!/usr/bin/env bash
# At-least-once against exactly-once on one machine and one broker, interleaved: each round,
# for each mode, a fresh daemon (defaults, shipped model) labels COUNT GoEmotions test
# comments produced at once (the demo burst), then RATE_COUNT produced at RATE/s (below
# capacity); this tree's load generator reads the events back (read_committed, so exactly-once
# events count once their transaction commits). Prints throughput and p50/p99 per run.
#
#   benches/delivery.sh ROUNDS
#
# Needs the local broker (scripts/kafka.sh start) and ORT_DYLIB_PATH (scripts/setup-ort.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${1:-3}
count=${COUNT:-5427}
rate=${RATE:-300}
rate_count=${RATE_COUNT:-3000}
model=${MODEL:-models/goemotions-minilm-l6}
: "${ORT_DYLIB_PATH:=$(scripts/setup-ort.sh)}"; export ORT_DYLIB_PATH
loadgen=target/release/emostream-loadgen
port=19465
for r in $(seq 1 "$rounds"); do
  for mode in at_least_once exactly_once; do
    run=delivery-$(date +%s%N)
    in=$run-in out=$run-out dlq=$run-dlq
    "$loadgen" --create-topics "$dlq" --input-topic "$in" --output-topic "$out" --count 0 >/dev/null 2>&1 || true
    EMOSTREAM__KAFKA__INPUT_TOPICS=$in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$out EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$dlq \
    EMOSTREAM__KAFKA__GROUP_ID=$run EMOSTREAM__KAFKA__DELIVERY=$mode EMOSTREAM__KAFKA__TRANSACTIONAL_ID=$run \
    EMOSTREAM__MODEL__DIR=$model EMOSTREAM__ADMIN__BIND=127.0.0.1:$port \
      target/release/emostream run 2>/dev/null &
    daemon=$!
    for _ in $(seq 1 120); do curl -fs "localhost:$port/readyz" >/dev/null 2>&1 && break; sleep 0.25; done
    burst=$("$loadgen" --input-topic "$in" --output-topic "$out" --count "$count" --rate 0 --samples 0 | grep -E "throughput|p50" | tr '\n' ' ')
    steady=$("$loadgen" --input-topic "$in" --output-topic "$out" --count "$rate_count" --rate "$rate" --samples 0 | grep -E "p50" | tr '\n' ' ')
    kill -TERM "$daemon"; wait "$daemon" || true
    echo "round $r  $mode  burst: $burst"
    echo "round $r  $mode  at $rate/s: $steady"
  done
done
