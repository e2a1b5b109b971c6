#!/usr/bin/env bash
# A local demo of the whole product: redis-server, a Celery worker with events, a producer, the
# exporter, and Prometheus (the shipped alert rules) with Alertmanager. Installs what it needs
# (scripts/setup.sh demo: Debian's redis, prometheus and alertmanager; celery into .venv/) and
# stops everything on Ctrl+C. Ports: DEMO_METRICS_PORT (9808), DEMO_PROMETHEUS_PORT (9090),
# DEMO_ALERTMANAGER_PORT (9093).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
PYTHON=.venv/bin/python
PORT=${DEMO_METRICS_PORT:-9808}
PROMETHEUS_PORT=${DEMO_PROMETHEUS_PORT:-9090}
ALERTMANAGER_PORT=${DEMO_ALERTMANAGER_PORT:-9093}
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
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "demo: redis-server did not start" >&2; exit 1; }

"$PYTHON" -m exporter --host 127.0.0.1 --port "$PORT" --inspect-interval-seconds 30 &
pids+=($!)
"$PYTHON" -m celery -A demo_app worker -E -Q celery,reports -c 2 -n demo@%h -l warning \
  > "$WORK/worker.log" 2>&1 &
pids+=($!)
"$PYTHON" scripts/demo_app.py produce &
pids+=($!)

# The shipped rules with every `for:` cut to 1m, so that the demo's failing task (demo.flaky
# fails one run in five) shows CeleryTaskFailureRateHigh within about two minutes; the rules
# you deploy keep theirs.
sed -E 's/^( +for: ).*/\11m/' alerts/celery.rules.yml > "$WORK/rules.yml"
cat > "$WORK/prometheus.yml" <<YAML
global: {scrape_interval: 5s, evaluation_interval: 5s}
rule_files: [rules.yml]
alerting:
  alertmanagers: [{static_configs: [{targets: ['127.0.0.1:$ALERTMANAGER_PORT']}]}]
scrape_configs:
  - job_name: celery-exporter
    static_configs: [{targets: ['127.0.0.1:$PORT']}]
YAML
cat > "$WORK/alertmanager.yml" <<YAML
route: {receiver: demo, group_by: [alertname], group_wait: 10s}
receivers: [{name: demo}]
YAML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus" \
  --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" > "$WORK/prometheus.log" 2>&1 &
pids+=($!)
prometheus-alertmanager --config.file="$WORK/alertmanager.yml" --storage.path="$WORK/alertmanager" \
  --web.listen-address="127.0.0.1:$ALERTMANAGER_PORT" --cluster.listen-address= \
  > "$WORK/alertmanager.log" 2>&1 &
pids+=($!)

echo
echo "Demo running (Ctrl+C stops everything):"
echo "  metrics:       http://127.0.0.1:$PORT/metrics"
echo "  alerts:        http://127.0.0.1:$PROMETHEUS_PORT/classic/alerts  (the demo's failing task fires CeleryTaskFailureRateHigh in ~2 min)"
echo "  a query:       http://127.0.0.1:$PROMETHEUS_PORT/classic/graph?g0.expr=sum+by+(task)+(rate(celery_task_succeeded_total%5B1m%5D))"
echo "  alertmanager:  http://127.0.0.1:$ALERTMANAGER_PORT/"
wait
