"""Worker sidecar metrics: this pod's workers' processes, read from /proc."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

from exporter.metrics import defs
from exporter.sidecar.watcher import SidecarWatcher


class SidecarCollector:
    """Per watched worker: memory, CPU and pool processes. Counters are shown while the worker
    is away; gauges only while it runs."""

    def __init__(self, watcher: SidecarWatcher) -> None:
        self._watcher = watcher

    def collect(self) -> Iterable[Metric]:
        visible = defs.WORKER_PROCESSES_VISIBLE.gauge()
        started = defs.WORKER_START_TIME.gauge()
        rss = defs.WORKER_MEMORY_RSS.gauge()
        largest = defs.WORKER_POOL_PROCESS_MAX_RSS.gauge()
        processes = defs.WORKER_POOL_PROCESSES.gauge()
        cpu = defs.WORKER_CPU.counter()
        replacements = defs.WORKER_POOL_REPLACEMENTS.counter()
        for worker, report in sorted(self._watcher.reports().items()):
            labels = [worker]
            if report.visible is not None:
                visible.add_metric(labels, 1.0 if report.visible else 0.0)
            pool = report.pool
            if pool is None:
                continue
            cpu.add_metric(labels, pool.cpu_seconds)
            replacements.add_metric(labels, pool.replacements)
            if report.live:
                if report.started is not None:
                    started.add_metric(labels, report.started)
                rss.add_metric(labels, pool.rss_bytes)
                largest.add_metric(labels, pool.largest_pool_rss_bytes)
                processes.add_metric(labels, pool.pool_processes)
        yield from (visible, started, rss, largest, processes, cpu, replacements)
