#!/usr/bin/env bash
# The classify API's latency: `emostream serve` with the shipped model on a loopback port, then
# N sequential requests of one GoEmotions test comment and N of 32, then C concurrent clients
# sending single comments for 10 s. Prints p50/p99 of the client-side round trip and of the
# server's took_seconds, and the concurrent throughput. Say which CPU (lscpu) with the figures.
# Needs: ORT_DYLIB_PATH (scripts/setup-ort.sh), a release build. N (default 200), C (default 8).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
EMOSTREAM__ADMIN__BIND=127.0.0.1:$port EMOSTREAM__ADMIN__ALLOW_UNAUTHENTICATED_LOOPBACK=true \
EMOSTREAM__LOG__LEVEL=warn target/release/emostream serve &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -fs "localhost:$port/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
data=${EMOSTREAM_DATA:-../shared/data/goemotions}
python3 - "$port" "$data/test.tsv" "${N:-200}" "${C:-8}" <<'PY'
import json, sys, time, threading, urllib.request
port, test, n, c = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
texts = [l.split("\t")[0] for l in open(test, encoding="utf-8") if l.strip()]
def post(body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classify", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        ans = json.load(r)
    return time.perf_counter() - t, ans["took_seconds"]
def q(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(p * len(v)))]
for size in (1, 32):
    post({"texts": texts[:size]})  # warm-up
    rt, srv = zip(*(post({"texts": texts[i * size % 5000:(i * size % 5000) + size]}) for i in range(n)))
    print(f"{size:>2} text(s)/request, {n} sequential: round trip p50 {q(rt,.5)*1000:.1f} ms p99 {q(rt,.99)*1000:.1f} ms; "
          f"server p50 {q(srv,.5)*1000:.1f} ms p99 {q(srv,.99)*1000:.1f} ms; {size*n/sum(rt):.0f} comments/s")
done, lat, stop = [0], [], time.time() + 10
lock = threading.Lock()
def client(k):
    i = k
    while time.time() < stop:
        r, _ = post({"text": texts[i % len(texts)]}); i += c
        with lock:
            done[0] += 1; lat.append(r)
threads = [threading.Thread(target=client, args=(k,)) for k in range(c)]
t0 = time.time(); [t.start() for t in threads]; [t.join() for t in threads]
print(f"{c} concurrent clients, single comments, 10 s: {done[0]/(time.time()-t0):.0f} requests/s; "
      f"round trip p50 {q(lat,.5)*1000:.1f} ms p99 {q(lat,.99)*1000:.1f} ms")
PY
