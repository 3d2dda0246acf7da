#!/usr/bin/env bash
# The test command: installs what the tests need (ONNX Runtime library from PyPI), checks the
# GoEmotions data is present, then runs the whole suite against the real runtime.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ORT_DYLIB_PATH=$(scripts/setup-ort.sh)
export ORT_DYLIB_PATH
data=${EMOSTREAM_DATA:-}
if [ -z "$data" ]; then
  if [ -f data/goemotions/train.tsv ]; then data=data/goemotions; else data=../shared/data/goemotions; fi
fi
for f in train.tsv dev.tsv test.tsv labels.txt; do
  [ -f "$data/$f" ] || { echo "GoEmotions data missing: $data/$f (run scripts/download-data.sh)" >&2; exit 1; }
done
cargo test --release "$@"
