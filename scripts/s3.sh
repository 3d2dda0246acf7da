#!/usr/bin/env bash
# A real S3-compatible object store on localhost — SeaweedFS (Apache-2.0) `weed mini`: master,
# volume, filer and S3 gateway in one process — for the object-store registry's tests and demo.
# The binary is built once from the Go module proxy into .cache/bin/weed (a few minutes on two
# cores; its go.mod has a replace directive, so `go install` refuses it: download the module,
# build in its directory).
#
#   scripts/s3.sh build     build .cache/bin/weed (once)
#   scripts/s3.sh start     start it, wait until the S3 API answers
#   scripts/s3.sh stop      stop it (and wait)
#   scripts/s3.sh status
#   scripts/s3.sh env       the environment an S3 client needs (AWS_* for object_store), to eval
#
# S3 listens on S3_PORT (default 18333); the store's other ports are S3_PORT-3 .. S3_PORT+2 and
# those plus 10000 (gRPC), so two stores on ports 10 apart do not collide (a test that stops a
# store starts its own). Data lives in S3_DIR (default .cache/s3/run-$S3_PORT). The credentials
# are fixed test values: `weed mini` takes them from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY at
# start and demands them of every request. The bucket S3_BUCKET (default models) is created at
# start.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=${S3_PORT:-18333}
dir=${S3_DIR:-$root/.cache/s3/run-$port}
bucket=${S3_BUCKET:-models}
weed=$root/.cache/bin/weed
pidfile=$dir/weed.pid
access_key=emostream-test
secret_key=emostream-test-secret
module=github.com/seaweedfs/seaweedfs
version=v0.0.0-20261109003541-7506e5f91cd6

build() {
  [ -x "$weed" ] && return
  mkdir -p "$(dirname "$weed")"
  echo "building SeaweedFS ($module@$version) into .cache/bin/weed (once)" >&2
  src=$( (cd /tmp && go mod download -json "$module@$version") \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  (cd "$src" && GOFLAGS=-mod=mod go build -o "$weed" ./weed)
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

answers() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" 2>/dev/null | grep -q '^[2-4]'; }

start() {
  build
  if running; then echo "S3 already running on 127.0.0.1:$port"; return; fi
  mkdir -p "$dir/data"
  base=$((port - 3))
  AWS_ACCESS_KEY_ID=$access_key AWS_SECRET_ACCESS_KEY=$secret_key S3_BUCKET=$bucket \
    nohup setsid "$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -master.port=$base -master.port.grpc=$((base + 10000)) \
      -volume.port=$((base + 1)) -volume.port.grpc=$((base + 10001)) \
      -filer.port=$((base + 2)) -filer.port.grpc=$((base + 10002)) \
      -s3.port=$port -s3.port.grpc=$((port + 10000)) \
      -webdav=false -admin.ui=false -admin.port=$((port + 1)) -admin.port.grpc=$((port + 10001)) \
      -admin.port.legacy=0 -s3.port.iceberg=0 -s3.port.lance=0 -metricsPort=0 \
      -master.telemetry=false \
      > "$dir/weed.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if answers && curl -s -o /dev/null -w '%{http_code}' \
        --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access_key:$secret_key" \
        "http://127.0.0.1:$port/$bucket/" | grep -q '^200$'; then
      echo "S3 running on 127.0.0.1:$port (pid $(cat "$pidfile"), bucket $bucket, log $dir/weed.log)"
      return
    fi
    running || { echo "SeaweedFS exited during start-up; see $dir/weed.log" >&2; tail -20 "$dir/weed.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "SeaweedFS did not answer within 60 s; see $dir/weed.log" >&2
  exit 1
}

stop() {
  if running; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 1 60); do running || break; sleep 0.5; done
    running && kill -9 "$(cat "$pidfile")" || true
  fi
  rm -f "$pidfile"
  echo "S3 on 127.0.0.1:$port stopped"
}

env_vars() {
  cat <<ENV
export AWS_ACCESS_KEY_ID=$access_key
export AWS_SECRET_ACCESS_KEY=$secret_key
export AWS_ENDPOINT=http://127.0.0.1:$port
export AWS_ALLOW_HTTP=true
export AWS_REGION=us-east-1
ENV
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  env) env_vars ;;
  status) if running; then echo "running on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 build|start|stop|status|env" >&2; exit 2 ;;
esac
