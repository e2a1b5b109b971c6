"""Event streams over TLS and through Sentinel, on real servers: rediss://, sentinel://, amqps://.

Each test starts the exporter on the URL (and transport options) a user would give it, publishes
tasks through Celery's own event dispatcher over the same kind of connection, and checks exact
counts, readiness and a clean SIGTERM.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from tests import sample_app as sa
from tests.certs import make_certificates
from tests.helpers import (
    PUBLISHER,
    SUCCESS_EVENTS,
    Expected,
    http_get,
    publish_successes,
    scrape,
    value,
    wait_for_metrics,
    wait_until,
)
from tests.scenarios import check_exporter_health
from tests.services import (
    ExporterFactory,
    ExporterProcess,
    RabbitMQServer,
    RedisSentinel,
    RedisServer,
    amqps_transport_options,
    rediss_url,
)

SETTLE_SECONDS = 30.0
TASKS = 50
# 3,000 events, about 1.2 MB of frames: more than two of the exporter's own 512 kB socket reads,
# and over TLS a read returns at most one 16 kB record, so frames are cut across reads throughout.
AMQP_TASKS = 750
SHUTDOWN_SECONDS = 2.0


def transport_options(options: Mapping[str, Any]) -> tuple[str, str]:
    return ("--broker-transport-options", json.dumps(options))


def check_counted(exporter: ExporterProcess, tasks: int) -> None:
    """Every event of ``tasks`` successful tasks applied once, each task counted once at every
    step; connected, ready, nothing dropped."""
    exp = Expected()
    for event_type in SUCCESS_EVENTS:
        exp.add("celery_exporter_events_total", tasks, type=event_type)
    exp.add("celery_task_sent_total", tasks, task=sa.OK, queue=sa.QUEUE_A)
    labels = {"task": sa.OK, "queue": sa.QUEUE_A, "worker": PUBLISHER}
    for step in ("received", "started", "succeeded"):
        exp.add(f"celery_task_{step}_total", tasks, **labels)
    samples = wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
    check_exporter_health(samples)
    ready = http_get(exporter.url + "/readyz")
    assert ready.status == 200, ready


def check_clean_shutdown(exporter: ExporterProcess) -> None:
    """SIGTERM ends the exporter with exit code 0 within 2 s, without a traceback."""
    started = time.monotonic()
    returncode = exporter.terminate(timeout=SHUTDOWN_SECONDS)
    elapsed = time.monotonic() - started
    assert returncode == 0, exporter.stderr()
    assert elapsed < SHUTDOWN_SECONDS
    assert "Traceback" not in exporter.stderr(), exporter.stderr()


@pytest.mark.redis
def test_rediss_events_are_counted_exactly(
    rediss_server: RedisServer, exporter_factory: ExporterFactory
) -> None:
    """On a redis-server that speaks TLS only, with the server verified against our CA
    (ssl_cert_reqs and ssl_ca_certs in the URL), 50 tasks' 200 events are counted exactly."""
    exporter = exporter_factory(rediss_server.url)
    publish_successes(rediss_server.url, TASKS, task=sa.OK, queue=sa.QUEUE_A)
    check_counted(exporter, TASKS)
    check_clean_shutdown(exporter)


def test_rediss_idle_subscriber_killed_is_a_plain_close(
    rediss_server: RedisServer, exporter_factory: ExporterFactory
) -> None:
    """Over TLS, a subscriber idle for seconds and then killed by the server is counted as a
    plain close (not a slow consumer: the reader took its turns while idle), reconnected, and
    counts exactly what follows."""
    exporter = exporter_factory(rediss_server.url)
    client = redis.Redis.from_url(rediss_server.url)
    time.sleep(3)  # idle: longer than the reader's stall threshold (4 poll timeouts)
    assert client.client_kill_filter(_type="pubsub") == 1
    wait_until(
        lambda: value(scrape(exporter.port), "celery_exporter_source_reconnects_total") == 1,
        SETTLE_SECONDS,
        lambda: f"no reconnect; stderr:\n{exporter.stderr()}",
    )
    samples = scrape(exporter.port)
    assert value(samples, "celery_exporter_source_disconnects_total", reason="closed") == 1
    assert (
        value(samples, "celery_exporter_source_disconnects_total", reason="slow_consumer") is None
    )
    client.close()
    publish_successes(rediss_server.url, TASKS, task=sa.OK, queue=sa.QUEUE_A)
    check_counted(exporter, TASKS)


@pytest.mark.redis
def test_sentinel_events_are_counted_exactly(
    redis_sentinel: RedisSentinel, exporter_factory: ExporterFactory
) -> None:
    """Given only a Sentinel's address and the master's name, the exporter subscribes on the
    master the Sentinel names and counts 50 tasks' 200 events exactly."""
    options = redis_sentinel.transport_options
    exporter = exporter_factory(redis_sentinel.url, *transport_options(options))
    master = redis.Redis.from_url(redis_sentinel.master.url)
    assert master.pubsub_numpat() == 1  # the exporter's subscription, on the master itself
    publish_successes(
        redis_sentinel.url, TASKS, task=sa.OK, queue=sa.QUEUE_A, transport_options=options
    )
    check_counted(exporter, TASKS)
    check_clean_shutdown(exporter)


@pytest.mark.rabbitmq
def test_amqps_events_are_counted_exactly(
    rabbitmq_server: RabbitMQServer, exporter_factory: ExporterFactory
) -> None:
    """Over AMQP with TLS (the server verified against our CA, its name checked), 750 tasks'
    3,000 events, read off the TLS socket by the exporter's own frame reader, are counted
    exactly."""
    options = rabbitmq_server.tls_transport_options
    exporter = exporter_factory(rabbitmq_server.tls_url, *transport_options(options))
    publish_successes(
        rabbitmq_server.tls_url,
        AMQP_TASKS,
        task=sa.OK,
        queue=sa.QUEUE_A,
        transport_options=options,
    )
    check_counted(exporter, AMQP_TASKS)
    check_clean_shutdown(exporter)


def check_refused(factory: ExporterFactory, url: str, *args: str) -> None:
    """An exporter on ``url`` refuses the server's certificate, stays unready and says why."""
    # kombu retries a failed connect for as long as this timeout before it gives up.
    exporter = factory(url, *args, "--broker-connect-timeout-seconds", "1", wait_ready=False)
    wait_until(
        lambda: "certificate verify failed" in exporter.stderr(),
        SETTLE_SECONDS,
        lambda: f"no certificate error logged; stderr:\n{exporter.stderr()}",
    )
    assert http_get(exporter.url + "/readyz").status == 503


@pytest.mark.redis
def test_rediss_checks_the_server_against_the_ca_in_the_url(
    rediss_server: RedisServer, tmp_path: Path, exporter_factory: ExporterFactory
) -> None:
    """The CA named in the rediss:// URL is the one the server is checked against: with
    another CA there, the exporter refuses the server's certificate."""
    stranger = make_certificates(tmp_path / "other-ca").ca
    check_refused(exporter_factory, rediss_url(rediss_server.port, stranger))


@pytest.mark.rabbitmq
def test_amqps_checks_the_server_against_the_ca_in_the_transport_options(
    rabbitmq_server: RabbitMQServer, tmp_path: Path, exporter_factory: ExporterFactory
) -> None:
    """The CA in the transport options' ``ssl`` is the one the server is checked against: with
    another CA there, the exporter refuses the server's certificate."""
    stranger = make_certificates(tmp_path / "other-ca").ca
    options = transport_options(amqps_transport_options(stranger))
    check_refused(exporter_factory, rabbitmq_server.tls_url, *options)
