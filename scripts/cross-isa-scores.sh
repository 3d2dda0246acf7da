#!/usr/bin/env bash
# Measures how far ONNX Runtime's CPU kernel families move a model's scores against each
# other: scores GoEmotions test comments natively (this CPU's kernels, e.g. AVX-512 VNNI) and
# under qemu-user emulating an AVX2-only CPU (Haswell: MLAS then takes its AVX2 kernels), and
# prints the share of logits that moved by more than x (in the encoder's logits: a calibrated
# model's are divided by each label's scale), the largest move, and whether the
# emulated AVX2 predictions reproduce the card's per-label counts. tests/shipped_model.rs
# takes its tolerance from this table.
#
#   scripts/cross-isa-scores.sh [MODEL_DIR] [FIRST_COMMENTS] [LOGIT_WINDOW]
#
# Emulation runs ~2 comments/s, so besides the first FIRST_COMMENTS of test.tsv (default 473;
# the file is in no particular order) only the comments with a logit within LOGIT_WINDOW
# (default 0.14, twice the largest move measured) of a threshold are emulated: they are the
# ones whose predictions can move. Needs Debian's qemu-user (apt-get install qemu-user).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=${1:-models/goemotions-minilm-l6}
first=${2:-473}
window=${3:-0.14}
data=${EMOSTREAM_DATA:-../shared/data/goemotions}
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 missing: apt-get install qemu-user" >&2; exit 1; }
# Natively an AVX2-only CPU takes the same kernel family as the emulated one: nothing to compare.
grep -qw avx512f /proc/cpuinfo || { echo "this CPU has no AVX-512: run this on one that has (native AVX-512 vs emulated AVX2)" >&2; exit 1; }
ORT_DYLIB_PATH=$(scripts/setup-ort.sh)
export ORT_DYLIB_PATH
cargo build --release --bin emostream >&2
bin=target/release/emostream
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cut -f1 "$data/test.tsv" > "$out/texts.txt"
echo "native: $($bin check-model "$model" | grep '^this machine')" >&2
"$bin" classify --model "$model" --format text < "$out/texts.txt" > "$out/native.jsonl"
python3 - "$model" "$out" "$first" "$window" <<'PY'
import json, math, sys
model, out, first, window = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
card = json.load(open(f"{model}/model.json"))
names = card["labels"]
default = card["thresholds"]["default"]
per = card["thresholds"]["per_label"] or [default] * len(names)
# A calibrated model's logits are the encoder's times its label's scale, and so are their moves.
scale = (card.get("calibration") or {}).get("scale") or [1.0] * len(names)
# Each label's own threshold, the dev-best global one and the reference's 0.15.
logit = lambda p: math.log(min(max(p, 1e-9), 1 - 1e-9) / (1 - min(max(p, 1e-9), 1 - 1e-9)))
near = lambda s: any(abs(logit(s[n]) - logit(t)) <= window * scale[j]
                     for j, n in enumerate(names) for t in (per[j], default, 0.15))
texts = open(f"{out}/texts.txt").read().split("\n")
native = [json.loads(l)["scores"] for l in open(f"{out}/native.jsonl")]
pick = [i for i, s in enumerate(native) if i < first or near(s)]
open(f"{out}/picked.txt", "w").write("\n".join(map(str, pick)) + "\n")
open(f"{out}/picked-texts.txt", "w").write("\n".join(texts[i] for i in pick) + "\n")
print(f"emulating {len(pick)} comments", file=sys.stderr)
PY
time qemu-x86_64 -cpu Haswell-noTSX "$bin" classify --model "$model" --format text \
  < "$out/picked-texts.txt" > "$out/emulated.jsonl" 2> "$out/qemu.log"
python3 - "$model" "$out" "$data/test.tsv" <<'PY'
import json, math, sys
model, out, test = sys.argv[1:4]
card = json.load(open(f"{model}/model.json"))
names = card["labels"]
logit = lambda p: math.log(min(max(p, 1e-9), 1 - 1e-9) / (1 - min(max(p, 1e-9), 1 - 1e-9)))
native = [json.loads(l)["scores"] for l in open(f"{out}/native.jsonl")]
pick = [int(x) for x in open(f"{out}/picked.txt").read().split()]
emulated = [json.loads(l)["scores"] for l in open(f"{out}/emulated.jsonl")]
assert len(pick) == len(emulated), "emulation did not finish"
# In the encoder's logits (divided by the calibration's scale), as tests/shipped_model.rs reads them.
scale = (card.get("calibration") or {}).get("scale") or [1.0] * len(names)
moves = sorted(abs(logit(native[i][n]) - logit(e[n])) / scale[j]
               for i, e in zip(pick, emulated) for j, n in enumerate(names))
N = len(moves)
print(f"{N} logits of {len(pick)} comments; largest move {moves[-1]:.4f}; "
      f"p99 {moves[int(N*0.99)]:.2e} p99.9 {moves[int(N*0.999)]:.2e}")
print("x        share of logits that moved by more than x")
for x in [0, 1e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 3e-2, 5e-2]:
    print(f"{x:<8g} {sum(1 for m in moves if m > x) / N:.3e}")
# The emulated CPU's predictions: emulated scores where measured, native elsewhere (the rest
# lie farther than the window from every threshold in logit).
avx2 = list(native)
for i, e in zip(pick, emulated):
    avx2[i] = e
gold = [set(int(x) for x in l.rstrip("\n").split("\t")[1].split(",")) for l in open(test)]
per = card["thresholds"]["per_label"] or [card["thresholds"]["default"]] * len(names)
for key, th in [("test", per), ("test_global_0.15", [0.15] * len(names)),
                ("test_global_dev_best", [card["thresholds"]["default"]] * len(names))]:
    stored = card["metrics"][key]["per_label"]
    for which, scores in [("native", native), ("emulated avx2", avx2)]:
        differ = []
        for j, n in enumerate(names):
            tp = sum(1 for s, g in zip(scores, gold) if s[n] >= th[j] and j in g)
            fp = sum(1 for s, g in zip(scores, gold) if s[n] >= th[j] and j not in g)
            if (tp, fp) != (stored[j].get("tp"), stored[j].get("fp")):
                differ.append(f"{n} tp {tp} vs {stored[j].get('tp')}, fp {fp} vs {stored[j].get('fp')}")
        print(f"{key} {which}: {len(differ)} labels differ from the card {differ}")
PY
