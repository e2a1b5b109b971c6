"""Real Prometheus and Alertmanager for the alert end-to-end tests, and the webhook they notify.

``PrometheusServer`` and ``AlertmanagerServer`` run the Debian binaries (``prometheus``,
``prometheus-alertmanager``) as children of the test process, on free loopback ports, each with
its own temporary directory for configuration and storage. ``AlertWebhook`` is the receiver:
an ``http.server`` in a thread of the test process that records every alert of every
notification Alertmanager posts (its status, firing or resolved, and its labels).

``render_rules`` turns a config like alerts/config.yml into a rules file with the project's own
generator (``python -m alerts.generate --config FILE --out FILE``), so the tests run the very
PromQL the shipped rules hold, with lowered thresholds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import yaml

from tests.helpers import http_get, wait_until
from tests.services import LOOPBACK, REPO_ROOT, ServiceError, _Process, free_port, log_tail

INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"
READY_SECONDS = 30.0


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH, or ServiceError with the apt-get line that installs it."""
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"{name} is not installed; install it with: {INSTALL_HINT}")
    return found


def render_rules(config: Mapping[str, object], workdir: Path) -> Path:
    """Write ``config`` and render it with ``python -m alerts.generate``; the rules file.

    The result is also checked with ``promtool check rules``, so a bad variant fails here with
    promtool's message rather than as a Prometheus that does not start.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path, rules_path = workdir / "alerts-config.yml", workdir / "celery.rules.yml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    render = [sys.executable, "-m", "alerts.generate", "--config", str(config_path)]
    for argv in (
        [*render, "--out", str(rules_path)],
        [require_binary("promtool"), "check", "rules", str(rules_path)],
    ):
        result = subprocess.run(
            argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise ServiceError(f"{' '.join(argv)} exited {result.returncode}:\n{output}")
    return rules_path


# --- the webhook receiver ---


@dataclass(frozen=True, slots=True)
class Notification:
    """One alert of one webhook notification, as Alertmanager posted it."""

    received: float  # time.monotonic() in the test process
    status: str  # firing or resolved
    labels: Mapping[str, str]


class AlertWebhook:
    """Alertmanager's webhook receiver on a free loopback port; keeps every alert it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notifications: list[Notification] = []
        self.errors: list[str] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                webhook._receive(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet: the notifications are what the tests report

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="alert-webhook", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/alerts"

    def _receive(self, body: bytes) -> None:
        now = time.monotonic()
        try:
            payload = json.loads(body)
            received = [
                Notification(now, str(alert["status"]), dict(alert["labels"]))
                for alert in payload["alerts"]
            ]
        except (ValueError, KeyError, TypeError) as err:
            with self._lock:
                self.errors.append(f"{err!r}: {body[:300]!r}")
            return
        with self._lock:
            self._notifications.extend(received)

    def mark(self) -> int:
        """A position in the record: ``since(mark)`` is what arrived after this call."""
        with self._lock:
            return len(self._notifications)

    def since(self, mark: int = 0) -> list[Notification]:
        with self._lock:
            return self._notifications[mark:]

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the servers ---


def _get_json(url: str) -> Any:
    response = http_get(url)
    assert response.status == 200, f"GET {url} answered {response.status}: {response.body[:300]}"
    return json.loads(response.body)


class _Server:
    """A binary with a config file and a data dir in ``workdir``, on a free loopback port."""

    name = ""

    def __init__(self, workdir: Path, binary: str) -> None:
        self.binary = require_binary(binary)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / f"{self.name}.log"
        self._process = _Process(self.name, self.log_path)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Spawn the server and wait until ``/-/ready`` answers 200."""
        self._process.spawn(self.argv())
        try:
            self._process.wait_port(self.port, READY_SECONDS)
            wait_until(
                lambda: http_get(self.url + "/-/ready").status == 200,
                READY_SECONDS,
                lambda: f"{self.name} never got ready; log:\n{self.log()}",
            )
        except (ServiceError, AssertionError):
            self._process.stop(kill=True)
            raise

    def log(self) -> str:
        return log_tail(self.log_path, 40)

    def close(self) -> None:
        self._process.stop(timeout=10)


class AlertmanagerServer(_Server):
    """``prometheus-alertmanager`` routing every alert, one notification each, to ``webhook_url``.

    ``group_by: ['...']`` makes each alert its own group, so every notification carries exactly
    one alert; group_wait and group_interval are 1 s, and resolved alerts are sent too.
    """

    name = "alertmanager"

    def __init__(self, workdir: Path, webhook_url: str) -> None:
        super().__init__(workdir, "prometheus-alertmanager")
        config = {
            "route": {
                "receiver": "webhook",
                "group_by": ["..."],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                },
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

    def argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",  # no gossip port: a single, private instance
        ]


class PrometheusServer(_Server):
    """``prometheus`` scraping one target and evaluating ``rules`` every second.

    The scrape job is ``job`` (the rules' selector must name it), alerts go to ``alertmanager``.
    """

    name = "prometheus"

    def __init__(
        self, workdir: Path, *, rules: Path, job: str, target: str, alertmanager: str
    ) -> None:
        super().__init__(workdir, "prometheus")
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
        }
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

    def argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
        ]

    def _api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        body = _get_json(url)
        assert body.get("status") == "success", f"GET {url}: {body}"
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to (now, or at unix time ``at``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self._api("query", **params)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expr: str, at: float | None = None) -> dict[frozenset[tuple[str, str]], float]:
        """``query`` as {label set: value}."""
        return {
            frozenset(sample["metric"].items()): float(sample["value"][1])
            for sample in self.query(expr, at)
        }

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus's active (pending or firing) alerts."""
        alerts: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return alerts

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health, last error and evaluation time."""
        return [rule for group in self._api("rules")["groups"] for rule in group["rules"]]


def describe(alerts: list[dict[str, Any]]) -> str:
    """Prometheus's alerts, one line each, for failure messages."""
    return "; ".join(f"{a['state']} {a['labels']}" for a in alerts) or "none"
