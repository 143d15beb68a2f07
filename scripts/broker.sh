#!/usr/bin/env bash
# Starts, stops and reports on the two services the order pipeline needs:
# a single-node Kafka 4.1 broker in KRaft mode on 127.0.0.1:9092 and an Apicurio
# schema registry on 127.0.0.1:8081 (Confluent-compatible API under /apis/ccompat/v7).
#
# With a Docker engine that answers, it drives docker-compose.yml. Without one it
# runs the real Apache Kafka and Apicurio Registry from Maven Central jars, cached
# under .cache/broker/ (git-ignored), with their logs in .cache/broker/logs/.
#
# Usage: scripts/broker.sh up | down | status | stop-kafka
#        scripts/broker.sh secure up | down | status   (the secured broker: scripts/secure_broker.sh)
#        scripts/broker.sh cluster up | down | status | kill N | start N | controller | wipe
#                                                       (three nodes: scripts/cluster_broker.sh)
#   BROKER_MODE=docker|local forces one way of running them (default: auto).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/broker"
LOGS="$CACHE/logs"
RUN="$CACHE/run"
KAFKA_VERSION="4.1.1"      # passed to scripts/broker-pom.xml
APICURIO_VERSION="3.0.9"
KAFKA_LIBS="$CACHE/kafka-$KAFKA_VERSION"
APICURIO_HOME="$CACHE/apicurio-$APICURIO_VERSION"
KAFKA_HOST=127.0.0.1
KAFKA_PORT=9092
CONTROLLER_PORT=9093
REGISTRY_PORT=8081
REGISTRY_CHECK_URL="http://$KAFKA_HOST:$REGISTRY_PORT/apis/ccompat/v7/subjects"
START_TIMEOUT_S="${BROKER_START_TIMEOUT_S:-120}"

say() { printf '%s\n' "$*"; }
die() { printf 'broker.sh: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

registry_answers() {
  curl -fsS -m 2 -o /dev/null "$REGISTRY_CHECK_URL" 2>/dev/null
}

# The way `up` started the services is recorded, so that `down` and `status` act on
# the same services even if a Docker engine started answering in between.
use_docker() {
  local mode="${BROKER_MODE:-}"
  [ -n "$mode" ] || mode=$(cat "$RUN/mode" 2>/dev/null || echo auto)
  case "$mode" in
    docker) return 0 ;;
    local) return 1 ;;
    auto) command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 ;;
    *) die "BROKER_MODE must be docker, local or auto, got '$mode'" ;;
  esac
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

require_java() {
  local version major
  command -v java >/dev/null 2>&1 ||
    die "Java 17 or newer is needed to run Kafka without Docker and none was found: install a JDK 17+ (for example 'apt-get install openjdk-17-jre-headless') or start a Docker engine."
  version=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
  major=${version%%.*}
  [ "$major" = 1 ] && major=$(echo "$version" | cut -d. -f2)
  [ "${major:-0}" -ge 17 ] 2>/dev/null ||
    die "Java 17 or newer is needed to run Kafka without Docker, found Java $version: install a JDK 17+ or start a Docker engine."
}

require_maven() {
  command -v mvn >/dev/null 2>&1 ||
    die "Maven is needed once to download Kafka and Apicurio Registry from Maven Central and none was found: install it (for example 'apt-get install maven') or start a Docker engine."
}

# Downloads the jars once; later runs reuse the cache.
fetch_jars() {
  if [ ! -f "$KAFKA_LIBS/.complete" ]; then
    require_maven
    say "Downloading Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS ..."
    rm -rf "$KAFKA_LIBS"
    mvn -q -B -f "$ROOT/scripts/broker-pom.xml" dependency:copy-dependencies -Dkafka.version="$KAFKA_VERSION" \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >"$LOGS/maven-kafka.log" 2>&1 ||
      die "Maven could not download Kafka; see $LOGS/maven-kafka.log"
    touch "$KAFKA_LIBS/.complete"
  fi
  if [ ! -f "$APICURIO_HOME/.complete" ]; then
    require_maven
    say "Downloading Apicurio Registry $APICURIO_VERSION from Maven Central into $APICURIO_HOME ..."
    rm -rf "$APICURIO_HOME"
    mvn -q -B -f "$ROOT/scripts/broker-pom.xml" dependency:copy \
      -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
      -DoutputDirectory="$APICURIO_HOME" >"$LOGS/maven-apicurio.log" 2>&1 ||
      die "Maven could not download Apicurio Registry; see $LOGS/maven-apicurio.log"
    tar -xzf "$APICURIO_HOME/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz" -C "$APICURIO_HOME"
    rm "$APICURIO_HOME/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz"
    touch "$APICURIO_HOME/.complete"
  fi
}

# The settings every single-node broker here shares (the secured one too).
single_node_settings() {
  cat <<'EOF'
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Abort a dead consumer's timed-out transaction within a second of its timeout,
# not up to ten seconds later (the default check interval).
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
EOF
}

write_kafka_config() {
  cat >"$CACHE/server.properties" <<EOF
# Single-node KRaft broker for local development and tests (written by scripts/broker.sh).
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$CACHE/kafka-data
$(single_node_settings)
EOF
  cat >"$CACHE/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

start_kafka_local() {
  if pid_alive "$RUN/kafka.pid"; then
    say "Kafka is already running (pid $(cat "$RUN/kafka.pid"))."
    return
  fi
  port_open "$KAFKA_HOST" "$KAFKA_PORT" &&
    die "$KAFKA_HOST:$KAFKA_PORT is already taken by another process (another Kafka, or a Docker container?): stop it, or use that broker and skip this script."
  write_kafka_config
  local cp="$KAFKA_LIBS/*"
  if [ ! -f "$CACHE/kafka-data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>"$LOGS/kafka-format.log" | tail -n 1) ||
      die "Kafka could not make a cluster id; see $LOGS/kafka-format.log"
    java -cp "$cp" -Dlog4j2.configurationFile="$CACHE/log4j2.properties" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$CACHE/server.properties" --standalone >"$LOGS/kafka-format.log" 2>&1 ||
      die "formatting the Kafka storage failed; see $LOGS/kafka-format.log"
  fi
  nohup java -Xms256m -Xmx1g -cp "$cp" -Dlog4j2.configurationFile="$CACHE/log4j2.properties" \
    kafka.Kafka "$CACHE/server.properties" >"$LOGS/kafka.log" 2>&1 &
  echo $! >"$RUN/kafka.pid"
  say "Starting Kafka $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (log: $LOGS/kafka.log) ..."
}

start_registry_local() {
  if pid_alive "$RUN/registry.pid"; then
    say "The schema registry is already running (pid $(cat "$RUN/registry.pid"))."
    return
  fi
  port_open "$KAFKA_HOST" "$REGISTRY_PORT" &&
    die "$KAFKA_HOST:$REGISTRY_PORT is already taken by another process (another registry, or a Docker container?): stop it, or use that registry and skip this script."
  # cd first, then background java on its own, so that $! is java's pid (not a subshell's).
  cd "$APICURIO_HOME"
  nohup java -Xmx512m -Dquarkus.http.host="$KAFKA_HOST" -Dquarkus.http.port="$REGISTRY_PORT" \
    -jar "apicurio-registry-app-$APICURIO_VERSION-runner.jar" >"$LOGS/registry.log" 2>&1 &
  echo $! >"$RUN/registry.pid"
  cd "$ROOT"
  say "Starting Apicurio Registry $APICURIO_VERSION on $KAFKA_HOST:$REGISTRY_PORT (log: $LOGS/registry.log) ..."
}

kafka_ready() {
  port_open "$KAFKA_HOST" "$KAFKA_PORT" || return 1
  # In local mode the port opens a moment before the broker can serve metadata.
  [ -f "$LOGS/kafka.log" ] && ! use_docker && { grep -q "Kafka Server started" "$LOGS/kafka.log" || return 1; }
  return 0
}

wait_until_ready() {
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until kafka_ready && registry_answers; do
    if ! use_docker; then
      pid_alive "$RUN/kafka.pid" || die "Kafka exited during start-up; see $LOGS/kafka.log"
      pid_alive "$RUN/registry.pid" || die "the schema registry exited during start-up; see $LOGS/registry.log"
    fi
    [ $SECONDS -lt $deadline ] ||
      die "Kafka and the registry did not both answer within ${START_TIMEOUT_S}s; see the logs in $LOGS"
    sleep 0.5
  done
  say "Kafka answers on $KAFKA_HOST:$KAFKA_PORT and the schema registry on http://$KAFKA_HOST:$REGISTRY_PORT/apis/ccompat/v7."
}

stop_pid() {
  local name=$1 pidfile=$2 pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; say "$name is not running."; return; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true  # it may have ended since the check
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$pidfile"
  say "Stopped $name."
}

cmd_up() {
  mkdir -p "$LOGS" "$RUN"
  rm -f "$RUN/mode"  # decide afresh; recorded below for down and status
  if use_docker; then
    echo docker >"$RUN/mode"
    say "A Docker engine answers: starting the services from docker-compose.yml ..."
    docker compose -f "$ROOT/docker-compose.yml" up -d --wait
  else
    echo local >"$RUN/mode"
    require_java
    fetch_jars
    start_kafka_local
    start_registry_local
  fi
  wait_until_ready
  use_docker || say "Logs are in $LOGS; stop both with 'scripts/broker.sh down'."
}

cmd_down() {
  if use_docker; then
    docker compose -f "$ROOT/docker-compose.yml" down
  else
    stop_pid "The schema registry" "$RUN/registry.pid"
    stop_pid "Kafka" "$RUN/kafka.pid"
  fi
}

# Stops the Kafka broker alone, the registry staying up (tests/integration/test_metrics_live.py uses it
# for a broker outage); `up` starts it again and waits until it answers.
cmd_stop_kafka() {
  if use_docker; then
    docker compose -f "$ROOT/docker-compose.yml" stop kafka
  else
    stop_pid "Kafka" "$RUN/kafka.pid"
  fi
}

cmd_status() {
  local rc=0
  if kafka_ready; then say "Kafka: answering on $KAFKA_HOST:$KAFKA_PORT"; else say "Kafka: not answering on $KAFKA_HOST:$KAFKA_PORT"; rc=1; fi
  if registry_answers; then say "Schema registry: answering on $REGISTRY_CHECK_URL"; else say "Schema registry: not answering on $REGISTRY_CHECK_URL"; rc=1; fi
  if use_docker; then say "Mode: Docker (docker-compose.yml)"; else say "Mode: local jars (logs in $LOGS)"; fi
  return $rc
}

# scripts/secure_broker.sh sources this file for its helpers; only a direct run acts.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    stop-kafka) cmd_stop_kafka ;;
    secure) shift; exec "$ROOT/scripts/secure_broker.sh" "$@" ;;
    cluster) shift; exec "$ROOT/scripts/cluster_broker.sh" "$@" ;;
    *) say "Usage: scripts/broker.sh up | down | status | stop-kafka, scripts/broker.sh secure up | down | status,"
       say "       or scripts/broker.sh cluster up | down | status | kill N | start N | controller | wipe"; exit 2 ;;
  esac
fi
