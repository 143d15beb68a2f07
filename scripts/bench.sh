#!/usr/bin/env bash
# Sets up and runs the benchmark (python -m bench.run): Python packages with py-spy, the
# broker (scripts/broker.sh), kcat (the C ceiling, from Debian's packages) and Kafka's
# Java performance tools from Maven Central (cached under .cache/bench/).
# Arguments go to bench/run.py, e.g. scripts/bench.sh --write bench/RESULTS.md --profile-base REF
# --scale-out-cpu 0.15 (the last as root);
# scripts/bench.sh --compare BASE runs bench/compare.py instead (this checkout against BASE);
# scripts/bench.sh --unknown-ids runs bench/unknown_ids.py (records with random schema ids).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="$ROOT/.cache/bench/kafka-tools-4.1.1"

command -v kcat >/dev/null 2>&1 ||
  { echo "bench.sh: kcat is needed for the C ceiling: install it with 'apt-get install -y kcat'" >&2; exit 1; }
scripts/setup.sh bench/requirements.txt
scripts/broker.sh up
if [ ! -f "$TOOLS/.complete" ]; then
  echo "Downloading Kafka's performance tools from Maven Central into $TOOLS ..."
  mkdir -p "$TOOLS"
  mvn -q -B -f bench/tools-pom.xml dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$TOOLS" >"$TOOLS.maven.log" 2>&1 ||
    { echo "bench.sh: Maven could not download kafka-tools; see $TOOLS.maven.log" >&2; exit 1; }
  touch "$TOOLS/.complete"
fi
if [ "${1:-}" = "--unknown-ids" ]; then
  shift
  exec .venv/bin/python -m bench.unknown_ids "$@"
fi
if [ "${1:-}" = "--compare" ]; then
  shift
  exec .venv/bin/python -m bench.compare "$@"
fi
exec .venv/bin/python -m bench.run "$@"
