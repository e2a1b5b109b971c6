#!/usr/bin/env bash
# A local demo: redis-server, a Celery worker with events on, a producer, and the exporter.
# Installs what it needs (scripts/setup.sh demo: redis-server, and celery into .venv/) and stops
# everything on Ctrl+C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
PYTHON=.venv/bin/python
PORT=${DEMO_METRICS_PORT:-9808}
WORK=$(mktemp -d /tmp/celery-exporter-demo.XXXXXX)
REDIS_PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CELERY_BROKER_URL="redis://127.0.0.1:$REDIS_PORT/0"
export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK" \
  --logfile "$WORK/redis.log" &
pids+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

"$PYTHON" -m exporter --host 127.0.0.1 --port "$PORT" --inspect-interval-seconds 30 &
pids+=($!)
"$PYTHON" -m celery -A demo_app worker -E -Q celery,reports -c 2 -n demo@%h -l warning \
  > "$WORK/worker.log" 2>&1 &
pids+=($!)
"$PYTHON" scripts/demo_app.py produce &
pids+=($!)

echo
echo "Demo running. Metrics: http://127.0.0.1:$PORT/metrics  (Ctrl+C stops everything)"
echo "Try: curl -s http://127.0.0.1:$PORT/metrics | grep ^celery_task_succeeded_total"
wait
