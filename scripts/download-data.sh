#!/usr/bin/env bash
# Downloads the GoEmotions splits (Demszky et al., 2020; CC BY 4.0) from the dataset's public
# home in the google-research repository into data/goemotions/, and checks their sha256.
# (This project's machines read a copy from ../shared/data/goemotions instead; see README.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/data/goemotions"
base=https://raw.githubusercontent.com/google-research/google-research/master/goemotions/data
mkdir -p "$dest"
curl -fsSL "$base/train.tsv" -o "$dest/train.tsv"
curl -fsSL "$base/dev.tsv" -o "$dest/dev.tsv"
curl -fsSL "$base/test.tsv" -o "$dest/test.tsv"
curl -fsSL "$base/emotions.txt" -o "$dest/labels.txt"
cd "$dest"
sha256sum -c - <<'SUMS'
1c254a142be5c00e80d819b9ae1bbd36d94b2eeb8f4b1271846508d57e57d9c5  train.tsv
575489c079c9de1097062a01738f998590d6b7ead66dd1c9fd1d2ba01fd8bc62  dev.tsv
0587b2dd8b27b97352adbfc3fb083d46005c8946657fdc2b1ca8b1cc7f1f8be4  test.tsv
45c3ef86782d2a4d7fedcd6d8c111aa0d0e94720689bd164fac94fefb4495a89  labels.txt
SUMS
echo "GoEmotions in $dest"
