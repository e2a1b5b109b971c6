"""HTTP server: endpoints, auth on /metrics, TLS (exporter/http.py), on a real socket."""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from exporter.http import Authenticator, HttpServer, Readiness, ssl_context
from exporter.metrics.family import CHUNK_CHARS, ScalarFamily, render, render_chunks
from tests.certs import Certificates

Check = Callable[[str], Awaitable[None]]


def _serve(
    check: Callable[[HttpServer], Awaitable[None]],
    *,
    registry: CollectorRegistry | None = None,
    ready: bool = True,
    auth: Authenticator | None = None,
    tls: ssl.SSLContext | None = None,
    protect_health: bool = False,
) -> None:
    async def main() -> None:
        server = HttpServer(
            registry=registry or CollectorRegistry(),
            host="127.0.0.1",
            port=0,
            readiness=lambda: Readiness(ready, {"events_source": "x"}),
            auth=auth,
            tls=tls,
            protect_health=protect_health,
        )
        await server.start()
        try:
            await check(server)
        finally:
            await server.close()

    asyncio.run(main())


async def _status(
    url: str, *, headers: dict[str, str] | None = None, ssl: ssl.SSLContext | None = None
) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, ssl=ssl if ssl is not None else True) as response,
    ):
        await response.read()
        return response.status


class _ManySeries(Collector):
    """Several chunks' worth of series, so /metrics has to stream."""

    def collect(self) -> Iterator[ScalarFamily]:
        family = ScalarFamily("celery_test_total", "A test counter.", "counter", ["task"])
        # Lines of about 45 characters: five chunks' worth.
        for number in range(CHUNK_CHARS * 5 // 45):
            family.add_metric([f"tasks.t{number}"], number)
        yield family


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_metrics_streams_the_whole_page(gzip: bool) -> None:
    """A page larger than a chunk arrives whole (chunked transfer), gzip-compressed on request,
    identical to the exposition rendered at once."""
    registry = CollectorRegistry()
    registry.register(_ManySeries())
    expected = render(registry.collect(), openmetrics=False)
    assert len(list(render_chunks(registry.collect(), openmetrics=False))) > 3

    async def check(server: HttpServer) -> None:
        headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(f"http://127.0.0.1:{server.port}/metrics", headers=headers) as response,
        ):
            body = await response.read()
            assert response.status == 200
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert response.headers.get("Content-Encoding") == ("gzip" if gzip else None)
        assert (zlib.decompress(body, 16 + zlib.MAX_WBITS) if gzip else body) == expected

    _serve(check, registry=registry)


@pytest.mark.parametrize(("ready", "expected"), [(True, 200), (False, 503)])
def test_readyz_follows_readiness(ready: bool, expected: int) -> None:
    """/readyz answers 200 when ready and 503 otherwise; /healthz and / always 200."""

    async def check(server: HttpServer) -> None:
        base = f"http://127.0.0.1:{server.port}"
        assert await _status(f"{base}/readyz") == expected
        assert await _status(f"{base}/healthz") == 200
        assert await _status(f"{base}/") == 200
        assert await _status(f"{base}/metrics") == 200

    _serve(check, ready=ready)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 401),
        ("Basic cHJvbTp3cm9uZw==", 401),  # prom:wrong
        ("Basic cHJvbTpzM2NyZXQ=", 200),  # prom:s3cret
        ("Bearer t0ken", 200),
        ("Bearer other", 401),
    ],
)
def test_metrics_requires_auth_but_health_stays_open(header: str | None, expected: int) -> None:
    """With basic auth and a bearer token set, /metrics needs one of them; health is open."""
    auth = Authenticator(username="prom", password="s3cret", token="t0ken")

    async def check(server: HttpServer) -> None:
        base = f"http://127.0.0.1:{server.port}"
        headers = {"Authorization": header} if header else {}
        assert await _status(f"{base}/metrics", headers=headers) == expected
        assert await _status(f"{base}/healthz") == 200
        assert await _status(f"{base}/readyz") == 200

    _serve(check, auth=auth)


def test_protect_health_requires_auth_everywhere() -> None:
    """With protect_health, /healthz and /readyz need auth too."""
    auth = Authenticator(username=None, password=None, token="t0ken")

    async def check(server: HttpServer) -> None:
        base = f"http://127.0.0.1:{server.port}"
        assert await _status(f"{base}/healthz") == 401
        ok = {"Authorization": "Bearer t0ken"}
        assert await _status(f"{base}/healthz", headers=ok) == 200

    _serve(check, auth=auth, protect_health=True)


def test_tls_serves_https(tls_certificates: Certificates) -> None:
    """With a certificate and key, the server speaks HTTPS only, and a client that checks the
    chain and the name accepts it."""
    client = ssl.create_default_context(cafile=str(tls_certificates.ca))

    async def check(server: HttpServer) -> None:
        assert await _status(f"https://127.0.0.1:{server.port}/healthz", ssl=client) == 200
        with pytest.raises(aiohttp.ClientError):
            await _status(f"http://127.0.0.1:{server.port}/healthz")

    _serve(check, tls=ssl_context(tls_certificates.cert, tls_certificates.key, None))
