#!/usr/bin/env bash
# The benchmark through the project's .venv/ (scripts/setup.sh test installs what it needs):
#   scripts/bench.sh [ARGS]            python -m bench ARGS
#   scripts/bench.sh -m bench.soak ... another bench module
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
if [ "${1:-}" = "-m" ]; then
  exec .venv/bin/python "$@"
fi
exec .venv/bin/python -m bench "$@"
