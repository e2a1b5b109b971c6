"""Builds the registry from the collector flags; nothing registers itself at import."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from exporter.collectors.base import Collector, CollectorResults, Isolated
from exporter.collectors.beat import BeatCollector, RedBeatReader
from exporter.collectors.exporter import ExporterCollector
from exporter.collectors.queues import QueueCollector
from exporter.collectors.sidecar import SidecarCollector
from exporter.collectors.tasks import TaskCollector
from exporter.collectors.workers import WorkerCollector
from exporter.events.status import SourceStatus
from exporter.inspect import Inspector
from exporter.pipeline import StateView
from exporter.poller import Poller
from exporter.settings import Settings
from exporter.sidecar.watcher import SidecarWatcher
from exporter.state.beat import BeatState, PeriodicState
from exporter.state.queues import QueueState
from exporter.state.routing import QueueResolver


def build_registry(
    *,
    settings: Settings,
    view: StateView,
    resolver: QueueResolver,
    sources: Sequence[SourceStatus],
    inspector: Inspector | None,
    beat: BeatState | None,
    periodic: PeriodicState | None,
    redbeat_entries: RedBeatReader | None,
    queues: QueueState | None,
    pollers: Sequence[Poller],
    clock: Callable[[], float],
) -> CollectorRegistry:
    """A registry holding the enabled collectors, each isolated: Celery's, then the exporter's
    own, then the process's."""
    registry = CollectorRegistry(auto_describe=False)
    results = CollectorResults()
    enabled: list[tuple[str, Collector]] = []
    if settings.collector_tasks:
        enabled.append(
            (
                "tasks",
                TaskCollector(
                    view=view,
                    clock=clock,
                    sla=settings.task_sla_seconds,
                    sla_default=settings.task_sla_default_seconds,
                ),
            )
        )
    if settings.collector_workers:
        enabled.append(
            (
                "workers",
                WorkerCollector(
                    view=view,
                    resolver=resolver,
                    inspector=inspector,
                    expected=settings.workers_expected,
                    expected_per_queue=settings.workers_expected_per_queue,
                ),
            )
        )
    if queues is not None:
        enabled.append(
            (
                "queues",
                QueueCollector(
                    state=queues,
                    view=view,
                    resolver=resolver,
                    by_priority=settings.queue_priority_metrics,
                    clock=clock,
                ),
            )
        )
    if settings.collector_beat:
        enabled.append(
            (
                "beat",
                BeatCollector(
                    settings=settings,
                    view=view,
                    beat=beat,
                    periodic=periodic,
                    redbeat_entries=redbeat_entries,
                    clock=clock,
                ),
            )
        )
    enabled.append(
        (
            "exporter",
            ExporterCollector(
                view=view,
                sources=sources,
                results=results,
                inspections=inspector.stats if inspector else None,
                pollers=pollers,
                queues=queues,
            ),
        )
    )
    # After the exporter's own families: the task snapshot and the event counts stay as close
    # together as before (a reader comparing them within one page sees less drift).
    return _registered(registry, enabled, results, process=settings.collector_process)


def build_sidecar_registry(*, settings: Settings, watcher: SidecarWatcher) -> CollectorRegistry:
    """A worker sidecar's registry: its workers, the exporter's own health, the process's."""
    registry = CollectorRegistry(auto_describe=False)
    results = CollectorResults()
    enabled: list[tuple[str, Collector]] = [
        ("sidecar", SidecarCollector(watcher)),
        (
            "exporter",
            ExporterCollector(
                view=None, sources=(), results=results, inspections=watcher.stats, pollers=()
            ),
        ),
    ]
    return _registered(registry, enabled, results, process=settings.collector_process)


def _registered(
    registry: CollectorRegistry,
    enabled: list[tuple[str, Collector]],
    results: CollectorResults,
    *,
    process: bool,
) -> CollectorRegistry:
    """``registry`` with the collectors, each isolated, and client_python's process and
    platform collectors last when ``process``."""
    if process:
        enabled.append(("process", ProcessCollector(registry=None)))
        enabled.append(("platform", PlatformCollector(registry=None)))
    for name, collector in enabled:
        registry.register(Isolated(name, collector, results))
    return registry
