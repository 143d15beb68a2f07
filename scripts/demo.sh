#!/usr/bin/env bash
# The pipeline end to end on a real broker: starts Kafka and the registry, then a
# consumer (20% simulated transient failures) and a producer (40 orders, some invalid,
# some undecodable). Watch orders get processed, retried and dead-lettered.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh requirements.txt
scripts/broker.sh up
PY=.venv/bin/python

echo
echo "== consumer.py --failure-rate 0.2 --idle-exit 8 (in the background) =="
$PY consumer.py --failure-rate 0.2 --idle-exit 8 &
consumer=$!
trap 'kill -TERM $consumer 2>/dev/null || true' INT TERM

echo "== producer.py --count 40 --rate 10 --invalid-rate 0.1 --poison-rate 0.05 --quiet =="
$PY producer.py --count 40 --rate 10 --invalid-rate 0.1 --poison-rate 0.05 --quiet
wait $consumer
echo
echo "Done. The broker keeps running; stop it with 'scripts/broker.sh down'."
