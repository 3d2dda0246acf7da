#!/usr/bin/env bash
# The demo burst through the daemons of several builds, interleaved on one machine and one
# broker: each round, for each build, a fresh daemon (defaults, shipped model) labels COUNT
# GoEmotions test comments produced at once, read back by this tree's load generator.
# Prints end-to-end comments/s per run, then the mean per build.
#
#   benches/burst.sh ROUNDS BIN_DIR [BIN_DIR ...]     (BIN_DIR holds an `emostream` binary)
#   e.g. benches/burst.sh 3 /tmp/before-target/release target/release
#
# Needs the local broker (scripts/kafka.sh start) and ORT_DYLIB_PATH (scripts/setup-ort.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=$1; shift
count=${COUNT:-5427}
model=${MODEL:-models/goemotions-minilm-l6}
: "${ORT_DYLIB_PATH:=$(scripts/setup-ort.sh)}"; export ORT_DYLIB_PATH
loadgen=target/release/emostream-loadgen
port=19464
declare -A sum
for r in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    run=burst-$(date +%s%N)
    in=$run-in out=$run-out dlq=$run-dlq
    "$loadgen" --create-topics "$dlq" --input-topic "$in" --output-topic "$out" --count 0 >/dev/null 2>&1 || true
    EMOSTREAM__KAFKA__INPUT_TOPICS=$in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$out EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$dlq \
    EMOSTREAM__KAFKA__GROUP_ID=$run EMOSTREAM__MODEL__DIR=$model EMOSTREAM__ADMIN__BIND=127.0.0.1:$port \
      "$bin/emostream" run 2>/dev/null &
    daemon=$!
    for _ in $(seq 1 120); do curl -fs "localhost:$port/readyz" >/dev/null 2>&1 && break; sleep 0.25; done
    rate=$("$loadgen" --input-topic "$in" --output-topic "$out" --count "$count" --rate 0 --samples 0 \
      | sed -n 's/^end-to-end throughput: \([0-9]*\) comments\/s/\1/p')
    kill -TERM "$daemon"; wait "$daemon" || true
    echo "round $r  $bin  ${rate:-?} comments/s"
    sum[$bin]=$(( ${sum[$bin]:-0} + ${rate:-0} ))
  done
done
for bin in "$@"; do echo "mean  $bin  $(( ${sum[$bin]} / rounds )) comments/s"; done
