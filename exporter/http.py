"""HTTP: /metrics from our registry, /healthz (the loop answers), /readyz (we can see events)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import NamedTuple

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

log = logging.getLogger(__name__)


class Readiness(NamedTuple):
    ready: bool
    checks: dict[str, str]


_INDEX = """<!doctype html>
<html><head><title>Celery exporter</title></head>
<body><h1>Celery exporter</h1>
<ul><li><a href="metrics">metrics</a></li><li><a href="healthz">healthz</a></li>
<li><a href="readyz">readyz</a></li></ul></body></html>
"""


class HttpServer:
    """aiohttp behind an AppRunner, so the daemon decides when it starts and stops."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        host: str,
        port: int,
        readiness: Callable[[], Readiness],
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/", self._index)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and serve; ``port`` holds the bound port afterwards (useful with port 0)."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("listening on http://%s:%s/metrics", self._host, self.port)

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        readiness = self._readiness()
        body = json.dumps({"ready": readiness.ready, "checks": readiness.checks}) + "\n"
        return web.Response(
            text=body, status=200 if readiness.ready else 503, content_type="application/json"
        )

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(text=_INDEX, content_type="text/html")
