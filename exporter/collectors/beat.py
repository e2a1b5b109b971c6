"""Beat liveness and periodic tasks, from watched task events and the Redis readings."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from prometheus_client.metrics_core import Metric

from exporter.metrics import defs
from exporter.pipeline import StateView
from exporter.settings import Settings
from exporter.state.beat import BeatState, NextDue, PeriodicState, RedBeatEntry

# Decodes RedBeat's raw (definition, meta) pairs into entries (exporter.schedule, with --app).
RedBeatReader = Callable[[Sequence[tuple[bytes | None, bytes | None]]], list[RedBeatEntry]]


class BeatCollector:
    """``celery_beat_*`` by source, and ``celery_periodic_task_*`` for the app's schedule and
    configured tasks."""

    def __init__(
        self,
        *,
        settings: Settings,
        view: StateView,
        beat: BeatState | None,
        periodic: PeriodicState | None,
        redbeat_entries: RedBeatReader | None,
        clock: Callable[[], float],
    ) -> None:
        self._heartbeat_task = settings.beat_heartbeat_task or None
        self._key_enabled = bool(settings.beat_redis_key)
        self._redbeat_enabled = settings.beat_redbeat
        self._lock_timeout = settings.beat_redbeat_lock_timeout_seconds
        self._max_age = settings.beat_max_heartbeat_age_seconds
        self._intervals = dict(settings.periodic_tasks)
        self._periodic = periodic
        self._redbeat_entries = redbeat_entries
        self._view = view
        self._beat = beat
        self._clock = clock

    def _heartbeats(self) -> dict[str, float | None]:
        """Newest heartbeat per enabled source; None where none was seen."""
        last_seen = self._view.last_seen()
        heartbeats: dict[str, float | None] = {}
        # The events source appears once its task was seen: an app without Beat, or without
        # the heartbeat task installed, must not look like a dead Beat.
        if self._heartbeat_task and self._heartbeat_task in last_seen:
            heartbeats["events"] = last_seen[self._heartbeat_task]
        readings = self._beat.read() if self._beat is not None else None
        if self._key_enabled:
            heartbeats["redis_key"] = readings.key_heartbeat if readings else None
        if self._redbeat_enabled:
            redbeat = readings.redbeat if readings else None
            ttl = redbeat.lock_ttl if redbeat else None
            # RedBeat extends its lock to the full timeout on every tick, so the time left
            # tells when the last tick was.
            if ttl is not None and ttl != float("inf"):
                heartbeats["redbeat"] = self._clock() - (self._lock_timeout - ttl)
            else:
                heartbeats["redbeat"] = None
        return heartbeats

    def collect(self) -> Iterable[Metric]:
        now = self._clock()
        last, up = defs.BEAT_LAST_HEARTBEAT.gauge(), defs.BEAT_UP.gauge()
        for source, heartbeat in self._heartbeats().items():
            if heartbeat is not None:
                last.add_metric([source], heartbeat)
            # A heartbeat from the future (skew, a key written in milliseconds) proves nothing.
            alive = heartbeat is not None and -self._max_age <= now - heartbeat <= self._max_age
            up.add_metric([source], 1.0 if alive else 0.0)
        yield last
        yield up
        if self._redbeat_enabled and self._beat is not None:
            redbeat = self._beat.read().redbeat
            ttl, due = defs.REDBEAT_LOCK_TTL.gauge(), defs.REDBEAT_NEXT_DUE.gauge()
            if redbeat is not None and redbeat.lock_ttl is not None:
                ttl.add_metric([], redbeat.lock_ttl)
            if redbeat is not None and redbeat.next_due is not None:
                due.add_metric([], redbeat.next_due)
            yield ttl
            yield due
        if self._periodic is not None:
            yield from self._periodic_tasks(now)

    def _periodic_tasks(self, now: float) -> Iterable[Metric]:
        assert self._periodic is not None
        last_runs = self._view.last_seen()
        if self._redbeat_entries is not None and self._beat is not None:
            redbeat = self._beat.read().redbeat
            schedules: dict[str, list[NextDue]] = {}
            for entry in self._redbeat_entries(redbeat.entries if redbeat else ()):
                schedules.setdefault(entry.task, []).append(entry.next_due)
                # RedBeat records each run itself: no task-sent needed for its entries.
                if entry.last_run is not None and entry.last_run > last_runs.get(entry.task, 0):
                    last_runs[entry.task] = entry.last_run
            self._periodic.update_dynamic(schedules, now)
        sent, due = defs.PERIODIC_LAST_SENT.gauge(), defs.PERIODIC_NEXT_DUE.gauge()
        missed = defs.PERIODIC_MISSED.counter()
        for task, reading in self._periodic.read(last_runs, now).items():
            if task in last_runs:
                sent.add_metric([task], last_runs[task])
            if math.isfinite(reading.next_due):
                due.add_metric([task], reading.next_due)
            missed.add_metric([task], reading.missed)
        yield sent
        yield due
        yield missed
        if self._intervals:
            interval = defs.PERIODIC_INTERVAL.gauge()
            for task, expected in self._intervals.items():
                interval.add_metric([task], expected)
            yield interval
