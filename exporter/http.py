"""HTTP: /metrics from our registry, /healthz (the loop answers), /readyz (we can see events)."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter import heap
from exporter.metrics.family import OPENMETRICS, TEXT, gzip_stream, render_chunks

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Authenticator:
    """Checks the Authorization header: basic auth, a bearer token, or either when both are set.

    Comparisons are constant-time, so response timing does not reveal the secret.
    """

    def __init__(self, *, username: str | None, password: str | None, token: str | None) -> None:
        self._basic = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
            if username is not None and password is not None
            else None
        )
        self._bearer = f"Bearer {token}" if token else None

    @property
    def enabled(self) -> bool:
        return self._basic is not None or self._bearer is not None

    def allows(self, header: str | None) -> bool:
        if not self.enabled:
            return True
        if header is None:
            return False
        given = header.encode()
        return any(
            hmac.compare_digest(given, expected.encode())
            for expected in (self._basic, self._bearer)
            if expected is not None
        )


def ssl_context(
    cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None
) -> ssl.SSLContext | None:
    """A server TLS context, requiring client certificates when a client CA is given."""
    if cert_file is None or key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca_file)
    return context


class Readiness(NamedTuple):
    ready: bool
    checks: dict[str, str]


_HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
_ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind

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
        auth: Authenticator | None = None,
        tls: ssl.SSLContext | None = None,
        protect_health: bool = False,
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._auth = auth if auth is not None and auth.enabled else None
        self._tls = tls
        self._open_paths = frozenset() if protect_health else _HEALTH_PATHS
        app = web.Application(middlewares=[self._authenticate])
        self._registry = registry
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/", self._index)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port: int | None = None

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            self._auth is None
            or request.path in self._open_paths
            or self._auth.allows(request.headers.get("Authorization"))
        ):
            return await handler(request)
        return web.Response(
            status=401,
            text="unauthorized\n",
            headers={"WWW-Authenticate": 'Basic realm="celery-exporter"'},
        )

    async def start(self) -> None:
        """Bind and serve; ``port`` holds the bound port afterwards (useful with port 0)."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._tls)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        addresses = self._runner.addresses  # (host, port, ...) of each bound socket
        self.port = addresses[0][1] if addresses else self._port
        scheme = "https" if self._tls else "http"
        log.info("listening on %s://%s:%s/metrics", scheme, self._host, self.port)
        if self._auth is None and self._host in _ALL_INTERFACES:
            log.warning(
                "/metrics is served on all interfaces without authentication; set "
                "--web-auth-* or --host 127.0.0.1 if the network is not trusted"
            )

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        # OpenMetrics when the scraper asks for it (Prometheus does), else the text format.
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        response = web.StreamResponse(
            headers={"Content-Type": OPENMETRICS if openmetrics else TEXT}
        )
        gzip = "gzip" in request.headers.get("Accept-Encoding", "")
        if gzip:
            response.headers["Content-Encoding"] = "gzip"
        try:
            await self._write_page(request, response, openmetrics=openmetrics, gzip=gzip)
        finally:
            # The snapshot and the page are garbage now: without this the pages they held stay
            # resident (after the bench's 100k burst, a scrape left 3 MiB more behind). It holds
            # up the loop for a few milliseconds, once per scrape.
            heap.trim()
        return response

    async def _write_page(
        self, request: web.Request, response: web.StreamResponse, *, openmetrics: bool, gzip: bool
    ) -> None:
        packer = gzip_stream() if gzip else None
        await response.prepare(request)
        for chunk in render_chunks(self._registry.collect(), openmetrics=openmetrics):
            await response.write(packer.compress(chunk) if packer is not None else chunk)
        if packer is not None:
            await response.write(packer.flush())
        await response.write_eof()

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
