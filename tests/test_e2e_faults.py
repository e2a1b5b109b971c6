"""Broker faults against real servers: a Redis subscriber cut off for being slow, a RabbitMQ
restart mid-stream, and our RabbitMQ event queue deleted under us."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import urllib.request

import pytest
import redis

from tests.helpers import http_get, publish, scrape, value, wait_until
from tests.services import ExporterFactory, ExporterProcess, RabbitMQServer, RedisFactory

RECOVERY_SECONDS = 20.0
# A restarted broker is back within this long of the exporter's counting resuming (the issue's
# bound), plus the first reconnect's backoff of the test exporters (capped at 1 s).
RESUME_SECONDS = 5.0
STALL_SECONDS = 2.5


def started_events(port: int) -> float:
    return value(scrape(port), "celery_exporter_events_total", type="task-started") or 0


def wait_counted(exporter: ExporterProcess, expected: int, timeout: float) -> None:
    wait_until(
        lambda: started_events(exporter.port) == expected,
        timeout,
        lambda: f"task-started counted {started_events(exporter.port)}, expected {expected}",
    )


def wait_readyz(exporter: ExporterProcess, status: int) -> None:
    wait_until(
        lambda: http_get(exporter.url + "/readyz").status == status,
        RECOVERY_SECONDS,
        lambda: f"/readyz never answered {status}; stderr:\n{exporter.stderr()}",
    )


def test_slow_redis_subscriber_is_detected_counted_and_reconnected(
    redis_factory: RedisFactory, exporter_factory: ExporterFactory
) -> None:
    """Redis cuts off a subscriber whose unread output passes its pubsub limit: the exporter
    counts one slow_consumer disconnect and one reconnect, logs the cause once, resubscribes
    and counts what is published afterwards exactly."""
    server = redis_factory()
    client = redis.Redis.from_url(server.url)
    client.config_set("client-output-buffer-limit", "pubsub 262144 131072 1")
    exporter = exporter_factory(server.url, "--event-buffer-bytes", str(1024 * 1024))
    with exporter.paused():
        stalled_at = time.monotonic()
        publish(server.url, 5000, prefix="burst", padding="x" * 600)
        # The limit bites once the unread output passes it: wait until Redis dropped us.
        wait_until(
            lambda: client.pubsub_numpat() == 0,
            RECOVERY_SECONDS,
            "Redis never disconnected the stalled subscriber",
        )
        # A stall is told from a plain close by the reader's missed turns (2 s); with this
        # tiny limit Redis can cut us off sooner than that, so the stall lasts long enough.
        time.sleep(max(0.0, STALL_SECONDS - (time.monotonic() - stalled_at)))
    wait_until(
        lambda: value(scrape(exporter.port), "celery_exporter_source_reconnects_total") == 1,
        RECOVERY_SECONDS,
        lambda: f"no reconnect; stderr:\n{exporter.stderr()}",
    )
    samples = scrape(exporter.port)
    assert value(samples, "celery_exporter_source_disconnects_total", reason="slow_consumer") == 1
    assert value(samples, "celery_exporter_source_up", source="events") == 1
    assert exporter.stderr().count("client-output-buffer-limit pubsub") == 1
    before = started_events(exporter.port)
    publish(server.url, 200, prefix="after")
    wait_counted(exporter, int(before) + 200, RECOVERY_SECONDS)


def test_rabbitmq_restart_mid_stream_recovers_without_double_counting(
    rabbitmq_server: RabbitMQServer, exporter_factory: ExporterFactory
) -> None:
    """RabbitMQ stops after 300 events were counted and starts again: /readyz turns 503 then
    200, the reconnect is counted once, counting resumes within 5 s of the broker being back,
    and the totals are exactly 300 + 200 (nothing counted twice)."""
    exporter = exporter_factory(rabbitmq_server.url, "--no-collector-queues")
    publish(rabbitmq_server.url, 300, prefix="before")
    wait_counted(exporter, 300, RECOVERY_SECONDS)
    rabbitmq_server.stop()
    wait_readyz(exporter, 503)
    rabbitmq_server.start()
    back = time.monotonic()
    wait_readyz(exporter, 200)
    publish(rabbitmq_server.url, 200, prefix="after")
    wait_counted(exporter, 500, RECOVERY_SECONDS)
    assert time.monotonic() - back < RESUME_SECONDS + 5.0  # publishing 200 takes a moment
    samples = scrape(exporter.port)
    assert value(samples, "celery_exporter_source_reconnects_total", source="events") == 1
    assert value(samples, "celery_exporter_events_total", type="task-started") == 500


AUTH = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}


def _management(server: RabbitMQServer, path: str, method: str = "GET") -> object:
    request = urllib.request.Request(f"{server.management_url}{path}", method=method, headers=AUTH)
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


def _exporter_queues(server: RabbitMQServer) -> set[str]:
    queues = _management(server, "/api/queues/%2F?columns=name,exclusive_consumer_tag")
    assert isinstance(queues, list)
    return {q["name"] for q in queues if q["name"].startswith("celeryev.exporter.")}


@pytest.mark.rabbitmq
def test_event_queue_gone_with_its_connection_is_declared_again(
    rabbitmq_server: RabbitMQServer, exporter_factory: ExporterFactory
) -> None:
    """RabbitMQ force-closes the exporter's connection (an operator, a node restart), which
    deletes its exclusive event queues: the exporter reconnects, declares fresh queues and
    counts what is published afterwards exactly. (Exclusive queues cannot be deleted by
    anyone else while their connection lives.)"""
    exporter = exporter_factory(rabbitmq_server.url, "--no-collector-queues")
    before = _exporter_queues(rabbitmq_server)
    assert len(before) == 2, before  # the event queue and its dead-letter queue
    connections: list[dict[str, str]] = []

    def listed() -> bool:
        found = _management(rabbitmq_server, "/api/connections?columns=name")
        assert isinstance(found, list)
        connections[:] = found
        return bool(found)

    # The management API lists a connection once its statistics were first collected.
    wait_until(listed, RECOVERY_SECONDS, "the exporter's connection never showed up")
    for connection in connections:
        name = urllib.parse.quote(connection["name"], safe="")
        _management(rabbitmq_server, f"/api/connections/{name}", method="DELETE")
    wait_until(
        lambda: len(_exporter_queues(rabbitmq_server) - before) == 2,
        RECOVERY_SECONDS,
        lambda: f"no new event queues; stderr:\n{exporter.stderr()}",
    )
    assert not before & _exporter_queues(rabbitmq_server)
    publish(rabbitmq_server.url, 100, prefix="redeclared")
    wait_counted(exporter, 100, RECOVERY_SECONDS)
    samples = scrape(exporter.port)
    assert value(samples, "celery_exporter_source_reconnects_total", source="events") == 1


def one_second_heartbeats(server: RabbitMQServer, factory: ExporterFactory) -> ExporterProcess:
    return factory(server.url, "--no-collector-queues", "--amqp-heartbeat-seconds", "1")


@pytest.mark.rabbitmq
def test_idle_rabbitmq_connection_is_kept_alive_by_our_heartbeats(
    rabbitmq_server: RabbitMQServer, exporter_factory: ExporterFactory
) -> None:
    """With a 1 s heartbeat and nothing published, RabbitMQ closes a client that stays silent
    for two intervals; the exporter reads the socket itself, so it must send them: after 6 s
    idle it is still on its first connection and counts exactly."""
    exporter = one_second_heartbeats(rabbitmq_server, exporter_factory)
    time.sleep(6)
    publish(rabbitmq_server.url, 20, prefix="idle")
    wait_counted(exporter, 20, RECOVERY_SECONDS)
    samples = scrape(exporter.port)
    assert value(samples, "celery_exporter_source_reconnects_total", source="events") == 0


@pytest.mark.rabbitmq
def test_a_silent_rabbitmq_broker_is_left_and_rejoined(
    rabbitmq_server: RabbitMQServer, exporter_factory: ExporterFactory
) -> None:
    """A broker that hangs (SIGSTOP) keeps the TCP connection open but sends nothing, not
    even heartbeats: after two 1 s intervals the exporter gives the connection up (/readyz
    503), and once the broker runs again it reconnects and counts exactly."""
    exporter = one_second_heartbeats(rabbitmq_server, exporter_factory)
    publish(rabbitmq_server.url, 30, prefix="before")
    wait_counted(exporter, 30, RECOVERY_SECONDS)
    with rabbitmq_server.paused():
        wait_readyz(exporter, 503)
    wait_readyz(exporter, 200)
    publish(rabbitmq_server.url, 40, prefix="after")
    wait_counted(exporter, 70, RECOVERY_SECONDS)
    samples = scrape(exporter.port)
    assert value(samples, "celery_exporter_source_reconnects_total", source="events") == 1
    assert "nothing from the broker" in exporter.stderr()
