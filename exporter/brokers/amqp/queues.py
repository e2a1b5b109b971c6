"""RabbitMQ queue depth: a passive queue_declare per queue (ready messages and consumers), and,
with the management API, every queue of the vhost with its unacked count.

AMQP has no verb to list queues, so without the management API the queues polled are the
configured ones and those seen in events and worker inspection. With it
(``--rabbitmq-management-url``), every task queue of the broker URL's vhost is polled too, and
its unacked count and consumer utilisation come from there. Ready messages and consumers always
come from the passive declare: it is exact and immediate, while the management API's numbers
are sampled statistics (null for a queue younger than the statistics interval).

A passive declare of a missing queue closes the channel with 404 (of another connection's
exclusive queue, 405): the queue then reads 0 when configured, and the next one gets a fresh
channel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import kombu
from amqp.exceptions import AccessRefused, NotFound, ResourceLocked

from exporter.brokers.amqp.management import ManagementClient, ManagementQueue, is_task_queue
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
        management: ManagementClient | None = None,
    ) -> None:
        self._conn = kombu.Connection(
            url, transport_options=dict(transport_options), connect_timeout=timeout
        )
        self._state = state
        self._seen_queues = seen_queues
        self._clock = clock
        self._management = management
        self._channel: Any = None

    @property
    def virtual_host(self) -> str:
        """The broker URL's vhost, as kombu reads it (``//`` at the end is ``/``)."""
        vhost: str = self._conn.virtual_host
        return vhost

    def __call__(self) -> None:
        # First the HTTP API: its failure fails the poll but leaves the AMQP connection be.
        managed: dict[str, ManagementQueue] = {}
        if self._management is not None:
            managed = {q.name: q for q in self._management.fetch() if is_task_queue(q.name)}
        try:
            targets = self._state.targets([*managed, *self._seen_queues()], self._clock())
            readings: dict[str, QueueReading] = {}
            for queue in targets:
                reading = self.reading(queue, self._declare(queue), managed.get(queue))
                if reading is not None:
                    readings[queue] = reading
            self._state.publish(readings)
        except Exception:
            self._channel = None
            self._conn.release()
            raise

    def reading(
        self,
        queue: str,
        declared: tuple[int, int] | None,
        stats: ManagementQueue | None,
    ) -> QueueReading | None:
        """One queue's reading from its passive declare (ready, consumers) and management stats.

        None when the queue cannot be read and is not configured (a missing configured queue
        reads 0).
        """
        unacked: int | None = None
        utilisation: float | None = None
        consumers: int | None
        if stats is not None:
            unacked, utilisation = stats.unacked, stats.utilisation
        if declared is not None:
            ready, consumers = declared
        elif stats is not None and stats.ready is not None:
            ready, consumers = stats.ready, stats.consumers  # locked: only the API can tell
        elif queue in self._state.configured:
            ready, consumers = 0, 0
            unacked = 0 if self._management is not None else None
        else:
            return None
        return QueueReading(
            length=ready,
            by_priority={},
            unacked=unacked,
            consumers=consumers,
            consumer_utilisation=utilisation,
        )

    def _declare(self, queue: str) -> tuple[int, int] | None:
        """(ready messages, consumers), or None when the queue is missing or not ours to read."""
        if self._channel is None:
            self._conn.ensure_connection(max_retries=1)
            self._channel = self._conn.channel()
        try:
            _name, ready, consumers = self._channel.queue_declare(queue=queue, passive=True)
        except (NotFound, ResourceLocked, AccessRefused):
            self._channel = None  # the broker closed it
            return None
        return int(ready), int(consumers)

    def close(self) -> None:
        self._conn.release()
