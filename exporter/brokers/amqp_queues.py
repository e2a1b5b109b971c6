"""RabbitMQ queue depth: a passive queue_declare per queue (ready messages and consumers).

AMQP has no verb to list queues, so the queues polled are the configured ones and those seen in
events and worker inspection. A passive declare of a missing queue closes the channel with
404; the queue then reads 0 when configured, and the next one gets a fresh channel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import kombu
from amqp.exceptions import NotFound

from exporter.state.queues import QueueReading, QueueState

log = logging.getLogger(__name__)


class AmqpQueueProbe:
    """Declares each known queue passively over one connection."""

    def __init__(
        self,
        *,
        url: str,
        transport_options: dict[str, Any],
        timeout: float,
        state: QueueState,
        seen_queues: Callable[[], Iterable[str]],
        clock: Callable[[], float],
    ) -> None:
        self._conn = kombu.Connection(
            url, transport_options=dict(transport_options), connect_timeout=timeout
        )
        self._state = state
        self._seen_queues = seen_queues
        self._clock = clock
        self._channel: Any = None

    def __call__(self) -> None:
        try:
            targets = self._state.targets(self._seen_queues(), self._clock())
            readings: dict[str, QueueReading] = {}
            for queue in targets:
                reading = self._declare(queue)
                if reading is not None:
                    readings[queue] = reading
                elif queue in self._state.configured:
                    readings[queue] = QueueReading(length=0, by_priority={}, consumers=0)
            self._state.publish(readings)
        except Exception:
            self._channel = None
            self._conn.release()
            raise

    def _declare(self, queue: str) -> QueueReading | None:
        if self._channel is None:
            self._conn.ensure_connection(max_retries=1)
            self._channel = self._conn.channel()
        try:
            _name, ready, consumers = self._channel.queue_declare(queue=queue, passive=True)
        except NotFound:
            self._channel = None  # the broker closed it
            return None
        return QueueReading(length=ready, by_priority={}, consumers=consumers)

    def close(self) -> None:
        self._conn.release()
