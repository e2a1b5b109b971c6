#!/usr/bin/env bash
# Known vulnerabilities in everything installed from PyPI (requirements.lock: the image's
# runtime subset, and the demo's, test and bench tools), from
# the Python Packaging Advisory Database through pip-audit. Exits 1 on any finding.
# A package the advisory service cannot answer for (no network, a mirror without PyPI's JSON
# API) is listed as "could not be audited" and, by default, does not fail the run; set
# AUDIT_STRICT=1 where the service is reachable to fail on that too.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=.venv/bin/python
strict=()
[ "${AUDIT_STRICT:-0}" = "1" ] && strict=(--strict)
"$PYTHON" -m pip_audit --requirement requirements.lock --no-deps --disable-pip \
  --progress-spinner off "${strict[@]}"
