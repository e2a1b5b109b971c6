"""Pod churn end to end on a real redis-server: workers come and go, and so do their series.

Events come from Celery's own ``EventDispatcher`` (thousands of pods) and from real workers
started and stopped; the real exporter process runs with a short worker retention.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from prometheus_client.samples import Sample

from tests import sample_app as sa
from tests.celery_procs import ProcsFactory
from tests.helpers import (
    Expected,
    event_dispatcher,
    scrape,
    total,
    wait_for_metrics,
    wait_for_value,
    wait_until,
)
from tests.services import (
    ExporterFactory,
    ExporterProcess,
    ProducerFactory,
    RedisFactory,
    RedisServer,
)

pytestmark = pytest.mark.redis

PODS = 3000
BATCH = 500  # pods a batch: with --max-workers 600, only released pods leave room for more
TASKS = 20  # task names, each pod runs one
STEADY = "celery@steady"
STEADY_TASK = "app.steady"
RETENTION = "5"  # long enough for a scrape to see a pod before it is released
SETTLE_SECONDS = 30.0


def _series(samples: Iterable[Sample]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every series of the page, by name and labels."""
    return {(s.name, tuple(sorted(s.labels.items()))) for s in samples}


def _workers(samples: Iterable[Sample]) -> set[str]:
    return {
        s.labels["worker"]
        for s in samples
        if s.name.startswith(("celery_task_", "celery_worker_")) and "worker" in s.labels
    }


def _send_pods(url: str, first: int, count: int, batch: int) -> None:
    """``count`` pods, each online, one task run, offline; and one task of the steady worker,
    whose heartbeat (freq 30) keeps it alive through the test."""
    with event_dispatcher(url) as dispatcher:
        dispatcher.hostname = STEADY
        dispatcher.send("worker-heartbeat", freq=30.0, active=0, processed=batch,
                        loadavg=[0.1, 0.1, 0.1])  # fmt: skip
        uuid = f"steady-{batch}"
        dispatcher.send("task-received", uuid=uuid, name=STEADY_TASK, retries=0)
        dispatcher.send("task-started", uuid=uuid)
        dispatcher.send("task-succeeded", uuid=uuid, runtime=0.01)
        for number in range(first, first + count):
            dispatcher.hostname = f"celery@pod-{number:05d}"
            dispatcher.send("worker-online", freq=1.0, active=0, processed=0,
                            loadavg=[0.1, 0.1, 0.1])  # fmt: skip
            uuid = f"pod-{number}"
            dispatcher.send("task-received", uuid=uuid, name=f"app.t{number % TASKS}", retries=0)
            dispatcher.send("task-started", uuid=uuid)
            dispatcher.send("task-succeeded", uuid=uuid, runtime=0.01)
            dispatcher.send("worker-offline", freq=1.0, active=0, processed=1)


def _wait_released(exporter: ExporterProcess, keep: set[str]) -> list[Sample]:
    found: list[Sample] = []

    def released() -> bool:
        nonlocal found
        found = scrape(exporter.port)
        return _workers(found) <= keep

    wait_until(released, SETTLE_SECONDS, lambda: f"still exported: {_workers(found) - keep}")
    return found


def test_thousands_of_pods_leave_no_series_behind(
    redis_server: RedisServer, exporter_factory: ExporterFactory
) -> None:
    """3,000 pods in batches of 500, --max-workers 600, retention 5 s: every pod is exported
    under its own name (never 'other'), the steady worker's counters stay exact, and once the
    pods are released /metrics holds the same series after the 3,000th pod as after the
    500th: it does not grow with the number of pods ever seen."""
    exporter = exporter_factory(
        redis_server.url, "--worker-retention-seconds", RETENTION, "--max-workers", "600",
        "--inspect-interval-seconds", "0",
    )  # fmt: skip
    after_first: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for batch, first in enumerate(range(0, PODS, BATCH), start=1):
        _send_pods(redis_server.url, first, BATCH, batch)
        newest = f"celery@pod-{first + BATCH - 1:05d}"
        exp = Expected()
        exp.add("celery_task_succeeded_total", 1, task=f"app.t{(first + BATCH - 1) % TASKS}",
                queue="unknown", worker=newest)  # fmt: skip
        exp.add("celery_task_succeeded_total", batch, task=STEADY_TASK, queue="unknown",
                worker=STEADY)  # fmt: skip
        exp.partial.add("celery_task_succeeded_total")
        samples = wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
        assert "other" not in _workers(samples)
        samples = _wait_released(exporter, {STEADY})
        if batch == 1:
            after_first = _series(samples)
        else:
            assert _series(samples) == after_first
    assert total(samples, "celery_exporter_label_overflow_total") == 0
    assert total(samples, "celery_task_received_total", worker=STEADY) == PODS // BATCH
    assert total(samples, "celery_exporter_events_total") == PODS * 5 + PODS // BATCH * 4


def test_real_workers_started_and_stopped_leave_with_their_series(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    producer_factory: ProducerFactory,
    celery_procs: ProcsFactory,
) -> None:
    """Three real workers one after another, each running 3 tasks, then stopped (SIGTERM:
    worker-offline): each is kept, down, for the retention, then nothing carries its nodename
    (task series, celery_worker_*, inspection gauges), while the running worker's counts are
    exact."""
    server = redis_factory()
    exporter = exporter_factory(
        server.url, "--worker-retention-seconds", RETENTION, "--inspect-interval-seconds", "1"
    )
    app = producer_factory(server.url)
    gone: set[str] = set()
    for round_ in range(3):
        worker = celery_procs(server.url).worker(queues=[sa.QUEUE_A], name=f"churn{round_}")
        for value in range(3):
            app.send_task(sa.OK, args=[value])
        exp = Expected()
        exp.add("celery_task_sent_total", 3 * (round_ + 1), task=sa.OK, queue=sa.QUEUE_A)
        labels = {"task": sa.OK, "queue": sa.QUEUE_A, "worker": worker.nodename}
        exp.add("celery_task_succeeded_total", 3, **labels)
        exp.add("celery_worker_up", 1, worker=worker.nodename)
        exp.add("celery_worker_concurrency", 2, worker=worker.nodename)
        samples = wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
        assert not (_workers(samples) & gone)
        worker.stop()  # warm shutdown: worker-offline
        wait_for_value(exporter.port, 0, "celery_worker_up", 10.0, worker=worker.nodename)
        gone.add(worker.nodename)
        _wait_released(exporter, set())
