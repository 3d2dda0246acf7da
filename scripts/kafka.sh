#!/usr/bin/env bash
# A real single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) on localhost,
# for the tests, the demo and CI. Jars come from Maven Central via mvn into .cache/kafka/libs.
#
#   scripts/kafka.sh fetch     resolve the broker jars (once)
#   scripts/kafka.sh start     format storage if needed, start, wait until it accepts connections
#   scripts/kafka.sh stop      stop it (and wait)
#   scripts/kafka.sh status
#   scripts/kafka.sh client-config sasl|mtls   the [kafka.properties] and [kafka.secret_files]
#                                              a daemon needs for a secured listener (TOML)
#
# Listeners: PLAINTEXT on KAFKA_PORT (default 19092), the controller on +1, SASL_SSL with
# SCRAM-SHA-512 on +2 and SSL with required client certificates (mTLS) on +3. The CA, the
# broker's and a client's certificates are made here with openssl, the SCRAM user
# (`emostream`) is created when the storage is formatted; keys and passwords stay in the
# broker's run directory (KAFKA_DIR, default .cache/kafka, never committed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${KAFKA_DIR:-$root/.cache/kafka}
port=${KAFKA_PORT:-19092}
cport=$((port + 1))
sasl_port=$((port + 2))
mtls_port=$((port + 3))
libs="$dir/libs"
run="$dir/run-$port"
pidfile="$run/broker.pid"
tls="$run/tls"

fetch() {
  if ls "$libs"/kafka_2.13-*.jar >/dev/null 2>&1; then return; fi
  mkdir -p "$libs"
  mvn -q -B -f "$root/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime >&2
}

# A throw-away CA, a broker certificate for 127.0.0.1/localhost and a client certificate
# (its key encrypted), and the passwords: random, made once per run directory.
make_tls() {
  [ -f "$tls/done" ] && return
  rm -rf "$tls"; mkdir -p "$tls"; chmod 700 "$tls"
  (
    cd "$tls"
    openssl rand -hex 16 > store.password
    openssl rand -hex 16 > client-key.password
    openssl rand -hex 16 > scram.password
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 825 \
      -subj "/CN=emostream test CA" 2>/dev/null
    for who in broker client; do
      openssl req -newkey rsa:2048 -nodes -keyout "$who.key" -out "$who.csr" \
        -subj "/CN=emostream-$who" 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out "$who.pem" -days 825 -extfile "$who.ext" 2>/dev/null
    done
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
      -out broker.p12 -passout "file:store.password"
    openssl pkcs8 -topk8 -v2 aes-256-cbc -in client.key -out client-key.pem \
      -passout "file:client-key.password"
    rm -f client.key broker.key ./*.csr ./*.ext
    chmod 600 ./*
    touch done
  )
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
  make_tls
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SASL_SSL://127.0.0.1:$sasl_port,SSL://127.0.0.1:$mtls_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sasl_port,SSL://127.0.0.1:$mtls_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$(cat "$tls/store.password")
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.ssl.ssl.client.auth=required
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
  # Storage formatted before the SCRAM user existed (an older run directory) is made again.
  if [ -f "$run/data/meta.properties" ] && [ ! -f "$run/data/.scram-user" ]; then
    echo "re-formatting $run/data to create the SCRAM user (test data is lost)" >&2
    rm -rf "$run/data"
  fi
  if [ ! -f "$run/data/meta.properties" ]; then
    java_cmd kafka.tools.StorageTool format -t "$(java_cmd kafka.tools.StorageTool random-uuid)" \
      -c "$run/server.properties" \
      --add-scram "SCRAM-SHA-512=[name=emostream,password=$(cat "$tls/scram.password")]" \
      > "$run/logs/format.log" 2>&1 || { cat "$run/logs/format.log" >&2; exit 1; }
    touch "$run/data/.scram-user"
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

# What a daemon needs in its config file for a secured listener; secrets by file path only.
client_config() {
  [ -f "$tls/done" ] || { echo "no certificates yet: scripts/kafka.sh start first" >&2; exit 1; }
  case "${1:-}" in
    sasl) cat <<TOML
[kafka]
brokers = "127.0.0.1:$sasl_port"
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "emostream"
"ssl.ca.location" = "$tls/ca.pem"
[kafka.secret_files]
"sasl.password" = "$tls/scram.password"
TOML
    ;;
    mtls) cat <<TOML
[kafka]
brokers = "127.0.0.1:$mtls_port"
[kafka.properties]
"security.protocol" = "SSL"
"ssl.ca.location" = "$tls/ca.pem"
"ssl.certificate.location" = "$tls/client.pem"
"ssl.key.location" = "$tls/client-key.pem"
[kafka.secret_files]
"ssl.key.password" = "$tls/client-key.password"
TOML
    ;;
    *) echo "usage: $0 client-config sasl|mtls" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  client-config) client_config "${2:-}" ;;
  status) if running; then echo "running on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status|client-config sasl|mtls" >&2; exit 2 ;;
esac
