#!/usr/bin/env bash
# Sets everything up and runs every check: Python packages, ruff, mypy, the import
# contract (lint-imports, configured in pyproject.toml), the unit tests on two
# workers, one per core (before any broker is started: they need none, and must cover
# at least 85% of the package's lines and 80% of each module), then the Kafka broker
# and the schema registry (scripts/broker.sh) and the integration tests, then the secured broker
# (scripts/broker.sh secure) and the tests of TLS, SASL, OAuth and ACLs, then the
# three-node cluster (scripts/broker.sh cluster) and the broker-failure tests.
# Extra arguments run pytest with them instead, after the same set-up, e.g.
#   scripts/test.sh tests/unit -x     scripts/test.sh -k retry
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh requirements-dev.txt
echo "ruff:" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "mypy:" && .venv/bin/mypy
echo "import contract:" && .venv/bin/lint-imports --no-logo
if [ $# -gt 0 ]; then
  scripts/broker.sh up
  case " $* " in *secured*) scripts/broker.sh secure up ;; esac
  case " $* " in *cluster*) scripts/broker.sh cluster up ;; esac
  exec .venv/bin/python -m pytest "$@"
fi
mkdir -p .cache
.venv/bin/python -m pytest tests/unit -m 'not integration and not secured and not cluster' -n 2 --cov=orderpipe --cov-report=term --cov-report=json:.cache/coverage.json \
  --cov-fail-under=85
.venv/bin/python scripts/coverage_floor.py .cache/coverage.json 80
scripts/broker.sh up
.venv/bin/python -m pytest tests/integration -m integration
scripts/broker.sh secure up
.venv/bin/python -m pytest tests/secured -m secured
scripts/broker.sh secure down # its CPU goes to the cluster
scripts/broker.sh cluster up
.venv/bin/python -m pytest tests/cluster -m cluster
