"""End-to-end on both brokers: real workers, the real exporter process, exact counts."""

from __future__ import annotations

import pytest

from tests.scenarios import run_mixed_workload, run_without_sent_events
from tests.services import ExporterFactory, ProducerFactory, WorkerFactory

POOLS = ["prefork", "solo"]


@pytest.mark.parametrize("pool", POOLS)
def test_mixed_workload_counts_are_exact(
    pool: str,
    broker_url: str,
    exporter_factory: ExporterFactory,
    worker_factory: WorkerFactory,
    producer_factory: ProducerFactory,
) -> None:
    """7 successes, 3 ValueError and 2 KeyError failures, 2 tasks retried exactly twice and
    1 revoked task, over queues e2e_a and e2e_b, are counted exactly once each per task, queue
    and worker (sent, received, started, succeeded, failed by exception, retried, revoked,
    duration and queue-wait observations); the worker is up while it runs and down after its
    worker-offline; the source is up and no event is dropped."""
    run_mixed_workload(
        broker_url=broker_url,
        exporter_factory=exporter_factory,
        worker_factory=worker_factory,
        producer_factory=producer_factory,
        pool=pool,
    )


@pytest.mark.parametrize("pool", POOLS)
def test_queue_label_without_sent_events(
    pool: str,
    broker_url: str,
    exporter_factory: ExporterFactory,
    worker_factory: WorkerFactory,
    producer_factory: ProducerFactory,
) -> None:
    """With a producer that sends no task-sent events and a worker consuming only e2e_c, every
    task series is labelled queue=e2e_c (learned by inspecting the worker), with exact counts,
    and celery_task_sent_total has no series."""
    run_without_sent_events(
        broker_url=broker_url,
        exporter_factory=exporter_factory,
        worker_factory=worker_factory,
        producer_factory=producer_factory,
        pool=pool,
    )
