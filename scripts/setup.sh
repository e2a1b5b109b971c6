#!/usr/bin/env bash
# Installs what the demo or the test suite needs on a Debian machine, and nothing else:
#   scripts/setup.sh demo   redis-server, prometheus, alertmanager (apt), the package with celery
#                           into .venv/
#   scripts/setup.sh test   also rabbitmq-server (apt), the test and bench tools (py-spy
#                           included) into .venv/, kubectl and helm into .tools/
# Every version from PyPI comes from requirements.lock (scripts/lock.sh writes it), installed
# into the project's own virtual environment, .venv/, so nothing from the machine's
# site-packages is used. Idempotent: a second run with the same lock installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
purpose=${1:-test}

# Each needed command, and the Debian package that brings it.
case "$purpose" in
  venv)  # only .venv/ with a working pip (scripts/lock.sh)
    needed=()
    extras=""
    ;;
  demo)
    needed=(redis-server:redis-server redis-cli:redis-tools prometheus:prometheus
      prometheus-alertmanager:prometheus-alertmanager)
    extras=celery
    ;;
  test)
    needed=(redis-server:redis-server redis-cli:redis-tools rabbitmq-server:rabbitmq-server
      promtool:prometheus prometheus:prometheus prometheus-alertmanager:prometheus-alertmanager
      npm:npm)
    extras=celery,msgpack,test,bench
    ;;
  *)
    echo "setup: usage: scripts/setup.sh demo|test|venv" >&2
    exit 2
    ;;
esac

# python3 -m venv needs ensurepip, which Debian ships apart in python3-venv.
missing=()
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
for pair in "${needed[@]+"${needed[@]}"}"; do
  bin=${pair%%:*}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/lib/rabbitmq/bin/$bin" ] || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t apt_packages < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "setup: installing ${apt_packages[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "setup: as root, run: apt-get install ${apt_packages[*]}" >&2
      exit 1
    }
    SUDO="sudo"
  fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
fi

# A .venv/ left without pip (made before python3-venv was there) is made again.
.venv/bin/python -m pip --version >/dev/null 2>&1 || python3 -m venv --clear .venv
[ "$purpose" = venv ] && exit 0
# A stamp per purpose and lock: the same lock, pyproject and purpose install once.
stamp=".venv/.installed-$purpose-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check --constraint requirements.lock)
  "${pip[@]}" pip setuptools wheel
  # The build backend comes from the lock too: no isolated build fetching whatever is newest.
  "${pip[@]}" --no-build-isolation --editable ".[$extras]"
  rm -f .venv/.installed-"$purpose"-*
  touch "$stamp"
fi
[ "$purpose" = test ] && scripts/install-deploy-tools.sh
exit 0
