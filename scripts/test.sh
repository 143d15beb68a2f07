#!/usr/bin/env bash
# Sets everything up and runs every check: Python packages, the Kafka broker and the
# schema registry (scripts/broker.sh), ruff, mypy, then pytest (unit and integration).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh requirements-dev.txt
scripts/broker.sh up
echo "ruff:" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "mypy:" && .venv/bin/mypy
.venv/bin/python -m pytest "$@"
