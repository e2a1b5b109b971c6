"""Session brokers and per-test exporter, worker and producer factories for the e2e tests.

The brokers are real servers (tests/services.py): redis-server starts with the first test that
needs it, rabbitmq-server (5-10 s) only when a RabbitMQ test runs; both once per session, killed
at the end. RabbitMQ also listens for AMQP over TLS, with a throwaway CA made for the session,
rather than paying a second node's start-up for the TLS tests. A missing binary fails the tests
that need it, with the apt-get line to fix it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests import sample_app
from tests.celery_procs import CeleryProcesses, ProcsFactory
from tests.certs import Certificates, make_certificates
from tests.helpers import http_get, wait_until
from tests.services import (
    CeleryWorker,
    ExporterFactory,
    ExporterProcess,
    ProducerFactory,
    RabbitMQServer,
    RedisFactory,
    RedisSentinel,
    RedisServer,
    ServiceError,
    WorkerFactory,
)

EXPORTER_READY_SECONDS = 20.0

S = TypeVar("S", RedisServer, RedisSentinel, RabbitMQServer)


def _start(make: Callable[[], S]) -> S:
    """Build and start a server; a missing binary or a failed start fails the test (no skip)."""
    try:
        server = make()
    except ServiceError as err:
        pytest.fail(str(err), pytrace=False)
    try:
        server.start()
    except ServiceError as err:
        server.close()
        pytest.fail(str(err), pytrace=False)
    return server


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read CELERY_* variables: none may leak in from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("CELERY_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session (tests may stop and restart it)."""
    workdir = tmp_path_factory.mktemp("redis")
    server = _start(lambda: RedisServer(workdir))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA and the server certificate it signed for 127.0.0.1 and localhost."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def rabbitmq_server(
    tmp_path_factory: pytest.TempPathFactory, tls_certificates: Certificates
) -> Iterator[RabbitMQServer]:
    """A rabbitmq-server with the management plugin and a TLS listener, started on first use,
    once per session."""
    workdir = tmp_path_factory.mktemp("rabbitmq")
    server = _start(lambda: RabbitMQServer(workdir, tls=tls_certificates))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    """Private redis-servers for a test that crashes its broker; all closed afterwards."""
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        server = _start(lambda: RedisServer(tmp_path / f"redis-{len(servers)}"))
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def rediss_server(tmp_path: Path, tls_certificates: Certificates) -> Iterator[RedisServer]:
    """A private redis-server that speaks TLS only."""
    server = _start(lambda: RedisServer(tmp_path / "rediss", tls=tls_certificates))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_sentinel(tmp_path: Path, redis_factory: RedisFactory) -> Iterator[RedisSentinel]:
    """A Sentinel watching a private redis-server (its ``master``)."""
    master = redis_factory()
    sentinel = _start(lambda: RedisSentinel(tmp_path / "sentinel", master))
    try:
        yield sentinel
    finally:
        sentinel.close()


@pytest.fixture
def exporter_factory(tmp_path: Path) -> Iterator[ExporterFactory]:
    """Start ``python -m exporter`` on a broker; by default wait until /readyz answers 200."""
    started: list[ExporterProcess] = []

    def start(broker_url: str, *extra_args: str, wait_ready: bool = True) -> ExporterProcess:
        exporter = ExporterProcess(broker_url, tmp_path / "exporter", *extra_args)
        started.append(exporter)
        exporter.start()
        if wait_ready:

            def ready() -> bool:
                assert exporter.proc.poll() is None, f"exporter exited:\n{exporter.stderr()}"
                return http_get(exporter.url + "/readyz").status == 200

            wait_until(
                ready,
                EXPORTER_READY_SECONDS,
                lambda: f"exporter /readyz never answered 200; stderr:\n{exporter.stderr()}",
            )
        return exporter

    try:
        yield start
    finally:
        for exporter in started:
            exporter.close()


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start real Celery workers of tests.sample_app; each stopped (SIGTERM) afterwards."""
    started: list[CeleryWorker] = []

    def start(
        broker_url: str,
        *,
        queues: Sequence[str],
        pool: str = "prefork",
        name: str = "e2e",
        send_sent_event: bool = True,
    ) -> CeleryWorker:
        worker = CeleryWorker(
            broker_url,
            tmp_path / "workers",
            name=f"{name}-{uuid.uuid4().hex[:8]}",
            queues=queues,
            pool=pool,
            concurrency=2 if pool == "prefork" else 1,
            send_sent_event=send_sent_event,
        )
        started.append(worker)
        worker.start()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture
def producer_factory() -> Iterator[ProducerFactory]:
    """Celery apps that publish the sample tasks (by name), closed after the test."""
    apps: list[Any] = []

    def make(broker_url: str, *, send_sent_event: bool = True) -> Any:
        app = sample_app.make_app(
            broker_url, send_sent_event=send_sent_event, name=f"producer-{len(apps)}"
        )
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            app.close()


@pytest.fixture
def celery_procs(tmp_path: Path) -> Iterator[ProcsFactory]:
    """Real worker and Beat processes on a broker; every one stopped after the test."""
    made: list[CeleryProcesses] = []

    def make(broker_url: str) -> CeleryProcesses:
        procs = CeleryProcesses(broker_url, tmp_path / f"celery-{len(made)}")
        made.append(procs)
        return procs

    try:
        yield make
    finally:
        for procs in made:
            procs.close()


@pytest.fixture(
    params=[
        pytest.param("redis_server", marks=pytest.mark.redis, id="redis"),
        pytest.param("rabbitmq_server", marks=pytest.mark.rabbitmq, id="rabbitmq"),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> str:
    """The URL of each real broker in turn (started by its session fixture)."""
    url: str = request.getfixturevalue(request.param).url
    return url
