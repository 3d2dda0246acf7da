#!/usr/bin/env bash
# Memory over a steady stream with nobody scraping /metrics (issue 25): the daemon (defaults,
# shipped model) labels RATE comments/s for MINUTES minutes; its RSS (VmRSS) is sampled every
# 30 s from /proc, never through the admin server, so no scrape drains the Prometheus
# recorder's histogram buffers. Prints the samples and the growth after the first two minutes
# (warm-up) in MB per minute. SCRAPE=5 scrapes /metrics every 5 s instead, for comparison.
#
#   benches/soak.sh            (RATE=300 MINUTES=30; local broker and ORT_DYLIB_PATH as for the tests)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rate=${RATE:-300} minutes=${MINUTES:-30} scrape=${SCRAPE:-0}
: "${ORT_DYLIB_PATH:=$(scripts/setup-ort.sh)}"; export ORT_DYLIB_PATH
cargo build --release --bins --quiet
loadgen=target/release/emostream-loadgen
port=19467
run=soak-$(date +%s%N); in=$run-in out=$run-out dlq=$run-dlq
"$loadgen" --create-topics "$dlq" --input-topic "$in" --output-topic "$out" --count 1 --rate 0 \
  --samples 0 --idle-timeout 1 >/dev/null 2>&1 || true
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $rate comments/s for $minutes min; scrape every ${scrape}s (0: never)"
EMOSTREAM__KAFKA__INPUT_TOPICS=$in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$out EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$dlq \
EMOSTREAM__KAFKA__GROUP_ID=$run EMOSTREAM__MODEL__DIR=models/goemotions-minilm-l6 \
EMOSTREAM__ADMIN__BIND=127.0.0.1:$port target/release/emostream run >/dev/null 2>&1 &
daemon=$!
trap 'kill -TERM $daemon $gen $scraper 2>/dev/null || true' EXIT
gen= scraper=
sleep 8
"$loadgen" --input-topic "$in" --output-topic "$out" --count $((rate * 60 * minutes)) --rate "$rate" \
  --samples 0 --idle-timeout 30 >/dev/null 2>&1 &
gen=$!
if [ "$scrape" -gt 0 ]; then
  (while sleep "$scrape"; do curl -fs "localhost:$port/metrics" >/dev/null || true; done) &
  scraper=$!
fi
rss() { awk '/^VmRSS/ {print $2}' "/proc/$daemon/status"; }
samples=()
for ((t = 0; t <= minutes * 60; t += 30)); do
  samples+=("$t $(rss)")
  echo "t=${t}s rss_kb=$(rss)"
  sleep 30
done
printf '%s\n' "${samples[@]}" | awk '$1 >= 120 {n++; sx += $1; sy += $2; sxx += $1*$1; sxy += $1*$2}
  END {b = (n*sxy - sx*sy) / (n*sxx - sx*sx); printf "growth after warm-up: %.3f MB/min (least squares over %d samples)\n", b*60/1024, n}'
