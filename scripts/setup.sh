#!/usr/bin/env bash
# Installs what the demo and the test suite need on a Debian machine: the real services (apt)
# and the package with its test dependencies (pip). Idempotent; fast when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(redis-server redis-tools rabbitmq-server prometheus prometheus-alertmanager)
missing=()
for bin in redis-server rabbitmq-server promtool prometheus-alertmanager; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/lib/rabbitmq/bin/$bin" ] || missing+=("$bin")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${APT_PACKAGES[*]} (missing: ${missing[*]})"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[test]"
# kubectl (for kustomize rendering in the deployment tests), cached in .tools/
scripts/install-deploy-tools.sh
