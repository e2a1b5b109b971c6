"""Worker utilization and task time limits end to end: real prefork workers on a real
redis-server, the real exporter process, exact values.

Each test has a private redis-server, so prefetched or time-limited messages of one test can
never reach another test's worker. Workers run tests.sample_app; time limits are given per call
(``send_task(..., time_limit=1)``), as a producer may.
"""

from __future__ import annotations

import pytest
from prometheus_client.samples import Sample

from tests import sample_app as sa
from tests.celery_procs import CeleryWorkerProcess, ProcsFactory
from tests.helpers import (
    Expected,
    http_get,
    scrape,
    send_counted,
    series,
    value,
    wait_for_metrics,
    wait_until,
)
from tests.services import ExporterFactory, ExporterProcess, RedisFactory

pytestmark = pytest.mark.redis

SETTLE_SECONDS = 40.0
CONCURRENCY = 3
LONG_TASKS = 5
LONG_SECONDS = 4.0

ACTIVE = "celery_worker_tasks_active"
CONCURRENCY_METRIC = "celery_worker_concurrency"
RESERVED = "celery_worker_tasks_reserved"
RUNNING = "celery_task_running"
WORKER_SERIES = (
    "celery_worker_up",
    "celery_worker_last_heartbeat_timestamp_seconds",
    "celery_worker_heartbeat_interval_seconds",
    ACTIVE,
    "celery_worker_tasks_processed_total",
    "celery_worker_load1",
    CONCURRENCY_METRIC,
    RESERVED,
    "celery_worker_consuming",
)


def _wait_state(
    exporter: ExporterProcess,
    worker: CeleryWorkerProcess,
    want: dict[str, float | None],
    timeout: float,
) -> list[Sample]:
    """Scrape until each metric of ``want`` (worker series, or celery_task_running of the
    sleep task, or a task counter of it) has exactly the value given (None: no series)."""
    got: dict[str, float | None] = {}
    samples: list[Sample] = []

    def reached() -> bool:
        nonlocal samples
        assert worker.running, f"worker exited:\n{worker.log()}"
        samples = scrape(exporter.port)
        for name in want:
            if name.startswith("celery_worker_"):
                got[name] = value(samples, name, worker=worker.nodename)
            else:
                got[name] = value(samples, name, task=sa.SLEEP)
        return got == want

    wait_until(
        reached,
        timeout,
        lambda: (
            f"expected {want}, got {got}\nworker log:\n{worker.log()}\n"
            f"exporter stderr:\n{exporter.stderr()}"
        ),
    )
    return samples


def _utilization(samples: list[Sample], worker: str) -> float:
    """celery_worker_tasks_active / celery_worker_concurrency, as the recording rule has it."""
    active = value(samples, ACTIVE, worker=worker)
    concurrency = value(samples, CONCURRENCY_METRIC, worker=worker)
    assert active is not None
    assert concurrency
    return active / concurrency


def test_concurrency_active_reserved_and_utilization(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """A prefork worker with -c 3, prefetch multiplier 1 and 1 s heartbeats, inspected every
    second: celery_worker_concurrency is exactly 3. Five 4 s tasks: while the first three run,
    celery_worker_tasks_active is 3 (utilization active/concurrency 1.0), celery_task_running
    of the task is 3 and celery_worker_tasks_reserved is 2 (the other two, prefetched: early
    ack frees their prefetch slots); while the last two run, active 2 (utilization 2/3),
    running 2, reserved 0, succeeded 3; at the end active 0, reserved 0, running 0 (not
    absent), and every task counter exact (5 sent, received, started, succeeded)."""
    server = redis_factory()
    exporter = exporter_factory(server.url, "--inspect-interval-seconds", "1")
    send_counted(exporter.port, server.url, [(sa.SLEEP, [LONG_SECONDS], {})] * LONG_TASKS)
    worker = celery_procs(server.url).worker(
        queues=[sa.QUEUE_B],
        concurrency=CONCURRENCY,
        extra=["--prefetch-multiplier", "1"],
        name="util",
    )
    node = worker.nodename

    first = _wait_state(
        exporter,
        worker,
        {CONCURRENCY_METRIC: 3, ACTIVE: 3, RESERVED: 2, RUNNING: 3},
        SETTLE_SECONDS,
    )
    assert _utilization(first, node) == 1.0
    second = _wait_state(
        exporter,
        worker,
        {ACTIVE: 2, RESERVED: 0, RUNNING: 2, "celery_task_succeeded_total": 3},
        SETTLE_SECONDS,
    )
    assert _utilization(second, node) == 2 / 3
    _wait_state(
        exporter,
        worker,
        {ACTIVE: 0, RESERVED: 0, RUNNING: 0, "celery_task_succeeded_total": 5},
        SETTLE_SECONDS,
    )

    labels = {"task": sa.SLEEP, "queue": sa.QUEUE_B, "worker": node}
    exp = Expected()
    exp.add("celery_task_sent_total", LONG_TASKS, task=sa.SLEEP, queue=sa.QUEUE_B)
    for name in (
        "celery_task_received_total",
        "celery_task_started_total",
        "celery_task_succeeded_total",
        "celery_task_queue_wait_seconds_count",
    ):
        exp.add(name, LONG_TASKS, **labels)
    exp.add("celery_task_duration_seconds_count", LONG_TASKS, **labels, state="succeeded")
    exp.add(CONCURRENCY_METRIC, CONCURRENCY, worker=node)
    exp.absent |= {"celery_task_failed_total", "celery_task_timeouts_total", RUNNING}
    wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)


def test_time_limits_count_one_timeout_each(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """On a prefork worker, a 3 s task sent with time_limit=1 and one sent with
    soft_time_limit=1: celery_task_timeouts_total is exactly 1 for kind hard and 1 for kind
    soft; celery_task_failed_total is 1 with exception TimeLimitExceeded and 1 with
    SoftTimeLimitExceeded; Celery's second task-failed of the hard limit is dropped as a
    duplicate (celery_exporter_events_dropped_total{reason="duplicate"} == 1, events_total of
    task-failed 3); nothing succeeds and nothing is left running."""
    server = redis_factory()
    exporter = exporter_factory(server.url)
    send_counted(
        exporter.port,
        server.url,
        [(sa.SLEEP, [3], {"time_limit": 1}), (sa.SLEEP, [3], {"soft_time_limit": 1})],
    )
    worker = celery_procs(server.url).worker(queues=[sa.QUEUE_B], concurrency=2, name="limits")

    node = worker.nodename
    labels = {"task": sa.SLEEP, "queue": sa.QUEUE_B, "worker": node}
    exp = Expected()
    exp.add("celery_task_sent_total", 2, task=sa.SLEEP, queue=sa.QUEUE_B)
    for name in ("celery_task_received_total", "celery_task_started_total"):
        exp.add(name, 2, **labels)
    exp.add("celery_task_failed_total", 1, **labels, exception="TimeLimitExceeded")
    exp.add("celery_task_failed_total", 1, **labels, exception="SoftTimeLimitExceeded")
    exp.add("celery_task_timeouts_total", 1, task=sa.SLEEP, queue=sa.QUEUE_B, kind="hard")
    exp.add("celery_task_timeouts_total", 1, task=sa.SLEEP, queue=sa.QUEUE_B, kind="soft")
    exp.add("celery_task_duration_seconds_count", 2, **labels, state="failed")
    exp.add("celery_exporter_events_dropped_total", 1, reason="duplicate")
    exp.add_partial("celery_exporter_events_total", 3, type="task-failed")
    exp.absent |= {"celery_task_succeeded_total", RUNNING}
    wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)


def _small_workload(exporter: ExporterProcess, broker_url: str) -> None:
    """Publish 3 sa.OK and 2 sa.FAIL_VALUE tasks; return once their task-sent are counted."""
    send_counted(
        exporter.port,
        broker_url,
        [(sa.OK, [i], {}) for i in range(3)] + [(sa.FAIL_VALUE, [], {})] * 2,
    )


def _small_workload_expectation(node: str) -> Expected:
    """3 successes on e2e_a, 2 ValueError failures on e2e_b, on worker ``node``."""
    exp = Expected()
    for task, queue, count in ((sa.OK, sa.QUEUE_A, 3), (sa.FAIL_VALUE, sa.QUEUE_B, 2)):
        exp.add("celery_task_sent_total", count, task=task, queue=queue)
        for name in ("celery_task_received_total", "celery_task_started_total"):
            exp.add(name, count, task=task, queue=queue, worker=node)
    exp.add("celery_task_succeeded_total", 3, task=sa.OK, queue=sa.QUEUE_A, worker=node)
    exp.add(
        "celery_task_failed_total",
        2,
        task=sa.FAIL_VALUE,
        queue=sa.QUEUE_B,
        worker=node,
        exception="ValueError",
    )
    exp.absent |= {RUNNING, "celery_task_timeouts_total", "celery_exporter_events_dropped_total"}
    return exp


def test_worker_without_heartbeat(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """A worker started with --without-heartbeat sends no worker-online, heartbeat or offline
    event: the exporter (inspecting every second) stays ready, counts its tasks exactly (3
    succeeded, 2 failed, by queue and worker), and has no worker series at all for it
    (nothing announced it, so it is neither up nor inspected)."""
    server = redis_factory()
    exporter = exporter_factory(server.url, "--inspect-interval-seconds", "1")
    _small_workload(exporter, server.url)
    worker = celery_procs(server.url).worker(
        queues=[sa.QUEUE_A, sa.QUEUE_B], extra=["--without-heartbeat"], name="noheart"
    )
    samples = wait_for_metrics(
        exporter.port, _small_workload_expectation(worker.nodename), SETTLE_SECONDS
    )
    for name in WORKER_SERIES:
        assert not series(samples, name), f"{name}: {series(samples, name)}"
    assert http_get(exporter.url + "/readyz").status == 200
    assert worker.running, worker.log()


def test_inspection_disabled(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """With --inspect-interval-seconds 0 the exporter never inspects: it stays ready, the
    worker is up with its heartbeat series (tasks active 0 once idle), the task counters are
    exact, and there is no celery_worker_concurrency, celery_worker_tasks_reserved,
    celery_worker_consuming or celery_exporter_inspections_total series."""
    server = redis_factory()
    exporter = exporter_factory(server.url, "--inspect-interval-seconds", "0")
    _small_workload(exporter, server.url)
    worker = celery_procs(server.url).worker(queues=[sa.QUEUE_A, sa.QUEUE_B], name="noinspect")
    exp = _small_workload_expectation(worker.nodename)
    exp.add("celery_worker_up", 1, worker=worker.nodename)
    exp.add(ACTIVE, 0, worker=worker.nodename)
    exp.absent |= {
        CONCURRENCY_METRIC,
        RESERVED,
        "celery_worker_consuming",
        "celery_exporter_inspections_total",
    }
    samples = wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
    for name in (CONCURRENCY_METRIC, RESERVED, "celery_worker_consuming"):
        assert not series(samples, name), f"{name}: {series(samples, name)}"
    assert http_get(exporter.url + "/readyz").status == 200
