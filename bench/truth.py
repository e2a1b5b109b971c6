"""Ground truth from a recording, the same figures read from /metrics, and their comparison.

The truth is computed independently of the exporter's code: decode every recorded message,
join task events to their name by uuid (only task-sent and task-received carry it) and count.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
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


def decode_events(messages: Iterable[Message]) -> Iterator[dict[str, Any]]:
    """Every event in the recorded messages, batches flattened, in order."""
    for _channel, payload in messages:
        body = orjson.loads(base64.b64decode(orjson.loads(payload)["body"]))
        if isinstance(body, list):
            yield from body
        else:
            yield body


def exception_class(text: str) -> str:
    """``ConnectionError('Error 111 ...')`` -> ``ConnectionError``."""
    return text.split("(", 1)[0].strip().rsplit(".", 1)[-1]


def truth_of(messages: Iterable[Message]) -> Truth:
    events = list(decode_events(messages))
    names: dict[str, str] = {}
    for event in events:
        if event["type"] in ("task-sent", "task-received") and event.get("name"):
            names.setdefault(event["uuid"], event["name"])
    by_type: dict[str, int] = {}
    counters: dict[CounterKey, int] = {}
    for event in events:
        etype = event["type"]
        by_type[etype] = by_type.get(etype, 0) + 1
        metric = TASK_COUNTERS.get(etype)
        if metric is None:
            continue
        exception = exception_class(event["exception"]) if etype == "task-failed" else ""
        key = (metric, names.get(event["uuid"], "unknown"), exception)
        counters[key] = counters.get(key, 0) + 1
    return Truth(by_type, counters, float(events[-1]["timestamp"]) if events else 0.0)


def events_counted(text: str) -> int:
    """Sum of celery_exporter_events_total in a /metrics page; a plain scan, no full parse."""
    prefix = EVENTS_TOTAL + "{"
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


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
    """How many events each message carries (a ``*.multi`` batch carries a list)."""
    counts = []
    for _channel, payload in messages:
        body = orjson.loads(base64.b64decode(orjson.loads(payload)["body"]))
        counts.append(len(body) if isinstance(body, list) else 1)
    return counts


def total_where(text: str, name: str, label: str, value: str) -> float:
    """The sum of the samples of ``name`` whose ``label`` is ``value``."""
    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get(label) == value
    )
