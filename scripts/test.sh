#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, types, a dependency audit and the
# tests (real services).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PYTHON=${PYTHON:-python3}
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
"$PYTHON" -m mypy
scripts/audit.sh
"$PYTHON" -m pytest "$@"
