#!/usr/bin/env bash
# A moderator's try-it request during a backlog: the daemon (defaults, shipped model) starts on
# an empty topic, the load generator then produces COUNT GoEmotions test comments at once (a
# backlog) and reads the events back; once 1,000 are labelled, single-comment
# `POST /v1/classify` requests go one after another, 150 ms apart, until the backlog is labelled.
# Prints the requests' p50/p99/max round trip (target: max <= 2 s, issue 25) and the stream's
# comments/s. Run it alone on the machine; say which CPU (lscpu) with the figures.
# Needs the local broker (scripts/kafka.sh start), a release build. COUNT (default 20000).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
count=${COUNT:-20000}
: "${ORT_DYLIB_PATH:=$(scripts/setup-ort.sh)}"; export ORT_DYLIB_PATH
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
run=try-it-$(date +%s%N)
in=$run-in out=$run-out dlq=$run-dlq
target/release/emostream-loadgen --create-topics "$dlq" --input-topic "$in" --output-topic "$out" \
  --partitions 2 --count 0 >/dev/null 2>&1 || true
EMOSTREAM__KAFKA__INPUT_TOPICS=$in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$out EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$dlq \
EMOSTREAM__KAFKA__GROUP_ID=$run EMOSTREAM__ADMIN__BIND=127.0.0.1:$port \
EMOSTREAM__ADMIN__ALLOW_UNAUTHENTICATED_LOOPBACK=true EMOSTREAM__LOG__LEVEL=warn \
  target/release/emostream run 2>/dev/null &
daemon=$!
trap 'kill $daemon ${loadgen:-} 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -fs "localhost:$port/readyz" >/dev/null 2>&1 && break; sleep 0.25; done
target/release/emostream-loadgen --input-topic "$in" --output-topic "$out" --count "$count" \
  --rate 0 --samples 0 --idle-timeout 120 | sed -n 's/^end-to-end throughput/stream: end-to-end throughput/p' &
loadgen=$!
data=${EMOSTREAM_DATA:-../shared/data/goemotions}
python3 - "$port" "$data/dev.tsv" "$count" <<'PY'
import json, re, sys, time, urllib.request
port, dev, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
texts = [l.split("\t")[0] for l in open(dev, encoding="utf-8") if l.strip()]
def labelled():
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    m = re.search(r"^emostream_labelled_total (\S+)$", page, re.M)
    return float(m.group(1)) if m else 0.0
started = time.time()
while labelled() < 1000:
    if time.time() - started > 120: sys.exit("the backlog did not start")
    time.sleep(0.1)
took, i = [], 0
while labelled() < count:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classify",
                                 data=json.dumps({"text": texts[i % len(texts)]}).encode(),
                                 headers={"content-type": "application/json"})
    t = time.perf_counter()
    urllib.request.urlopen(req).read()
    took.append(time.perf_counter() - t); i += 1
    time.sleep(0.15)
if not took: sys.exit("no request ran during the backlog")
took.sort()
q = lambda p: took[min(len(took) - 1, int(p * len(took)))]
print(f"{len(took)} try-it requests during a {count}-comment backlog: round trip p50 {q(.5):.3f} s, "
      f"p99 {q(.99):.3f} s, max {took[-1]:.3f} s (target: max <= 2 s)")
PY
wait "$loadgen" || true
