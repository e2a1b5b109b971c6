"""End-to-end on a real redis-server: event orders real workers produce now and then, and
Redis-only paths, through the real exporter process, with exact counts."""

from __future__ import annotations

import uuid

import pytest

from tests import sample_app as sa
from tests.helpers import Expected
from tests.scenarios import (
    back_to_back_retried_events,
    check_exporter_health,
    interleaved_retry_events,
    late_sent_events,
    replay,
)
from tests.services import ExporterFactory, ProducerFactory, RedisServer

pytestmark = pytest.mark.redis

# --- event orders real workers produce now and then, replayed deterministically ---


def test_back_to_back_retried_events_all_count(
    redis_server: RedisServer,
    exporter_factory: ExporterFactory,
    producer_factory: ProducerFactory,
) -> None:
    """Two task-retried events of one task with no task-started between them (the next
    attempt was reported started first, as a prefork worker does) are two retries: retried is
    exactly 2, and nothing is dropped as a duplicate."""
    worker, samples = replay(
        broker_url=redis_server.url,
        exporter_factory=exporter_factory,
        producer_factory=producer_factory,
        events=back_to_back_retried_events(str(uuid.uuid4())),
    )
    labels = {"task": sa.RETRY, "queue": sa.QUEUE_A, "worker": worker}
    exp = Expected()
    exp.add("celery_task_sent_total", 3, task=sa.RETRY, queue=sa.QUEUE_A)
    exp.add("celery_task_received_total", 3, **labels)
    exp.add("celery_task_started_total", 3, **labels)
    exp.add("celery_task_retried_total", 2, **labels)
    exp.add("celery_task_succeeded_total", 1, **labels)
    exp.check(samples)
    check_exporter_health(samples)


def test_queue_wait_of_interleaved_retry_attempts(
    redis_server: RedisServer,
    exporter_factory: ExporterFactory,
    producer_factory: ProducerFactory,
) -> None:
    """Each of the 3 started attempts of a task retried twice gets exactly one queue-wait
    observation, also when the next attempt's task-sent and task-received arrive before the
    previous attempt's task-started (the order a prefork worker produced in these tests)."""
    worker, samples = replay(
        broker_url=redis_server.url,
        exporter_factory=exporter_factory,
        producer_factory=producer_factory,
        events=interleaved_retry_events(str(uuid.uuid4())),
    )
    labels = {"task": sa.RETRY, "queue": sa.QUEUE_A, "worker": worker}
    exp = Expected()
    exp.add("celery_task_started_total", 3, **labels)
    exp.add("celery_task_retried_total", 2, **labels)
    exp.add("celery_task_queue_wait_seconds_count", 3, **labels)
    exp.check(samples)


def test_late_task_sent_labels_every_counter_with_its_queue(
    redis_server: RedisServer,
    exporter_factory: ExporterFactory,
    producer_factory: ProducerFactory,
) -> None:
    """A task whose task-received arrives before its task-sent (Celery publishes task-sent
    after the task message, so a waiting worker can win) is counted under the queue task-sent
    names on every counter, once producers are known to send task-sent: no series has
    queue="unknown"."""
    worker, samples = replay(
        broker_url=redis_server.url,
        exporter_factory=exporter_factory,
        producer_factory=producer_factory,
        events=late_sent_events(str(uuid.uuid4()), str(uuid.uuid4())),
    )
    labels = {"task": sa.OK, "queue": sa.QUEUE_A, "worker": worker}
    exp = Expected()
    exp.add("celery_task_sent_total", 2, task=sa.OK, queue=sa.QUEUE_A)
    exp.add("celery_task_received_total", 2, **labels)
    exp.add("celery_task_started_total", 2, **labels)
    exp.add("celery_task_succeeded_total", 2, **labels)
    exp.check(samples)
