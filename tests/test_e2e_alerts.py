"""The alert rules end to end: real conditions reach a webhook through Prometheus and Alertmanager.

One stack serves the whole module: a private redis-server; the real exporter process; two real
``celery worker -E`` (A on e2e_a, where Beat's heartbeat goes, and B, one process without
prefetch, on e2e_b); a real ``celery beat`` running tests.beat_app (exporter.beat's heartbeat
every second); Prometheus scraping the exporter and evaluating rules every second; Alertmanager
(group_wait and group_interval 1 s, one notification per alert) posting to a webhook in this
process. The rules are the shipped generator's output for alerts/config.yml with the
thresholds, ``for:`` durations and rate window lowered (LOWERED, RATE_WINDOW); rules not
listed there keep their production values, whose ``for:`` (5 min and more) outlasts the module.

The healthy run comes first and must produce no notification at all; then each scenario
causes one real condition, waits for exactly its alerts to arrive firing, removes the cause and
waits for the same alerts to arrive resolved, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.samples import Sample

import exporter.beat
from alerts import generate
from tests import beat_app
from tests import sample_app as sa
from tests.celery_procs import CeleryProcess, CeleryProcesses, CeleryWorkerProcess
from tests.helpers import http_get, scrape, value, wait_for_value, wait_until
from tests.monitoring import (
    AlertmanagerServer,
    AlertWebhook,
    Notification,
    PrometheusServer,
    describe,
    render_rules,
    require_binary,
)
from tests.services import ExporterProcess, RedisServer, ServiceError

pytestmark = pytest.mark.redis

JOB = "celery-exporter"  # the scrape job the shipped selector (job="celery-exporter") picks
HEARTBEAT = exporter.beat.HEARTBEAT_TASK
RATE_WINDOW = "8s"  # 8 scrapes (at least 4 for a sound rate())
MAX_LENGTH = 5
SMALL_QUEUE = 3  # waiting on e2e_b during the healthy run: under MAX_LENGTH
BACKLOG = 8  # published to e2e_c, which nothing consumes: over MAX_LENGTH
MIN_FINISHED = 10
FAILURES = 20  # fail_value runs in the burst: ratio 1 > 5%, volume over MIN_FINISHED
BEAT_MAX_AGE = 5  # seconds; the rule's max_age and the exporter's flag
REDELIVERED = 4  # lost_once runs: each received twice, ratio 50% > 5%, volume 8 over 4
ORPHANED_WINDOW = "5s"
HEALTHY_SECONDS = 15.0

# Every level the test lowers: one severity each, mostly `for: 1s` (the generator's least), and
# the production ratios; lengths, volumes, ages and windows are scaled down to seconds.
LOWERED: dict[str, list[dict[str, object]]] = {
    "CeleryQueueTooLong": [{"severity": "warning", "for": "1s", "max_length": MAX_LENGTH}],
    "CeleryQueueNoConsumers": [{"severity": "critical", "for": "1s", "min_length": 1}],
    "CeleryWorkersMissing": [{"severity": "warning", "for": "1s", "min_missing": 1}],
    "CeleryWorkerDown": [{"severity": "warning", "for": "1s"}],
    "CeleryTaskFailureRateHigh": [
        {"severity": "warning", "for": "1s", "max_ratio": 0.05, "min_finished": MIN_FINISHED}
    ],
    "CeleryTaskRetryRateHigh": [
        {"severity": "warning", "for": "1s", "max_ratio": 0.1, "min_started": MIN_FINISHED}
    ],
    "CeleryTaskTimeoutRateHigh": [
        {"severity": "warning", "for": "1s", "max_ratio": 0.01, "min_started": MIN_FINISHED}
    ],
    "CeleryTaskRedeliveryRateHigh": [
        {"severity": "warning", "for": "1s", "max_ratio": 0.05, "min_received": REDELIVERED}
    ],
    "CeleryTasksOrphaned": [{"severity": "warning", "for": "1s", "window": ORPHANED_WINDOW}],
    "CeleryBeatHeartbeatStale": [
        {"severity": "critical", "for": "1s", "max_age": f"{BEAT_MAX_AGE}s"}
    ],
    "CeleryPeriodicTaskOverdue": [{"severity": "warning", "for": "1s", "grace": "4s"}],
    "CeleryExporterBrokerUnreachable": [{"severity": "critical", "for": "1s"}],
    "CeleryExporterCollectorFailing": [{"severity": "warning", "for": "1s"}],
    # When every task stops (Beat stopped), the workers' processed count, reported by their
    # next heartbeat, leaves the window up to ~2 s after the last task event: a for: shorter
    # than that notifies a blip (production's for: 15m dwarfs it).
    "CeleryEventsMissing": [{"severity": "warning", "for": "10s", "window": "10s"}],
}

# Bounds of a failing run; a passing one moves on as soon as it can.
READY_SECONDS = 40.0  # workers and Beat import Celery and connect; Prometheus's first scrape
FIRE_SECONDS = 30.0  # warm: condition scraped, pending, firing, group_wait: about 3 s
RESOLVE_SECONDS = 30.0
QUIET_SECONDS = 30.0
SETTLE_SECONDS = 30.0  # the exporter's counts and gauges catch up


def lowered_config() -> dict[str, object]:
    """alerts/config.yml with the LOWERED levels and the short rate window."""
    config = generate.load_yaml(generate.DEFAULT_CONFIG)
    assert isinstance(config, dict)
    assert config["selector"] == f'job="{JOB}"', config["selector"]
    alerts = config["alerts"]
    assert isinstance(alerts, dict)
    assert set(LOWERED) <= set(alerts), set(LOWERED) - set(alerts)
    return {**config, "rate_window": RATE_WINDOW, "alerts": {**alerts, **LOWERED}}


@dataclass
class Stack:
    """The module's running processes and the clients the tests drive them with."""

    prometheus: PrometheusServer
    webhook: AlertWebhook
    exporter: ExporterProcess
    producer: Any  # a Celery app publishing the sample tasks
    worker_a: CeleryWorkerProcess  # e2e_a: Beat's heartbeats and the ok tasks
    worker_b: CeleryWorkerProcess  # e2e_b: the slow and the failing tasks, one at a time
    beat: CeleryProcess

    def diagnostics(self) -> str:
        """Log tails of every process, for failure messages."""
        parts = [f"--- {p.name}:\n{p.log()}" for p in (self.worker_a, self.worker_b, self.beat)]
        parts.append(f"--- exporter:\n{self.exporter.stderr()[-3000:]}")
        parts.append(f"--- prometheus alerts: {describe(self.prometheus.alerts())}")
        return "\n".join(parts)


def _exporter_args() -> list[str]:
    return [
        "--queues", ",".join((sa.QUEUE_A, sa.QUEUE_B, sa.QUEUE_C)),
        "--inspect-interval-seconds", "1",
        "--queue-poll-interval-seconds", "1",
        "--beat-poll-interval-seconds", "1",
        "--beat-max-heartbeat-age-seconds", str(BEAT_MAX_AGE),
        "--periodic-tasks", json.dumps({HEARTBEAT: beat_app.HEARTBEAT_INTERVAL}),
        "--workers-expected", "2",
        "--workers-expected-per-queue", json.dumps({sa.QUEUE_B: 1}),
        # A worker missing five 1 s heartbeats is down: a loaded machine must not fake one.
        "--worker-timeout-heartbeats", "5",
    ]  # fmt: skip


def _wait_ready(exp: ExporterProcess, check: Callable[[list[Sample]], bool], what: str) -> None:
    def ready() -> bool:
        assert exp.proc.poll() is None, f"exporter exited:\n{exp.stderr()}"
        return http_get(exp.url + "/readyz").status == 200 and check(scrape(exp.port))

    wait_until(ready, READY_SECONDS, lambda: f"the exporter never saw {what}:\n{exp.stderr()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Everything up, seen by the exporter, and scraped by Prometheus; all stopped afterwards."""
    workdir = tmp_path_factory.mktemp("e2e-alerts")
    with contextlib.ExitStack() as cleanup:
        try:
            for binary in ("prometheus", "prometheus-alertmanager", "promtool"):
                require_binary(binary)
            rules = render_rules(lowered_config(), workdir / "rules")
            redis = RedisServer(workdir / "redis")  # private: no heartbeat outlives the module
            cleanup.callback(redis.close)
            redis.start()
            webhook = cleanup.enter_context(AlertWebhook())
            alertmanager = AlertmanagerServer(workdir / "alertmanager", webhook.url)
            cleanup.callback(alertmanager.close)
            alertmanager.start()
        except ServiceError as err:
            pytest.fail(str(err), pytrace=False)

        producer = sa.make_app(redis.url, name="alerts-producer")
        cleanup.callback(producer.close)
        exp = ExporterProcess(redis.url, workdir / "exporter", *_exporter_args())
        cleanup.callback(exp.close)
        exp.start()
        procs = CeleryProcesses(redis.url, workdir / "celery")
        cleanup.callback(procs.close)
        worker_a = procs.worker(
            app="tests.beat_app", queues=[beat_app.HEARTBEAT_QUEUE], name="alerts-a"
        )
        worker_b = procs.worker(
            app="tests.beat_app",
            queues=[sa.QUEUE_B],
            concurrency=1,
            name="alerts-b",
            extra=["--disable-prefetch"],
        )
        beat = procs.beat(app="tests.beat_app")

        def all_seen(samples: list[Sample]) -> bool:
            return (
                all(
                    value(samples, "celery_worker_up", worker=w.nodename) == 1
                    for w in (worker_a, worker_b)
                )
                and all(
                    value(samples, "celery_queue_workers", queue=q) == 1
                    for q in (sa.QUEUE_A, sa.QUEUE_B)
                )
                and value(samples, "celery_beat_up", source="events") == 1
            )

        _wait_ready(exp, all_seen, "both workers, their queues and Beat's heartbeat")

        try:
            prometheus = PrometheusServer(
                workdir / "prometheus",
                rules=rules,
                job=JOB,
                target=f"127.0.0.1:{exp.port}",
                alertmanager=alertmanager.address,
            )
            cleanup.callback(prometheus.close)
            prometheus.start()
        except ServiceError as err:
            pytest.fail(str(err), pytrace=False)
        built = Stack(prometheus, webhook, exp, producer, worker_a, worker_b, beat)
        # Rules have run on scraped data: the recorded number of live workers is there.
        wait_until(
            lambda: (
                list(prometheus.values(f'job:celery_worker_up:sum{{job="{JOB}"}}').values())
                == [2.0]
            ),
            READY_SECONDS,
            lambda: f"Prometheus never recorded 2 live workers; log:\n{prometheus.log()}",
        )
        yield built


# --- helpers ---


def alert(name: str, **labels: str) -> dict[str, str]:
    """The exact label set of an alert of the scrape job."""
    return {"alertname": name, "job": JOB, **labels}


def _key(labels: Mapping[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def _show(notifications: list[Notification]) -> str:
    return "; ".join(f"{n.status} {dict(n.labels)}" for n in notifications) or "none"


def wait_quiet(stack: Stack) -> None:
    """Until Prometheus has no pending or firing alert (the previous scenario is over)."""
    wait_until(
        lambda: not stack.prometheus.alerts(),
        QUIET_SECONDS,
        lambda: f"alerts still active: {describe(stack.prometheus.alerts())}",
    )


def wait_notified(
    stack: Stack, mark: int, expected: list[dict[str, str]], status: str, timeout: float
) -> None:
    """Until each expected label set arrived at the webhook with ``status`` after ``mark``."""

    def arrived() -> bool:
        got = {_key(n.labels) for n in stack.webhook.since(mark) if n.status == status}
        return all(_key(labels) in got for labels in expected)

    wait_until(
        arrived,
        timeout,
        lambda: (
            f"expected {status}: {expected}\nwebhook got: {_show(stack.webhook.since(mark))}\n"
            f"{stack.diagnostics()}"
        ),
    )


def fires_and_resolves(
    stack: Stack,
    expected: list[dict[str, str]],
    *,
    cause: Callable[[], None],
    cure: Callable[[], None],
    resolve_seconds: float = RESOLVE_SECONDS,
) -> None:
    """``cause()``: exactly ``expected`` arrive firing; ``cure()``: the same arrive resolved.

    Each expected alert is notified exactly twice, firing then resolved, and no other alert is
    notified in between.
    """
    wait_quiet(stack)
    mark = stack.webhook.mark()
    cause()
    wait_notified(stack, mark, expected, "firing", FIRE_SECONDS)
    cure()
    wait_notified(stack, mark, expected, "resolved", resolve_seconds)
    notified = stack.webhook.since(mark)
    by_alert: dict[frozenset[tuple[str, str]], list[str]] = {}
    for notification in notified:
        by_alert.setdefault(_key(notification.labels), []).append(notification.status)
    assert by_alert == {_key(labels): ["firing", "resolved"] for labels in expected}, _show(
        notified
    )
    assert not stack.webhook.errors, stack.webhook.errors


def purge(producer: Any, queue: str) -> None:
    """Delete every message waiting in ``queue``."""
    with producer.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


# --- the tests ---


def test_healthy_system_sends_no_alert(stack: Stack) -> None:
    """Both workers up, ok tasks succeeding twice a second, Beat's heartbeat every second and
    3 tasks waiting on e2e_b (its one-process worker busy with a fourth): for 15 s the webhook
    receives no notification; the only ALERTS series in Prometheus is CeleryWorkersSaturated
    pending for worker B (kept at production values: for: 15m), no lowered rule is even
    pending; every rule evaluates without error; e2e_b holds exactly 3 messages throughout;
    every ok task published is counted as succeeded."""
    prometheus, exp, producer = stack.prometheus, stack.exporter, stack.producer
    wait_quiet(stack)
    # e2e_b's worker runs one sleep and fetches nothing more: the other three wait in Redis.
    slow = [producer.send_task(sa.SLEEP, args=[120]).id for _ in range(SMALL_QUEUE + 1)]
    try:
        wait_for_value(
            exp.port, SMALL_QUEUE, "celery_queue_length", SETTLE_SECONDS, queue=sa.QUEUE_B
        )
        mark, start = stack.webhook.mark(), time.time()
        sent = 0
        while time.time() - start < HEALTHY_SECONDS:
            producer.send_task(sa.OK, args=[sent])
            sent += 1
            assert not stack.webhook.since(mark), _show(stack.webhook.since(mark))
            time.sleep(0.5)
        end = time.time()
        window = f"{int(end - start)}s"
        # Not even pending, but for one rule kept at production values: B's pool is full and
        # e2e_b grew (0 to 3) within its 10 min growth window; for: 15m cannot be reached.
        active = prometheus.values(f"count_over_time(ALERTS[{window}])", at=end)
        saturated = alert(
            "CeleryWorkersSaturated",
            worker=stack.worker_b.nodename,
            severity="warning",
            alertstate="pending",
        )
        assert set(active) == {_key(saturated)}, active
        length = f'celery_queue_length{{job="{JOB}", queue="{sa.QUEUE_B}"}}'
        for over_time in ("min_over_time", "max_over_time"):
            got = prometheus.values(f"{over_time}({length}[{window}])", at=end)
            assert list(got.values()) == [SMALL_QUEUE], f"{over_time}: {got}"
        wait_for_value(
            exp.port,
            sent,
            "celery_task_succeeded_total",
            SETTLE_SECONDS,
            task=sa.OK,
            queue=sa.QUEUE_A,
            worker=stack.worker_a.nodename,
        )
        broken = [(r["name"], r["lastError"]) for r in prometheus.rules() if r["health"] != "ok"]
        assert broken == []
        assert stack.webhook.since(mark) == []
    finally:
        purge(producer, sa.QUEUE_B)
        producer.control.revoke(slow, terminate=True)
    wait_for_value(
        exp.port, 0, "celery_worker_tasks_active", SETTLE_SECONDS, worker=stack.worker_b.nodename
    )


def test_backlog_fires_queue_too_long_and_no_consumers(stack: Stack) -> None:
    """8 tasks published to e2e_c, which no worker consumes: CeleryQueueTooLong (warning) and
    CeleryQueueNoConsumers (critical) for queue e2e_c arrive firing; e2e_c purged: both arrive
    resolved, and no other alert is notified."""
    producer = stack.producer

    def cause() -> None:
        for i in range(BACKLOG):
            producer.send_task(sa.OK, args=[i], queue=sa.QUEUE_C)

    fires_and_resolves(
        stack,
        [
            alert("CeleryQueueTooLong", queue=sa.QUEUE_C, severity="warning"),
            alert("CeleryQueueNoConsumers", queue=sa.QUEUE_C, severity="critical"),
        ],
        cause=cause,
        cure=lambda: purge(producer, sa.QUEUE_C),
    )


def test_failing_task_fires_failure_rate_high(stack: Stack) -> None:
    """fail_value fails once (its counter series is born and scraped), then 20 times more: the
    failure ratio 100% over at least 10 finished runs in the 8 s window fires
    CeleryTaskFailureRateHigh (warning) for that task; with no more failures the window empties
    and it arrives resolved; no other alert is notified."""
    producer, prometheus = stack.producer, stack.prometheus
    failed = f'celery_task_failed_total{{job="{JOB}", task="{sa.FAIL_VALUE}"}}'

    def cause() -> None:
        # rate() counts increases only: the series must exist before the burst.
        producer.send_task(sa.FAIL_VALUE)
        wait_until(
            lambda: list(prometheus.values(failed).values()) == [1.0],
            SETTLE_SECONDS,
            lambda: f"{failed} never scraped as 1: {prometheus.values(failed)}",
        )
        for _ in range(FAILURES):
            producer.send_task(sa.FAIL_VALUE)

    fires_and_resolves(
        stack,
        [alert("CeleryTaskFailureRateHigh", task=sa.FAIL_VALUE, severity="warning")],
        cause=cause,
        cure=lambda: None,  # nothing fails any more: the failures leave the rate window
        resolve_seconds=RESOLVE_SECONDS + generate.seconds(RATE_WINDOW),
    )


def test_stopped_worker_fires_worker_down_and_workers_missing(stack: Stack) -> None:
    """Worker B (2 workers expected in all, 1 on e2e_b) warm-stopped with SIGTERM:
    CeleryWorkerDown for B and CeleryWorkersMissing, in all and for queue e2e_b (all warning),
    arrive firing; B started again under the same name: all three arrive resolved, and no other
    alert is notified."""
    worker = stack.worker_b
    fires_and_resolves(
        stack,
        [
            alert("CeleryWorkerDown", worker=worker.nodename, severity="warning"),
            alert("CeleryWorkersMissing", severity="warning"),
            alert("CeleryWorkersMissing", queue=sa.QUEUE_B, severity="warning"),
        ],
        cause=worker.stop,
        cure=worker.start,
    )


def test_stopped_beat_fires_heartbeat_stale_and_periodic_overdue(stack: Stack) -> None:
    """``celery beat`` stopped with SIGTERM: its heartbeat (task-sent of exporter.beat.heartbeat,
    every 1 s) gets older than 5 s, and CeleryBeatHeartbeatStale (critical, source events) and
    CeleryPeriodicTaskOverdue (warning, the heartbeat task, 4 s past its next due) arrive
    firing; Beat started again on its schedule file: both arrive resolved, and no other alert
    is notified."""
    beat = stack.beat
    fires_and_resolves(
        stack,
        [
            alert("CeleryBeatHeartbeatStale", source="events", severity="critical"),
            alert("CeleryPeriodicTaskOverdue", task=HEARTBEAT, severity="warning"),
        ],
        cause=beat.stop,
        cure=beat.start,
    )


def test_killed_worker_fires_orphaned_worker_down_and_workers_missing(stack: Stack) -> None:
    """Worker B SIGKILLed while it runs a sleep task: CeleryTasksOrphaned for that task on
    e2e_b arrives firing with CeleryWorkerDown for B and CeleryWorkersMissing (in all and for
    e2e_b); B started again: the last three arrive resolved, and the orphan once it left the
    5 s window; no other alert is notified."""
    worker, producer, exp = stack.worker_b, stack.producer, stack.exporter

    def cause() -> None:
        producer.send_task(sa.SLEEP, args=[120])
        wait_for_value(
            exp.port, 1, "celery_task_running", SETTLE_SECONDS, task=sa.SLEEP, queue=sa.QUEUE_B
        )
        worker.stop(kill=True)

    fires_and_resolves(
        stack,
        [
            alert("CeleryTasksOrphaned", task=sa.SLEEP, queue=sa.QUEUE_B, severity="warning"),
            alert("CeleryWorkerDown", worker=worker.nodename, severity="warning"),
            alert("CeleryWorkersMissing", severity="warning"),
            alert("CeleryWorkersMissing", queue=sa.QUEUE_B, severity="warning"),
        ],
        cause=cause,
        cure=worker.start,
        resolve_seconds=RESOLVE_SECONDS + generate.seconds(ORPHANED_WINDOW),
    )


def test_lost_pool_processes_fire_redelivery_rate_high(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """lost_once (acks_late, reject_on_worker_lost) kills its pool process once and is
    delivered again: once, until Prometheus has its series, then four times more: 4 of 8
    deliveries in the 8 s window are redeliveries, and
    CeleryTaskRedeliveryRateHigh for lost_once arrives firing, then resolved once they leave
    the window; no other alert is notified."""
    producer, exp, prometheus = stack.producer, stack.exporter, stack.prometheus
    markers = tmp_path_factory.mktemp("lost-once")
    redelivered = f'celery_task_redelivered_total{{job="{JOB}", task="{sa.LOST_ONCE}"}}'

    def cause() -> None:
        # rate() counts increases only: the series must exist before the burst.
        producer.send_task(sa.LOST_ONCE, args=[str(markers / "first")])
        wait_until(
            lambda: list(prometheus.values(redelivered).values()) == [1.0],
            SETTLE_SECONDS,
            lambda: f"{redelivered} never scraped as 1: {prometheus.values(redelivered)}",
        )
        for number in range(REDELIVERED):
            producer.send_task(sa.LOST_ONCE, args=[str(markers / str(number))])

    fires_and_resolves(
        stack,
        [alert("CeleryTaskRedeliveryRateHigh", task=sa.LOST_ONCE, severity="warning")],
        cause=cause,
        cure=lambda: wait_for_value(
            exp.port,
            REDELIVERED + 1,
            "celery_task_succeeded_total",
            SETTLE_SECONDS,
            task=sa.LOST_ONCE,
            queue=sa.QUEUE_B,
            worker=stack.worker_b.nodename,
        ),
        resolve_seconds=RESOLVE_SECONDS + generate.seconds(RATE_WINDOW),
    )
