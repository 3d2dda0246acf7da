#!/usr/bin/env bash
# The worked example of docs/moderation.md, end to end: moderators' corrections → the feedback
# topic → a dataset → a fine-tune of the model in production (with GoEmotions replay) → tuned on
# dev, evaluated on test, judged against the model it would replace → published to the fleet,
# or refused by the gate (this script then exits non-zero and nothing is published).
#
# Settings (environment):
#   CONFIG          the daemons' config file: Kafka client settings (security, secret files)
#                   and registry.control_key_file (signs the control message)
#   FEEDBACK_TOPIC  the daemons' api.feedback_topic
#   REGISTRY        the daemons' registry.root (its ACTIVE version is the model in production)
#   CONTROL_TOPIC   the daemons' registry.control_topic (empty: only ACTIVE is moved)
#   VERSION         the candidate's version name
#   WORK            where the dataset, the run and the candidate go (default: feedback-work/VERSION)
#   CORRECTIONS     optional: a JSONL file of POST /v1/feedback bodies, posted to API first
#   API             the daemon's HTTP address (default http://127.0.0.1:8080); API_TOKEN optional
#   EPOCHS LR REPLAY_RATIO BATCH_SIZE   the fine-tune (defaults 3, 1e-4, 2, 16)
#   TRAIN           the train binary (default target/release/train, built when missing)
# The GoEmotions splits come from $EMOSTREAM_DATA (default ../shared/data/goemotions).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CONFIG:?set CONFIG to the daemons config file}" "${FEEDBACK_TOPIC:?}" "${REGISTRY:?}" "${VERSION:?}"
CONTROL_TOPIC=${CONTROL_TOPIC:-}
WORK=${WORK:-feedback-work/$VERSION}
API=${API:-http://127.0.0.1:8080}
EPOCHS=${EPOCHS:-3} LR=${LR:-1e-4} REPLAY_RATIO=${REPLAY_RATIO:-2} BATCH_SIZE=${BATCH_SIZE:-16}
TRAIN=${TRAIN:-target/release/train}
[ -x "$TRAIN" ] || cargo build --release --bin train
mkdir -p "$WORK"

# 1. Moderators' corrections, as a dashboard would send them (one POST per correction).
if [ -n "${CORRECTIONS:-}" ]; then
  auth=()
  [ -n "${API_TOKEN:-}" ] && auth=(-H "authorization: Bearer $API_TOKEN")
  n=0
  while IFS= read -r body; do
    [ -n "$body" ] || continue
    curl -sS --fail-with-body -X POST "${auth[@]}" -H 'content-type: application/json' \
      --data "$body" "$API/v1/feedback" >/dev/null
    n=$((n + 1))
  done <"$CORRECTIONS"
  echo "== posted $n corrections to $API/v1/feedback"
fi

# 2. The feedback topic → train.tsv, heldout.tsv (by comment id), provenance.json.
"$TRAIN" data import --config "$CONFIG" --feedback-topic "$FEEDBACK_TOPIC" --out "$WORK/data"

# 3. Fine-tune the model in production (weights recovered from its ONNX) on the corrections
#    mixed with REPLAY_RATIO GoEmotions rows per correction.
"$TRAIN" fit --from-registry "$REGISTRY" --feedback "$WORK/data" --replay-ratio "$REPLAY_RATIO" \
  --run "$WORK/run" --epochs "$EPOCHS" --lr "$LR" --batch-size "$BATCH_SIZE"

# 4. The candidate the way the shipped model was made (RECIPE.md of 1.2.0): int8, calibrated
#    on GoEmotions dev (the model in production is, and its events' scores are probabilities:
#    a refresh must not change what a score means), thresholds tuned on dev with no label
#    below precision 0.2 where a higher threshold avoids it, then measured once on test.
"$TRAIN" export --checkpoint "$WORK/run/best" --run "$WORK/run" --out "$WORK/candidate" \
  --precision int8 --version "$VERSION"
"$TRAIN" calibrate --model "$WORK/candidate"
"$TRAIN" tune-thresholds --model "$WORK/candidate" --min-precision 0.2
"$TRAIN" evaluate --model "$WORK/candidate" --write

# 5. Judged against the model in production: GoEmotions test and the held-out corrections.
#    The verdict goes to candidate/gate.json; report.md shows the figures.
"$TRAIN" report --model "$WORK/candidate" --run "$WORK/run" --before "$REGISTRY" \
  --feedback "$WORK/data"

# 6. Publish: refused (non-zero exit, nothing copied) unless the gate passed.
publish=("$TRAIN" publish --model "$WORK/candidate" --registry "$REGISTRY" --activate --config "$CONFIG")
[ -n "$CONTROL_TOPIC" ] && publish+=(--control-topic "$CONTROL_TOPIC")
"${publish[@]}"
echo "== $VERSION is live"
