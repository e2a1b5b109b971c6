"""Unit tests of worker liveness (exporter/state/workers.py)."""

from __future__ import annotations

import pytest

from exporter.events.model import WorkerEvent
from exporter.pipeline import EventPipeline
from exporter.settings import Settings
from exporter.state.labels import TaskLabels
from exporter.state.routing import QueueResolver
from exporter.state.tasks import TaskState
from exporter.state.workers import DEFAULT_FREQ, WorkerSnapshot, WorkerState

W1 = "celery@worker-1"
W2 = "celery@worker-2"
T0 = 1_700_000_000.0


def online(host: str = W1, freq: float | None = 2.0) -> WorkerEvent:
    return WorkerEvent("worker-online", host, T0, freq, 0, 0, 0.25)


def beat(host: str = W1, freq: float | None = 2.0, active: int = 1) -> WorkerEvent:
    return WorkerEvent("worker-heartbeat", host, T0, freq, active, 7, 0.5)


def offline(host: str = W1) -> WorkerEvent:
    return WorkerEvent("worker-offline", host, T0, 2.0, 0, 9, 0.5)


def state(timeout: float = 3.0, retention: float = 3600.0, max_workers: int = 100) -> WorkerState:
    return WorkerState(
        timeout_heartbeats=timeout,
        retention=retention,
        max_workers=max_workers,
        shutdown_grace=300.0,
    )


@pytest.mark.parametrize(
    ("freq", "timeout", "elapsed", "up"),
    [
        (2.0, 3.0, 0.0, True),
        (2.0, 3.0, 5.999, True),
        (2.0, 3.0, 6.0, False),
        (2.0, 3.0, 60.0, False),
        (10.0, 2.5, 24.999, True),
        (10.0, 2.5, 25.0, False),
        (None, 3.0, 5.999, True),  # no freq: Celery's default interval of 2 s
        (None, 3.0, 6.0, False),
    ],
)
def test_worker_down_after_timeout_heartbeats_times_freq(
    freq: float | None, timeout: float, elapsed: float, up: bool
) -> None:
    """A worker is up until freq x worker_timeout_heartbeats after its last heartbeat."""
    workers = state(timeout=timeout)
    workers.apply(beat(freq=freq), 100.0)
    (snap,) = workers.snapshot(100.0 + elapsed)
    assert snap == WorkerSnapshot(W1, up, 100.0, freq or DEFAULT_FREQ, 1, 7, 0.5)
    assert workers.live_count(100.0 + elapsed) == (1 if up else 0)


def test_each_heartbeat_extends_liveness() -> None:
    """Every heartbeat restarts the timeout, measured on our clock."""
    workers = state()
    workers.apply(online(), 100.0)
    workers.apply(beat(), 105.0)
    assert [w.up for w in workers.snapshot(110.999)] == [True]
    assert [w.up for w in workers.snapshot(111.0)] == [False]


def test_worker_offline_is_down_at_once_and_back_on_heartbeat() -> None:
    """worker-offline makes up 0 immediately; a later heartbeat brings it back up."""
    workers = state()
    workers.apply(online(), 100.0)
    workers.apply(offline(), 101.0)
    assert workers.snapshot(101.0) == [WorkerSnapshot(W1, False, 100.0, 2.0, 0, 9, 0.5)]
    assert workers.live_count(101.0) == 0
    workers.apply(beat(), 102.0)
    assert workers.snapshot(102.0) == [WorkerSnapshot(W1, True, 102.0, 2.0, 1, 7, 0.5)]


def test_offline_worker_removed_after_retention() -> None:
    """A worker that went offline stays (down) for the retention, then is removed."""
    workers = state(retention=60.0)
    workers.apply(online(), 100.0)
    workers.apply(offline(), 110.0)
    assert workers.sweep(170.0) == []
    assert [w.hostname for w in workers.snapshot(170.0)] == [W1]
    assert workers.sweep(170.001) == [W1]
    assert workers.snapshot(170.001) == []


def test_silent_worker_removed_retention_after_its_timeout() -> None:
    """A worker whose heartbeats stop is removed retention seconds after it went down."""
    workers = state(retention=60.0)
    workers.apply(beat(W1), 100.0)  # down at 106
    workers.apply(beat(W2), 150.0)  # down at 156
    assert workers.sweep(166.0) == []
    assert workers.sweep(166.001) == [W1]
    assert [w.hostname for w in workers.snapshot(166.001)] == [W2]
    assert workers.sweep(216.001) == [W2]


def test_zero_retention_removes_as_soon_as_down() -> None:
    """With retention 0 a worker is removed at the first sweep after it goes down."""
    workers = state(retention=0.0)
    workers.apply(offline(), 100.0)
    assert workers.sweep(100.0) == []
    assert workers.sweep(100.001) == [W1]


def test_on_demand_heartbeat_does_not_overwrite_freq() -> None:
    """The control-command heartbeat (freq=5, no counters) keeps freq and counters as they were."""
    workers = state()
    workers.apply(beat(freq=1.0, active=3), 100.0)
    workers.apply(WorkerEvent("worker-heartbeat", W1, T0, 5.0), 101.0)
    assert workers.snapshot(101.0) == [WorkerSnapshot(W1, True, 101.0, 1.0, 3, 7, 0.5)]
    # Liveness still uses the real interval: down 3 x 1 s after the last heartbeat.
    assert workers.live_count(103.999) == 1
    assert workers.live_count(104.0) == 0


def test_on_demand_heartbeat_of_new_worker_sets_freq() -> None:
    """A worker first seen through the on-demand heartbeat takes its freq until a regular one."""
    workers = state()
    assert workers.apply(WorkerEvent("worker-heartbeat", W1, T0, 5.0), 100.0) is True
    assert workers.snapshot(100.0) == [WorkerSnapshot(W1, True, 100.0, 5.0, None, None, None)]
    workers.apply(beat(freq=2.0), 101.0)
    assert workers.snapshot(101.0) == [WorkerSnapshot(W1, True, 101.0, 2.0, 1, 7, 0.5)]


def test_new_worker_reported_once_and_limit_enforced() -> None:
    """apply() is True only for a new worker; past max_workers new ones are dropped, counted."""
    workers = state(max_workers=1)
    assert workers.apply(online(W1), 100.0) is True
    assert workers.apply(beat(W1), 101.0) is False
    assert workers.apply(online(W2), 101.0) is False
    assert workers.apply(beat(W2), 102.0) is False
    assert workers.dropped_over_limit == 2
    assert [w.hostname for w in workers.snapshot(102.0)] == [W1]


def test_pipeline_calls_new_worker_and_worker_gone_hooks() -> None:
    """The pipeline reports each new worker once and each removed worker after retention."""
    clock = [100.0]
    seen: list[str] = []
    gone: list[str] = []
    resolver = QueueResolver()
    pipeline = EventPipeline(
        tasks=TaskState(
            labels=TaskLabels(Settings()),
            resolver=resolver,
            max_tasks=100,
            ttl=60.0,
            name_wait=1.0,
            duration_buckets=[1.0],
            queue_wait_buckets=[1.0],
            worker_retention=10.0,
            queue_forget=900.0,
        ),
        workers=state(retention=10.0),
        clock=lambda: clock[0],
        max_event_bytes=4096,
        on_new_worker=seen.append,
        on_worker_gone=gone.append,
    )
    pipeline.apply([online(W1), beat(W1), beat(W2)])
    pipeline.apply([beat(W1)])
    assert seen == [W1, W2]
    assert pipeline.view.live_workers() == 2
    clock[0] = 116.001
    pipeline.sweep()
    assert gone == [W1, W2]
    assert pipeline.view.live_workers() == 0
    assert pipeline.view.stats().events == {"worker-online": 1, "worker-heartbeat": 3}
