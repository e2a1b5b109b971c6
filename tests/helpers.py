"""Waiting, HTTP, /metrics and event publishing helpers for the end-to-end tests.

Tests never sleep for a fixed time: they poll with ``wait_until`` against a deadline, and fail
with a message that says what was expected and what was last seen.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from celery.events import EventDispatcher
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests import sample_app

POLL_SECONDS = 0.1
SEND_SETTLE_SECONDS = 40.0
# The sender of the events publish() and publish_successes() make up.
PUBLISHER = "celery@e2e"
# The events of a task that succeeded at its first attempt, in the order Celery sends them.
SUCCESS_EVENTS = ("task-sent", "task-received", "task-started", "task-succeeded")


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    message: str | Callable[[], str],
    *,
    interval: float = POLL_SECONDS,
) -> None:
    """Poll ``predicate`` until it is true; AssertionError with ``message`` after ``timeout`` s.

    ``message`` may be a callable, evaluated only on failure, to report the last state seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"after {timeout:.0f} s: {text}")
        time.sleep(interval)


class HttpResponse(NamedTuple):
    status: int
    body: str


def http_get(url: str, timeout: float = 5.0) -> HttpResponse:
    """GET ``url``; error statuses are returned, not raised (connection errors are)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return HttpResponse(response.status, response.read().decode())
    except urllib.error.HTTPError as err:
        with err:
            return HttpResponse(err.code, err.read().decode())


def metrics_text(port: int) -> str:
    response = http_get(f"http://127.0.0.1:{port}/metrics")
    assert response.status == 200, f"/metrics answered {response.status}: {response.body[:200]}"
    return response.body


def parse(text: str) -> list[Sample]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape(port: int) -> list[Sample]:
    """The samples the exporter on ``port`` serves now."""
    return parse(metrics_text(port))


def _matches(sample: Sample, name: str, labels: Mapping[str, str]) -> bool:
    return sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())


def value(samples: Iterable[Sample], name: str, **labels: str) -> float | None:
    """The value of the one sample ``name`` whose labels include ``labels``; None if none.

    More than one match is an error: the lookup must name a single series.
    """
    found = [s for s in samples if _matches(s, name, labels)]
    if not found:
        return None
    assert len(found) == 1, f"{name}{labels} matches {len(found)} series: {found}"
    return found[0].value


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """Sum of every sample ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(s.value for s in samples if _matches(s, name, labels))


def series(samples: Iterable[Sample], name: str) -> list[dict[str, str]]:
    """The label sets present for ``name``."""
    return [dict(s.labels) for s in samples if s.name == name]


@dataclass
class Expected:
    """Exact values expected of some series.

    ``add`` names one series and its value; every metric named this way is also checked to have
    no other series (its total over all label sets must equal the sum expected), so a stray
    label value such as ``unknown`` fails the check; ``add_partial`` skips that check.
    ``absent`` names metrics that must have no series or only zero ones.
    """

    values: list[tuple[str, dict[str, str], float]] = field(default_factory=list)
    absent: set[str] = field(default_factory=set)
    partial: set[str] = field(default_factory=set)

    def add(self, name: str, count: float, **labels: str) -> None:
        self.values.append((name, labels, count))

    def add_partial(self, name: str, count: float, **labels: str) -> None:
        """Like ``add``, for a metric with other series that are not checked."""
        self.add(name, count, **labels)
        self.partial.add(name)

    def mismatches(self, samples: list[Sample]) -> list[str]:
        """What differs from the expectation, one line each; empty when all is exact."""
        problems = []
        totals: dict[str, float] = {}
        for name, labels, expected in self.values:
            totals[name] = totals.get(name, 0.0) + expected
            got = value(samples, name, **labels)
            if got != expected:
                problems.append(f"{name}{labels}: expected {expected}, got {got}")
        for name, expected_total in totals.items():
            if name in self.partial:
                continue
            got_total = total(samples, name)
            if got_total != expected_total:
                problems.append(
                    f"{name}: all series sum to {got_total}, expected {expected_total}; "
                    f"series present: {series(samples, name)}"
                )
        for name in sorted(self.absent):
            if total(samples, name) != 0:
                problems.append(f"{name}: expected no series, got {series(samples, name)}")
        return problems

    def check(self, samples: list[Sample]) -> None:
        """AssertionError listing every mismatch, unless all is exact."""
        problems = self.mismatches(samples)
        assert not problems, "metrics not as expected:\n  " + "\n  ".join(problems)


def wait_for_metrics(port: int, expected: Expected, timeout: float) -> list[Sample]:
    """Scrape until every expected value is exact; the final samples, or AssertionError."""
    last: list[str] = []
    samples: list[Sample] = []

    def settled() -> bool:
        nonlocal samples, last
        samples = scrape(port)
        last = expected.mismatches(samples)
        return not last

    wait_until(settled, timeout, lambda: "metrics not as expected:\n  " + "\n  ".join(last))
    return samples


def wait_for_value(port: int, expected: float, name: str, timeout: float, **labels: str) -> None:
    """Scrape until ``name{labels}`` is exactly ``expected``."""
    seen: list[float | None] = [None]
    present: list[Sample] = []

    def reached() -> bool:
        samples = scrape(port)
        present[:] = [s for s in samples if s.name == name]
        seen[0] = value(samples, name, **labels)
        return seen[0] == expected

    wait_until(
        reached,
        timeout,
        lambda: (
            f"{name}{labels} is {seen[0]}, expected {expected}; series present: "
            + ", ".join(f"{dict(s.labels)}={s.value}" for s in present)
        ),
    )


@contextmanager
def event_dispatcher(url: str, transport_options: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """Celery's own event dispatcher on a connection of its own, sending as ``PUBLISHER``."""
    options = dict(transport_options or {})
    # Any: kombu types Connection in some allowed versions only.
    with cast(Any, Connection)(url, transport_options=options) as conn:
        dispatcher = EventDispatcher(conn, hostname=PUBLISHER, groups=None)
        try:
            yield dispatcher
        finally:
            dispatcher.close()


def publish(url: str, count: int, *, prefix: str, padding: str = "") -> None:
    """``count`` task-started events through Celery's own dispatcher, one per message."""
    with event_dispatcher(url) as dispatcher:
        for number in range(count):
            dispatcher.send("task-started", uuid=f"{prefix}-{number}", padding=padding)


def publish_successes(
    url: str,
    count: int,
    *,
    task: str,
    queue: str,
    transport_options: Mapping[str, Any] | None = None,
) -> None:
    """``count`` tasks named ``task`` that ran once and succeeded: ``SUCCESS_EVENTS`` each,
    one per message, worker ``PUBLISHER``."""
    with event_dispatcher(url, transport_options) as dispatcher:
        for number in range(count):
            uuid = f"{task}-{number}"
            dispatcher.send("task-sent", uuid=uuid, name=task, queue=queue, retries=0)
            dispatcher.send("task-received", uuid=uuid, name=task, retries=0)
            dispatcher.send("task-started", uuid=uuid)
            dispatcher.send("task-succeeded", uuid=uuid, runtime=0.001)


class Clock:
    """The exporter's clock, moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def send_counted(
    port: int, broker_url: str, calls: list[tuple[str, list[Any], dict[str, Any]]]
) -> None:
    """Send ``(task, args, options)`` calls of tests.sample_app, then wait until the exporter
    on ``port`` counted every task-sent. Start workers only after this: an idle worker's
    task-received can overtake the task-sent Celery publishes after the message, and before
    the exporter has seen any task-sent it does not wait for one (the task would be counted
    with queue "unknown")."""
    producer = sample_app.make_app(broker_url, name="producer")
    sent: dict[str, int] = {}
    try:
        for task, args, options in calls:
            producer.send_task(task, args=args, **options)
            sent[task] = sent.get(task, 0) + 1
    finally:
        producer.close()
    exp = Expected()
    for task, count in sent.items():
        queue = sample_app.ROUTES[task]["queue"]
        exp.add("celery_task_sent_total", count, task=task, queue=queue)
    wait_for_metrics(port, exp, SEND_SETTLE_SECONDS)
