"""The README's first command: ``scripts/demo.sh`` serves metrics, and its Prometheus loads the
shipped rules (with `for:` cut to 1m) and scrapes the exporter, with Alertmanager beside it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import http_get, wait_until
from tests.services import free_port, wait_ports_closed

REPO = Path(__file__).resolve().parent.parent
SETTLE_SECONDS = 120.0


def _get(port: int, path: str) -> str | None:
    """The body of a 200 answer; None while nothing (or something else) answers."""
    try:
        response = http_get(f"http://127.0.0.1:{port}{path}")
    except OSError:
        return None
    return response.body if response.status == 200 else None


def _api(port: int, path: str) -> Any:
    body = _get(port, path)
    return json.loads(body) if body is not None else None


def test_demo_serves_metrics_to_its_prometheus(tmp_path: Path) -> None:
    """The demo's exporter counts the demo's tasks; its Prometheus scrapes it (target up),
    holds every shipped rule, each with `for:` of at most a minute, and knows its
    Alertmanager; Ctrl+C (SIGINT) stops every process the demo started."""
    ports = {name: free_port() for name in ("METRICS", "PROMETHEUS", "ALERTMANAGER")}
    env = {**os.environ, **{f"DEMO_{name}_PORT": str(port) for name, port in ports.items()}}
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(
        ["bash", "scripts/demo.sh"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    prometheus = ports["PROMETHEUS"]
    try:
        wait_until(
            lambda: "celery_task_succeeded_total{" in (_get(ports["METRICS"], "/metrics") or ""),
            SETTLE_SECONDS,
            lambda: (tmp_path / "demo.log").read_text(errors="replace")[-3000:],
        )

        def scraped() -> bool:
            targets = _api(prometheus, "/api/v1/targets")
            active = targets["data"]["activeTargets"] if targets else []
            return [(t["labels"]["job"], t["health"]) for t in active] == [
                ("celery-exporter", "up")
            ]

        wait_until(scraped, SETTLE_SECONDS, "Prometheus never scraped the demo's exporter")
        shipped = yaml.safe_load((REPO / "alerts" / "celery.rules.yml").read_text())
        loaded = _api(prometheus, "/api/v1/rules")["data"]["groups"]
        assert [g["name"] for g in loaded] == [g["name"] for g in shipped["groups"]]
        names = [r["name"] for g in loaded for r in g["rules"]]
        assert names == [
            r.get("alert") or r["record"] for g in shipped["groups"] for r in g["rules"]
        ]
        assert all(r.get("duration", 0) <= 60 for g in loaded for r in g["rules"])
        managers = _api(prometheus, "/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
        assert [m["url"] for m in managers] == [
            f"http://127.0.0.1:{ports['ALERTMANAGER']}/api/v2/alerts"
        ]
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(30)
        log.close()
    wait_ports_closed(list(ports.values()), 15)
