#!/usr/bin/env bash
# Installs the ONNX Runtime shared library from the pinned `onnxruntime` PyPI wheel into
# .cache/ort/ (set ORT_GPU=1 for the CUDA build from `onnxruntime-gpu`). Prints the library path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=1.31.1
pkg=onnxruntime
[ "${ORT_GPU:-0}" = 1 ] && pkg=onnxruntime-gpu
dest="$root/.cache/ort/$pkg-$version"
lib="$dest/libonnxruntime.so.$version"
if [ ! -f "$lib" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$pkg==$version" >&2
  mkdir -p "$dest"
  python3 - "$tmp"/*.whl "$dest" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        if n.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            with z.open(n) as src, open(os.path.join(dest, base), "wb") as dst:
                dst.write(src.read())
PY
fi
ln -sf "$(basename "$lib")" "$dest/libonnxruntime.so"
echo "$dest/libonnxruntime.so"
