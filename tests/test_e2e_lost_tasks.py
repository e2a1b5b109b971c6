"""Tasks the broker delivered again, tasks lost with their worker, retries that recover or run
out: real prefork workers on each real broker, the real exporter process, exact values."""

from __future__ import annotations

import time
from pathlib import Path

from tests import sample_app as sa
from tests.celery_procs import ProcsFactory
from tests.helpers import Expected, scrape, send_counted, value, wait_for_metrics
from tests.services import ExporterFactory

SETTLE_SECONDS = 40.0


def test_a_pool_process_killed_mid_task_is_redelivered_once(
    broker_url: str,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
    tmp_path: Path,
) -> None:
    """Under acks_late and task_reject_on_worker_lost, a task whose pool process is SIGKILLed
    mid-task is rejected, requeued and delivered again: redelivered exactly once, received and
    started twice, succeeded once, nothing failed, orphaned or running."""
    exporter = exporter_factory(broker_url)
    marker = tmp_path / "lost-once"
    send_counted(exporter.port, broker_url, [(sa.LOST_ONCE, [str(marker)], {})])
    worker = celery_procs(broker_url).worker(queues=[sa.QUEUE_B], concurrency=2, name="lost")
    task = {"task": sa.LOST_ONCE, "queue": sa.QUEUE_B}
    labels = {**task, "worker": worker.nodename}
    exp = Expected()
    exp.add("celery_task_redelivered_total", 1, **task)
    exp.add("celery_task_received_total", 2, **labels)
    exp.add("celery_task_started_total", 2, **labels)
    exp.add("celery_task_rejected_total", 1, **labels)
    exp.add("celery_task_succeeded_total", 1, **labels)
    exp.add("celery_task_running", 0, **task)
    samples = wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
    assert marker.exists()
    assert value(samples, "celery_task_orphaned_total", **task) == 0
    for name in ("celery_task_failed_total", "celery_task_recovered_total"):
        assert value(samples, name, **task) is None, name


def test_a_worker_killed_mid_task_orphans_exactly_its_running_tasks(
    broker_url: str,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """A whole worker SIGKILLed while two tasks run sends no final event: once its heartbeats
    are overdue (1 s interval, --worker-timeout-heartbeats 3) both are orphaned, exactly, and
    no longer running; the task that was only queued is not."""
    exporter = exporter_factory(broker_url)
    send_counted(exporter.port, broker_url, [(sa.SLEEP, [60], {})] * 2)
    worker = celery_procs(broker_url).worker(
        queues=[sa.QUEUE_B], concurrency=2, name="doomed", extra=["--prefetch-multiplier", "1"]
    )
    task = {"task": sa.SLEEP, "queue": sa.QUEUE_B}
    exp = Expected()
    exp.add("celery_task_running", 2, **task)
    wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
    worker.stop(kill=True)
    exp = Expected()
    exp.add("celery_task_orphaned_total", 2, **task)
    exp.add("celery_task_running", 0, **task)
    exp.add("celery_worker_up", 0, worker=worker.nodename)
    wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
    time.sleep(3)  # later sweeps count nothing again
    assert value(scrape(exporter.port), "celery_task_orphaned_total", **task) == 2


def test_retries_that_recover_and_retries_that_run_out(
    broker_url: str,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """Two tasks retried twice then succeeding, one retried until its two retries run out:
    recovered 2, retries exhausted 1 (failed with MaxRetriesExceededError), retried 6."""
    exporter = exporter_factory(broker_url)
    send_counted(
        exporter.port,
        broker_url,
        [(sa.RETRY, [2], {}), (sa.RETRY, [2], {}), (sa.RETRY_FAIL, [], {})],
    )
    worker = celery_procs(broker_url).worker(queues=[sa.QUEUE_A, sa.QUEUE_B], name="retries")
    node = worker.nodename
    exp = Expected()
    exp.add("celery_task_recovered_total", 2, task=sa.RETRY, queue=sa.QUEUE_A)
    exp.add("celery_task_retries_exhausted_total", 1, task=sa.RETRY_FAIL, queue=sa.QUEUE_B)
    exp.add("celery_task_retried_total", 4, task=sa.RETRY, queue=sa.QUEUE_A, worker=node)
    exp.add("celery_task_retried_total", 2, task=sa.RETRY_FAIL, queue=sa.QUEUE_B, worker=node)
    exp.add("celery_task_succeeded_total", 2, task=sa.RETRY, queue=sa.QUEUE_A, worker=node)
    samples = wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
    assert (
        value(samples, "celery_task_recovered_total", task=sa.RETRY_FAIL, queue=sa.QUEUE_B) is None
    )
    assert (
        value(samples, "celery_task_retries_exhausted_total", task=sa.RETRY, queue=sa.QUEUE_A)
        is None
    )
