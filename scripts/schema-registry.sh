#!/usr/bin/env bash
# A real schema registry on localhost — Apicurio Registry 3.3.3 (Apache-2.0), a Quarkus app from
# Maven Central with in-memory storage — for the Schema Registry wire-format tests and demo. Its
# Confluent-compatible API is at http://127.0.0.1:$SR_PORT/apis/ccompat/v7. It needs Java 21+:
# the Temurin 25 JDK under /usr/lib/jvm (JAVA_HOME_21PLUS overrides); Java 17 refuses it.
#
#   scripts/schema-registry.sh fetch    download and unpack the app into .cache/apicurio (once)
#   scripts/schema-registry.sh start    start it, wait until the ccompat API answers
#   scripts/schema-registry.sh stop     stop it (and wait)
#   scripts/schema-registry.sh status
#   scripts/schema-registry.sh url      the ccompat base URL
#   scripts/schema-registry.sh client   make the independent test client's Python (confluent-kafka
#                                       with its Schema Registry serdes, from PyPI, in
#                                       .cache/sr-venv) and print its path
#
# SR_PORT (default 18085; its management interface takes the port after it). State is in memory (a restart starts empty) unless SR_DATA names a
# directory: then it is kept there (H2 file), so a registry stopped and started again still
# knows every schema id (a test that stops the registry starts its own, on another port).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=${SR_PORT:-18085}
version=3.3.3
home=$root/.cache/apicurio/apicurio-registry-app-$version
run=$root/.cache/apicurio/run-$port
pidfile=$run/registry.pid

java_bin() {
  if [ -n "${JAVA_HOME_21PLUS:-}" ]; then echo "$JAVA_HOME_21PLUS/bin/java"; return; fi
  for j in /usr/lib/jvm/temurin-2[1-9]*/bin/java /usr/lib/jvm/*-2[1-9]-*/bin/java; do
    [ -x "$j" ] && { echo "$j"; return; }
  done
  echo "no Java 21+ JDK under /usr/lib/jvm (set JAVA_HOME_21PLUS)" >&2; exit 1
}

fetch() {
  [ -f "$home/quarkus-run.jar" ] && return
  echo "fetching Apicurio Registry $version from Maven Central (once, ~160 MB)" >&2
  mvn -q -B dependency:get -Dartifact="io.apicurio:apicurio-registry-app:$version:tar.gz:all" \
    -Dtransitive=false >&2
  tarball=$(ls ~/.m2/repository/io/apicurio/apicurio-registry-app/$version/apicurio-registry-app-$version-all.tar.gz)
  mkdir -p "$home.tmp"
  tar -xzf "$tarball" -C "$home.tmp"
  # The archive holds one top-level directory with quarkus-run.jar.
  jar=$(find "$home.tmp" -name quarkus-run.jar | head -1)
  rm -rf "$home"
  mv "$(dirname "$jar")" "$home"
  rm -rf "$home.tmp"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
answers() { curl -fs "http://127.0.0.1:$port/apis/ccompat/v7/subjects" >/dev/null 2>&1; }

start() {
  fetch
  if running; then echo "schema registry already running on 127.0.0.1:$port"; return; fi
  # A registry this script did not start (a test's leftover, another program) must not pass
  # for this one: its schemas and storage would not be the ones asked for.
  if answers; then echo "something already answers on 127.0.0.1:$port (not started by this script)" >&2; exit 1; fi
  mkdir -p "$run"
  # cd first, on its own: `cd && cmd &` would background a subshell and record its pid.
  (cd "$home" || exit 1
   nohup setsid "$(java_bin)" -Dquarkus.http.host=127.0.0.1 \
     -Dquarkus.http.port="$port" -Dquarkus.management.host=127.0.0.1 \
     -Dquarkus.management.port=$((port + 1)) -Xmx512m \
     ${SR_DATA:+-Dapicurio.datasource.url=jdbc:h2:file:$SR_DATA/registry} \
     -jar quarkus-run.jar > "$run/registry.log" 2>&1 < /dev/null & echo $! > "$pidfile")
  for _ in $(seq 1 120); do
    if answers; then
      echo "schema registry running on 127.0.0.1:$port (pid $(cat "$pidfile"), ccompat API $(url), log $run/registry.log)"
      return
    fi
    running || { echo "the schema registry exited during start-up; see $run/registry.log" >&2; tail -20 "$run/registry.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "the schema registry did not answer within 60 s; see $run/registry.log" >&2
  exit 1
}

stop() {
  if running; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 1 60); do running || break; sleep 0.5; done
    running && kill -9 "$(cat "$pidfile")" || true
  fi
  rm -f "$pidfile"
  echo "schema registry on 127.0.0.1:$port stopped"
}

url() { echo "http://127.0.0.1:$port/apis/ccompat/v7"; }

client() {
  venv=$root/.cache/sr-venv
  if ! "$venv/bin/python" -c 'import confluent_kafka.schema_registry, fastavro, jsonschema' 2>/dev/null; then
    echo "installing confluent-kafka 2.16.2 with its Schema Registry serdes from PyPI into $venv (once)" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q "confluent-kafka[avro,schemaregistry]==2.16.2" jsonschema >&2
  fi
  echo "$venv/bin/python"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  url) url ;;
  client) client ;;
  status) if running; then echo "running on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status|url|client" >&2; exit 2 ;;
esac
