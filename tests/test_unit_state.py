"""Unit tests of task state (exporter/state/tasks.py, labels.py) driven through EventPipeline."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.config import load_settings
from exporter.events.model import TaskEvent, WorkerEvent
from exporter.pipeline import EventPipeline
from exporter.state.accounts import HistogramSnapshot, RunningTask, TaskSnapshot
from exporter.state.labels import exception_class
from exporter.state.routing import QueueResolver
from exporter.state.tasks import TaskState
from exporter.state.workers import WorkerState
from tests.helpers import Clock

W1 = "celery@worker-1"
W2 = "celery@worker-2"
ADD = "app.tasks.add"
# Bucket upper bounds used by every test here: (0.5, 1, 5] for durations, (1, 10, 60] for waits.
DURATION_BUCKETS = "0.5,1,5"
WAIT_BUCKETS = "1,10,60"
T0 = 1_700_000_000.0


pytestmark = pytest.mark.usefixtures("clean_environment")


class Harness:
    """The objects exporter/daemon.py builds, with an injected clock."""

    def __init__(self, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "task_duration_buckets": DURATION_BUCKETS,
            "task_queue_wait_buckets": WAIT_BUCKETS,
        }
        values.update(overrides)
        settings = load_settings(values)
        self.clock = Clock(T0)
        self.resolver = QueueResolver()
        self.tasks = TaskState.from_settings(settings, resolver=self.resolver)
        self.workers = WorkerState.from_settings(settings)
        self.pipeline = EventPipeline(
            tasks=self.tasks,
            workers=self.workers,
            clock=self.clock,
            max_event_bytes=settings.max_event_bytes,
            on_worker_gone=self.resolver.forget_worker,
        )

    def task(self, etype: str, uuid: str, ts: float, host: str = W1, **fields: Any) -> None:
        """Apply one task-<etype> event stamped ``ts`` by its sender."""
        self.pipeline.apply([TaskEvent(f"task-{etype}", uuid, host, ts, **fields)])

    def snap(self) -> TaskSnapshot:
        return self.pipeline.view.tasks()


def hist(counts: list[int], total: float) -> HistogramSnapshot:
    return HistogramSnapshot(counts, total)


def iso(ts: float, *, naive: bool = False) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return (moment.replace(tzinfo=None) if naive else moment).isoformat()


# --- lifecycle ---


def test_full_lifecycle_counts_and_histograms() -> None:
    """sent -> received -> started -> succeeded: one of each, exact buckets and sums."""
    h = Harness()
    h.task("sent", "a", T0, host="gen1@producer", name=ADD, queue="default")
    h.task("received", "a", T0 + 1, name=ADD)
    h.task("started", "a", T0 + 3)
    h.task("succeeded", "a", T0 + 4.5, runtime=1.25)
    snap = h.snap()
    key = (ADD, "default", W1)
    assert snap.sent == {(ADD, "default"): 1}
    assert snap.received == {key: 1}
    assert snap.started == {key: 1}
    assert snap.succeeded == {key: 1}
    assert (snap.failed, snap.retried, snap.rejected, snap.revoked) == ({}, {}, {}, {})
    # runtime 1.25 lands in (1, 5]; the queue wait of 3 s (sent -> started) in (1, 10].
    assert snap.duration == {(*key, "succeeded"): hist([0, 0, 1, 0], 1.25)}
    assert snap.queue_wait == {key: hist([0, 1, 0, 0], 3.0)}
    assert snap.running == []
    stats = h.pipeline.view.stats()
    assert stats.events == {
        "task-sent": 1,
        "task-received": 1,
        "task-started": 1,
        "task-succeeded": 1,
    }
    assert stats.tracked_tasks == 1
    assert stats.last_event_at == T0 + 4.5


@pytest.mark.parametrize(
    ("runtime", "counts"),
    [
        (0.0, [1, 0, 0, 0]),
        (0.5, [1, 0, 0, 0]),
        (0.5000001, [0, 1, 0, 0]),
        (1.0, [0, 1, 0, 0]),
        (5.0, [0, 0, 1, 0]),
        (5.0001, [0, 0, 0, 1]),
        (-2.0, [1, 0, 0, 0]),
    ],
)
def test_duration_bucket_bounds_are_inclusive(runtime: float, counts: list[int]) -> None:
    """A run time equal to a bucket bound counts in that bucket (le); negatives count as 0."""
    h = Harness()
    h.task("received", "a", T0, name=ADD)
    h.task("started", "a", T0)
    h.task("succeeded", "a", T0 + 9, runtime=runtime)
    assert h.snap().duration == {(ADD, "unknown", W1, "succeeded"): hist(counts, max(0, runtime))}


def test_duration_without_runtime_is_started_to_succeeded() -> None:
    """A task-succeeded without runtime is timed from task-started to task-succeeded."""
    h = Harness()
    h.task("received", "a", T0, name=ADD)
    h.task("started", "a", T0 + 1)
    h.task("succeeded", "a", T0 + 1.75)
    assert h.snap().duration == {(ADD, "unknown", W1, "succeeded"): hist([0, 1, 0, 0], 0.75)}


@pytest.mark.parametrize(
    ("exception", "label"),
    [
        ("ValueError('x')", "ValueError"),
        ("myapp.billing.errors.PaymentDeclined('card 42')", "PaymentDeclined"),
        ("celery.exceptions.Retry('later')", "Retry"),
        ("  KeyError('k')", "KeyError"),
        ("ZeroDivisionError", "ZeroDivisionError"),
        ("<unprintable Boom object>", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_failure_counts_exception_class(exception: str | None, label: str) -> None:
    """task-failed is counted by the class name heading the exception repr, module dropped."""
    h = Harness()
    h.task("received", "a", T0, name=ADD)
    h.task("started", "a", T0 + 1)
    h.task("failed", "a", T0 + 3.5, exception=exception)
    snap = h.snap()
    assert snap.failed == {(ADD, "unknown", W1, label): 1}
    assert snap.succeeded == {}
    assert snap.duration == {(ADD, "unknown", W1, "failed"): hist([0, 0, 1, 0], 2.5)}
    assert snap.running == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ValueError('x')", "ValueError"),
        ("a.b.C()", "C"),
        ("_Private(1)", "_Private"),
        ("1Bad", "unknown"),
        (None, "unknown"),
    ],
)
def test_exception_class(text: str | None, expected: str) -> None:
    """exception_class takes the identifier at the head of a repr, after its last dot."""
    assert exception_class(text) == expected


@pytest.mark.parametrize(
    ("exception", "kind"),
    [("TimeLimitExceeded(5.0,)", "hard"), ("SoftTimeLimitExceeded()", "soft")],
)
def test_time_limits_count_as_failed_and_timeout(exception: str, kind: str) -> None:
    """A time-limit failure is a failure and a timeout of its kind."""
    h = Harness()
    h.task("received", "a", T0, name=ADD)
    h.task("started", "a", T0 + 1)
    h.task("failed", "a", T0 + 6, exception=exception)
    snap = h.snap()
    assert snap.failed == {(ADD, "unknown", W1, exception.partition("(")[0]): 1}
    assert snap.timeouts == {(ADD, "unknown", kind): 1}


def test_failure_before_start_has_no_duration() -> None:
    """A task failing before task-started (e.g. rejected payload) has no duration sample."""
    h = Harness()
    h.task("received", "a", T0, name=ADD)
    h.task("failed", "a", T0 + 1, exception="NotRegistered('app.tasks.add')")
    snap = h.snap()
    assert snap.failed == {(ADD, "unknown", W1, "NotRegistered"): 1}
    assert snap.duration == {}


def test_retry_counts_each_attempt() -> None:
    """A retried task counts one retry, two starts, and two queue waits from each task-sent."""
    h = Harness()
    h.task("sent", "a", T0, host="gen1@producer", name=ADD, queue="q")
    h.task("received", "a", T0 + 1, name=ADD)
    h.task("started", "a", T0 + 2)
    h.task("retried", "a", T0 + 3, exception="Retry('again')")
    h.task("sent", "a", T0 + 10, host=W1, name=ADD, queue="q")
    h.task("received", "a", T0 + 11, name=ADD)
    h.task("started", "a", T0 + 15)
    h.task("succeeded", "a", T0 + 16, runtime=1.0)
    snap = h.snap()
    key = (ADD, "q", W1)
    assert snap.sent == {(ADD, "q"): 2}
    assert snap.received == {key: 2}
    assert snap.started == {key: 2}
    assert snap.retried == {key: 1}
    assert snap.succeeded == {key: 1}
    assert snap.failed == {}
    # Waits of 2 s and 5 s, both in (1, 10].
    assert snap.queue_wait == {key: hist([0, 2, 0, 0], 7.0)}
    assert snap.duration == {(*key, "succeeded"): hist([0, 1, 0, 0], 1.0)}
    assert snap.running == []


def test_retry_without_task_sent_waits_from_each_received() -> None:
    """Without task-sent, each attempt's queue wait runs from its own task-received."""
    h = Harness()
    h.task("received", "a", T0, name=ADD)
    h.task("started", "a", T0 + 0.5)
    h.task("retried", "a", T0 + 1)
    h.task("received", "a", T0 + 30, name=ADD)
    h.task("started", "a", T0 + 50)
    snap = h.snap()
    key = (ADD, "unknown", W1)
    assert snap.queue_wait == {key: hist([1, 0, 1, 0], 20.5)}
    assert snap.started == {key: 2}


def test_repeated_end_event_is_counted_once() -> None:
    """A second task-failed for one attempt (Celery 5.7 hard time limit) is a duplicate."""
    h = Harness()
    h.task("received", "a", T0, name=ADD)
    h.task("started", "a", T0 + 1)
    h.task("failed", "a", T0 + 6, exception="billiard.exceptions.TimeLimitExceeded")
    h.task("failed", "a", T0 + 6.1, exception="TimeLimitExceeded(5.0,)")
    snap = h.snap()
    assert snap.failed == {(ADD, "unknown", W1, "TimeLimitExceeded"): 1}
    assert snap.timeouts == {(ADD, "unknown", "hard"): 1}
    assert snap.duration == {(ADD, "unknown", W1, "failed"): hist([0, 0, 1, 0], 5.0)}
    assert h.pipeline.view.stats().dropped == {"duplicate": 1}


def test_same_end_event_of_a_new_attempt_is_counted() -> None:
    """Two retries of one task id, each after its own start, are two retries."""
    h = Harness()
    h.task("received", "a", T0, name=ADD)
    for attempt in range(2):
        h.task("started", "a", T0 + 10 * attempt + 1)
        h.task("retried", "a", T0 + 10 * attempt + 2)
    assert h.snap().retried == {(ADD, "unknown", W1): 2}
    assert h.pipeline.view.stats().dropped == {}


# --- ordering ---


def test_started_before_received_is_held_then_counted_once() -> None:
    """task-started arriving first is held, then counted under the name task-received brings."""
    h = Harness()
    h.task("started", "a", T0 + 2)
    snap = h.snap()
    assert (snap.started, snap.received, snap.running) == ({}, {}, [])
    h.clock.now = T0 + 5
    h.task("received", "a", T0 + 1, name=ADD)
    snap = h.snap()
    key = (ADD, "unknown", W1)
    assert snap.received == {key: 1}
    assert snap.started == {key: 1}
    assert snap.queue_wait == {key: hist([1, 0, 0, 0], 1.0)}
    assert snap.running == [RunningTask(ADD, "unknown", W1, T0 + 2, T0 + 5)]
    h.task("succeeded", "a", T0 + 3, runtime=1.0)
    h.clock.now = T0 + 100
    h.pipeline.sweep()
    snap = h.snap()
    assert snap.started == {key: 1}
    assert snap.succeeded == {key: 1}
    assert snap.running == []


def test_events_of_unnamed_task_count_as_unknown_after_name_wait() -> None:
    """Events whose name never arrives are counted as task 'unknown' once name_wait passed."""
    h = Harness(task_name_wait_seconds=10)
    h.task("started", "x", T0)
    h.task("failed", "x", T0 + 1, exception="NotRegistered('ghost')")
    h.clock.now = T0 + 9.999
    h.pipeline.sweep()
    snap = h.snap()
    assert (snap.started, snap.failed) == ({}, {})
    h.clock.now = T0 + 10
    h.pipeline.sweep()
    snap = h.snap()
    assert snap.started == {("unknown", "unknown", W1): 1}
    assert snap.failed == {("unknown", "unknown", W1, "NotRegistered"): 1}
    assert snap.duration == {("unknown", "unknown", W1, "failed"): hist([0, 1, 0, 0], 1.0)}
    assert snap.running == []
    h.clock.now = T0 + 20
    h.pipeline.sweep()
    assert h.snap().started == {("unknown", "unknown", W1): 1}


def test_unknown_task_takes_the_single_queue_its_worker_consumes() -> None:
    """An unnamed task run by a worker consuming exactly one queue gets that queue."""
    h = Harness(task_name_wait_seconds=0)
    h.resolver.set_worker_queues({W1: ("only",), W2: ("a", "b")})
    h.task("revoked", "x", T0)
    h.task("revoked", "y", T0, host=W2)
    h.pipeline.sweep()
    assert h.snap().revoked == {("unknown", "only", W1): 1, ("unknown", "unknown", W2): 1}


def test_task_sent_after_received_its_queue_wins_for_later_events() -> None:
    """A late task-sent's queue labels the events after it; its time starts the queue wait."""
    h = Harness()
    h.task("received", "a", T0 + 1, name=ADD)
    h.task("sent", "a", T0 + 0.5, host="gen1@producer", name=ADD, queue="q")
    h.task("started", "a", T0 + 2)
    h.task("succeeded", "a", T0 + 3, runtime=0.25)
    snap = h.snap()
    assert snap.sent == {(ADD, "q"): 1}
    assert snap.received == {(ADD, "unknown", W1): 1}
    assert snap.started == {(ADD, "q", W1): 1}
    assert snap.succeeded == {(ADD, "q", W1): 1}
    assert snap.queue_wait == {(ADD, "q", W1): hist([0, 1, 0, 0], 1.5)}


def test_received_waits_for_task_sent_once_producers_are_known_to_send_it() -> None:
    """For a name seen with task-sent, an early task-received waits for it and gets its queue."""
    h = Harness()
    h.task("sent", "a", T0, host="gen1@producer", name=ADD, queue="q")
    h.task("received", "a", T0 + 1, name=ADD)
    h.task("received", "b", T0 + 2, name=ADD)
    h.task("started", "b", T0 + 3)
    assert h.snap().received == {(ADD, "q", W1): 1}
    h.task("sent", "b", T0 + 1.5, host="gen1@producer", name=ADD, queue="q")
    snap = h.snap()
    assert snap.received == {(ADD, "q", W1): 2}
    assert snap.started == {(ADD, "q", W1): 1}
    assert snap.queue_wait == {(ADD, "q", W1): hist([0, 1, 0, 0], 1.5)}


def test_awaited_task_sent_that_never_comes_releases_after_name_wait() -> None:
    """If the awaited task-sent never arrives, the held events count after name_wait."""
    h = Harness(task_name_wait_seconds=10)
    h.task("sent", "a", T0, host="gen1@producer", name=ADD, queue="q")
    h.task("received", "b", T0, name=ADD)
    h.clock.now = T0 + 10
    h.pipeline.sweep()
    assert h.snap().received == {(ADD, "unknown", W1): 1}


@pytest.mark.parametrize(
    ("eta", "wait"),
    [
        pytest.param(iso(T0 + 60), 5.0, id="eta-after-sent"),
        pytest.param(iso(T0 + 60, naive=True), 5.0, id="naive-eta-is-utc"),
        pytest.param(datetime.fromtimestamp(T0 + 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), 5.0,
                     id="zulu-eta"),
        pytest.param(iso(T0 - 100), 65.0, id="eta-before-sent"),
        pytest.param(iso(T0 + 90), 0.0, id="started-before-eta"),
        pytest.param("tomorrow", 65.0, id="unreadable-eta"),
        pytest.param(None, 65.0, id="no-eta"),
    ],
)  # fmt: skip
def test_eta_task_waits_from_its_eta(eta: str | None, wait: float) -> None:
    """Queue wait of an ETA task runs from the later of task-sent and the ETA."""
    h = Harness()
    h.task("sent", "a", T0, host="gen1@producer", name=ADD, queue="q", eta=eta)
    h.task("received", "a", T0 + 1, name=ADD, eta=eta)
    h.task("started", "a", T0 + 65)
    snap = h.snap()
    assert snap.queue_wait[(ADD, "q", W1)].total == wait


def test_eta_from_received_without_task_sent() -> None:
    """Without task-sent, the ETA of task-received starts the queue wait."""
    h = Harness()
    h.task("received", "a", T0, name=ADD, eta=iso(T0 + 30))
    h.task("started", "a", T0 + 32)
    assert h.snap().queue_wait == {(ADD, "unknown", W1): hist([0, 1, 0, 0], 2.0)}


def test_revoked_after_sent_before_received_counts_under_sent_name_and_queue() -> None:
    """A task revoked before any worker received it is counted with task-sent's labels."""
    h = Harness()
    h.task("sent", "a", T0, host="gen1@producer", name=ADD, queue="q")
    h.task("revoked", "a", T0 + 1)
    snap = h.snap()
    assert snap.revoked == {(ADD, "q", W1): 1}
    assert snap.received == {}


def test_revoked_without_any_name_counts_as_unknown_after_wait() -> None:
    """A revoked task never sent or received here is counted as 'unknown' after name_wait."""
    h = Harness(task_name_wait_seconds=5)
    h.task("revoked", "a", T0)
    assert h.snap().revoked == {}
    h.clock.now = T0 + 5
    h.pipeline.sweep()
    assert h.snap().revoked == {("unknown", "unknown", W1): 1}


def test_rejected_is_counted() -> None:
    """task-rejected is counted under the task's labels and ends the attempt."""
    h = Harness()
    h.task("received", "a", T0, name=ADD)
    h.task("started", "a", T0 + 1)
    h.task("rejected", "a", T0 + 2)
    snap = h.snap()
    assert snap.rejected == {(ADD, "unknown", W1): 1}
    assert snap.running == []


# --- bounded memory ---


def test_capacity_eviction_counts_and_releases_held_events() -> None:
    """A full id map evicts the least recently used id, counting it and its held events."""
    h = Harness(task_state_max_tasks=100)
    h.task("started", "held", T0)
    h.clock.now = T0 + 5
    for i in range(100):
        h.task("received", f"id-{i}", T0 + 5, name=ADD)
    stats = h.pipeline.view.stats()
    assert stats.evictions == {"capacity": 1, "ttl": 0}
    assert stats.tracked_tasks == 100
    snap = h.snap()
    assert snap.started == {("unknown", "unknown", W1): 1}
    assert snap.received == {(ADD, "unknown", W1): 100}


def test_running_task_released_by_eviction_gets_a_real_seen_time() -> None:
    """A held task-started released by eviction is running since a real time, not since 1970."""
    h = Harness(task_state_max_tasks=100)
    h.task("started", "held", T0)
    h.clock.now = T0 + 5
    for i in range(100):
        h.task("received", f"id-{i}", T0 + 5, name=ADD)
    (running,) = h.snap().running
    # Released at T0 + 5 like every other release path (sweep, received) uses its own "now".
    assert running == RunningTask("unknown", "unknown", W1, T0, T0 + 5)


def test_lru_keeps_recently_touched_ids() -> None:
    """Capacity eviction removes the least recently used id, not the oldest inserted."""
    h = Harness(task_state_max_tasks=100)
    h.task("received", "first", T0, name=ADD)
    for i in range(99):
        h.task("received", f"id-{i}", T0, name=ADD)
    h.task("started", "first", T0 + 1)  # touch: now the most recent
    h.task("received", "new", T0 + 2, name=ADD)  # evicts id-0
    h.task("succeeded", "first", T0 + 3, runtime=0.1)
    h.task("started", "id-0", T0 + 3)  # forgotten: held, name unknown
    snap = h.snap()
    assert snap.succeeded == {(ADD, "unknown", W1): 1}
    assert snap.started == {(ADD, "unknown", W1): 1}
    assert h.pipeline.view.stats().evictions == {"capacity": 2, "ttl": 0}


def test_ttl_eviction_counts_idle_ids() -> None:
    """Ids idle for the TTL are forgotten at sweep and counted under reason ttl."""
    h = Harness(task_state_ttl_seconds=60)
    for uuid in ("a", "b", "c"):
        h.task("received", uuid, T0, name=ADD)
    h.clock.now = T0 + 30
    h.task("started", "b", T0 + 30)
    h.clock.now = T0 + 61
    h.pipeline.sweep()
    stats = h.pipeline.view.stats()
    assert stats.evictions == {"capacity": 0, "ttl": 2}
    assert stats.tracked_tasks == 1


def test_ttl_eviction_releases_held_events() -> None:
    """Held events of an id forgotten by TTL are still counted, as task 'unknown'."""
    h = Harness(task_state_ttl_seconds=5, task_name_wait_seconds=10)
    h.task("retried", "a", T0)
    h.clock.now = T0 + 6
    h.pipeline.sweep()
    assert h.pipeline.view.stats().evictions == {"capacity": 0, "ttl": 1}
    assert h.snap().retried == {("unknown", "unknown", W1): 1}


# --- labels ---


def _lifecycle(h: Harness, uuid: str, name: str, host: str = W1) -> None:
    h.task("received", uuid, T0, host=host, name=name)
    h.task("started", uuid, T0 + 1, host=host)
    h.task("succeeded", uuid, T0 + 2, host=host, runtime=1.0)


def test_task_label_limit_folds_into_other_and_counts_overflow() -> None:
    """Past max_task_names, new names count as 'other'; overflow counts once per folded task."""
    h = Harness(max_task_names=2)
    for uuid, name in (("1", "a"), ("2", "b"), ("3", "c"), ("4", "d")):
        _lifecycle(h, uuid, name)
    snap = h.snap()
    assert snap.succeeded == {
        ("a", "unknown", W1): 1,
        ("b", "unknown", W1): 1,
        ("other", "unknown", W1): 2,
    }
    assert snap.started == snap.succeeded
    assert h.pipeline.view.stats().label_overflows == {
        "task": 2,
        "queue": 0,
        "worker": 0,
        "exception": 0,
    }


def test_queue_worker_and_exception_limits_fold_into_other() -> None:
    """Queue, worker and exception labels each fold into 'other' past their own limit."""
    h = Harness(max_queues=1, max_workers=1, max_exception_types=1)
    h.task("sent", "1", T0, host="gen@p", name=ADD, queue="q1")
    h.task("sent", "2", T0, host="gen@p", name=ADD, queue="q2")
    h.task("received", "1", T0, host=W1, name=ADD)
    h.task("received", "2", T0, host=W2, name=ADD)
    h.task("failed", "1", T0, host=W1, exception="ValueError()")
    h.task("failed", "2", T0, host=W2, exception="KeyError()")
    snap = h.snap()
    assert snap.sent == {(ADD, "q1"): 1, (ADD, "other"): 1}
    assert snap.received == {(ADD, "q1", W1): 1, (ADD, "other", "other"): 1}
    assert snap.failed == {
        (ADD, "q1", W1, "ValueError"): 1,
        (ADD, "other", "other", "other"): 1,
    }
    assert h.pipeline.view.stats().label_overflows == {
        "task": 0,
        "queue": 1,
        "worker": 2,
        "exception": 1,
    }


def test_label_values_are_cut_to_max_label_length() -> None:
    """Task, queue and worker values longer than max_label_length are cut to it."""
    h = Harness(max_label_length=16)
    name = "app.tasks." + "x" * 50
    queue = "queue-" + "y" * 50
    worker = "celery@" + "z" * 50
    h.task("sent", "a", T0, host="gen@p", name=name, queue=queue)
    h.task("received", "a", T0, host=worker, name=name)
    snap = h.snap()
    assert snap.sent == {(name[:16], queue[:16]): 1}
    assert snap.received == {(name[:16], queue[:16], worker[:16]): 1}


@pytest.mark.parametrize(
    ("mode", "regex", "nodename", "label"),
    [
        ("full", None, "celery@web-7d9f8-abcde", "celery@web-7d9f8-abcde"),
        ("host", None, "celery@web-7d9f8-abcde", "web-7d9f8-abcde"),
        ("host", None, "no-at-sign", "no-at-sign"),
        ("group", r"^celery@(.+)-[a-z0-9]+-[a-z0-9]+$", "celery@web-7d9f8-abcde", "web"),
        ("group", r"^celery@(.+)-[a-z0-9]+-[a-z0-9]+$", "celery@standalone", "celery@standalone"),
        ("group", r"(x)?@(?P<group>[a-z]+)", "celery@batch-1", "batch"),
        ("none", None, "celery@web-7d9f8-abcde", ""),
    ],
)
def test_worker_label_modes(mode: str, regex: str | None, nodename: str, label: str) -> None:
    """worker_label full/host/group/none derives the worker label from the nodename."""
    h = Harness(worker_label=mode, worker_label_regex=regex)
    h.task("received", "a", T0, host=nodename, name=ADD)
    h.task("started", "a", T0, host=nodename)
    snap = h.snap()
    assert snap.received == {(ADD, "unknown", label): 1}
    # Running tasks keep the full nodename, so heartbeats can still clear them.
    assert [task.hostname for task in snap.running] == [nodename]


# --- running tasks ---


def test_running_tasks_are_tracked_until_they_finish() -> None:
    """Started tasks are running, with sender start time and our first-seen time, until done."""
    h = Harness()
    h.task("received", "a", T0, name=ADD)
    h.task("received", "b", T0, name=ADD)
    h.clock.now = T0 + 10
    h.task("started", "a", T0 + 9)
    h.clock.now = T0 + 20
    h.task("started", "b", T0 + 19, host=W2)
    assert sorted(h.snap().running) == [
        RunningTask(ADD, "unknown", W1, T0 + 9, T0 + 10),
        RunningTask(ADD, "unknown", W2, T0 + 19, T0 + 20),
    ]
    h.task("succeeded", "a", T0 + 25, runtime=16.0)
    assert h.snap().running == [RunningTask(ADD, "unknown", W2, T0 + 19, T0 + 20)]


def test_idle_heartbeat_clears_stale_running_tasks() -> None:
    """A heartbeat with active=0 drops that worker's tasks started before it, only those."""
    h = Harness()
    for uuid, host, started in (("old", W1, T0), ("new", W1, T0 + 60), ("other", W2, T0)):
        h.task("received", uuid, started - 1, host=host, name=ADD)
        h.task("started", uuid, started, host=host)
    h.pipeline.apply([WorkerEvent("worker-heartbeat", W1, T0 + 30, 2.0, 1, 5, 0.1)])
    assert len(h.snap().running) == 3
    h.pipeline.apply([WorkerEvent("worker-heartbeat", W1, T0 + 30, 2.0, 0, 5, 0.1)])
    assert sorted(task.hostname + "/" + str(task.started_at) for task in h.snap().running) == [
        f"{W1}/{T0 + 60}",
        f"{W2}/{T0}",
    ]
    # The on-demand heartbeat (no active field) clears nothing.
    h.pipeline.apply([WorkerEvent("worker-heartbeat", W2, T0 + 90, 5.0)])
    assert len(h.snap().running) == 2


def test_worker_removed_after_retention_forgets_its_running_tasks_and_queues() -> None:
    """A task still running on a worker that went offline is orphaned once the worker is gone
    (past retention, here sooner than the shutdown grace); its learned queues go with it."""
    h = Harness(worker_retention_seconds=60)
    h.resolver.set_worker_queues({W1: ("q",), W2: ("q",)})
    h.pipeline.apply([WorkerEvent("worker-online", W1, T0, 2.0, 0, 0, 0.0)])
    h.pipeline.apply([WorkerEvent("worker-online", W2, T0, 2.0, 0, 0, 0.0)])
    h.task("received", "a", T0, name=ADD)
    h.task("started", "a", T0 + 1)
    h.clock.now = T0 + 10
    h.pipeline.apply([WorkerEvent("worker-offline", W1, T0 + 10, 2.0, 1, 0, 0.0)])
    h.pipeline.apply([WorkerEvent("worker-heartbeat", W2, T0 + 10, 2.0, 0, 0, 0.0)])
    h.clock.now = T0 + 70
    h.pipeline.sweep()
    assert len(h.snap().running) == 1
    h.clock.now = T0 + 70.001
    h.pipeline.sweep()
    assert h.snap().running == []
    assert h.snap().orphaned == {(ADD, "q"): 1}
    # W2 is down since its heartbeat expired at T0 + 16: it stays until T0 + 76.
    assert h.resolver.worker_queues == {W2: ("q",)}
    assert [w.hostname for w in h.pipeline.view.workers()[1]] == [W2]


# --- sidecar mode ---


def _pod(h: Harness, number: int, at: float, *, tasks: int = 5, queue: str = "celery") -> str:
    """A pod's worker comes online, runs ``tasks`` tasks and goes offline, at our time ``at``."""
    host = f"celery@pod-{number}"
    h.clock.now = at
    h.pipeline.apply([WorkerEvent("worker-online", host, at, 2.0, 0, 0, 0.0)])
    for n in range(tasks):
        uuid = f"{number}-{n}"
        h.task("sent", uuid, at, host="gen@producer", name=f"app.tasks.t{n}", queue=queue)
        h.task("received", uuid, at, host=host, name=f"app.tasks.t{n}")
        h.task("started", uuid, at, host=host)
        h.task("succeeded", uuid, at, host=host, runtime=0.1)
    h.pipeline.apply([WorkerEvent("worker-offline", host, at)])
    return host


def _workers_in(snap: TaskSnapshot) -> set[str]:
    return {key[2] for key in (*snap.received, *snap.succeeded, *snap.duration)}


def test_worker_series_leave_after_retention_and_free_their_slot() -> None:
    """3,000 pods one after another, max_workers 10: every pod is exported under its own name,
    and once a pod's retention has passed none of its series is left."""
    h = Harness(max_workers=10, worker_retention_seconds=3.0)
    for number in range(3000):
        host = _pod(h, number, T0 + number * 2.0)
        h.pipeline.sweep()
        snap = h.snap()
        # The pod that just left is retained; the one before it went 2 s ago, within 3 s.
        assert _workers_in(snap) == {host} | ({f"celery@pod-{number - 1}"} if number else set())
    assert snap.succeeded[("app.tasks.t0", "celery", "celery@pod-2999")] == 1
    assert h.pipeline.view.stats().label_overflows["worker"] == 0
    h.clock.now += 3.1
    h.pipeline.sweep()
    snap = h.snap()
    assert (snap.received, snap.started, snap.succeeded, snap.duration, snap.queue_wait) == (
        {}, {}, {}, {}, {}
    )  # fmt: skip
    assert snap.sent == {(f"app.tasks.t{n}", "celery"): 3000 for n in range(5)}
    assert h.pipeline.tasks.labels.worker.alive == 0


def test_other_only_while_more_workers_alive_than_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three live workers with max_workers 2: the third folds into 'other', one count per
    event folded, with one log line; once the first two are released it takes its own name,
    and so does a new one, while 'other' keeps what was counted under it."""
    h = Harness(max_workers=2, worker_retention_seconds=5.0)
    for host in ("celery@a", "celery@b", "celery@c"):
        h.pipeline.apply([WorkerEvent("worker-online", host, T0, 2.0, 0, 0, 0.0)])
    with caplog.at_level(logging.WARNING, logger="exporter.state.labels"):
        for uuid, host in (
            ("1", "celery@a"),
            ("2", "celery@b"),
            ("3", "celery@c"),
            ("4", "celery@c"),
        ):
            h.task("received", uuid, T0, host=host, name=ADD)
    assert h.snap().received == {
        (ADD, "unknown", "celery@a"): 1,
        (ADD, "unknown", "celery@b"): 1,
        (ADD, "unknown", "other"): 2,
    }
    assert h.pipeline.view.stats().label_overflows["worker"] == 2
    assert len([r for r in caplog.records if "label values alive at once" in r.message]) == 1
    # a and b leave; c, folded, keeps 'other' alive with a task event before the sweep.
    for host in ("celery@a", "celery@b"):
        h.pipeline.apply([WorkerEvent("worker-offline", host, T0)])
    h.clock.now = T0 + 5.5
    h.task("started", "4", T0 + 5.5, host="celery@c")
    h.pipeline.sweep()
    assert h.snap().received == {(ADD, "unknown", "other"): 2}
    assert h.pipeline.view.stats().label_overflows["worker"] == 3
    h.task("received", "5", T0 + 6, host="celery@d", name=ADD)
    h.task("received", "6", T0 + 6, host="celery@c", name=ADD)
    assert h.snap().received == {
        (ADD, "unknown", "other"): 2,
        (ADD, "unknown", "celery@d"): 1,
        (ADD, "unknown", "celery@c"): 1,
    }
    assert h.pipeline.view.stats().label_overflows["worker"] == 3


def test_folded_names_are_not_remembered() -> None:
    """20,000 distinct queue names past max_queues 2: each folds into 'other' and none is
    remembered, so the limiter holds the two admitted values and 'other', whatever comes."""
    h = Harness(max_queues=2)
    for number in range(20_000):
        h.task("sent", f"t{number}", T0, host="gen@p", name=ADD, queue=f"tenant-{number}")
    assert h.snap().sent == {(ADD, "tenant-0"): 1, (ADD, "tenant-1"): 1, (ADD, "other"): 19_998}
    assert h.pipeline.tasks.labels.queue.alive == 3
    assert h.pipeline.view.stats().label_overflows["queue"] == 19_998


def test_a_worker_running_a_task_keeps_its_series() -> None:
    """A worker the worker state does not hold (past its max_workers) keeps its series while
    it runs a task longer than the retention, and while its heartbeats come."""
    h = Harness(max_workers=1, worker_retention_seconds=5.0)
    h.pipeline.apply([WorkerEvent("worker-online", W1, T0, 2.0, 0, 0, 0.0)])
    h.pipeline.apply([WorkerEvent("worker-online", W2, T0, 2.0, 0, 0, 0.0)])  # not held
    h.task("received", "long", T0, host=W2, name=ADD)
    h.task("started", "long", T0, host=W2)
    h.task("received", "beats", T0, host=W2, name=ADD)
    h.task("succeeded", "beats", T0, host=W2, runtime=0.1)
    for second in range(1, 20):
        h.clock.now = T0 + second
        h.pipeline.apply([WorkerEvent("worker-heartbeat", W1, T0 + second, 2.0, 0, 0, 0.0)])
        h.pipeline.sweep()
    assert h.snap().started == {(ADD, "unknown", W2): 1}
    h.task("succeeded", "long", T0 + 20, host=W2, runtime=20.0)
    assert h.snap().succeeded == {(ADD, "unknown", W2): 2}
    # Its heartbeats alone keep it once nothing runs.
    for second in range(21, 40):
        h.clock.now = T0 + second
        for host in (W1, W2):
            h.pipeline.apply([WorkerEvent("worker-heartbeat", host, T0 + second, 2.0, 0, 2, 0.0)])
        h.pipeline.sweep()
    assert h.snap().succeeded == {(ADD, "unknown", W2): 2}
    h.clock.now = T0 + 44.5
    h.pipeline.apply([WorkerEvent("worker-heartbeat", W1, T0 + 44.5, 2.0, 0, 2, 0.0)])
    h.pipeline.sweep()
    assert h.snap().succeeded == {}


def test_worker_value_lives_while_any_worker_mapped_to_it_does() -> None:
    """--worker-label host: two nodenames share a value; it stays until both are gone."""
    h = Harness(worker_label="host", worker_retention_seconds=5.0)
    for uuid, host in (("1", "celery@node"), ("2", "other@node")):
        h.pipeline.apply([WorkerEvent("worker-online", host, T0, 2.0, 0, 0, 0.0)])
        h.task("received", uuid, T0, host=host, name=ADD)
    h.pipeline.apply([WorkerEvent("worker-offline", "celery@node", T0)])
    h.clock.now = T0 + 5.5
    h.pipeline.apply([WorkerEvent("worker-heartbeat", "other@node", T0 + 5.5, 2.0, 0, 1, 0.0)])
    h.pipeline.sweep()
    assert h.snap().received == {(ADD, "unknown", "node"): 2}
    h.pipeline.apply([WorkerEvent("worker-offline", "other@node", T0 + 5.5)])
    h.clock.now = T0 + 11
    h.pipeline.sweep()
    assert h.snap().received == {}


def test_worker_never_heard_beating_leaves_after_its_last_task_event() -> None:
    """A nodename known only from task events is released a retention after its last one."""
    h = Harness(worker_retention_seconds=5.0)
    h.task("received", "1", T0, host="celery@silent", name=ADD)
    h.clock.now = T0 + 4
    h.task("started", "1", T0 + 4, host="celery@silent")
    h.clock.now = T0 + 8
    h.pipeline.sweep()
    assert h.snap().started == {(ADD, "unknown", "celery@silent"): 1}
    h.task("succeeded", "1", T0 + 8, host="celery@silent", runtime=4.0)
    h.clock.now = T0 + 13.5
    h.pipeline.sweep()
    assert (h.snap().received, h.snap().started, h.snap().succeeded) == ({}, {}, {})


def test_queue_series_leave_after_queue_forget_unless_configured() -> None:
    """Per-tenant queues: each leaves task series and the limiter after queue_forget_seconds;
    a configured queue stays; a queue with a task still running stays."""
    h = Harness(
        max_queues=3, queue_forget_seconds=60.0, queues=["fixed"], worker_retention_seconds=1e6
    )
    for number in range(50):
        queue = f"tenant-{number}"
        _pod(h, 0, T0 + number * 100.0, tasks=1, queue=queue)
        h.task("sent", f"f{number}", T0 + number * 100.0, host="gen@p", name=ADD, queue="fixed")
        h.pipeline.sweep()
        assert {queue for _task, queue in h.snap().sent} == {queue, "fixed"}
    assert h.pipeline.view.stats().label_overflows["queue"] == 0
    assert h.snap().succeeded == {("app.tasks.t0", "tenant-49", "celery@pod-0"): 1}
    # A task still running keeps its queue past the forget time.
    h.task("sent", "long", T0 + 5000, host="gen@p", name=ADD, queue="long")
    h.task("received", "long", T0 + 5000, host=W1, name=ADD)
    h.task("started", "long", T0 + 5000, host=W1)
    h.clock.now = T0 + 9000
    h.pipeline.sweep()
    assert set(h.snap().sent) == {(ADD, "fixed"), (ADD, "long")}
    h.task("succeeded", "long", T0 + 9000, host=W1, runtime=4000.0)
    assert h.snap().succeeded == {(ADD, "long", W1): 1}


def test_released_queue_comes_back_through_the_limit() -> None:
    """A task whose queue was released meanwhile counts under it again, admitted anew through
    the limit: under its own name while a slot is free, as 'other' once it is not."""
    h = Harness(queue_forget_seconds=60.0, max_queues=1)
    for uuid in ("1", "2"):
        h.task("sent", uuid, T0, host="gen@p", name=ADD, queue="q")
        h.task("received", uuid, T0, host=W1, name=ADD)
    h.clock.now = T0 + 61
    h.pipeline.sweep()
    assert h.snap().sent == {}
    h.task("started", "1", T0 + 61, host=W1)
    assert h.snap().started == {(ADD, "q", W1): 1}
    assert h.pipeline.tasks.labels.queue.alive == 1
    h.task("succeeded", "1", T0 + 61, host=W1, runtime=0.1)
    h.clock.now = T0 + 122
    h.pipeline.sweep()
    h.task("sent", "3", T0 + 122, host="gen@p", name=ADD, queue="r")  # takes the one slot
    h.task("started", "2", T0 + 122, host=W1)
    assert h.snap().started == {(ADD, "other", W1): 1}
    assert h.pipeline.view.stats().label_overflows["queue"] == 1


# --- redelivered, orphaned, recovered and exhausted tasks ---


def test_redelivery_is_counted_once_and_the_attempt_runs_again() -> None:
    """A second task-received of the same attempt (a new worker timestamp) is a redelivery; the
    same event twice is a duplicate, counted nowhere; the redelivered attempt starts and ends
    like any other, and is no retry."""
    h = Harness()
    h.task("received", "a", T0, name=ADD, retries=0)
    h.task("started", "a", T0 + 1)
    h.task("rejected", "a", T0 + 2)  # task_reject_on_worker_lost: requeued
    h.task("received", "a", T0 + 3, host=W2, name=ADD, retries=0)
    h.task("received", "a", T0 + 3, host=W2, name=ADD, retries=0)  # the same event again
    h.task("started", "a", T0 + 4, host=W2)
    assert len(h.snap().running) == 1
    h.task("succeeded", "a", T0 + 5, host=W2, runtime=1.0)
    snap = h.snap()
    assert snap.redelivered == {(ADD, "unknown"): 1}
    assert snap.received == {(ADD, "unknown", W1): 1, (ADD, "unknown", W2): 1}
    assert snap.running == []
    assert snap.recovered == {}
    assert snap.queue_wait[(ADD, "unknown", W2)] == hist([1, 0, 0, 0], 1.0)
    assert h.pipeline.view.stats().dropped == {"duplicate": 1}


def test_a_redelivery_before_the_start_is_counted_too() -> None:
    """A visibility timeout can deliver a prefetched task twice before either starts."""
    h = Harness()
    h.task("received", "a", T0, name=ADD, retries=0)
    h.task("received", "a", T0 + 3600, host=W2, name=ADD, retries=0)
    h.task("started", "a", T0 + 3601, host=W2)
    h.task("succeeded", "a", T0 + 3602, host=W2, runtime=1.0)
    assert h.snap().redelivered == {(ADD, "unknown"): 1}
    assert h.snap().running == []


def test_retries_that_recover_and_retries_that_run_out() -> None:
    """Succeeded after a retry: recovered; failed after a retry: exhausted; neither without."""
    h = Harness()
    for uuid, end in (("ok-first", "succeeded"), ("fail-first", "failed")):
        h.task("received", uuid, T0, name=ADD, retries=0)
        h.task("started", uuid, T0)
        h.task(end, uuid, T0 + 1, runtime=1.0, exception="KeyError('x')")
    for uuid, end in (("ok-later", "succeeded"), ("fail-later", "failed")):
        for attempt in range(3):
            h.task("received", uuid, T0 + attempt * 10, name=ADD, retries=attempt)
            h.task("started", uuid, T0 + attempt * 10 + 1)
            if attempt < 2:
                h.task("retried", uuid, T0 + attempt * 10 + 2, exception="Retry()")
        h.task(end, uuid, T0 + 25, runtime=1.0, exception="KeyError('x')")
    snap = h.snap()
    assert snap.recovered == {(ADD, "unknown"): 1}
    assert snap.exhausted == {(ADD, "unknown"): 1}
    assert snap.retried == {(ADD, "unknown", W1): 4}


def test_tasks_of_a_worker_whose_heartbeats_stop_are_orphaned_once() -> None:
    """A worker killed mid-task sends nothing more: once its heartbeats are overdue while the
    event stream runs, its running tasks are orphaned, exactly once, and no longer running;
    another worker's stay. Heartbeats missed while the stream was down say nothing: a worker
    gets a full timeout from when it came back."""
    h = Harness(worker_timeout_heartbeats=3)
    h.pipeline.apply([WorkerEvent("worker-online", W1, T0, 2.0, 0, 0, 0.0)])
    h.pipeline.apply([WorkerEvent("worker-online", W2, T0, 2.0, 0, 0, 0.0)])
    for uuid, host in (("a", W1), ("b", W1), ("c", W2)):
        h.task("received", uuid, T0, host=host, name=ADD, retries=0)
        h.task("started", uuid, T0, host=host)
    h.clock.now = T0 + 5
    h.pipeline.apply([WorkerEvent("worker-heartbeat", W2, T0 + 5, 2.0, 1, 0, 0.0)])
    h.pipeline.sweep()
    assert len(h.snap().running) == 3  # W1 is not overdue yet (down at T0 + 6)
    h.clock.now = T0 + 6
    h.pipeline.apply([WorkerEvent("worker-heartbeat", W2, T0 + 6, 2.0, 1, 0, 0.0)])
    h.pipeline.sweep(stream_since=math.inf)  # the stream is down: nothing is judged
    h.pipeline.sweep(stream_since=T0 + 1)  # back since T0 + 1: W1 gets until T0 + 7
    assert len(h.snap().running) == 3
    h.pipeline.sweep(stream_since=T0 - 60)
    h.pipeline.sweep(stream_since=T0 - 60)
    snap = h.snap()
    assert snap.orphaned == {(ADD, "unknown"): 2}
    assert [task.hostname for task in snap.running] == [W2]
    # Redelivered elsewhere (acks_late), the task runs and ends as usual.
    h.task("received", "a", T0 + 7, host=W2, name=ADD, retries=0)
    h.task("started", "a", T0 + 7, host=W2)
    h.task("succeeded", "a", T0 + 8, host=W2, runtime=1.0)
    snap = h.snap()
    assert snap.redelivered == {(ADD, "unknown"): 1}
    assert [task.hostname for task in snap.running] == [W2]
    assert snap.orphaned == {(ADD, "unknown"): 2}


def test_a_warm_shutdown_orphans_only_what_outlives_the_grace() -> None:
    """Celery sends worker-offline before its pool drains: tasks that then end are not
    orphaned; one still running past --worker-shutdown-grace-seconds is."""
    h = Harness(worker_shutdown_grace_seconds=30)
    h.pipeline.apply([WorkerEvent("worker-online", W1, T0, 2.0, 0, 0, 0.0)])
    for uuid in ("a", "b"):
        h.task("received", uuid, T0, name=ADD, retries=0)
        h.task("started", uuid, T0)
    h.clock.now = T0 + 10
    h.pipeline.apply([WorkerEvent("worker-offline", W1, T0 + 10, 2.0, 2, 0, 0.0)])
    h.task("succeeded", "a", T0 + 12, runtime=12.0)
    h.clock.now = T0 + 40
    h.pipeline.sweep(stream_since=T0)
    assert len(h.snap().running) == 1
    h.clock.now = T0 + 40.001
    h.pipeline.sweep(stream_since=T0)
    assert h.snap().orphaned == {(ADD, "unknown"): 1}
    assert h.snap().running == []


def test_a_restarted_pid_1_worker_orphans_what_ran_there() -> None:
    """In a container the worker is PID 1 again after a restart: its worker-online counts
    fewer tasks processed than the old process had."""
    h = Harness()
    h.pipeline.apply([WorkerEvent("worker-online", W1, T0, 2.0, 0, 0, 0.0, 1)])
    h.task("received", "a", T0, name=ADD, retries=0)
    h.task("started", "a", T0)
    h.pipeline.apply([WorkerEvent("worker-heartbeat", W1, T0 + 2, 2.0, 1, 1, 0.0, 1)])
    h.pipeline.apply([WorkerEvent("worker-online", W1, T0 + 4, 2.0, 0, 0, 0.0, 1)])
    assert h.snap().orphaned == {(ADD, "unknown"): 1}
    assert h.snap().running == []


def test_a_consumer_restart_orphans_nothing() -> None:
    """On a broker blip Celery restarts its consumer: worker-offline then worker-online from
    the same process, while pool tasks keep running."""
    h = Harness()
    h.pipeline.apply([WorkerEvent("worker-online", W1, T0, 2.0, 0, 0, 0.0, 100)])
    h.task("received", "a", T0, name=ADD, retries=0)
    h.task("started", "a", T0)
    h.pipeline.apply([WorkerEvent("worker-offline", W1, T0 + 5, 2.0, 1, 0, 0.0, 100)])
    h.pipeline.apply([WorkerEvent("worker-online", W1, T0 + 8, 2.0, 1, 0, 0.0, 100)])
    h.task("succeeded", "a", T0 + 9, runtime=9.0)
    assert h.snap().orphaned == {}
    assert h.snap().succeeded == {(ADD, "unknown", W1): 1}


def test_a_handed_out_again_running_task_ends_its_first_run() -> None:
    """RabbitMQ requeues a dead consumer's messages at once: the second worker's received
    comes before the first is seen lost. The first run ends there (redelivered, not
    orphaned) and the second one's success leaves nothing running."""
    h = Harness()
    h.task("received", "a", T0, name=ADD, retries=0)
    h.task("started", "a", T0)
    h.task("received", "a", T0 + 1, host=W2, name=ADD, retries=0)
    h.task("started", "a", T0 + 1, host=W2)
    h.task("succeeded", "a", T0 + 2, host=W2, runtime=1.0)
    snap = h.snap()
    assert snap.redelivered == {(ADD, "unknown"): 1}
    assert snap.running == []
    assert snap.orphaned == {}


def test_a_worker_restarted_under_its_name_orphans_what_ran_there() -> None:
    """A new main process (pid) under the same nodename: the old one's tasks are lost."""
    h = Harness()
    h.pipeline.apply([WorkerEvent("worker-online", W1, T0, 2.0, 0, 0, 0.0, 100)])
    h.task("received", "a", T0, name=ADD, retries=0)
    h.task("started", "a", T0)
    h.pipeline.apply([WorkerEvent("worker-online", W1, T0 + 30, 2.0, 0, 0, 0.0, 200)])
    assert h.snap().orphaned == {(ADD, "unknown"): 1}
    assert h.snap().running == []


def test_a_task_started_again_elsewhere_runs_where_it_started_last() -> None:
    """A second task-started on another worker moves the running task there: the first
    worker's idle heartbeat or loss leaves it running; the second one's idle heartbeat ends it."""
    h = Harness()
    h.task("received", "a", T0, name=ADD, retries=0)
    h.task("started", "a", T0)
    h.task("started", "a", T0 + 1, host=W2)
    h.pipeline.apply([WorkerEvent("worker-heartbeat", W1, T0 + 2, 2.0, 0, 1, 0.0)])
    assert [task.hostname for task in h.snap().running] == [W2]
    h.pipeline.apply([WorkerEvent("worker-heartbeat", W2, T0 + 3, 2.0, 0, 1, 0.0)])
    assert h.snap().running == []
    assert h.snap().orphaned == {}
