#!/usr/bin/env bash
# A real single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) on localhost,
# for the tests, the demo and CI. Jars come from Maven Central via mvn into .cache/kafka/libs.
#
#   scripts/kafka.sh fetch     resolve the broker jars (once)
#   scripts/kafka.sh start     format storage if needed, start, wait until it accepts connections
#   scripts/kafka.sh stop      stop it (and wait)
#   scripts/kafka.sh status
#
# KAFKA_PORT (default 19092; controller on +1) and KAFKA_DIR (default .cache/kafka) override.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${KAFKA_DIR:-$root/.cache/kafka}
port=${KAFKA_PORT:-19092}
cport=$((port + 1))
libs="$dir/libs"
run="$dir/run-$port"
pidfile="$run/broker.pid"

fetch() {
  if ls "$libs"/kafka_2.13-*.jar >/dev/null 2>&1; then return; fi
  mkdir -p "$libs"
  mvn -q -B -f "$root/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime >&2
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

java_cmd() {
  java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dkafka.logs.dir="$run/logs" -Dlog4j2.configurationFile="$root/scripts/kafka/log4j2.yaml" \
    -cp "$libs/*" "$@"
}

start() {
  fetch
  if running; then echo "broker already running on 127.0.0.1:$port"; return; fi
  mkdir -p "$run/logs"
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$run/data
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.segment.bytes=67108864
# The tests load both cores (daemons, ONNX Runtime, producers) beside the broker; with the
# default 9 s session, a starved broker missed its heartbeats to its own controller, was fenced
# and went offline for a moment (seen once: a producer flush timed out). A single-node broker
# has no one to fail over to, so let it wait a minute.
broker.session.timeout.ms=60000
PROPS
  if [ ! -f "$run/data/meta.properties" ]; then
    java_cmd kafka.tools.StorageTool format -t "$(java_cmd kafka.tools.StorageTool random-uuid)" \
      -c "$run/server.properties" > "$run/logs/format.log" 2>&1 || { cat "$run/logs/format.log" >&2; exit 1; }
  fi
  nohup setsid java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dkafka.logs.dir="$run/logs" -Dlog4j2.configurationFile="$root/scripts/kafka/log4j2.yaml" \
    -cp "$libs/*" kafka.Kafka "$run/server.properties" > "$run/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && grep -q "Kafka Server started\|KafkaRaftServer.*started\|Transitioning from RECOVERY to RUNNING" "$run/logs/server.log" 2>/dev/null; then
      echo "broker running on 127.0.0.1:$port (pid $(cat "$pidfile"), logs $run/logs)"
      return
    fi
    running || { echo "broker exited during start-up; see $run/logs" >&2; tail -20 "$run/logs/stdout.log" >&2; exit 1; }
    sleep 1
  done
  echo "broker did not start within 120 s; see $run/logs" >&2
  exit 1
}

stop() {
  if running; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 1 60); do running || break; sleep 1; done
    running && kill -9 "$(cat "$pidfile")" || true
  fi
  rm -f "$pidfile"
  echo "broker on 127.0.0.1:$port stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
