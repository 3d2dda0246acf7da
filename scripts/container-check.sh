#!/usr/bin/env bash
# The container image, tried for real: builds it (scripts/container-image.sh), starts it
# against the local broker (host network) as its non-root user with a read-only root file
# system and the model directory mounted over the default, streams comments through it with
# the load generator, and checks that every one comes out labelled and that SIGTERM stops it
# cleanly. Needs the broker (scripts/kafka.sh start).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
image=$(scripts/container-image.sh)
eval "$(scripts/container-image.sh env)"
brokers=${EMOSTREAM_TEST_BROKERS:-127.0.0.1:19092}
run=container-$(date +%s%N)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/emostream-loadgen --brokers "$brokers" --create-topics "$run-dlq" \
  --input-topic "$run-in" --output-topic "$run-out" --count 0 >/dev/null
name=emostream-check-$$
cleanup() { podman rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
podman run -d --name "$name" --network host --read-only --tmpfs /tmp \
  -v "$root/models/goemotions-minilm-l6:/opt/emostream/models/goemotions-minilm-l6:ro" \
  -e EMOSTREAM__KAFKA__BROKERS="$brokers" -e EMOSTREAM__KAFKA__GROUP_ID="$run" \
  -e EMOSTREAM__KAFKA__INPUT_TOPICS="$run-in" -e EMOSTREAM__KAFKA__OUTPUT_TOPIC="$run-out" \
  -e EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC="$run-dlq" -e EMOSTREAM__ADMIN__BIND="127.0.0.1:$port" \
  "$image" >/dev/null
for _ in $(seq 1 120); do curl -fs "localhost:$port/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
curl -fs "localhost:$port/readyz" >/dev/null || { podman logs "$name" >&2; echo "the container never became ready" >&2; exit 1; }
uid=$(podman exec "$name" id -u)
[ "$uid" = 10001 ] || { echo "runs as uid $uid, not 10001" >&2; exit 1; }
if podman exec "$name" touch /opt/emostream/x 2>/dev/null; then echo "the root file system is writable" >&2; exit 1; fi
out=$(target/release/emostream-loadgen --brokers "$brokers" --input-topic "$run-in" --output-topic "$run-out" \
  --count 500 --rate 0 --samples 0 --idle-timeout 60)
echo "$out" | grep -E "received|throughput"
echo "$out" | grep -q "received 500 distinct events" || { podman logs "$name" >&2; echo "not every comment came out labelled" >&2; exit 1; }
# Read whole, then searched: `curl | grep -q` under pipefail fails when grep stops reading
# before curl has written everything (curl exits 23 on the closed pipe).
metrics=$(curl -fs "localhost:$port/metrics")
grep -q 'emostream_execution_provider{provider="cpu"} 1' <<<"$metrics" \
  || { echo "$metrics" | grep emostream_execution_provider >&2; echo "not on the CPU provider" >&2; exit 1; }
podman stop -t 40 "$name" >/dev/null
code=$(podman inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || { podman logs "$name" | tail -20 >&2; echo "exit code $code after SIGTERM" >&2; exit 1; }
echo "container image $image: non-root, read-only root, model mounted, 500/500 labelled, clean stop: ok"
