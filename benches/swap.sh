#!/usr/bin/env bash
# Hot-swap benchmark: the daemon serves MODEL from a fresh registry (published twice, as
# versions bench-a and bench-b) while emostream-loadgen streams COUNT comments at RATE/s; at
# SWAP1 and SWAP2 seconds the admin API swaps to bench-b and back to bench-a. Prints each swap's
# load+validate time (admin response) and, from the loadgen, events per version and the longest
# gap between consecutive events within 1 s of a model change versus elsewhere.
# Needs the broker (scripts/kafka.sh start) and a release build.
# Usage: MODEL=models/goemotions-minilm-l6 benches/swap.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=${MODEL:-models/goemotions-minilm-l6}
count=${COUNT:-3000} rate=${RATE:-150} swap1=${SWAP1:-8} swap2=${SWAP2:-16}
port=${PORT:-19464}
ORT_DYLIB_PATH=$(scripts/setup-ort.sh); export ORT_DYLIB_PATH
scripts/kafka.sh start >/dev/null
cargo build --release --bins >/dev/null 2>&1
work=$(mktemp -d)
run=swapbench-$(date +%s)
in=$run-comments out=$run-emotions dlq=$run-dlq
target/release/train publish --model "$model" --registry "$work/registry" --version bench-a --activate >/dev/null
target/release/train publish --model "$model" --registry "$work/registry" --version bench-b >/dev/null
target/release/emostream-loadgen --create-topics "$dlq" --input-topic "$in" --output-topic "$out" --count 0 >/dev/null 2>&1 || true
EMOSTREAM__KAFKA__INPUT_TOPICS=$in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$out EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$dlq \
EMOSTREAM__KAFKA__GROUP_ID=$run EMOSTREAM__REGISTRY__ROOT=$work/registry \
EMOSTREAM__ADMIN__BIND=127.0.0.1:$port EMOSTREAM__ADMIN__TOKEN=$run EMOSTREAM__LOG__LEVEL=warn \
  target/release/emostream run &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 120); do curl -fs "localhost:$port/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
(
  sleep "$swap1"
  echo "swap to bench-b: $(curl -s -XPOST -H "authorization: Bearer $run" -H 'content-type: application/json' -d '{"version":"bench-b"}' "localhost:$port/admin/model")"
  sleep $((swap2 - swap1))
  echo "swap to bench-a: $(curl -s -XPOST -H "authorization: Bearer $run" -H 'content-type: application/json' -d '{"version":"bench-a"}' "localhost:$port/admin/model")"
) &
swapper=$!
target/release/emostream-loadgen --input-topic "$in" --output-topic "$out" --count "$count" --rate "$rate" --samples 0 | grep -vE '^\[ *[0-9.]+s\]'
wait $swapper
curl -fs "localhost:$port/metrics" | grep -E '^emostream_model_(swaps_total|load_seconds_(sum|count))|^emostream_(batch_size|inference_seconds|end_to_end_seconds)_(sum|count)' || true
