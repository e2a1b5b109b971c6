"""Task accounting: per-label counters, histograms and the running tasks.

Counters are plain dicts keyed by label tuples: the per-event cost is a dict update, and
families are built at scrape time from a snapshot. What an event counts towards, and when, is
decided by the correlation in ``exporter.state.tasks``; nothing here looks at task ids' history.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

from exporter.events.model import (
    TASK_RECEIVED,
    TASK_REJECTED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_STARTED,
    TASK_SUCCEEDED,
)

# Celery reports time limits as task-failed with these exceptions: the hard limit kills the
# pool process (TimeLimitExceeded), the soft one raises inside the task.
TIMEOUT_KINDS = {"TimeLimitExceeded": "hard", "SoftTimeLimitExceeded": "soft"}

# Label tuples: (task, queue), (task, queue, worker), (task, queue, worker, exception|state).
Key2 = tuple[str, str]
Key3 = tuple[str, str, str]
Key4 = tuple[str, str, str, str]


class Histogram:
    """Per-bucket (not cumulative) counts and a sum; cumulated at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class HistogramSnapshot(NamedTuple):
    counts: list[int]
    total: float


class RunningTask(NamedTuple):
    task: str
    queue: str
    hostname: str
    started_at: float  # the worker's clock, for durations
    seen_at: float  # ours, for ages


class TaskSnapshot(NamedTuple):
    """A consistent copy of everything the task collector renders."""

    sent: dict[Key2, int]
    received: dict[Key3, int]
    started: dict[Key3, int]
    succeeded: dict[Key3, int]
    failed: dict[Key4, int]
    retried: dict[Key3, int]
    rejected: dict[Key3, int]
    revoked: dict[Key3, int]
    timeouts: dict[Key3, int]
    redelivered: dict[Key2, int]
    orphaned: dict[Key2, int]
    recovered: dict[Key2, int]
    exhausted: dict[Key2, int]
    last_seen: dict[str, float]
    duration: dict[Key4, HistogramSnapshot]
    queue_wait: dict[Key3, HistogramSnapshot]
    running: list[RunningTask]


K = TypeVar("K")


def _copy_histograms(source: dict[K, Histogram]) -> dict[K, HistogramSnapshot]:
    return {key: HistogramSnapshot(list(h.counts), h.total) for key, h in source.items()}


class TaskAccounts:
    """What the task families render; not thread-safe on its own (the pipeline holds the lock)."""

    def __init__(
        self, *, duration_buckets: Sequence[float], queue_wait_buckets: Sequence[float]
    ) -> None:
        self.duration_buckets = tuple(duration_buckets)
        self.queue_wait_buckets = tuple(queue_wait_buckets)
        self.sent: dict[Key2, int] = {}
        self.received: dict[Key3, int] = {}
        self.started: dict[Key3, int] = {}
        self.succeeded: dict[Key3, int] = {}
        self.failed: dict[Key4, int] = {}
        self.retried: dict[Key3, int] = {}
        self.rejected: dict[Key3, int] = {}
        self.revoked: dict[Key3, int] = {}
        self.timeouts: dict[Key3, int] = {}  # (task, queue, kind)
        self.redelivered: dict[Key2, int] = {}
        self.orphaned: dict[Key2, int] = {}
        self.recovered: dict[Key2, int] = {}  # succeeded after a retry
        self.exhausted: dict[Key2, int] = {}  # failed after a retry
        self.duration: dict[Key4, Histogram] = {}
        self.queue_wait: dict[Key3, Histogram] = {}
        self.running: dict[str, RunningTask] = {}
        # uuid -> task by nodename: an idle worker's heartbeat (every 2 s each) ends the tasks
        # it no longer runs without scanning every running task.
        self.running_by_host: dict[str, dict[str, RunningTask]] = {}
        self._counters: dict[str, dict[Key3, int]] = {
            TASK_RECEIVED: self.received,
            TASK_STARTED: self.started,
            TASK_SUCCEEDED: self.succeeded,
            TASK_RETRIED: self.retried,
            TASK_REJECTED: self.rejected,
            TASK_REVOKED: self.revoked,
        }

    @staticmethod
    def add(counter: dict[Key2, int], key: Key2) -> None:
        counter[key] = counter.get(key, 0) + 1

    def count(self, kind: str, key: Key3) -> None:
        """Count an event of any task type but task-sent and task-failed."""
        counter = self._counters[kind]
        counter[key] = counter.get(key, 0) + 1

    def count_failed(self, key: Key3, exception: str, label: str) -> None:
        """Count a failure; ``exception`` is the class, ``label`` its label value."""
        fkey = (*key, label)
        self.failed[fkey] = self.failed.get(fkey, 0) + 1
        timeout = TIMEOUT_KINDS.get(exception)
        if timeout is not None:
            tkey = (key[0], key[1], timeout)
            self.timeouts[tkey] = self.timeouts.get(tkey, 0) + 1

    def start(self, uuid: str, task: RunningTask) -> None:
        self.end(uuid)  # a second start may come from another worker
        self.running[uuid] = task
        self.running_by_host.setdefault(task.hostname, {})[uuid] = task

    def end(self, uuid: str) -> None:
        task = self.running.pop(uuid, None)
        if task is not None:
            on_host = self.running_by_host[task.hostname]
            del on_host[uuid]
            if not on_host:
                del self.running_by_host[task.hostname]

    def observe_duration(self, key: Key4, seconds: float) -> None:
        hist = self.duration.get(key)
        if hist is None:
            hist = self.duration[key] = Histogram(self.duration_buckets)
        hist.observe(max(0.0, seconds))

    def observe_wait(self, key: Key3, seconds: float) -> None:
        hist = self.queue_wait.get(key)
        if hist is None:
            hist = self.queue_wait[key] = Histogram(self.queue_wait_buckets)
        hist.observe(max(0.0, seconds))

    def purge(self, workers: set[str], queues: set[str]) -> None:
        """Remove every series of these worker and queue label values."""
        by_worker: tuple[dict[Any, Any], ...] = (
            self.received, self.started, self.succeeded, self.failed, self.retried,
            self.rejected, self.revoked, self.duration, self.queue_wait,
        )  # fmt: skip
        by_queue: tuple[dict[Any, Any], ...] = (
            self.sent, self.timeouts, self.redelivered, self.orphaned, self.recovered,
            self.exhausted,
        )  # fmt: skip
        for series in by_worker:
            for key in [k for k in series if k[1] in queues or k[2] in workers]:
                del series[key]
        for series in by_queue if queues else ():
            for key in [k for k in series if k[1] in queues]:
                del series[key]

    def snapshot(self, last_seen: dict[str, float]) -> TaskSnapshot:
        """Copy everything a scrape needs; call with the lock held, render without it."""
        return TaskSnapshot(
            sent=dict(self.sent),
            received=dict(self.received),
            started=dict(self.started),
            succeeded=dict(self.succeeded),
            failed=dict(self.failed),
            retried=dict(self.retried),
            rejected=dict(self.rejected),
            revoked=dict(self.revoked),
            timeouts=dict(self.timeouts),
            redelivered=dict(self.redelivered),
            orphaned=dict(self.orphaned),
            recovered=dict(self.recovered),
            exhausted=dict(self.exhausted),
            last_seen=last_seen,
            duration=_copy_histograms(self.duration),
            queue_wait=_copy_histograms(self.queue_wait),
            running=list(self.running.values()),
        )
