"""End-to-end scenarios shared by the Redis and RabbitMQ tests: same workload, same exact counts.

Each scenario starts its own exporter (so every counter starts at zero) and its own worker,
publishes a known workload, waits until the exporter's counters settle, and compares every
series with ``==``. It then stops the worker and checks the counts once more, along with the
worker's departure (``celery_worker_up`` 0 after worker-offline).
"""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client.samples import Sample

from tests import sample_app as sa
from tests.helpers import (
    Expected,
    scrape,
    value,
    wait_for_metrics,
    wait_for_value,
    wait_until,
)
from tests.services import (
    CeleryWorker,
    ExporterFactory,
    ExporterProcess,
    ProducerFactory,
    WorkerFactory,
)

# Generous deadlines: they bound a failing run, a passing one returns as soon as it can.
WORKER_UP_SECONDS = 40.0
SETTLE_SECONDS = 40.0


# The mixed workload.
SUCCEEDING = 7
VALUE_ERRORS = 3
KEY_ERRORS = 2
RETRYING_TASKS = 2
RETRIES_EACH = 2


def purge_queues(producer: Any) -> None:
    """Empty the test queues, so a message an earlier (failed) test left cannot be counted."""
    producer.control.purge()


def wait_worker_up(exporter: ExporterProcess, worker: CeleryWorker) -> None:
    """Until the exporter has the worker's worker-online/heartbeat: celery_worker_up == 1."""

    def up() -> bool:
        assert worker.running, f"worker {worker.nodename} exited:\n{worker.log()}"
        return value(scrape(exporter.port), "celery_worker_up", worker=worker.nodename) == 1

    wait_until(
        up,
        WORKER_UP_SECONDS,
        lambda: (
            f"celery_worker_up{{worker={worker.nodename!r}}} never became 1; worker log:\n"
            f"{worker.log()}\nexporter stderr:\n{exporter.stderr()}"
        ),
    )


def stop_worker(exporter: ExporterProcess, worker: CeleryWorker) -> None:
    """Warm-stop the worker and wait for its worker-offline: celery_worker_up == 0."""
    worker.stop()
    wait_for_value(exporter.port, 0, "celery_worker_up", 10.0, worker=worker.nodename)


def check_exporter_health(samples: list[Sample]) -> None:
    """The source is connected and nothing was dropped."""
    assert value(samples, "celery_exporter_source_up", source="events") == 1
    dropped = [s for s in samples if s.name == "celery_exporter_events_dropped_total"]
    assert all(s.value == 0 for s in dropped), f"events dropped: {dropped}"


def mixed_workload_expectation(worker: str) -> Expected:
    """Every task series the mixed workload must produce, with its exact value."""
    a, b = sa.QUEUE_A, sa.QUEUE_B
    attempts = RETRYING_TASKS * (RETRIES_EACH + 1)
    retries = RETRYING_TASKS * RETRIES_EACH
    exp = Expected()
    # task, queue, sent, received (= started), succeeded
    for task, queue, sent, received, succeeded in (
        (sa.OK, a, SUCCEEDING, SUCCEEDING, SUCCEEDING),
        (sa.RETRY, a, attempts, attempts, RETRYING_TASKS),  # every retry is published anew
        (sa.FAIL_VALUE, b, VALUE_ERRORS, VALUE_ERRORS, 0),
        (sa.FAIL_KEY, b, KEY_ERRORS, KEY_ERRORS, 0),
        (sa.SLEEP, b, 1, 0, 0),  # revoked before the worker took it: task-revoked only
    ):
        labels = {"task": task, "queue": queue, "worker": worker}
        exp.add("celery_task_sent_total", sent, task=task, queue=queue)
        if received:
            exp.add("celery_task_received_total", received, **labels)
            exp.add("celery_task_started_total", received, **labels)
            exp.add("celery_task_queue_wait_seconds_count", received, **labels)
        if succeeded:
            exp.add("celery_task_succeeded_total", succeeded, **labels)
            exp.add("celery_task_duration_seconds_count", succeeded, **labels, state="succeeded")
    for task, exception, count in (
        (sa.FAIL_VALUE, "ValueError", VALUE_ERRORS),
        (sa.FAIL_KEY, "KeyError", KEY_ERRORS),
    ):
        labels = {"task": task, "queue": b, "worker": worker}
        exp.add("celery_task_failed_total", count, **labels, exception=exception)
        exp.add("celery_task_duration_seconds_count", count, **labels, state="failed")
    exp.add("celery_task_retried_total", retries, task=sa.RETRY, queue=a, worker=worker)
    exp.add("celery_task_revoked_total", 1, task=sa.SLEEP, queue=b, worker=worker)
    sent = SUCCEEDING + attempts + VALUE_ERRORS + KEY_ERRORS + 1
    for event_type, count in (
        ("task-sent", sent),
        ("task-received", sent - 1),
        ("task-started", sent - 1),
        ("task-succeeded", SUCCEEDING + RETRYING_TASKS),
        ("task-failed", VALUE_ERRORS + KEY_ERRORS),
        ("task-retried", retries),
        ("task-revoked", 1),
    ):
        exp.add_partial("celery_exporter_events_total", count, type=event_type)
    exp.absent |= {"celery_task_rejected_total", "celery_task_running"}
    return exp


def initial_sends_expectation() -> Expected:
    """The task-sent counts of the producer's own publishing (before any retry)."""
    exp = Expected()
    for task, queue, count in (
        (sa.OK, sa.QUEUE_A, SUCCEEDING),
        (sa.RETRY, sa.QUEUE_A, RETRYING_TASKS),
        (sa.FAIL_VALUE, sa.QUEUE_B, VALUE_ERRORS),
        (sa.FAIL_KEY, sa.QUEUE_B, KEY_ERRORS),
        (sa.SLEEP, sa.QUEUE_B, 1),
    ):
        exp.add("celery_task_sent_total", count, task=task, queue=queue)
    return exp


def consume(producer: Any, worker: CeleryWorker, queue: str) -> None:
    """Make the running worker consume ``queue`` too (the add_consumer control command)."""
    replies = producer.control.add_consumer(
        queue, destination=[worker.nodename], reply=True, timeout=5.0, limit=1
    )
    assert replies and worker.nodename in replies[0], f"add_consumer not acknowledged: {replies}"


def run_mixed_workload(
    *,
    broker_url: str,
    exporter_factory: ExporterFactory,
    worker_factory: WorkerFactory,
    producer_factory: ProducerFactory,
    pool: str,
) -> None:
    """7 successes, 3 ValueError, 2 KeyError, 2 tasks retried twice, 1 revoked, on 2 queues.

    The worker starts on an idle queue and is told to consume e2e_a and e2e_b only once every
    task-sent has been counted: Celery publishes task-sent after the message, and a worker that
    is already waiting could report task-received first (see test_late_task_sent_* for what
    the exporter then does). The revoked task is revoked before the worker takes it.
    """
    producer = producer_factory(broker_url)
    purge_queues(producer)
    exporter = exporter_factory(broker_url)
    worker = worker_factory(broker_url, queues=[sa.QUEUE_IDLE], pool=pool, name=f"mixed-{pool}")
    wait_worker_up(exporter, worker)

    doomed = producer.send_task(sa.SLEEP, args=[0]).id
    for i in range(SUCCEEDING):
        producer.send_task(sa.OK, args=[i])
    for _ in range(VALUE_ERRORS):
        producer.send_task(sa.FAIL_VALUE)
    for _ in range(KEY_ERRORS):
        producer.send_task(sa.FAIL_KEY)
    for _ in range(RETRYING_TASKS):
        producer.send_task(sa.RETRY, args=[RETRIES_EACH])
    wait_for_metrics(exporter.port, initial_sends_expectation(), SETTLE_SECONDS)

    replies = producer.control.revoke(
        doomed, destination=[worker.nodename], reply=True, timeout=5.0, limit=1
    )
    assert replies and worker.nodename in replies[0], f"revoke not acknowledged: {replies}"
    consume(producer, worker, sa.QUEUE_A)
    consume(producer, worker, sa.QUEUE_B)

    expected = mixed_workload_expectation(worker.nodename)
    wait_for_metrics(exporter.port, expected, SETTLE_SECONDS)
    stop_worker(exporter, worker)
    # Nothing more arrives after the worker left: the counts are final, and still exact.
    samples = scrape(exporter.port)
    expected.check(samples)
    assert value(samples, "celery_worker_up", worker=worker.nodename) == 0
    check_exporter_health(samples)


def run_without_sent_events(
    *,
    broker_url: str,
    exporter_factory: ExporterFactory,
    worker_factory: WorkerFactory,
    producer_factory: ProducerFactory,
    pool: str,
) -> None:
    """No task-sent: the queue label comes from the one queue the (inspected) worker consumes."""
    succeeding, failing = 4, 2
    producer = producer_factory(broker_url, send_sent_event=False)
    purge_queues(producer)
    exporter = exporter_factory(broker_url)
    worker = worker_factory(
        broker_url, queues=[sa.QUEUE_C], pool=pool, name=f"quiet-{pool}", send_sent_event=False
    )
    wait_worker_up(exporter, worker)
    # The exporter must know what the worker consumes before the first task-received comes.
    wait_for_value(
        exporter.port,
        1,
        "celery_worker_consuming",
        WORKER_UP_SECONDS,
        worker=worker.nodename,
        queue=sa.QUEUE_C,
    )

    # The routes would say e2e_a / e2e_b: the explicit queue is the truth, and only the
    # worker's single queue can tell the exporter.
    for i in range(succeeding):
        producer.send_task(sa.OK, args=[i], queue=sa.QUEUE_C)
    for _ in range(failing):
        producer.send_task(sa.FAIL_VALUE, queue=sa.QUEUE_C)

    node, c = worker.nodename, sa.QUEUE_C
    exp = Expected()
    for task, count in ((sa.OK, succeeding), (sa.FAIL_VALUE, failing)):
        labels = {"task": task, "queue": c, "worker": node}
        exp.add("celery_task_received_total", count, **labels)
        exp.add("celery_task_started_total", count, **labels)
        exp.add("celery_task_queue_wait_seconds_count", count, **labels)
    exp.add("celery_task_succeeded_total", succeeding, task=sa.OK, queue=c, worker=node)
    exp.add(
        "celery_task_duration_seconds_count",
        succeeding,
        task=sa.OK,
        queue=c,
        worker=node,
        state="succeeded",
    )
    exp.add(
        "celery_task_failed_total",
        failing,
        task=sa.FAIL_VALUE,
        queue=c,
        worker=node,
        exception="ValueError",
    )
    exp.add(
        "celery_task_duration_seconds_count",
        failing,
        task=sa.FAIL_VALUE,
        queue=c,
        worker=node,
        state="failed",
    )
    exp.absent |= {
        "celery_task_sent_total",
        "celery_task_retried_total",
        "celery_task_revoked_total",
        "celery_task_rejected_total",
        "celery_task_running",
    }
    wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
    stop_worker(exporter, worker)
    samples = scrape(exporter.port)
    exp.check(samples)
    check_exporter_health(samples)


# --- crafted event orders ---------------------------------------------------------------
#
# Some orders real workers produce only now and then (prefork parents report a task's start
# after its child already republished a retry; Celery publishes task-sent after the message).
# These scenarios publish such an order deterministically, through the real broker with
# Celery's own event dispatcher, to a real exporter process.

CraftedEvent = tuple[str, dict[str, Any]]


def publish_events(producer: Any, hostname: str, events: list[CraftedEvent]) -> None:
    """Publish ``events`` in this order, as ``hostname``, exactly as a worker would."""
    with producer.events.default_dispatcher(hostname=hostname) as dispatcher:
        for event_type, fields in events:
            dispatcher.send(event_type, **fields)


def replay(
    *,
    broker_url: str,
    exporter_factory: ExporterFactory,
    producer_factory: ProducerFactory,
    events: list[CraftedEvent],
) -> tuple[str, list[Sample]]:
    """Start an exporter, publish ``events``, wait until it applied them all; its samples."""
    exporter = exporter_factory(broker_url)
    producer = producer_factory(broker_url)
    hostname = f"crafted-{uuid.uuid4().hex[:8]}@e2e"
    publish_events(producer, hostname, events)
    counts: dict[str, int] = {}
    for event_type, _ in events:
        counts[event_type] = counts.get(event_type, 0) + 1
    applied = Expected()
    for event_type, count in counts.items():
        applied.add_partial("celery_exporter_events_total", count, type=event_type)
    wait_for_metrics(exporter.port, applied, SETTLE_SECONDS)
    # A fresh page: within one, the task collector's snapshot precedes the event counts.
    return hostname, scrape(exporter.port)


def interleaved_retry_events(task_id: str) -> list[CraftedEvent]:
    """A task retried twice, in an order a prefork worker produced (attempts a1..a3)."""
    name, queue = sa.RETRY, sa.QUEUE_A
    return [
        ("task-sent", {"uuid": task_id, "name": name, "queue": queue, "retries": 0}),
        ("task-received", {"uuid": task_id, "name": name, "retries": 0}),
        ("task-sent", {"uuid": task_id, "name": name, "queue": queue, "retries": 1}),
        ("task-received", {"uuid": task_id, "name": name, "retries": 1}),  # a2 ...
        ("task-started", {"uuid": task_id}),  # ... before a1 is reported started
        ("task-retried", {"uuid": task_id, "exception": "Retry('Retry in 0s')"}),  # a1
        ("task-sent", {"uuid": task_id, "name": name, "queue": queue, "retries": 2}),
        ("task-received", {"uuid": task_id, "name": name, "retries": 2}),  # a3 ...
        ("task-started", {"uuid": task_id}),  # ... before a2 is reported started
        ("task-retried", {"uuid": task_id, "exception": "Retry('Retry in 0s')"}),  # a2
        ("task-started", {"uuid": task_id}),  # a3
        ("task-succeeded", {"uuid": task_id, "result": "2", "runtime": 0.001}),
    ]


def back_to_back_retried_events(task_id: str) -> list[CraftedEvent]:
    """Two task-retried in a row: the next attempt was reported started before the first."""
    name, queue = sa.RETRY, sa.QUEUE_A
    return [
        ("task-sent", {"uuid": task_id, "name": name, "queue": queue, "retries": 0}),
        ("task-received", {"uuid": task_id, "name": name, "retries": 0}),
        ("task-started", {"uuid": task_id}),  # a1
        ("task-sent", {"uuid": task_id, "name": name, "queue": queue, "retries": 1}),
        ("task-received", {"uuid": task_id, "name": name, "retries": 1}),
        ("task-started", {"uuid": task_id}),  # a2, before a1's retry is reported
        ("task-received", {"uuid": task_id, "name": name, "retries": 2}),
        ("task-retried", {"uuid": task_id, "exception": "Retry('Retry in 0s')"}),  # a1
        ("task-sent", {"uuid": task_id, "name": name, "queue": queue, "retries": 2}),
        ("task-retried", {"uuid": task_id, "exception": "Retry('Retry in 0s')"}),  # a2
        ("task-started", {"uuid": task_id}),  # a3
        ("task-succeeded", {"uuid": task_id, "result": "2", "runtime": 0.001}),
    ]


def late_sent_events(first_id: str, task_id: str) -> list[CraftedEvent]:
    """A task in the usual order (producers are seen sending task-sent), then one whose
    task-sent arrives after the worker's task-received."""
    name = sa.OK
    return [
        ("task-sent", {"uuid": first_id, "name": name, "queue": sa.QUEUE_A, "retries": 0}),
        ("task-received", {"uuid": first_id, "name": name, "retries": 0}),
        ("task-started", {"uuid": first_id}),
        ("task-succeeded", {"uuid": first_id, "result": "1", "runtime": 0.001}),
        ("task-received", {"uuid": task_id, "name": name, "retries": 0}),
        ("task-sent", {"uuid": task_id, "name": name, "queue": sa.QUEUE_A, "retries": 0}),
        ("task-started", {"uuid": task_id}),
        ("task-succeeded", {"uuid": task_id, "result": "1", "runtime": 0.001}),
    ]
