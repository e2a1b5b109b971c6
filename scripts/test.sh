#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh test), then lint, types, a
# dependency audit and the tests (real services), all through the project's .venv/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
PYTHON=.venv/bin/python
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
"$PYTHON" -m mypy
scripts/audit.sh
"$PYTHON" -m pytest "$@"
