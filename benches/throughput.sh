#!/usr/bin/env bash
# Issue 14's yardstick, in one run on one machine, ROUNDS times interleaved, then the ratios:
#  1. ONNX Runtime alone on the model (`cargo bench --bench inference`) with the daemon's
#     thread budget (2 sessions x 1 intra-op thread, as the default 2 inference workers run),
#     on the shapes the daemon could form from a backlog of the test split: sorted by length
#     over the whole split, and in stream-order windows of batching.backlog_window, both cut
#     into calls by the daemon's own planner. The faster of the two is the ceiling; it is
#     measured just before and just after the daemon's backlog run and averaged, because this
#     shared machine's speed drifts by several percent within a minute.
#     (Also printed: sorted batches of 32 on 1 session x 2 threads and on 2 x 1.)
#  2. The daemon (defaults) on a backlog: BACKLOG comments produced before it starts; rate from
#     its own emostream_labelled_total, sampled once a second, between the first sample past
#     10% of the backlog and the last one before 90% (the steady state: the first and last
#     windows are start-up and run-out, not backlog).
#  3. The same daemon at RATE comments/s (default: half its backlog rate; 20 s of traffic):
#     p50/p99 end to end from the load generator, beside the target max_wait_ms + 2 batch times
#     (a batch time: max_batch_size comments on one worker at the ceiling's rate).
# With RSS_BACKLOG=N (e.g. 1000000) it first measures, once, the daemon's peak RSS (VmHWM)
# after RSS_SECONDS (60) on an N-comment backlog; DAEMON_BIN picks the binary (to compare
# with an older build).
#
#   benches/throughput.sh [ROUNDS]          (BACKLOG=30000, MODEL=models/goemotions-minilm-l6)
#
# Needs the local broker (scripts/kafka.sh start) and ORT_DYLIB_PATH (scripts/setup-ort.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${1:-3}
backlog=${BACKLOG:-30000}
model=${MODEL:-models/goemotions-minilm-l6}
: "${ORT_DYLIB_PATH:=$(scripts/setup-ort.sh)}"; export ORT_DYLIB_PATH
cargo build --release --bins --quiet
cargo bench --bench inference --no-run --quiet 2>/dev/null
loadgen=target/release/emostream-loadgen
daemon_bin=${DAEMON_BIN:-target/release/emostream}
# The daemon's defaults this run compares against.
setting() { sed -n "s/^$1 = \([0-9]*\).*/\1/p" config/default.toml | head -1; }
workers=$(setting inference_workers) rows=$(setting max_batch_size) window=$(setting backlog_window)
tokens=$(setting max_batch_tokens) wait_ms=$(setting max_wait_ms)
port=19466
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(grep -o -w -E 'avx512_vnni|amx_int8|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "model $model; daemon $daemon_bin: $workers workers x 1 thread, calls <= $rows rows / $tokens tokens, window $window, max_wait_ms $wait_ms"
metric() { curl -fs "localhost:$port/metrics" | awk -v m="$1" '$1==m {print $2}'; }
topics() {
  run=$1-$(date +%s%N); in=$run-in out=$run-out dlq=$run-dlq
  "$loadgen" --create-topics "$dlq" --input-topic "$in" --output-topic "$out" --count "$2" \
    --rate 0 --samples 0 --idle-timeout 1 >/dev/null 2>&1 || true
}
start_daemon() {
  EMOSTREAM__KAFKA__INPUT_TOPICS=$in EMOSTREAM__KAFKA__OUTPUT_TOPIC=$out EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC=$dlq \
  EMOSTREAM__KAFKA__GROUP_ID=$run EMOSTREAM__MODEL__DIR=$model EMOSTREAM__ADMIN__BIND=127.0.0.1:$port \
    "$daemon_bin" run >/dev/null 2>&1 &
  daemon=$!
  trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
}
# ONNX Runtime alone, printed as "whole windowed b32-1xN b32-Nx1" (comments/s).
ort_alone() {
  local out
  out=$(EMOSTREAM_BENCH_MODELS=$model EMOSTREAM_BENCH_THREADS=$workers EMOSTREAM_BENCH_CALL_ROWS=$rows \
        EMOSTREAM_BENCH_CALL_TOKENS=$tokens EMOSTREAM_BENCH_WINDOW=$window EMOSTREAM_BENCH_BATCHES=32 \
        cargo bench --bench inference --quiet 2>/dev/null)
  echo "$(sed -n 's/^ORT planned calls (.*: *\([0-9]*\) comments\/s/\1/p' <<<"$out")" \
       "$(sed -n 's/^ORT planned calls in stream-order windows.*: *\([0-9]*\) comments\/s/\1/p' <<<"$out")" \
       "$(sed -n 's/^ORT batch 32: *\([0-9]*\) comments\/s.*/\1/p' <<<"$out")" \
       "$(sed -n 's/^ORT batch 32, .* sessions x 1 thread: *\([0-9]*\) comments\/s/\1/p' <<<"$out")"
}
if [ "${RSS_BACKLOG:-0}" -gt 0 ]; then
  topics rss "$RSS_BACKLOG"
  start_daemon
  sleep "${RSS_SECONDS:-60}"
  n=$(metric emostream_labelled_total || echo 0)
  echo "RSS on a $RSS_BACKLOG-comment backlog ($daemon_bin): peak $(awk '/VmHWM/ {print int($2/1024)}' /proc/$daemon/status) MiB, now $(awk '/VmRSS/ {print int($2/1024)}' /proc/$daemon/status) MiB after ${RSS_SECONDS:-60} s (${n%.*} labelled)"
  kill -TERM "$daemon"; wait "$daemon" || true
fi
summary=$(mktemp)
for r in $(seq 1 "$rounds"); do
  # 1. ONNX Runtime alone, before the daemon's run (and again after it, below).
  before=$(ort_alone)
  # 2. The daemon on a backlog: the rate between 10% and 90% of it.
  topics throughput "$backlog"
  start_daemon
  # Sampled once a second: each sample (curl + a /metrics render) costs CPU the daemon would
  # otherwise use, and polling 20 times a second cost it 5-10% of its rate on 2 cores. Each
  # sample pairs a count with its own time, so the interval is exact whatever the period.
  lo=$((backlog / 10)) hi=$((backlog * 9 / 10)) t_lo=""
  while :; do
    n=$(metric emostream_labelled_total || true); n=${n:-0}; n=${n%.*}
    now=$(date +%s.%N)
    if [ -z "$t_lo" ] && [ "$n" -ge "$lo" ]; then t_lo=$now; n_lo=$n; fi
    [ "$n" -ge "$hi" ] && break
    t_hi=$now; n_hi=$n
    sleep 1
  done
  n=$n_hi now=$t_hi
  daemon_rate=$(python3 -c "print(round(($n - $n_lo) / ($now - $t_lo)))")
  until n=$(metric emostream_labelled_total) && [ "${n%.*}" -ge "$backlog" ]; do sleep 0.5; done
  rss=$(ps -o rss= -p "$daemon" | tr -d ' ')
  # 3. The same daemon at a set rate below capacity.
  rate=${RATE:-$(python3 -c "print(round($daemon_rate / 2))")}
  lat=$("$loadgen" --input-topic "$in" --output-topic "$out" --count $((rate * 20)) --rate "$rate" --samples 0 \
        | sed -n 's/^latency.*p50 \([0-9.]*\) s, p99 \([0-9.]*\) s.*/\1 \2/p')
  kill -TERM "$daemon"; wait "$daemon" || true
  after=$(ort_alone)
  # The ceiling: the faster shape, averaged over before and after.
  read -r ceiling whole windowed b32 b32p <<<"$(python3 -c "
b, a = [float(x) for x in '$before'.split()], [float(x) for x in '$after'.split()]
m = lambda i: (b[i] + a[i]) / 2
print(round((max(b[:2]) + max(a[:2])) / 2), round(m(0)), round(m(1)), round(m(2)), round(m(3)))")"
  echo "  ORT alone before: $before; after: $after (whole windowed b32-1x$workers b32-${workers}x1)" >&2
  target=$(python3 -c "print(round(($wait_ms + 2 * 1000 * $rows * $workers / $ceiling) / 1000, 3))")
  line=$(printf 'round %s  ORT alone: ceiling %s/s (sorted %s/s, windows %s/s; b32 1x%s %s/s, %sx1 %s/s)  daemon backlog %s/s = %s%% of the ceiling  RSS %s MiB  at %s/s p50/p99 %s s (target p99 <= %s s)' \
    "$r" "$ceiling" "$whole" "$windowed" "$workers" "$b32" "$workers" "$b32p" "$daemon_rate" \
    "$(python3 -c "print(round(100 * $daemon_rate / $ceiling))")" "$((rss / 1024))" "$rate" "${lat:-? ?}" "$target")
  echo "$line"; echo "$line" >>"$summary"
done
[ "$rounds" -gt 0 ] && python3 - "$summary" <<'PY'
import re, sys
rows = [l for l in open(sys.argv[1])]
share = [int(re.search(r'= (\d+)% of the ceiling', l).group(1)) for l in rows]
p99 = [(float(m.group(2)), float(m.group(3))) for l in rows
       if (m := re.search(r'p50/p99 ([\d.]+) ([\d.]+) s \(target p99 <= ([\d.]+)', l))]
print(f"backlog share of the ceiling: {min(share)}-{max(share)}% (mean {sum(share)/len(share):.0f}%)")
if p99:
    print("p99 within target in %d of %d rounds" % (sum(a <= b for a, b in p99), len(p99)))
PY
rm -f "$summary"
