"""Worker metrics, built at scrape time from a copy of the worker state."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

from exporter.metrics import defs
from exporter.pipeline import EventPipeline
from exporter.state.routing import QueueResolver


class WorkerCollector:
    """Liveness, heartbeat and load per worker, and the queues each one consumes."""

    def __init__(self, *, pipeline: EventPipeline, resolver: QueueResolver) -> None:
        self._pipeline = pipeline
        self._resolver = resolver

    def collect(self) -> Iterable[Metric]:
        _, workers = self._pipeline.worker_snapshot()
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
            if worker.last_heartbeat:
                heartbeat.add_metric(labels, worker.last_heartbeat)
            if worker.active is not None:
                active.add_metric(labels, worker.active)
            if worker.processed is not None:
                processed.add_metric(labels, worker.processed)
            if worker.load1 is not None:
                load1.add_metric(labels, worker.load1)
        consuming = defs.WORKER_CONSUMING.gauge()
        known = {worker.hostname for worker in workers}
        for hostname, queues in self._resolver.worker_queues.items():
            if hostname in known:
                for queue in queues:
                    consuming.add_metric([hostname, queue], 1.0)
        return [up, heartbeat, interval, active, processed, load1, consuming]
