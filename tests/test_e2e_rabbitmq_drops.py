"""RabbitMQ drops made visible: a stalled exporter's events that the broker drops (length bound
or TTL) are dead-lettered and counted, so counted plus dropped equals what was published."""

from __future__ import annotations

from typing import Any, cast

import pytest
from celery.events import EventDispatcher
from kombu import Connection

from tests.helpers import http_get, scrape, total, value, wait_until
from tests.services import ExporterFactory, RabbitMQServer

pytestmark = pytest.mark.rabbitmq

# More than the socket buffers between broker and exporter hold (a few MB), so that a stalled
# exporter leaves most of the burst in its queue.
EVENTS = 30_000
# Makes each event about as large as a task-received with its argsrepr (bytes fill buffers).
PADDING = "x" * 600


def publish(url: str, *, batched: bool) -> None:
    """EVENTS task-started events through Celery's own dispatcher (lists of 24 if batched)."""
    with cast(Any, Connection)(url) as conn:  # Any: kombu is typed in some versions only
        dispatcher = EventDispatcher(
            conn, hostname="celery@drops", groups=None, buffer_group=["task"] if batched else None
        )
        for number in range(EVENTS):
            dispatcher.send("task-started", uuid=f"drop-{number}", padding=PADDING)
        dispatcher.flush()
        dispatcher.close()


@pytest.mark.parametrize(
    ("args", "batched", "reason"),
    [
        (("--amqp-event-queue-max-length", "100"), True, "broker_overflow"),
        (("--amqp-event-queue-ttl-seconds", "1"), False, "broker_ttl"),
    ],
    ids=["overflow-batched", "ttl-unbatched"],
)
def test_counted_plus_dropped_equals_published(
    rabbitmq_server: RabbitMQServer,
    exporter_factory: ExporterFactory,
    args: tuple[str, ...],
    batched: bool,
    reason: str,
) -> None:
    """A burst published while the exporter is stalled is partly dropped by the broker: every
    event is either counted (events_total) or counted as dropped with the broker's reason,
    exactly; /readyz stays 200 and reports the drop."""
    exporter = exporter_factory(
        rabbitmq_server.url, *args, "--no-collector-queues", "--inspect-interval-seconds", "0"
    )
    with exporter.paused():
        publish(rabbitmq_server.url, batched=batched)

    def settled() -> bool:
        samples = scrape(exporter.port)
        counted = value(samples, "celery_exporter_events_total", type="task-started") or 0
        return counted + total(samples, "celery_exporter_events_dropped_total") == EVENTS

    wait_until(settled, 30, lambda: f"counted + dropped never reached {EVENTS}")
    samples = scrape(exporter.port)
    dropped = value(samples, "celery_exporter_events_dropped_total", reason=reason) or 0
    counted = value(samples, "celery_exporter_events_total", type="task-started") or 0
    assert dropped > 0, "the burst fit in the queue: nothing was dropped, nothing proven"
    assert counted + dropped == EVENTS
    assert total(samples, "celery_exporter_events_dropped_total") == dropped
    ready = http_get(exporter.url + "/readyz")
    assert ready.status == 200
    assert "broker_drops" in ready.body
    assert f"({reason})" in exporter.stderr()
