"""Queue metrics, from the last broker poll and the inspected worker queues."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric

from exporter.metrics import defs
from exporter.pipeline import StateView
from exporter.state.queues import QueueState
from exporter.state.routing import QueueResolver


class QueueCollector:
    """Depth, unacked, oldest ages, consumers and their utilisation per queue; reads the
    poller's cache only."""

    def __init__(
        self,
        *,
        state: QueueState,
        view: StateView,
        resolver: QueueResolver,
        by_priority: bool,
        clock: Callable[[], float],
    ) -> None:
        self._state = state
        self._view = view
        self._resolver = resolver
        self._by_priority = by_priority
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        yield from self._broker_families()
        yield self._workers_family()

    def _broker_families(self) -> Iterable[Metric]:
        """What the last broker poll read."""
        now = self._clock()
        length, priority = defs.QUEUE_LENGTH.gauge(), defs.QUEUE_LENGTH_BY_PRIORITY.gauge()
        unacked, consumers = defs.QUEUE_UNACKED.gauge(), defs.QUEUE_CONSUMERS.gauge()
        oldest = defs.QUEUE_OLDEST_MESSAGE_AGE.gauge()
        oldest_unacked = defs.QUEUE_OLDEST_UNACKED_AGE.gauge()
        utilisation = defs.QUEUE_CONSUMER_UTILISATION.gauge()
        for queue, reading in self._state.read().items():
            labels = [queue]
            length.add_metric(labels, reading.length)
            if self._by_priority:
                for step, count in reading.by_priority.items():
                    priority.add_metric([queue, str(step)], count)
            if reading.unacked is not None:
                unacked.add_metric(labels, reading.unacked)
            if reading.consumers is not None:
                consumers.add_metric(labels, reading.consumers)
            if reading.oldest_message_at is not None:
                oldest.add_metric(labels, max(0.0, now - reading.oldest_message_at))
            if reading.oldest_unacked_at is not None:
                oldest_unacked.add_metric(labels, max(0.0, now - reading.oldest_unacked_at))
            if reading.consumer_utilisation is not None:
                utilisation.add_metric(labels, reading.consumer_utilisation)
        yield from (length, unacked, oldest, oldest_unacked, consumers, utilisation)
        if self._by_priority:
            yield priority

    def _workers_family(self) -> Metric:
        """Live workers per queue, from inspection."""
        _, workers = self._view.workers()
        live = {worker.hostname for worker in workers if worker.up}
        per_queue: dict[str, int] = {}
        for hostname, queues in self._resolver.worker_queues.items():
            if hostname in live:
                for queue in queues:
                    per_queue[queue] = per_queue.get(queue, 0) + 1
        workers_family = defs.QUEUE_WORKERS.gauge()
        for queue, count in per_queue.items():
            workers_family.add_metric([queue], count)
        return workers_family
