"""Decode to state: the single entry point event sources feed, the lock, and the one
read-only view (``StateView``) collectors, probes and the daemon read state through.

Sources hand over whole batches (everything one socket read produced), so the lock is taken once
per batch rather than once per event.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple

from exporter.events.decode import decode_body, decode_redis_message
from exporter.events.model import (
    WORKER_HEARTBEAT,
    Decoded,
    Dropped,
    DropReason,
    TaskEvent,
    WorkerEvent,
)
from exporter.state.accounts import TaskSnapshot
from exporter.state.tasks import TaskState
from exporter.state.workers import WorkerSnapshot, WorkerState

log = logging.getLogger(__name__)

DROP_INCIDENT_GAP = 60.0

Clock = Callable[[], float]


class PipelineStats(NamedTuple):
    """The pipeline's own health, copied under the lock."""

    events: dict[str, int]
    dropped: dict[str, int]
    last_event_at: float | None
    last_event_lag: float | None
    tracked_tasks: int
    evictions: dict[str, int]
    label_overflows: dict[str, int]
    workers_over_limit: int


class EventPipeline:
    """Decodes raw messages and applies the events to task and worker state."""

    def __init__(
        self,
        *,
        tasks: TaskState,
        workers: WorkerState,
        clock: Clock,
        max_event_bytes: int,
        on_new_worker: Callable[[str], None] | None = None,
        on_worker_gone: Callable[[str], None] | None = None,
    ) -> None:
        self.tasks = tasks
        self.workers = workers
        self._clock = clock
        self._max_event_bytes = max_event_bytes
        self._on_new_worker = on_new_worker
        self._on_worker_gone = on_worker_gone
        self.lock = threading.Lock()
        self._events: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._last_event_at: float | None = None
        self._last_event_lag: float | None = None
        self._last_broker_drop = -math.inf
        self.view = StateView(self)  # what everything else reads

    def feed_redis(self, messages: Iterable[bytes]) -> None:
        """Apply kombu Redis envelopes, as published on the event channel."""
        limit = self._max_event_bytes
        decoded: list[Decoded] = []
        for raw in messages:
            decoded += decode_redis_message(raw, limit)
        self.apply(decoded)

    def feed_bodies(self, messages: Iterable[tuple[bytes, str | None]]) -> None:
        """Apply AMQP message bodies, each with its content type."""
        limit = self._max_event_bytes
        decoded: list[Decoded] = []
        for body, content_type in messages:
            decoded += decode_body(body, content_type, limit)
        self.apply(decoded)

    def note_broker_drop(self, reason: DropReason, events: int) -> None:
        """Count events the broker dropped before we could read them.

        Logged at WARNING when an incident starts (no drop in the previous minute).
        """
        now = self._clock()
        with self.lock:
            self._dropped[reason.value] = self._dropped.get(reason.value, 0) + events
            quiet = now - self._last_broker_drop > DROP_INCIDENT_GAP
            self._last_broker_drop = now
        if quiet:
            log.warning(
                "the broker dropped %d event(s) (%s) before they were read: the exporter "
                "fell behind; see celery_exporter_events_dropped_total",
                events,
                reason.value,
            )

    def apply(self, decoded: list[Decoded]) -> None:
        """Apply decoded events and count refusals, all under one lock acquisition."""
        if not decoded:
            return
        now = self._clock()
        new_workers: list[str] = []
        events = self._events
        apply_task = self.tasks.apply
        last: TaskEvent | WorkerEvent | None = None
        with self.lock:
            for item in decoded:
                kind = type(item)
                if kind is TaskEvent:
                    apply_task(item, now)  # type: ignore[arg-type]  # narrowed by kind
                    last = item  # type: ignore[assignment]  # narrowed by kind
                elif kind is WorkerEvent:
                    self._apply_worker(item, now, new_workers)  # type: ignore[arg-type]
                    last = item  # type: ignore[assignment]  # narrowed by kind
                elif kind is Dropped:
                    self._drop(item)  # type: ignore[arg-type]  # narrowed by kind
                    continue
                etype = item.type  # type: ignore[union-attr]  # Dropped handled above
                events[etype] = events.get(etype, 0) + 1
            if last is not None:
                self._last_event_at = last.timestamp
                self._last_event_lag = now - last.timestamp
        if self._on_new_worker is not None:
            for hostname in new_workers:
                self._on_new_worker(hostname)

    def _apply_worker(self, event: WorkerEvent, now: float, new_workers: list[str]) -> None:
        # A sign of life keeps its task series, also of a worker the worker state cannot hold.
        self.tasks.labels.worker.touch(event.hostname, now)
        if self.workers.restarted(event):
            # A new main process under this name: what the old one ran is lost.
            self.tasks.end_running(event.hostname, started_before=event.timestamp, orphaned=True)
        if self.workers.apply(event, now):
            new_workers.append(event.hostname)
        if event.type == WORKER_HEARTBEAT and event.active == 0:
            # Nothing runs there: a task still listed as running lost its final event.
            self.tasks.end_running(event.hostname, started_before=event.timestamp)

    def _drop(self, dropped: Dropped) -> None:
        reason = dropped.reason.value
        seen = self._dropped.get(reason, 0)
        self._dropped[reason] = seen + 1
        # The first of each reason is worth a warning; a flood of them must not flood the log.
        log.log(
            logging.WARNING if seen == 0 else logging.DEBUG,
            "dropped an event message (%s): %s; further ones are logged at DEBUG",
            reason,
            dropped.detail,
        )

    def drop_unreadable(self, detail: str) -> None:
        """Count a message the source could not even frame."""
        with self.lock:
            self._drop(Dropped(DropReason.MALFORMED_ENVELOPE, detail))

    def sweep(self, stream_since: float = -math.inf) -> None:
        """Periodic upkeep: release overdue held events, expire idle ids, orphan the tasks of
        workers lost, retire workers and the task series of workers and queues gone.

        ``stream_since``: since when the event stream has run without a break (``inf`` while
        it is down); only heartbeats missed within it say a worker is lost."""
        now = self._clock()
        with self.lock:
            self.tasks.sweep(now)
            gone = self.workers.sweep(now)
            for hostname in self.tasks.running_on():
                if hostname in gone or self.workers.lost(hostname, now, stream_since):
                    self.tasks.end_running(hostname, orphaned=True)
            self.tasks.expire_labels(now, self.workers.knows)
        if self._on_worker_gone is not None:
            for hostname in gone:
                self._on_worker_gone(hostname)

    def _dropped_with_duplicates(self) -> dict[str, int]:
        dropped = dict(self._dropped)
        if self.tasks.duplicates:
            dropped[DropReason.DUPLICATE.value] = self.tasks.duplicates
        return dropped


class StateView:
    """What the rest of the daemon reads of the event state: collectors, probes, inspection
    and readiness. Each call copies what it returns under the pipeline's lock, so no reader
    ever holds live state, and none can change it."""

    def __init__(self, pipeline: EventPipeline) -> None:
        self._pipeline = pipeline
        self._lock = pipeline.lock
        self._tasks = pipeline.tasks
        self._workers = pipeline.workers
        self._clock = pipeline._clock
        self.duration_buckets = pipeline.tasks.accounts.duration_buckets
        self.queue_wait_buckets = pipeline.tasks.accounts.queue_wait_buckets

    def tasks(self) -> TaskSnapshot:
        """Task state for a scrape; rendering happens outside the lock."""
        with self._lock:
            return self._tasks.snapshot()

    def workers(self) -> tuple[float, list[WorkerSnapshot]]:
        """Worker state for a scrape, with the time it was judged at."""
        now = self._clock()
        with self._lock:
            return now, self._workers.snapshot(now)

    def live_workers(self) -> int:
        now = self._clock()
        with self._lock:
            return self._workers.live_count(now)

    def stats(self) -> PipelineStats:
        """The pipeline's own counters for a scrape."""
        pipeline = self._pipeline
        with self._lock:
            return PipelineStats(
                events=dict(pipeline._events),
                dropped=pipeline._dropped_with_duplicates(),
                last_event_at=pipeline._last_event_at,
                last_event_lag=pipeline._last_event_lag,
                tracked_tasks=self._tasks.tracked,
                evictions=self._tasks.evictions,
                label_overflows=self._tasks.labels.overflows(),
                workers_over_limit=self._workers.dropped_over_limit,
            )

    def last_broker_drop(self) -> float | None:
        """When the broker last dropped events for us (our clock), if ever."""
        dropped_at = self._pipeline._last_broker_drop
        return None if dropped_at == -math.inf else dropped_at

    def sent_at(self, uuids: list[str]) -> dict[str, float]:
        """task-sent time of each still-queued task id that has one."""
        with self._lock:
            return self._tasks.sent_at(uuids)

    def sends_task_sent(self) -> bool:
        """Whether producers were seen sending task-sent lately."""
        now = self._clock()
        with self._lock:
            return self._tasks.sent_recently(now)

    def queues_seen(self) -> set[str]:
        """Queues named by task-sent events so far."""
        with self._lock:
            return self._tasks.queues_seen()

    def last_seen(self) -> dict[str, float]:
        """Latest task-sent (else task-received) time of each watched task name."""
        with self._lock:
            return dict(self._tasks.last_seen)
