#!/usr/bin/env bash
# The demo: sets up everything (ONNX Runtime library, Kafka broker jars, release build), starts
# a local Kafka broker, creates topics, runs the daemon with the shipped model, streams the
# GoEmotions test comments through it with a live summary, then stops the daemon with SIGTERM.
# While it runs, http://127.0.0.1:9464/ is the try-it page and /live the live view (admin API
# open on loopback, comment text shown); KEEP=1 keeps the daemon running after the stream until
# Ctrl-C, RATE=50 streams slowly enough to watch.
# MODEL=dir overrides the model directory (default models/goemotions-minilm-l6).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=${MODEL:-models/goemotions-minilm-l6}
if [ ! -f "$model/model.onnx" ]; then
  echo "no model at $model (MODEL=<model directory>: one that train export / train quantize wrote)" >&2
  exit 1
fi
ORT_DYLIB_PATH=$(scripts/setup-ort.sh); export ORT_DYLIB_PATH
scripts/kafka.sh start
cargo build --release --bins
run=demo-$(date +%s)
in=$run-comments out=$run-emotions dlq=$run-dlq
target/release/emostream-loadgen --create-topics "$dlq" --input-topic "$in" --output-topic "$out" --count 0 >/dev/null 2>&1 || true
log=$(mktemp)
EMOSTREAM__KAFKA__INPUT_TOPICS=$in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$out EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$dlq \
EMOSTREAM__KAFKA__GROUP_ID=$run EMOSTREAM__MODEL__DIR=$model \
EMOSTREAM__ADMIN__ALLOW_UNAUTHENTICATED_LOOPBACK=true EMOSTREAM__UI__SHOW_TEXT=true \
  target/release/emostream run 2>"$log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do curl -fs localhost:9464/readyz >/dev/null 2>&1 && break; sleep 0.5; done
echo "daemon ready (pid $daemon, model $model); streaming the GoEmotions test split through it"
echo "try-it page: http://127.0.0.1:9464/   live view: http://127.0.0.1:9464/live"
target/release/emostream-loadgen --input-topic "$in" --output-topic "$out" --count "${COUNT:-5427}" --rate "${RATE:-0}"
echo
echo "daemon metrics:"
curl -fs localhost:9464/metrics | grep -E '^emostream_(consumed|labelled|dead_lettered)_total|^emostream_inference_seconds_(sum|count)|^emostream_model_info' || true
if [ "${KEEP:-0}" = 1 ]; then
  echo "the daemon keeps running (KEEP=1): open the pages above; Ctrl-C stops it"
  trap 'kill -TERM $daemon 2>/dev/null || true' INT
  wait $daemon || true
fi
kill -TERM $daemon 2>/dev/null || true
wait $daemon && echo "daemon stopped cleanly (SIGTERM)"
trap - EXIT
