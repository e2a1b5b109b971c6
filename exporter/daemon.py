"""Lifecycle: build the data path, serve, wait for a stop signal, shut down in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from exporter import brokers, heap
from exporter.brokers.base import EventSource, QueueContext
from exporter.collectors.beat import RedBeatReader
from exporter.collectors.registry import build_registry, build_sidecar_registry
from exporter.http import Authenticator, HttpServer, Readiness, ssl_context
from exporter.inspect import Inspector, InspectStats, app_router, load_app
from exporter.pipeline import EventPipeline
from exporter.poller import Poller
from exporter.settings import Settings
from exporter.sidecar.procfs import ProcReader
from exporter.sidecar.watcher import SidecarWatcher
from exporter.state.beat import BeatState, PeriodicState, periodic_state
from exporter.state.queues import QueueState
from exporter.state.routing import QueueResolver
from exporter.state.tasks import TaskState
from exporter.state.workers import WorkerState

log = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0
SHUTDOWN_SECONDS = 1.5
DROPS_SHOWN_SECONDS = 300.0


def http_server(
    settings: Settings, registry: CollectorRegistry, readiness: Callable[[], Readiness]
) -> HttpServer:
    """The HTTP server the settings describe, serving ``registry``."""
    return HttpServer(
        registry=registry,
        host=settings.host,
        port=settings.port,
        readiness=readiness,
        auth=Authenticator(
            username=settings.web_auth_username,
            password=settings.web_password(),
            token=settings.web_bearer_token(),
        ),
        tls=ssl_context(
            settings.web_tls_cert_file,
            settings.web_tls_key_file,
            settings.web_tls_client_ca_file,
        ),
        protect_health=settings.web_protect_health,
    )


class Daemon:
    """Everything one exporter process runs, wired broker -> decode -> state -> metrics -> HTTP."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        app = load_app(settings.app) if settings.app else None
        self.resolver = QueueResolver(route=app_router(app) if app is not None else None)
        self.redbeat_entries: RedBeatReader | None = None
        if settings.collector_beat and settings.beat_redbeat and app is not None:
            from exporter.schedule import RedBeatEntries  # noqa: PLC0415 - imports Celery

            self.redbeat_entries = RedBeatEntries(app, str(settings.app)).read
        self.periodic = self._periodic_state(app)
        tasks = TaskState.from_settings(
            settings,
            resolver=self.resolver,
            watched=self.periodic.tasks if self.periodic is not None else (),
        )
        workers = WorkerState.from_settings(settings)
        url = settings.resolved_broker_url()
        self.inspector: Inspector | None = None
        if settings.inspect_interval_seconds > 0:
            self.inspector = Inspector(
                broker_url=url,
                transport_options=dict(settings.broker_transport_options),
                interval=settings.inspect_interval_seconds,
                timeout=settings.inspect_timeout_seconds,
                resolver=self.resolver,
                live_workers=self._live_workers,
                stats=InspectStats(),
            )
        self.pipeline = EventPipeline(
            tasks=tasks,
            workers=workers,
            clock=clock,
            max_event_bytes=settings.max_event_bytes,
            on_new_worker=self.inspector.worker_appeared if self.inspector else None,
            on_worker_gone=self._worker_gone,
        )
        self.view = self.pipeline.view
        self.source: EventSource = brokers.event_source(settings, self.pipeline)
        self.pollers: list[Poller] = []
        self.beat: BeatState | None = None
        self._closers: list[Callable[[], None]] = []
        self.queues: QueueState | None = None
        if settings.collector_queues:
            self.queues = self._queue_poller()
        if settings.collector_beat and settings.beat_redis_sources():
            self.beat = BeatState()
            probe = brokers.beat_probe(settings, self.beat)
            self._closers.append(probe.close)
            self.pollers.append(
                Poller(
                    name="beat",
                    probe=probe,
                    interval=settings.beat_poll_interval_seconds,
                    timeout=settings.broker_connect_timeout_seconds * 2,
                    clock=clock,
                )
            )
        registry = build_registry(
            settings=settings,
            view=self.view,
            resolver=self.resolver,
            sources=[self.source.status],
            inspector=self.inspector,
            beat=self.beat,
            periodic=self.periodic,
            redbeat_entries=self.redbeat_entries,
            queues=self.queues,
            pollers=self.pollers,
            clock=clock,
        )
        self.http = http_server(settings, registry, self.readiness)
        self.stop_event = asyncio.Event()

    def _periodic_state(self, app: Any) -> PeriodicState | None:
        """The periodic tasks watched: the app's beat_schedule, --periodic-tasks, and with
        --beat-redbeat RedBeat's entries as they come and go."""
        settings = self.settings
        if not settings.collector_beat:
            return None
        started = self._clock()
        app_schedules = {}
        if app is not None and settings.app is not None:
            from exporter.schedule import read_schedule  # noqa: PLC0415 - imports Celery

            app_schedules = read_schedule(app, settings.app, started)
        return periodic_state(
            settings.periodic_tasks,
            app_schedules,
            grace=settings.periodic_task_grace_seconds,
            started=started,
            dynamic=self.redbeat_entries is not None,
        )

    def _queue_poller(self) -> QueueState:
        """The queue state and the broker's poller that fills it."""
        settings = self.settings
        state = QueueState(
            configured=settings.queues,
            forget_after=settings.queue_forget_seconds,
            max_queues=settings.max_queues,
        )
        context = QueueContext(
            state=state,
            seen_queues=self._queues_seen,
            sent_times=self.view.sent_at,
            sent_seen=self.view.sends_task_sent,
            clock=self._clock,
        )
        probe = brokers.queue_probe(settings, context)
        self._closers.append(probe.close)
        self.pollers.append(
            Poller(
                name="queues",
                probe=probe,
                interval=settings.queue_poll_interval_seconds,
                timeout=settings.broker_connect_timeout_seconds * 2,
                clock=self._clock,
            )
        )
        return state

    def _queues_seen(self) -> set[str]:
        seen = self.view.queues_seen()
        for queues in self.resolver.worker_queues.values():
            seen.update(queues)
        return seen

    def _worker_gone(self, hostname: str) -> None:
        self.resolver.forget_worker(hostname)
        if self.inspector is not None:
            self.inspector.forget_worker(hostname)

    # The inspector is built before the pipeline (it hears of new workers from it).
    def _live_workers(self) -> int:
        return self.view.live_workers()

    def readiness(self) -> Readiness:
        """Ready when the event source is connected and, if asked, events are fresh."""
        checks = {"events_source": "connected" if self.source.status.connected else "down"}
        dropped_at = self.view.last_broker_drop()
        if dropped_at is not None and self._clock() - dropped_at < DROPS_SHOWN_SECONDS:
            # Degraded, not unready: restarting the exporter would only lose more.
            checks["broker_drops"] = (
                f"events dropped by the broker {self._clock() - dropped_at:.0f}s ago"
            )
        ready = self.source.status.connected
        max_age = self.settings.ready_max_event_age_seconds
        if max_age > 0:
            last = self.view.stats().last_event_at
            age = None if last is None else self._clock() - last
            fresh = age is not None and age <= max_age
            checks["last_event"] = "none yet" if age is None else f"{age:.1f}s ago"
            ready = ready and fresh
        return Readiness(ready, checks)

    async def run(self) -> None:
        """Serve until ``stop_event`` is set, then shut down within about two seconds."""
        await self.http.start()
        self.source.start()
        background = [asyncio.create_task(self._sweep(), name="sweep")]
        if self.inspector is not None:
            background.append(
                asyncio.create_task(self.inspector.run(self.stop_event), name="inspect")
            )
        background += [
            asyncio.create_task(poller.run(self.stop_event), name=f"poll-{poller.name}")
            for poller in self.pollers
        ]
        try:
            await self.stop_event.wait()
        finally:
            log.info("shutting down")
            for task in background:
                task.cancel()
            await asyncio.to_thread(self.source.stop, SHUTDOWN_SECONDS)
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.http.close()
            if self.inspector is not None:
                self.inspector.close()
            for close in self._closers:
                close()
            log.info("stopped")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            status = self.source.status
            # Heartbeats lost with a connection, or dropped by the broker while we lagged,
            # must not look like dead workers.
            since = max(status.connected_at, self.view.last_broker_drop() or 0.0)
            try:
                self.pipeline.sweep(stream_since=since if status.connected else math.inf)
            except Exception:  # supervision boundary: upkeep must go on
                log.exception("state upkeep failed")


class SidecarDaemon:
    """A worker sidecar: no event stream, only this pod's workers, asked and read from /proc."""

    def __init__(self, settings: Settings) -> None:
        self.watcher = SidecarWatcher(
            broker_url=settings.resolved_broker_url(),
            transport_options=dict(settings.broker_transport_options),
            hostname=socket.gethostname(),
            workers=settings.sidecar_workers,
            inspect_interval=settings.sidecar_inspect_interval_seconds,
            proc_interval=settings.sidecar_proc_interval_seconds,
            timeout=settings.inspect_timeout_seconds,
            proc=ProcReader(Path(settings.sidecar_proc_root)),
            stats=InspectStats(),
        )
        registry = build_sidecar_registry(settings=settings, watcher=self.watcher)
        self.http = http_server(settings, registry, self.readiness)
        self.stop_event = asyncio.Event()

    def readiness(self) -> Readiness:
        """Ready once an inspection round has reached the broker, until one fails."""
        connected = self.watcher.connected
        return Readiness(connected, {"broker": "connected" if connected else "down"})

    async def run(self) -> None:
        """Serve until ``stop_event`` is set."""
        await self.http.start()
        watching = asyncio.create_task(self.watcher.run(self.stop_event), name="sidecar")
        try:
            await self.stop_event.wait()
        finally:
            log.info("shutting down")
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            await self.http.close()
            self.watcher.close()
            log.info("stopped")


async def serve(settings: Settings) -> None:
    """Run a daemon until SIGTERM or SIGINT."""
    heap.configure()
    daemon = SidecarDaemon(settings) if settings.sidecar else Daemon(settings)
    # Everything imported and built so far lives as long as the process: out of the cyclic
    # collector's way, its full collections no longer stall a scrape for tens of milliseconds.
    gc.freeze()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.stop_event.set)
    try:
        await daemon.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
