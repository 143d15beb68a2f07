#!/usr/bin/env bash
# A local three-node Kafka cluster for the failure tests, from the same Maven jars as
# scripts/broker.sh and without Docker. Each node is broker and controller (a
# three-voter KRaft quorum) on loopback:
#
#   node 1: 127.0.0.1:29091 (clients), 127.0.0.1:29191 (controller)
#   node 2: 127.0.0.1:29092,           127.0.0.1:29192
#   node 3: 127.0.0.1:29093,           127.0.0.1:29193
#
# Replication 3 and min.insync.replicas 2 by default, the internal topics too, and
# no unclean leader election. Data and logs live in .cache/cluster/ (git-ignored).
#
# Usage: scripts/broker.sh cluster up | down | status | kill N | start N | controller | wipe
#   kill N      SIGKILL node N (its data stays); start N starts it again with its data
#   controller  prints the number of the node that is the active controller
#   wipe        stops the cluster and deletes its data
set -euo pipefail

# shellcheck source=broker.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/broker.sh"

CLUSTER="$ROOT/.cache/cluster"
CLUSTER_LOGS="$CLUSTER/logs"
NODES=(1 2 3)
NODE_HEAP="${CLUSTER_NODE_HEAP:-512m}"
client_port() { echo $((29090 + $1)); }
controller_port() { echo $((29190 + $1)); }
VOTERS="1@$KAFKA_HOST:29191,2@$KAFKA_HOST:29192,3@$KAFKA_HOST:29193"
BOOTSTRAP="$KAFKA_HOST:29091,$KAFKA_HOST:29092,$KAFKA_HOST:29093"

write_node_config() {
  local n=$1
  mkdir -p "$CLUSTER/node$n"
  cat >"$CLUSTER/node$n/server.properties" <<EOF
# Node $n of the local three-node cluster (written by scripts/cluster_broker.sh).
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$VOTERS
listeners=PLAINTEXT://$KAFKA_HOST:$(client_port "$n"),CONTROLLER://$KAFKA_HOST:$(controller_port "$n")
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$(client_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$CLUSTER/node$n/data
# Off here, Kafka's default (on) on the single-node and secured brokers: the tests see both.
auto.create.topics.enable=false
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
# A small dedupe buffer keeps the log cleaner within a modest heap.
log.cleaner.dedupe.buffer.size=33554432
EOF
}

format_nodes() {
  local cp="$KAFKA_LIBS/*" cluster_id
  [ -f "$CLUSTER/node1/data/meta.properties" ] && return
  cluster_id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>"$CLUSTER_LOGS/format.log" | tail -n 1)
  for n in "${NODES[@]}"; do
    java -cp "$cp" -Dlog4j2.configurationFile="$CACHE/log4j2.properties" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$CLUSTER/node$n/server.properties" >>"$CLUSTER_LOGS/format.log" 2>&1 ||
      die "formatting node $n failed; see $CLUSTER_LOGS/format.log"
  done
}

start_node() {
  local n=$1 pidfile="$CLUSTER/node$1/pid"
  if pid_alive "$pidfile"; then say "Node $n is already running (pid $(cat "$pidfile"))."; return; fi
  port_open "$KAFKA_HOST" "$(client_port "$n")" &&
    die "$KAFKA_HOST:$(client_port "$n") is already taken by another process: stop it and try again."
  nohup java -Xms128m -Xmx"$NODE_HEAP" -XX:+UseSerialGC -cp "$KAFKA_LIBS/*" \
    -Dlog4j2.configurationFile="$CACHE/log4j2.properties" \
    kafka.Kafka "$CLUSTER/node$n/server.properties" >>"$CLUSTER_LOGS/node$n.log" 2>&1 &
  echo $! >"$pidfile"
  say "Starting node $n on $KAFKA_HOST:$(client_port "$n") (log: $CLUSTER_LOGS/node$n.log) ..."
}

# A node is up when its client port answers and its log says the server started since
# this start (the log is appended to across restarts, so count the lines).
node_up() {
  local n=$1
  port_open "$KAFKA_HOST" "$(client_port "$n")" || return 1
  [ "$(grep -c "Kafka Server started" "$CLUSTER_LOGS/node$n.log" 2>/dev/null)" -gt "$(cat "$CLUSTER/node$n/starts" 2>/dev/null || echo 0)" ]
}

wait_for_nodes() {
  local deadline=$((SECONDS + START_TIMEOUT_S)) n
  for n in "$@"; do
    until node_up "$n"; do
      pid_alive "$CLUSTER/node$n/pid" || die "node $n exited during start-up; see $CLUSTER_LOGS/node$n.log"
      [ $SECONDS -lt $deadline ] || die "node $n did not start within ${START_TIMEOUT_S}s; see $CLUSTER_LOGS/node$n.log"
      sleep 0.5
    done
  done
}

mark_starting() {  # remembers how many starts the node's log showed before this one
  grep -c "Kafka Server started" "$CLUSTER_LOGS/node$1.log" 2>/dev/null >"$CLUSTER/node$1/starts" || echo 0 >"$CLUSTER/node$1/starts"
}

cluster_up() {
  require_java
  mkdir -p "$LOGS" "$RUN" "$CLUSTER_LOGS"
  fetch_jars
  write_kafka_config  # its log4j2.properties
  for n in "${NODES[@]}"; do write_node_config "$n"; done
  format_nodes
  for n in "${NODES[@]}"; do
    pid_alive "$CLUSTER/node$n/pid" && continue
    mark_starting "$n"
    start_node "$n"
  done
  wait_for_nodes "${NODES[@]}"
  say "The cluster answers on $BOOTSTRAP."
}

cluster_kill() {
  local n=$1 pidfile="$CLUSTER/node$1/pid"
  pid_alive "$pidfile" || die "node $n is not running"
  kill -9 "$(cat "$pidfile")"
  while pid_alive "$pidfile"; do sleep 0.1; done
  rm -f "$pidfile"
  say "Killed node $n (SIGKILL); its data stays in $CLUSTER/node$n/data."
}

cluster_start() {
  local n=$1
  mkdir -p "$CLUSTER_LOGS"
  mark_starting "$n"
  start_node "$n"
  wait_for_nodes "$n"
  say "Node $n answers on $KAFKA_HOST:$(client_port "$n")."
}

cluster_controller() {
  # The leader of the KRaft quorum as the nodes last recorded it: every voter writes
  # the leader and its epoch to quorum-state on each election; the highest epoch wins.
  local best=-1 leader=-1 n file epoch id
  for n in "${NODES[@]}"; do
    file="$CLUSTER/node$n/data/__cluster_metadata-0/quorum-state"
    [ -f "$file" ] || continue
    epoch=$(sed -n 's/.*"leaderEpoch":\([0-9][0-9]*\).*/\1/p' "$file")
    id=$(sed -n 's/.*"leaderId":\([0-9][0-9]*\).*/\1/p' "$file")
    if [ -n "$epoch" ] && [ -n "$id" ] && [ "$epoch" -gt "$best" ]; then best=$epoch leader=$id; fi
  done
  [ "$leader" -ge 1 ] || die "no node has recorded an active controller; is the cluster up?"
  echo "$leader"
}

cluster_down() {
  # All nodes at once: one after another, each stop took about 10 s; together they take about 7 s.
  for n in "${NODES[@]}"; do stop_pid "Node $n" "$CLUSTER/node$n/pid" & done
  wait
}

cluster_status() {
  local rc=0
  for n in "${NODES[@]}"; do
    if pid_alive "$CLUSTER/node$n/pid" && port_open "$KAFKA_HOST" "$(client_port "$n")"; then
      say "Node $n: answering on $KAFKA_HOST:$(client_port "$n")"
    else
      say "Node $n: not running"; rc=1
    fi
  done
  return $rc
}

node_arg() {
  case "${1:-}" in 1 | 2 | 3) echo "$1" ;; *) die "name a node: 1, 2 or 3" ;; esac
}

case "${1:-}" in
  up) cluster_up ;;
  down) cluster_down ;;
  status) cluster_status ;;
  kill) cluster_kill "$(node_arg "${2:-}")" ;;
  start) cluster_start "$(node_arg "${2:-}")" ;;
  controller) cluster_controller ;;
  wipe) cluster_down; rm -rf "$CLUSTER"; say "Deleted $CLUSTER." ;;
  *) say "Usage: scripts/broker.sh cluster up | down | status | kill N | start N | controller | wipe"; exit 2 ;;
esac
