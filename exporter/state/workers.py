"""Worker liveness from worker-online/heartbeat/offline events.

A worker is up while its heartbeats keep coming: within ``timeout_heartbeats`` times its own
interval (``freq``) of the last one, measured on our clock. A worker that goes away stays, down,
for ``retention`` seconds so that an alert with a long ``for:`` can still fire; then it is removed.
"""

from __future__ import annotations

from typing import NamedTuple

from exporter.events.model import WORKER_OFFLINE, WORKER_ONLINE, WorkerEvent
from exporter.settings import Settings

# Celery's own default heartbeat interval, assumed until a worker states its freq.
DEFAULT_FREQ = 2.0


class _Worker:
    __slots__ = ("active", "freq", "last_heartbeat", "load1", "offline_at", "pid", "processed")

    def __init__(self) -> None:
        self.freq = DEFAULT_FREQ
        self.last_heartbeat = 0.0
        self.active: int | None = None
        self.processed: int | None = None
        self.load1: float | None = None
        self.offline_at: float | None = None
        self.pid: int | None = None


class WorkerSnapshot(NamedTuple):
    hostname: str
    up: bool
    last_heartbeat: float
    freq: float
    active: int | None
    processed: int | None
    load1: float | None


class WorkerState:
    """Applies worker events; not thread-safe on its own (the pipeline holds the lock)."""

    def __init__(
        self,
        *,
        timeout_heartbeats: float,
        retention: float,
        max_workers: int,
        shutdown_grace: float,
    ) -> None:
        self._timeout = timeout_heartbeats
        self._shutdown_grace = shutdown_grace
        self._retention = retention
        self._max_workers = max_workers
        self._workers: dict[str, _Worker] = {}
        self.dropped_over_limit = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerState:
        return cls(
            timeout_heartbeats=settings.worker_timeout_heartbeats,
            retention=settings.worker_retention_seconds,
            max_workers=settings.max_workers,
            shutdown_grace=settings.worker_shutdown_grace_seconds,
        )

    def apply(self, event: WorkerEvent, now: float) -> bool:
        """Account for one worker event; True when it names a worker not known before.

        A new pid under a known name (a restart) is recorded; ``restarted`` tells it."""
        worker = self._workers.get(event.hostname)
        is_new = worker is None
        if worker is None:
            if len(self._workers) >= self._max_workers:
                self.dropped_over_limit += 1
                return False
            worker = self._workers[event.hostname] = _Worker()
        # The on-demand heartbeat (control command) reports freq=5 and no counters: it must not
        # overwrite the interval the worker really beats at.
        regular = event.active is not None
        if event.freq is not None and (regular or is_new):
            worker.freq = event.freq
        if regular:
            worker.active = event.active
            worker.processed = event.processed
            worker.load1 = event.load1
        if event.pid is not None:
            worker.pid = event.pid
        if event.type == WORKER_OFFLINE:
            worker.offline_at = now
        else:
            worker.last_heartbeat = now
            worker.offline_at = None
        return is_new

    def _down_since(self, worker: _Worker) -> float:
        if worker.offline_at is not None:
            return worker.offline_at
        return worker.last_heartbeat + worker.freq * self._timeout

    def sweep(self, now: float) -> list[str]:
        """Remove workers down for longer than the retention; return their names."""
        gone = [
            name
            for name, worker in self._workers.items()
            if now - self._down_since(worker) > self._retention
        ]
        for name in gone:
            del self._workers[name]
        return gone

    def knows(self, hostname: str) -> bool:
        """Whether the worker is alive or still retained."""
        return hostname in self._workers

    def restarted(self, event: WorkerEvent) -> bool:
        """Whether this worker-online comes from a new main process: another pid, or the same
        one (a container's PID 1) counting fewer tasks processed. A consumer restarted after a
        broker blip sends worker-online from the same process, its count going on."""
        worker = self._workers.get(event.hostname)
        if worker is None or event.type != WORKER_ONLINE:
            return False
        if event.pid is not None and worker.pid is not None and event.pid != worker.pid:
            return True
        return (
            event.processed is not None
            and worker.processed is not None
            and event.processed < worker.processed
        )

    def lost(self, hostname: str, now: float, stream_since: float) -> bool:
        """Whether what the worker runs is lost: its heartbeats stopped while the event stream
        ran (since ``stream_since``), or it went offline more than the shutdown grace ago (a
        warm shutdown sends worker-offline first, then lets running tasks finish)."""
        worker = self._workers.get(hostname)
        if worker is None:
            return False
        if worker.offline_at is not None:
            return now - worker.offline_at > self._shutdown_grace
        # Heartbeats missed while the stream was down say nothing: a full timeout from when it
        # came back.
        deadline = max(worker.last_heartbeat, stream_since) + worker.freq * self._timeout
        return deadline <= now

    def live_count(self, now: float) -> int:
        return sum(1 for worker in self._workers.values() if now < self._down_since(worker))

    def snapshot(self, now: float) -> list[WorkerSnapshot]:
        return [
            WorkerSnapshot(
                name,
                now < self._down_since(w),
                w.last_heartbeat,
                w.freq,
                w.active,
                w.processed,
                w.load1,
            )
            for name, w in self._workers.items()
        ]
