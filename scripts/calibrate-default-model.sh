#!/usr/bin/env bash
# Builds 1.1.0 from 1.0.0 (the default model until 1.2.0, restored from git history) without
# retraining:
# per-label Platt calibration fitted on dev and folded into model.onnx, thresholds tuned on dev
# by the cross-validated shrinkage rule with a 0.2 precision floor, test evaluation with
# bootstrap intervals and ECE, and report.md + reliability.png with the before/after table and
# the conditions for replacing the shipped model (`train report --before` prints them).
# OUT (default .cache/candidates/goemotions-minilm-l6-1.1.0) receives the model directory;
# VERSION (default 1.1.0) names it. Replacing models/goemotions-minilm-l6 is left to a person,
# and only when every condition is met.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=${VERSION:-1.1.0}
out=${OUT:-.cache/candidates/goemotions-minilm-l6-$version}
shipped=$(mktemp -d)
trap 'rm -rf "$shipped"' EXIT
for f in model.json model.onnx tokenizer.json report.md curves.png; do
  git show "3e613c7:models/goemotions-minilm-l6/$f" > "$shipped/$f"
done
ORT_DYLIB_PATH=$(scripts/setup-ort.sh); export ORT_DYLIB_PATH
cargo build --release --bin train
train=target/release/train
rm -rf "$out"
mkdir -p "$out"
cp "$shipped"/model.json "$shipped"/model.onnx "$shipped"/tokenizer.json "$shipped"/curves.png "$out"/
$train calibrate --model "$out" --version "$version"
$train tune-thresholds --model "$out"
$train evaluate --model "$out" --split test --write
$train report --model "$out" --before "$shipped"

# The candidate's card and report (not its model.onnx) are kept in docs/, so its figures are
# readable whether or not it replaces the shipped model.
docs=docs/candidates/goemotions-minilm-l6-$version
mkdir -p "$docs"
cp "$out"/model.json "$out"/reliability.png "$docs"/
sed 's|(curves.png)|(../../previous/goemotions-minilm-l6-1.0.0/curves.png)|' "$out"/report.md > "$docs"/report.md
echo "card and report copied to $docs"
