#!/usr/bin/env bash
# Prints, applies or revokes the Kafka ACLs each program needs (acls.py, orderpipe/programs/acl_command.py):
#   scripts/acls.sh print  User:pipeline [--program producer|consumer|stats|dlq ...]
#   scripts/acls.sh apply  User:pipeline [--program ...]    (as a principal that may manage ACLs)
#   scripts/acls.sh revoke User:pipeline [--program ...]
# Topic, group and connection settings come from the environment and .env, as for
# producer.py and consumer.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" >/dev/null
cd "$ROOT"
exec "$ROOT/.venv/bin/python" "$ROOT/acls.py" "$@"
