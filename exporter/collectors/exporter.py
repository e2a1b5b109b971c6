"""The exporter's own health: events, drops, state size, sources, collectors, build."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Sequence

import kombu
from prometheus_client.metrics_core import Metric

from exporter import __version__
from exporter.collectors.base import CollectorResults
from exporter.events.status import SourceStatus
from exporter.inspect import InspectStats
from exporter.metrics import defs
from exporter.metrics.family import ScalarFamily
from exporter.pipeline import StateView
from exporter.poller import Poller
from exporter.state.queues import QueueState


class ExporterCollector:
    """Self-metrics; registered last so it reports the other collectors of the same scrape."""

    def __init__(
        self,
        *,
        view: StateView | None,
        sources: Sequence[SourceStatus],
        results: CollectorResults,
        inspections: InspectStats | None,
        pollers: Sequence[Poller],
        queues: QueueState | None = None,
    ) -> None:
        self._view = view
        self._sources = sources
        self._results = results
        self._inspections = inspections
        self._pollers = pollers
        self._queues = queues
        self._build = [__version__, platform.python_version(), kombu.__version__]

    def collect(self) -> Iterable[Metric]:
        build = defs.BUILD_INFO.gauge()
        build.add_metric(self._build, 1.0)
        yield build
        if self._view is not None:  # a worker sidecar reads no events
            yield from self._event_families(self._view)
        if self._inspections is not None:
            yield _by_label(defs.INSPECTIONS.counter(), self._inspections.read())
        yield from self._poll_families()
        success, duration = defs.COLLECTOR_SUCCESS.gauge(), defs.COLLECTOR_DURATION.gauge()
        for name, (ok, seconds) in self._results.read().items():
            success.add_metric([name], 1.0 if ok else 0.0)
            duration.add_metric([name], seconds)
        yield from (success, duration)

    def _event_families(self, view: StateView) -> Iterable[Metric]:
        stats = view.stats()
        yield _by_label(defs.EVENTS.counter(), stats.events)
        yield _by_label(defs.EVENTS_DROPPED.counter(), stats.dropped)
        yield _by_label(defs.STATE_EVICTIONS.counter(), stats.evictions)
        overflows = dict(stats.label_overflows)
        overflows["worker"] += stats.workers_over_limit
        if self._queues is not None:
            overflows["queue"] += self._queues.refused
        yield _by_label(defs.LABEL_OVERFLOW.counter(), overflows)
        tracked = defs.TRACKED_TASKS.gauge()
        tracked.add_metric([], stats.tracked_tasks)
        yield tracked
        up, reconnects = defs.SOURCE_UP.gauge(), defs.SOURCE_RECONNECTS.counter()
        disconnects, buffered = defs.SOURCE_DISCONNECTS.counter(), defs.EVENT_BUFFER.gauge()
        for source in self._sources:
            up.add_metric([source.name], 1.0 if source.connected else 0.0)
            reconnects.add_metric([source.name], source.reconnects)
            for reason, count in source.disconnects.items():
                disconnects.add_metric([source.name, reason], count)
        buffered.add_metric([], sum(source.buffered_bytes for source in self._sources))
        yield from (up, reconnects, disconnects, buffered)
        last, lag = defs.LAST_EVENT.gauge(), defs.EVENT_LAG.gauge()
        if stats.last_event_at is not None and stats.last_event_lag is not None:
            last.add_metric([], stats.last_event_at)
            lag.add_metric([], stats.last_event_lag)
        yield from (last, lag)

    def _poll_families(self) -> list[Metric]:
        last, took = defs.POLL_LAST_SUCCESS.gauge(), defs.POLL_DURATION.gauge()
        errors = defs.POLL_ERRORS.counter()
        for poller in self._pollers:
            stats = poller.stats()
            errors.add_metric([poller.name], stats.errors)
            if stats.last_success is not None and stats.duration is not None:
                last.add_metric([poller.name], stats.last_success)
                took.add_metric([poller.name], stats.duration)
        return [last, took, errors]


def _by_label(family: ScalarFamily, values: dict[str, int]) -> ScalarFamily:
    for label, value in values.items():
        family.add_metric([label], value)
    return family
