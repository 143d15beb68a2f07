#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs a requirements file into it, once per
# change of that file. Usage: scripts/setup.sh [requirements.txt|requirements-dev.txt]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIREMENTS="${1:-requirements.txt}"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

command -v "$PYTHON" >/dev/null 2>&1 ||
  { echo "setup.sh: Python 3.11 or newer is needed and '$PYTHON' was not found; install it or set PYTHON=/path/to/python3.11" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "setup.sh: Python 3.11 or newer is needed, '$PYTHON' is $("$PYTHON" -V 2>&1); set PYTHON=/path/to/python3.11" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# Reinstall only when the requirements (or a file they include) changed.
stamp="$VENV/.installed-$(echo "$REQUIREMENTS" | tr / -)"
digest=$(cat "$ROOT"/requirements*.txt "$ROOT/$REQUIREMENTS" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  echo "Installing Python packages from $REQUIREMENTS into $VENV ..."
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/$REQUIREMENTS"
  echo "$digest" >"$stamp"
fi
