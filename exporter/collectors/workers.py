"""Worker metrics, built at scrape time from worker state and the last inspection."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import Metric

from exporter.inspect import Inspector
from exporter.metrics import defs
from exporter.pipeline import StateView
from exporter.state.routing import QueueResolver
from exporter.state.workers import WorkerSnapshot


def _heartbeat_families(workers: list[WorkerSnapshot]) -> list[Metric]:
    up = defs.WORKER_UP.gauge()
    heartbeat = defs.WORKER_LAST_HEARTBEAT.gauge()
    interval = defs.WORKER_HEARTBEAT_INTERVAL.gauge()
    active = defs.WORKER_TASKS_ACTIVE.gauge()
    processed = defs.WORKER_TASKS_PROCESSED.counter()
    load1 = defs.WORKER_LOAD1.gauge()
    for worker in workers:
        labels = [worker.hostname]
        up.add_metric(labels, 1.0 if worker.up else 0.0)
        interval.add_metric(labels, worker.freq)
        # A worker first seen through worker-offline has never been heard beating.
        if worker.last_heartbeat:
            heartbeat.add_metric(labels, worker.last_heartbeat)
        # The on-demand heartbeat carries no counters: absent until a regular one arrives.
        if worker.active is not None:
            active.add_metric(labels, worker.active)
        if worker.processed is not None:
            processed.add_metric(labels, worker.processed)
        if worker.load1 is not None:
            load1.add_metric(labels, worker.load1)
    return [up, heartbeat, interval, active, processed, load1]


class WorkerCollector:
    """Liveness, heartbeat and load per worker; queues, pool size and reserved tasks."""

    def __init__(
        self,
        *,
        view: StateView,
        resolver: QueueResolver,
        inspector: Inspector | None,
        expected: int,
        expected_per_queue: Mapping[str, int],
    ) -> None:
        self._view = view
        self._resolver = resolver
        self._inspector = inspector
        self._expected = expected
        self._expected_per_queue = dict(expected_per_queue)

    def collect(self) -> Iterable[Metric]:
        _, workers = self._view.workers()
        yield from _heartbeat_families(workers)
        # Inspection replies can outlive a worker by an interval: show known workers only.
        known = {worker.hostname for worker in workers}
        consuming = defs.WORKER_CONSUMING.gauge()
        for hostname, queues in self._resolver.worker_queues.items():
            if hostname in known:
                for queue in queues:
                    consuming.add_metric([hostname, queue], 1.0)
        yield consuming
        concurrency = defs.WORKER_CONCURRENCY.gauge()
        reserved = defs.WORKER_TASKS_RESERVED.gauge()
        if self._inspector is not None:
            for family, values in (
                (concurrency, self._inspector.concurrency),
                (reserved, self._inspector.reserved),
            ):
                for hostname, value in values.items():
                    if hostname in known:
                        family.add_metric([hostname], value)
        yield concurrency
        yield reserved
        if self._expected:
            expected = defs.WORKERS_EXPECTED.gauge()
            expected.add_metric([], self._expected)
            yield expected
        if self._expected_per_queue:
            per_queue = defs.QUEUE_WORKERS_EXPECTED.gauge()
            for queue, count in self._expected_per_queue.items():
                per_queue.add_metric([queue], count)
            yield per_queue
