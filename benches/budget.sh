#!/usr/bin/env bash
# One daemon (shipped model, defaults) with a given in-flight budget labels a burst of COUNT
# GoEmotions test comments on 4 partitions; prints the load generator's throughput and latency.
# Shows what backpressure pauses cost: each pause/resume leaves the pipeline idle while
# librdkafka restarts fetching (~0.5 s here), so a small budget runs far below capacity.
#
#   benches/budget.sh BUDGET [BIN_DIR]      e.g. benches/budget.sh 64; benches/budget.sh 5000
#
# Needs the local broker (scripts/kafka.sh start); extra daemon settings via EMOSTREAM__* env.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
budget=$1
bin=${2:-target/release}
count=${COUNT:-3000}
: "${ORT_DYLIB_PATH:=$(scripts/setup-ort.sh)}"; export ORT_DYLIB_PATH
run=budget-$(date +%s%N)
EMOSTREAM__KAFKA__INPUT_TOPICS=$run-in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$run-out \
EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$run-dlq EMOSTREAM__KAFKA__GROUP_ID=$run \
EMOSTREAM__ADMIN__BIND=127.0.0.1:0 EMOSTREAM__BACKPRESSURE__MAX_IN_FLIGHT_MESSAGES=$budget \
  "$bin/emostream" run 2>/dev/null &
daemon=$!
trap 'kill $daemon 2>/dev/null || true' EXIT
sleep 1
target/release/emostream-loadgen --input-topic "$run-in" --output-topic "$run-out" \
  --create-topics "$run-dlq" --partitions 4 --count "$count" --samples 0 2>&1 |
  grep -E "throughput|latency"
