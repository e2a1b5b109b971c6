"""Beat liveness as the Redis-side probes last saw it (the event-side heartbeat lives in
TaskState's watched task names), and the periodic tasks' due times and missed runs."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

NextDue = Callable[[float], float]  # unix time of a run -> unix time the entry is due next
# Due times looked at per task and read, at most: a schedule far more frequent than scrapes
# (or a stuck one) costs bounded time; the count goes on from there at the next read.
MAX_DUES_PER_READ = 10_000


class RedBeatReading(NamedTuple):
    lock_ttl: float | None  # seconds left on the lock; None when nobody holds it
    next_due: float | None  # unix time the most overdue schedule entry was due
    # Each entry's (definition, meta) JSON, when its entries are watched (--app).
    entries: tuple[tuple[bytes | None, bytes | None], ...] = ()


class RedBeatEntry(NamedTuple):
    task: str
    next_due: NextDue
    last_run: float | None  # RedBeat's own last_run_at (unix time)


class BeatReadings(NamedTuple):
    key_heartbeat: float | None  # unix time read from the heartbeat key
    redbeat: RedBeatReading | None


def parse_heartbeat_value(raw: bytes | str | None, fmt: str) -> float | None:
    """A heartbeat key's value as unix time: ``unix`` seconds, ``iso8601``, or ``auto``."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    if fmt in ("unix", "auto"):
        try:
            number = float(text)
        except ValueError:
            if fmt == "unix":
                return None
        else:
            return number if math.isfinite(number) else None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class BeatState:
    """Latest readings, swapped whole by the probe thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readings = BeatReadings(None, None)

    def update(self, readings: BeatReadings) -> None:
        with self._lock:
            self._readings = readings

    def read(self) -> BeatReadings:
        with self._lock:
            return self._readings


def interval_due(interval: float) -> NextDue:
    """An entry due ``interval`` seconds after each run (``--periodic-tasks``)."""
    return lambda after: after + interval


class PeriodicReading(NamedTuple):
    next_due: float  # unix time the task is due next, after its last run (or start-up)
    missed: int  # due times passed by more than the grace with no run since, ever


class _Watch:
    __slots__ = ("anchor", "counted", "dues", "missed")

    def __init__(self, dues: Sequence[NextDue], started: float) -> None:
        self.dues = tuple(dues)
        self.anchor = started  # the last run, else start-up
        self.counted = started  # the latest due time counted as missed
        self.missed = 0

    def next_due(self, after: float) -> float:
        # Entries that share a task: the earliest of their due times.
        return min(due(after) for due in self.dues)

    def count(self, until: float, grace: float) -> None:
        """Count the due times after the anchor whose grace had run out by ``until``."""
        due = self.next_due(max(self.anchor, self.counted))
        for _ in range(MAX_DUES_PER_READ):
            if due + grace >= until or due <= self.counted:
                return
            self.missed += 1
            self.counted = due
            due = self.next_due(due)


class PeriodicState:
    """Per periodic task: when it is due next and how many due times passed without a run.

    Fed with each task's last run (task-sent, else task-received) at every read: a due time
    is missed when its grace ran out before the next run, or before now with none yet. Each
    due time counts once, however often it is read; a run that comes late still counts the
    due times whose grace ran out before it.
    """

    def __init__(
        self, schedules: Mapping[str, Sequence[NextDue]], *, grace: float, started: float
    ) -> None:
        self._lock = threading.Lock()
        self._grace = grace
        self._static = {task: tuple(dues) for task, dues in schedules.items()}
        self._watches = {task: _Watch(dues, started) for task, dues in schedules.items()}

    @property
    def tasks(self) -> list[str]:
        """The tasks of the schedules given at start-up."""
        return list(self._static)

    def update_dynamic(self, schedules: Mapping[str, Sequence[NextDue]], now: float) -> None:
        """Replace the entries read at run time (RedBeat's) besides those given at start-up:
        a task first seen now is watched from now, one no longer scheduled is dropped."""
        with self._lock:
            for task in self._watches.keys() - self._static.keys() - schedules.keys():
                del self._watches[task]
            for task in self._static.keys() | schedules.keys():
                dues = (*self._static.get(task, ()), *schedules.get(task, ()))
                watch = self._watches.get(task)
                if watch is None:
                    self._watches[task] = _Watch(dues, now)
                else:
                    watch.dues = dues

    def read(self, last_runs: Mapping[str, float], now: float) -> dict[str, PeriodicReading]:
        readings: dict[str, PeriodicReading] = {}
        with self._lock:
            for task, watch in self._watches.items():
                last = last_runs.get(task)
                if last is not None and last > watch.anchor:
                    watch.count(last, self._grace)
                    watch.anchor = last
                watch.count(now, self._grace)
                readings[task] = PeriodicReading(watch.next_due(watch.anchor), watch.missed)
        return readings


def periodic_state(
    intervals: Mapping[str, float],
    app_schedules: Mapping[str, Sequence[NextDue]],
    *,
    grace: float,
    started: float,
    dynamic: bool = False,
) -> PeriodicState | None:
    """The tasks of ``--periodic-tasks`` (due an interval after each run) and of the app's
    beat_schedule together, the app's schedule first where both name a task; None when there
    are none and none may come (``dynamic``)."""
    schedules: dict[str, list[NextDue]] = {task: list(dues) for task, dues in app_schedules.items()}
    for task, interval in intervals.items():
        schedules.setdefault(task, [interval_due(interval)])
    if not schedules and not dynamic:
        return None
    return PeriodicState(schedules, grace=grace, started=started)
