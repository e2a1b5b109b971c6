"""Queue depth end to end: real redis-server and rabbitmq-server, real Celery producers and
workers (tests.queue_app, late acks), the real exporter process, exact values.

Every Redis test has private redis-servers, so its queues, bindings and unacked hash are the
only ones the exporter sees. The RabbitMQ test uses the session broker with queue names of its
own, deleted afterwards.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from exporter.brokers.redis.queues import queue_key
from tests import queue_app as qa
from tests.celery_procs import CeleryProcesses, CeleryWorkerProcess
from tests.helpers import (
    Expected,
    metrics_text,
    parse,
    scrape,
    value,
    wait_for_metrics,
    wait_for_value,
    wait_until,
)
from tests.services import ExporterFactory, ExporterProcess, RabbitMQServer, RedisFactory

LENGTH = "celery_queue_length"
BY_PRIORITY = "celery_queue_length_by_priority"
UNACKED = "celery_queue_unacked"
CONSUMERS = "celery_queue_consumers"
UTILISATION = "celery_queue_consumer_utilisation"
OLDEST = "celery_queue_oldest_message_age_seconds"
OLDEST_UNACKED = "celery_queue_oldest_unacked_age_seconds"
POLL_ERRORS = "celery_exporter_poll_errors_total"
POLL_LAST = "celery_exporter_poll_last_success_timestamp_seconds"

SETTLE_SECONDS = 30.0
# Polls fast, rescans kombu's bindings as often: tests wait for seconds, not minutes.
FAST_POLL = (
    "--queue-poll-interval-seconds", "0.3",
    "--queue-discovery-interval-seconds", "0.3",
)  # fmt: skip
KOMBU_STEPS = [0, 3, 6, 9]  # kombu.transport.redis.PRIORITY_STEPS
# The late-ack workload: one process, prefetch 4 (all unacked, one running), 2 left waiting.
PREFETCH = 4
LONG_TASKS = 6
HOLD_SECONDS = 300.0  # the tasks outlive the test; their worker is killed at the end


def step_of(priority: int, steps: list[int]) -> int:
    """The step kombu files a message of ``priority`` under: the highest step <= it."""
    return max(step for step in steps if step <= priority)


@pytest.fixture
def workers() -> Iterator[list[CeleryWorkerProcess]]:
    """The test's workers, killed afterwards: their long tasks would hold up a warm stop."""
    started: list[CeleryWorkerProcess] = []
    yield started
    for worker in started:
        worker.stop(kill=True)


def start_late_ack_worker(
    started: list[CeleryWorkerProcess],
    broker_url: str,
    workdir: Path,
    queue: str,
    transport_options: dict[str, Any] | None = None,
) -> CeleryWorkerProcess:
    """``celery -A tests.queue_app worker -c 1 --prefetch-multiplier 4`` on ``queue``."""
    launcher = CeleryProcesses(broker_url, workdir)
    worker = launcher.worker(
        app="tests.queue_app",
        queues=[queue],
        concurrency=1,
        name="depth",
        extra=["--prefetch-multiplier", str(PREFETCH)],
        env=launcher.env(**{qa.TRANSPORT_OPTIONS_ENV: json.dumps(transport_options or {})}),
    )
    started.append(worker)
    return worker


def wait_worker_up(exporter: ExporterProcess, worker: CeleryWorkerProcess) -> None:
    """Until the exporter counts the worker up (its heartbeats arrive)."""

    def up() -> bool:
        assert worker.running, f"worker exited:\n{worker.log()}"
        return value(scrape(exporter.port), "celery_worker_up", worker=worker.nodename) == 1

    wait_until(up, SETTLE_SECONDS, lambda: f"worker never up; log:\n{worker.log()}")


def publish_priorities(app: Any, queue: str, counts: dict[int, int]) -> None:
    """``counts[p]`` tasks of priority ``p`` to ``queue``."""
    for priority, count in counts.items():
        for _ in range(count):
            app.send_task(qa.NOOP, queue=queue, priority=priority)


def expect_queue(
    exp: Expected, queue: str, steps: list[int], by_priority: dict[int, int], *, unacked: int = 0
) -> None:
    """``queue`` holds ``by_priority`` (priority -> messages): its length and every step."""
    per_step = dict.fromkeys(steps, 0)
    for priority, count in by_priority.items():
        per_step[step_of(priority, steps)] += count
    exp.add(LENGTH, sum(by_priority.values()), queue=queue)
    exp.add(UNACKED, unacked, queue=queue)
    for step, count in per_step.items():
        exp.add(BY_PRIORITY, count, queue=queue, priority=str(step))


@pytest.mark.redis
def test_redis_lengths_per_priority_step_prefix_and_discovery(
    redis_factory: RedisFactory, exporter_factory: ExporterFactory
) -> None:
    """Tasks of priorities 0..9 published through Celery, no worker, on three Redis set-ups,
    each with its own exporter given the app's transport options: kombu's default steps
    (0, 3, 6, 9), ``priority_steps`` 0..9, and a ``global_keyprefix``. Every
    celery_queue_length equals what was published and celery_queue_length_by_priority is exact
    per step (empty steps read 0); the queues are found through kombu's bindings alone
    (producers send no task-sent, nothing is configured but a missing queue, which reads 0
    everywhere); celery_queue_unacked is 0 and no message age is exported (no task-sent).
    """
    server = redis_factory()
    ten_steps = list(range(10))
    setups: list[tuple[int, dict[str, Any], list[int]]] = [
        (0, {}, KOMBU_STEPS),
        (1, {"priority_steps": ten_steps}, ten_steps),
        (2, {"global_keyprefix": "tenant-a:"}, KOMBU_STEPS),
    ]
    one_each = dict.fromkeys(range(10), 1)
    rising = {p: p + 1 for p in range(10)}  # 55 messages, a different count per priority
    for db, options, steps in setups:
        url = f"redis://127.0.0.1:{server.port}/{db}"
        producer = qa.make_app(url, transport_options=options, send_sent_event=False)
        try:
            publish_priorities(producer, "depth_one_each", one_each)
            publish_priorities(producer, "depth_rising", rising)
            publish_priorities(producer, "depth_edges", {0: 2, 9: 3})
            producer.send_task(qa.NOOP, queue="depth_plain")  # no priority: step 0
        finally:
            producer.close()
        exporter = exporter_factory(
            url,
            *FAST_POLL,
            "--queue-priority-metrics",
            "--queues", "depth_configured_missing",
            "--broker-transport-options", json.dumps(options),
        )  # fmt: skip
        exp = Expected()
        expect_queue(exp, "depth_one_each", steps, one_each)
        expect_queue(exp, "depth_rising", steps, rising)
        expect_queue(exp, "depth_edges", steps, {0: 2, 9: 3})
        expect_queue(exp, "depth_plain", steps, {0: 1})
        expect_queue(exp, "depth_configured_missing", steps, {})
        exp.absent |= {OLDEST, OLDEST_UNACKED, CONSUMERS, UTILISATION}
        wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)

    # The prefix is really in Redis' keys, so the prefixed exporter did read prefixed lists.
    client = redis.Redis(port=server.port, db=2)
    try:
        assert client.llen(queue_key("depth_rising", 9, prefix="tenant-a:", sep="\x06\x16")) == 10
        assert client.exists("depth_rising") == 0
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "global_keyprefix": "tenant-b:",
                "unacked_key": "depth_unacked",
                "unacked_index_key": "depth_unacked_index",
            },
            id="prefix-and-unacked-keys",
        ),
    ],
)
def test_redis_unacked_and_ages_with_a_late_ack_worker(
    options: dict[str, Any],
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    workers: list[CeleryWorkerProcess],
    tmp_path: Path,
) -> None:
    """A worker with late acks, one process and prefetch 4 takes 4 of 6 long tasks (one runs,
    three wait prefetched): celery_queue_unacked is exactly 4 and celery_queue_length exactly 2.
    celery_queue_oldest_unacked_age_seconds lies between the ages the test clock allows (the
    first delivery came after the first publish and before the test saw the 4 unacked), and
    celery_queue_oldest_message_age_seconds, from the task-sent the running exporter saw,
    between the ages of the first and the last publish. The same with a global_keyprefix and
    renamed unacked keys (transport options given to the app and the exporter alike).
    """
    server = redis_factory()
    queue = "depth_late_ack"
    exporter = exporter_factory(
        server.url,
        *FAST_POLL,
        "--queues", queue,
        "--broker-transport-options", json.dumps(options),
    )  # fmt: skip
    worker = start_late_ack_worker(workers, server.url, tmp_path / "workers", queue, options)
    wait_worker_up(exporter, worker)

    producer = qa.make_app(server.url, transport_options=options)
    try:
        first_sent = time.time()
        for _ in range(LONG_TASKS):
            producer.send_task(qa.SLEEP, args=[HOLD_SECONDS], queue=queue)
        last_sent = time.time()
    finally:
        producer.close()

    exp = Expected()
    exp.add(LENGTH, LONG_TASKS - PREFETCH, queue=queue)
    exp.add(UNACKED, PREFETCH, queue=queue)
    wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
    all_delivered = time.time()
    # The ages appear once the poll after the unacked hash was first seen has read it.
    wait_until(
        lambda: value(scrape(exporter.port), OLDEST_UNACKED, queue=queue) is not None,
        SETTLE_SECONDS,
        f"{OLDEST_UNACKED} never appeared",
    )
    before = time.time()
    samples = parse(metrics_text(exporter.port))
    after = time.time()
    exp.check(samples)

    unacked_age = value(samples, OLDEST_UNACKED, queue=queue)
    assert unacked_age is not None
    assert before - all_delivered <= unacked_age <= after - first_sent, (
        f"oldest unacked age {unacked_age:.3f} outside [{before - all_delivered:.3f}, "
        f"{after - first_sent:.3f}]"
    )
    waiting_age = value(samples, OLDEST, queue=queue)
    assert waiting_age is not None, f"no {OLDEST} for {queue}"
    assert before - last_sent <= waiting_age <= after - first_sent, (
        f"oldest waiting age {waiting_age:.3f} outside [{before - last_sent:.3f}, "
        f"{after - first_sent:.3f}]"
    )


class Management:
    """The test's own calls to the RabbitMQ management API (as guest, an administrator)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._auth = "Basic " + base64.b64encode(b"guest:guest").decode()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status in (200, 201, 204), f"{method} {path}: {response.status}"


@pytest.mark.rabbitmq
def test_rabbitmq_ready_unacked_consumers_and_discovery(
    rabbitmq_server: RabbitMQServer,
    exporter_factory: ExporterFactory,
    workers: list[CeleryWorkerProcess],
    tmp_path: Path,
) -> None:
    """With --rabbitmq-management-url (as a monitoring user of its own whose password comes
    from --rabbitmq-management-password-file), a late-ack worker with one process and prefetch
    4 on a queue of 6 long tasks: celery_queue_length 2 (ready), celery_queue_unacked 4 and
    celery_queue_consumers 1 exactly; a queue nobody configured, consumes or names in a
    task-sent is discovered through the management API with its 3 ready messages, 0 unacked and
    0 consumers. Celery's event, control and reply queues (the exporter's own included) are
    not exported, and the password is in no log line.
    """
    suffix = uuid.uuid4().hex[:8]
    busy, hidden = f"depth_busy_{suffix}", f"depth_hidden_{suffix}"
    user, password = f"monitor-{suffix}", f"pw-{uuid.uuid4().hex}"
    admin = Management(rabbitmq_server.management_url)
    admin.call("PUT", f"/api/users/{user}", {"password": password, "tags": "monitoring"})
    admin.call("PUT", f"/api/permissions/%2F/{user}", {"configure": "", "write": "", "read": ".*"})
    password_file = tmp_path / "management-password"
    password_file.write_text(password + "\n")
    host = rabbitmq_server.management_url.removeprefix("http://")
    try:
        exporter = exporter_factory(
            rabbitmq_server.url,
            *FAST_POLL,
            "--rabbitmq-management-url", f"http://{user}@{host}",
            "--rabbitmq-management-password-file", str(password_file),
        )  # fmt: skip
        worker = start_late_ack_worker(workers, rabbitmq_server.url, tmp_path / "workers", busy)
        wait_worker_up(exporter, worker)
        producer = qa.make_app(rabbitmq_server.url)
        quiet = qa.make_app(rabbitmq_server.url, send_sent_event=False)
        try:
            for _ in range(LONG_TASKS):
                producer.send_task(qa.SLEEP, args=[HOLD_SECONDS], queue=busy)
            for _ in range(3):
                quiet.send_task(qa.NOOP, queue=hidden)
        finally:
            producer.close()
            quiet.close()

        exp = Expected()
        for queue, ready, unacked, consumers in (
            (busy, LONG_TASKS - PREFETCH, PREFETCH, 1),
            (hidden, 3, 0, 0),
        ):
            exp.add_partial(LENGTH, ready, queue=queue)
            exp.add_partial(UNACKED, unacked, queue=queue)
            exp.add_partial(CONSUMERS, consumers, queue=queue)
        samples = wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)
        utilisation = value(samples, UTILISATION, queue=busy)
        assert utilisation is not None, f"no {UTILISATION} for {busy}"
        assert 0.0 <= utilisation <= 1.0
        plumbing = [
            labels["queue"]
            for labels in (s.labels for s in samples if s.name == LENGTH)
            if labels["queue"].startswith(("celeryev.", "amq."))
            or labels["queue"].endswith(".pidbox")
            or "reply" in labels["queue"]
        ]
        assert not plumbing, f"plumbing queues exported: {plumbing}"
        assert password not in exporter.stderr()
        assert value(samples, POLL_ERRORS, poller="queues") == 0, exporter.stderr()
    finally:
        for worker in workers:
            worker.stop(kill=True)
        for queue in (busy, hidden):
            admin.call("DELETE", f"/api/queues/%2F/{quote(queue, safe='')}")
        admin.call("DELETE", f"/api/users/{user}")


@pytest.mark.redis
def test_redis_down_during_polls_then_recovered(
    redis_factory: RedisFactory, exporter_factory: ExporterFactory
) -> None:
    """The broker (a private redis-server) stops while the queue poller runs: its
    celery_exporter_poll_errors_total{poller="queues"} increases, /metrics still answers 200
    with the event metrics and the last length read; once the server is back (empty), the
    poll succeeds again (last success timestamp after the restart) and the length is that of
    the tasks published since.
    """
    server = redis_factory()
    queue = "depth_outage"
    exporter = exporter_factory(
        server.url, *FAST_POLL, "--queues", queue, "--broker-connect-timeout-seconds", "1"
    )
    producer = qa.make_app(server.url)
    try:
        for _ in range(3):
            producer.send_task(qa.NOOP, queue=queue)
        exp = Expected()
        exp.add(LENGTH, 3, queue=queue)
        exp.add(POLL_ERRORS, 0, poller="queues")
        exp.add("celery_task_sent_total", 3, task=qa.NOOP, queue=queue)
        wait_for_metrics(exporter.port, exp, SETTLE_SECONDS)

        server.stop()
        wait_until(
            lambda: (value(scrape(exporter.port), POLL_ERRORS, poller="queues") or 0) >= 2,
            SETTLE_SECONDS,
            lambda: f"no failed queue polls counted; stderr:\n{exporter.stderr()}",
        )
        samples = parse(metrics_text(exporter.port))  # asserts 200
        down = Expected()
        down.add(LENGTH, 3, queue=queue)  # the last reading stays
        down.add("celery_task_sent_total", 3, task=qa.NOOP, queue=queue)
        down.check(samples)
        assert value(samples, "celery_exporter_source_up", source="events") == 0

        server.start()
        restarted = time.time()
        # Redis keeps no event for a subscriber that is not there yet: wait for it first.
        wait_for_value(
            exporter.port, 1, "celery_exporter_source_up", SETTLE_SECONDS, source="events"
        )
        for _ in range(2):
            producer.send_task(qa.NOOP, queue=queue)
        back = Expected()
        back.add(LENGTH, 2, queue=queue)
        back.add("celery_task_sent_total", 5, task=qa.NOOP, queue=queue)
        samples = wait_for_metrics(exporter.port, back, SETTLE_SECONDS)
        last_success = value(samples, POLL_LAST, poller="queues")
        assert last_success is not None and last_success > restarted
        assert "queues poll failed" in exporter.stderr()
        assert "queues poll recovered" in exporter.stderr()
    finally:
        producer.close()
