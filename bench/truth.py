"""Ground truth from a recording, the same figures read from /metrics, and their comparison.

The truth is computed independently of the exporter's code: decode every recorded message,
join task events to their name by uuid (only task-sent and task-received carry it) and count.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.recording import Message

# (metric, task name, exception class or "") -> value
CounterKey = tuple[str, str, str]

TASK_COUNTERS = {
    "task-sent": "celery_task_sent_total",
    "task-received": "celery_task_received_total",
    "task-started": "celery_task_started_total",
    "task-succeeded": "celery_task_succeeded_total",
    "task-failed": "celery_task_failed_total",
    "task-retried": "celery_task_retried_total",
    "task-rejected": "celery_task_rejected_total",
    "task-revoked": "celery_task_revoked_total",
}
EVENTS_TOTAL = "celery_exporter_events_total"


class Truth(NamedTuple):
    events: dict[str, int]  # celery_exporter_events_total by type
    counters: dict[CounterKey, int]  # celery_task_*_total summed per task (and exception)
    last_timestamp: float  # of the last event, as its sender stamped it

    @property
    def total_events(self) -> int:
        return sum(self.events.values())


def message_events(payload: bytes) -> list[dict[str, Any]]:
    """The events of one recorded message (a ``*.multi`` batch carries several)."""
    body = orjson.loads(base64.b64decode(orjson.loads(payload)["body"]))
    return body if isinstance(body, list) else [body]


def exception_class(text: str) -> str:
    """``ConnectionError('Error 111 ...')`` -> ``ConnectionError``."""
    return text.split("(", 1)[0].strip().rsplit(".", 1)[-1]


class Tally:
    """``truth_of`` one message at a time, for streams too long to hold."""

    def __init__(self) -> None:
        self.events: dict[str, int] = {}
        self.names: dict[str, str] = {}  # uuid -> task name
        self._counters: dict[CounterKey, int] = {}
        # uuid -> (metric, exception) of events seen before the task's name
        self._unnamed: dict[str, list[tuple[str, str]]] = {}
        self._last_timestamp = 0.0

    def add(self, messages: Iterable[Message]) -> list[int]:
        """Count the events in ``messages``; returns how many each message carries."""
        counts = []
        for _channel, payload in messages:
            events = message_events(payload)
            counts.append(len(events))
            for event in events:
                self._add(event)
        return counts

    def _add(self, event: dict[str, Any]) -> None:
        etype = event["type"]
        self.events[etype] = self.events.get(etype, 0) + 1
        self._last_timestamp = float(event["timestamp"])
        metric = TASK_COUNTERS.get(etype)
        if metric is None:
            return
        uuid = event["uuid"]
        naming = etype in ("task-sent", "task-received") and event.get("name")
        if naming and uuid not in self.names:
            self.names[uuid] = event["name"]
            for earlier, exception in self._unnamed.pop(uuid, ()):
                self._count(earlier, event["name"], exception)
        exception = exception_class(event["exception"]) if etype == "task-failed" else ""
        name = self.names.get(uuid)
        if name is None:
            self._unnamed.setdefault(uuid, []).append((metric, exception))
        else:
            self._count(metric, name, exception)

    def _count(self, metric: str, name: str, exception: str) -> None:
        key = (metric, name, exception)
        self._counters[key] = self._counters.get(key, 0) + 1

    def truth(self) -> Truth:
        """The counts so far; events of ids never named count as task ``unknown``."""
        counters = dict(self._counters)
        for pending in self._unnamed.values():
            for metric, exception in pending:
                key = (metric, "unknown", exception)
                counters[key] = counters.get(key, 0) + 1
        return Truth(dict(self.events), counters, self._last_timestamp)


def truth_of(messages: Iterable[Message]) -> Truth:
    tally = Tally()
    tally.add(messages)
    return tally.truth()


def scanned_total(text: str, name: str) -> float:
    """Sum of the samples of ``name`` in a /metrics page; a plain scan, no full parse."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def events_counted(text: str) -> int:
    """Sum of celery_exporter_events_total in a /metrics page."""
    return int(scanned_total(text, EVENTS_TOTAL))


def sample_count(text: str) -> int:
    """Series in a /metrics page: lines that are neither comments nor blank."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def total(text: str, name: str) -> float:
    """The sum of every sample of ``name`` (0 when absent)."""
    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def observed(text: str) -> Truth:
    """The figures ``truth_of`` computes, as the exporter reports them."""
    by_type: dict[str, int] = {}
    counters: dict[CounterKey, int] = {}
    metrics = set(TASK_COUNTERS.values())
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == EVENTS_TOTAL:
                by_type[sample.labels["type"]] = int(sample.value)
            elif sample.name in metrics and sample.value:
                labels = sample.labels
                key = (sample.name, labels["task"], labels.get("exception", ""))
                counters[key] = counters.get(key, 0) + int(sample.value)
    return Truth(by_type, counters, total(text, "celery_exporter_last_event_timestamp_seconds"))


def mismatches(expected: Truth, actual: Truth) -> list[str]:
    """Every figure that differs, as 'what: expected X, got Y'; empty when all are exact."""
    problems = []
    for etype in sorted(expected.events.keys() | actual.events.keys()):
        want, got = expected.events.get(etype, 0), actual.events.get(etype, 0)
        if want != got:
            problems.append(f"{EVENTS_TOTAL}{{type={etype}}}: expected {want}, got {got}")
    for key in sorted(expected.counters.keys() | actual.counters.keys()):
        want, got = expected.counters.get(key, 0), actual.counters.get(key, 0)
        if want != got:
            metric, task, exception = key
            where = f"task={task}" + (f",exception={exception}" if exception else "")
            problems.append(f"{metric}{{{where}}}: expected {want}, got {got}")
    return problems


def events_per_message(messages: Iterable[Message]) -> list[int]:
    """How many events each message carries."""
    return [len(message_events(payload)) for _channel, payload in messages]


def total_where(text: str, name: str, label: str, value: str) -> float:
    """The sum of the samples of ``name`` whose ``label`` is ``value``."""
    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get(label) == value
    )
