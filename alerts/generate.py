"""Render alerts/celery.rules.yml from alerts/config.yml, the one place for thresholds.

    python -m alerts.generate                       # rewrite alerts/celery.rules.yml
    python -m alerts.generate --check               # exit 1 when the committed file is stale
    python -m alerts.generate --config F --out G    # render a variant (tests lower thresholds)
    python -m alerts.generate --runbook-base-url URL --out G  # links into your runbook copy

Each alert carries its runbook steps (the Diagnosis and Mitigation of its alerts/runbook.md
section) in the `runbook` annotation, so a notification says what to do without a link that
must resolve. `runbook_url` (base URL + '#' + the lowercased alert name, GitHub's anchor for
the section's heading) is added only when a base URL is configured.

The PromQL lives here, every number in the config. Output is built as text (block scalars for
expressions, JSON-quoted strings elsewhere) and then parsed back to prove it says what was meant.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "config.yml"
DEFAULT_OUT = HERE / "celery.rules.yml"
DEFAULT_RUNBOOK = HERE / "runbook.md"
# The parts of a runbook section that say what to do; Meaning is the description's job.
RUNBOOK_STEPS = ("Diagnosis", "Mitigation")

Severity = Literal["critical", "warning", "info"]
ParamKind = Literal["number", "ratio", "duration"]
SEVERITIES: dict[str, Severity] = {"critical": "critical", "warning": "warning", "info": "info"}

_DURATION = re.compile(r"^([1-9][0-9]*)(ms|s|m|h|d|w|y)$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# Parameters each alert's levels take besides severity and for (in rule order: group celery,
# then group celery-exporter).
PARAMS: dict[str, dict[str, ParamKind]] = {
    "CeleryQueueTooLong": {"max_length": "number"},
    "CeleryQueueNoConsumers": {"min_length": "number"},
    "CeleryWorkersMissing": {"min_missing": "number"},
    "CeleryWorkerDown": {},
    "CeleryWorkersSaturated": {"min_utilization": "number", "growth_window": "duration"},
    "CeleryWorkerMemoryHigh": {"max_mib": "number"},
    "CeleryWorkerPoolChurnHigh": {"max_per_minute": "number", "window": "duration"},
    "CeleryTaskFailureRateHigh": {"max_ratio": "ratio", "min_finished": "number"},
    "CeleryTaskDurationAboveSLA": {"sla_factor": "number", "min_finished": "number"},
    "CeleryTaskRetryRateHigh": {"max_ratio": "ratio", "min_started": "number"},
    "CeleryTaskTimeoutRateHigh": {"max_ratio": "ratio", "min_started": "number"},
    "CeleryTaskRedeliveryRateHigh": {"max_ratio": "ratio", "min_received": "number"},
    "CeleryTasksOrphaned": {"window": "duration"},
    "CeleryTaskStuck": {"sla_factor": "number", "min_age": "duration"},
    "CeleryBeatHeartbeatStale": {"max_age": "duration"},
    "CeleryPeriodicTaskOverdue": {"grace": "duration"},
    "CeleryExporterDown": {},
    "CeleryExporterBrokerUnreachable": {},
    "CeleryExporterCollectorFailing": {},
    "CeleryEventsMissing": {"window": "duration"},
}
EXPORTER_GROUP = frozenset(
    {
        "CeleryExporterDown",
        "CeleryExporterBrokerUnreachable",
        "CeleryExporterCollectorFailing",
        "CeleryEventsMissing",
    }
)

# Go template snippets for annotations.
VALUE = "{{ $value | humanize }}"
VALUE_DURATION = "{{ $value | humanizeDuration }}"
VALUE_PERCENT = "{{ $value | humanizePercentage }}"


def if_seen(seen: str, never: str) -> str:
    """Template choosing between texts: the rules use +Inf as the age of what was never seen."""
    return "{{ if lt $value 1e300 }}" + seen + "{{ else }}" + never + "{{ end }}"


def label(name: str) -> str:
    """The Go template that prints one label of the alert."""
    return "{{ $labels." + name + " }}"


class ConfigError(Exception):
    """The config file is unreadable or says something the generator cannot render."""


@dataclass(frozen=True, slots=True)
class Level:
    """One severity of an alert: its `for:` and its parameters."""

    severity: Severity
    for_: str
    params: Mapping[str, float | str]

    def number(self, name: str) -> float:
        value = self.params[name]
        assert isinstance(value, float)
        return value

    def duration(self, name: str) -> str:
        value = self.params[name]
        assert isinstance(value, str)
        return value


@dataclass(frozen=True, slots=True)
class Config:
    """What alerts/config.yml holds, validated."""

    runbook_base_url: str
    dashboard_url: str
    selector: str
    group_by: tuple[str, ...]
    rate_window: str
    duration_quantile: float
    alerts: Mapping[str, tuple[Level, ...]]
    runbook: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rule:
    """A recording rule (record set) or an alerting rule (alert set)."""

    expr: str
    record: str = ""
    alert: str = ""
    for_: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.record:
            out["record"] = self.record
        else:
            out["alert"] = self.alert
        out["expr"] = self.expr
        if self.for_:
            out["for"] = self.for_
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


# --- reading the config ---


def parse_yaml(text: str, where: str) -> object:
    """Parse YAML with PyYAML, imported at run time: the generator type-checks without its stubs."""
    try:
        yaml = importlib.import_module("yaml")
    except ModuleNotFoundError as err:
        raise ConfigError("PyYAML is needed to read YAML: pip install pyyaml") from err
    try:
        loaded: object = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: {err}") from err
    return loaded


def load_yaml(path: Path) -> object:
    """Parse the YAML file at path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: {err}") from err
    return parse_yaml(text, str(path))


def seconds(duration: str) -> float:
    """Seconds in a single-unit Prometheus duration such as 5m."""
    match = _DURATION.match(duration)
    if not match:
        raise ConfigError(f"{duration!r} is not a duration like 30s, 5m or 1h")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _mapping(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{where}: expected a mapping")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _duration(value: object, where: str) -> str:
    text = _string(value, where)
    try:
        seconds(text)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    return text


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where}: expected a number >= 0, got {value!r}")
    return float(value)


def _exact_keys(data: Mapping[str, object], keys: set[str], where: str) -> None:
    missing, unknown = keys - set(data), set(data) - keys
    if missing or unknown:
        raise ConfigError(f"{where}: missing {sorted(missing)}, unknown {sorted(unknown)}")


def _level(data: object, name: str, index: int) -> Level:
    where = f"alerts.{name}[{index}]"
    raw = _mapping(data, where)
    kinds = PARAMS[name]
    _exact_keys(raw, {"severity", "for", *kinds}, where)
    severity = SEVERITIES.get(str(raw["severity"]))
    if severity is None:
        raise ConfigError(f"{where}.severity: one of {sorted(SEVERITIES)}")
    params: dict[str, float | str] = {}
    for key, kind in kinds.items():
        if kind == "duration":
            params[key] = _duration(raw[key], f"{where}.{key}")
            continue
        number = _number(raw[key], f"{where}.{key}")
        if kind == "ratio" and number > 1:
            raise ConfigError(f"{where}.{key}: a ratio is at most 1")
        params[key] = number
    return Level(severity, _duration(raw["for"], f"{where}.for"), params)


def parse_config(data: object) -> Config:
    """Validate the loaded config: every alert present, each level with exactly its keys."""
    raw = _mapping(data, "config")
    _exact_keys(
        raw,
        {
            "runbook_base_url",
            "dashboard_url",
            "selector",
            "group_by",
            "rate_window",
            "duration_quantile",
            "alerts",
        },
        "config",
    )
    selector = _string(raw["selector"], "selector").strip()
    if not selector:
        raise ConfigError('selector: must pick the exporter\'s series, e.g. job="celery"')
    group_by = raw["group_by"]
    if not isinstance(group_by, list) or not all(
        isinstance(x, str) and _LABEL.match(x) for x in group_by
    ):
        raise ConfigError("group_by: expected a list of label names")
    quantile = _number(raw["duration_quantile"], "duration_quantile")
    if not 0 < quantile < 1 or not round(quantile * 100, 9).is_integer():
        raise ConfigError("duration_quantile: a whole percentile between 0 and 1, e.g. 0.95")
    alerts = _mapping(raw["alerts"], "alerts")
    _exact_keys(alerts, set(PARAMS), "alerts")
    levels: dict[str, tuple[Level, ...]] = {}
    for name in PARAMS:
        entries = alerts[name] or []
        if not isinstance(entries, list):
            raise ConfigError(f"alerts.{name}: expected a list of levels")
        levels[name] = tuple(_level(entry, name, i) for i, entry in enumerate(entries))
        severities = [level.severity for level in levels[name]]
        if len(set(severities)) != len(severities):
            raise ConfigError(f"alerts.{name}: one level per severity")
    return Config(
        runbook_base_url=_string(raw["runbook_base_url"], "runbook_base_url"),
        dashboard_url=_string(raw["dashboard_url"], "dashboard_url"),
        selector=selector,
        group_by=tuple(group_by),
        rate_window=_duration(raw["rate_window"], "rate_window"),
        duration_quantile=quantile,
        alerts=levels,
    )


# --- reading the runbook ---


def _unwrap(markdown: str) -> str:
    """Markdown paragraphs and list items, one line each (wrapped lines joined)."""
    items: list[str] = []
    fresh = True
    for raw in markdown.strip().splitlines():
        line = raw.strip()
        if not line:
            fresh = True
        elif fresh or line.startswith("- "):
            items.append(line)
            fresh = False
        else:
            items[-1] += " " + line
    return "\n".join(items)


def runbook_steps(text: str, names: Sequence[str]) -> dict[str, str]:
    """What to do for each alert: its `## <name>` section's Diagnosis and Mitigation."""
    chunks = re.split(r"^## (\S+)\n", text, flags=re.MULTILINE)
    sections = dict(zip(chunks[1::2], chunks[2::2], strict=True))
    out: dict[str, str] = {}
    for name in names:
        if name not in sections:
            raise ConfigError(f"runbook: no section '## {name}'")
        parts = re.split(r"^\*\*(\w+)\.\*\*", sections[name], flags=re.MULTILINE)
        found = dict(zip(parts[1::2], parts[2::2], strict=True))
        steps = []
        for step in RUNBOOK_STEPS:
            if not found.get(step, "").strip():
                raise ConfigError(f"runbook: section {name} has no **{step}.** paragraph")
            body = _unwrap(found[step])
            gap = "\n" if body.startswith("- ") else " "  # a list starts on its own line
            steps.append(f"{step}:{gap}{body}")
        out[name] = "\n".join(steps)
    return out


# --- building the rules ---


def num(value: float) -> str:
    """A PromQL number literal: 1000 rather than 1000.0."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def percent(ratio: float) -> str:
    """0.05 as 5%."""
    return f"{ratio * 100:g}%"


def times(factor: float) -> str:
    """A factor for prose: 'twice', '3 times'."""
    return "twice" if factor == 2 else f"{num(factor)} times"


class Builder:
    """PromQL and annotations for one config: selectors, aggregation labels, rule names."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.by = ", ".join(config.group_by)
        window = config.rate_window
        self.window = window
        self.window_seconds = num(seconds(window))
        quantile = f"p{num(round(config.duration_quantile * 100, 9))}"
        # Recording rule names: level:metric:operations.
        self.succeeded = f"job_task:celery_task_succeeded:rate{window}"
        self.failed = f"job_task:celery_task_failed:rate{window}"
        self.finished = f"job_task:celery_task_finished:rate{window}"
        self.started = f"job_task:celery_task_started:rate{window}"
        self.retried = f"job_task:celery_task_retried:rate{window}"
        self.timeouts = f"job_task:celery_task_timeouts:rate{window}"
        self.received = f"job_task:celery_task_received:rate{window}"
        self.redelivered = f"job_task:celery_task_redelivered:rate{window}"
        self.failed_ratio = f"job_task:celery_task_failed_per_finished:ratio_rate{window}"
        self.retried_ratio = f"job_task:celery_task_retried_per_started:ratio_rate{window}"
        self.timeouts_ratio = f"job_task:celery_task_timeouts_per_started:ratio_rate{window}"
        self.redelivered_ratio = f"job_task:celery_task_redelivered_per_received:ratio_rate{window}"
        self.buckets = f"job_task_le:celery_task_duration_seconds_bucket:rate{window}"
        self.quantile = f"job_task:celery_task_duration_seconds:{quantile}_rate{window}"
        self.durations = f"job_task:celery_task_duration_seconds_count:rate{window}"
        self.utilization = "worker:celery_worker_utilization:ratio"
        self.workers_up = "job:celery_worker_up:sum"

    def m(self, metric: str, extra: str = "") -> str:
        """The metric with the config's selector (and extra matchers)."""
        matchers = ", ".join(x for x in (self.config.selector, extra) if x)
        return f"{metric}{{{matchers}}}"

    def agg(self, *labels: str) -> str:
        """The by/on label list: the config's group_by plus the given labels."""
        return ", ".join((*self.config.group_by, *labels))

    def annotations(self, name: str, summary: str, description: str) -> dict[str, str]:
        assert summary.endswith("."), name
        out = {"summary": summary, "description": description, "runbook": self.config.runbook[name]}
        if self.config.runbook_base_url:
            out["runbook_url"] = f"{self.config.runbook_base_url}#{name.lower()}"
        if self.config.dashboard_url:
            out["dashboard_url"] = self.config.dashboard_url
        return out

    def alert(self, name: str, level: Level, expr: str, summary: str, description: str) -> Rule:
        return Rule(
            alert=name,
            expr=textwrap.dedent(expr).strip(),
            for_=level.for_,
            labels={"severity": level.severity},
            annotations=self.annotations(name, summary, description),
        )

    def sla_of(self, factor: float) -> str:
        """Template text printing the task's SLA (times factor), queried at alert time."""
        matchers = ",".join(f"{name}=%q" for name in (*self.config.group_by, "task"))
        args = " ".join(f"$labels.{name}" for name in (*self.config.group_by, "task"))
        scale = "" if factor == 1 else f" * {num(factor)}"
        query = f'printf "max(celery_task_sla_seconds{{{matchers}}}){scale}" {args}'
        return "{{ with " + query + " | query }}{{ . | first | value | humanizeDuration }}{{ end }}"

    # Recording rules shared by the alerts (and useful on dashboards).
    def recording_rules(self) -> list[Rule]:
        w, task = self.window, self.agg("task")

        def rate(record: str, counter: str) -> Rule:
            return Rule(record=record, expr=f"sum by ({task}) (rate({self.m(counter)}[{w}]))")

        return [
            rate(self.succeeded, "celery_task_succeeded_total"),
            rate(self.failed, "celery_task_failed_total"),
            Rule(
                record=self.finished,
                # A task that never failed (or never succeeded) has one side only.
                expr=f"({self.failed} or {self.succeeded} * 0)\n"
                f"+ ({self.succeeded} or {self.failed} * 0)",
            ),
            rate(self.started, "celery_task_started_total"),
            rate(self.retried, "celery_task_retried_total"),
            rate(self.timeouts, "celery_task_timeouts_total"),
            rate(self.received, "celery_task_received_total"),
            rate(self.redelivered, "celery_task_redelivered_total"),
            Rule(
                record=self.failed_ratio,
                expr=f"({self.failed} or {self.finished} * 0)\n/ {self.finished}",
            ),
            Rule(
                record=self.retried_ratio,
                expr=f"({self.retried} or {self.started} * 0)\n/ {self.started}",
            ),
            Rule(
                record=self.timeouts_ratio,
                expr=f"({self.timeouts} or {self.started} * 0)\n/ {self.started}",
            ),
            Rule(
                record=self.redelivered_ratio,
                expr=f"({self.redelivered} or {self.received} * 0)\n/ {self.received}",
            ),
            Rule(
                record=self.buckets,
                expr=f"sum by ({self.agg('task', 'le')}) "
                f"(rate({self.m('celery_task_duration_seconds_bucket')}[{w}]))",
            ),
            Rule(
                record=self.quantile,
                expr=f"histogram_quantile({num(self.config.duration_quantile)}, {self.buckets})",
            ),
            rate(self.durations, "celery_task_duration_seconds_count"),
            Rule(
                record=self.utilization,
                expr=f"sum by ({self.agg('worker')}) ({self.m('celery_worker_tasks_active')})\n"
                f"/ (sum by ({self.agg('worker')}) ({self.m('celery_worker_concurrency')}) > 0)",
            ),
            Rule(
                record=self.workers_up,
                # max per worker first: two exporter replicas must not count a worker twice.
                expr=f"sum by ({self.by}) "
                f"(max by ({self.agg('worker')}) ({self.m('celery_worker_up')}))",
            ),
        ]

    # --- alerts, one method per alert name ---

    def celery_queue_too_long(self, name: str, level: Level) -> list[Rule]:
        limit, q = num(level.number("max_length")), self.agg("queue")
        expr = f"max by ({q}) ({self.m('celery_queue_length')}) > {limit}"
        return [
            self.alert(
                name, level, expr, "A Celery queue has too many waiting messages.",
                f"Queue {label('queue')} has held more than {limit} messages for "
                f"{level.for_}; it holds {VALUE} now.",
            )
        ]  # fmt: skip

    def celery_queue_no_consumers(self, name: str, level: Level) -> list[Rule]:
        q, length = self.agg("queue"), self.m("celery_queue_length")
        expr = f"""
            (max by ({q}) ({length}) >= {num(level.number("min_length"))})
            and on ({q})
            (
              # RabbitMQ counts the queue's consumers itself: trust it where it is published.
              max by ({q}) ({self.m("celery_queue_consumers")}) == 0
              or
              # Elsewhere no live worker consumes it (worker inspection), which counts only
              # where inspection has told which queues workers consume.
              (
                max by ({q}) ({length})
                unless on ({q}) max by ({q}) ({self.m("celery_queue_consumers")})
                unless on ({q}) (max by ({q}) ({self.m("celery_queue_workers")}) > 0)
              )
              and on ({self.by}) (count by ({self.by}) ({self.m("celery_worker_consuming")}) > 0)
            )
        """
        return [
            self.alert(
                name, level, expr, "A Celery queue has messages and no consumer.",
                f"Queue {label('queue')} holds {VALUE} messages and nothing has consumed it "
                f"for {level.for_}: its tasks do not run.",
            )
        ]  # fmt: skip

    def celery_workers_missing(self, name: str, level: Level) -> list[Rule]:
        least = num(level.number("min_missing"))
        expected = f"max by ({self.by}) ({self.m('celery_workers_expected')})"
        q = self.agg("queue")
        per_queue = f"max by ({q}) ({self.m('celery_queue_workers_expected')})"
        # Value: workers missing. The series without a queue label is the whole job.
        expr = f"""
            (
              {expected}
              - on ({self.by})
              (
                {self.workers_up}
                # No worker series at all (all gone past their retention) means zero live.
                or on ({self.by}) {expected} * 0
              )
            )
            or
            (
              {per_queue}
              - on ({q})
              (
                max by ({q}) ({self.m("celery_queue_workers")})
                # A queue without live workers has no celery_queue_workers series: zero.
                or on ({q}) {per_queue} * 0
              )
            )
        """
        expr = f"(\n{textwrap.indent(textwrap.dedent(expr).strip(), '  ')}\n)\n>= {least}"
        return [
            self.alert(
                name, level, expr, "Fewer Celery workers are live than expected.",
                "{{ with $labels.queue }}Queue {{ . }} has{{ else }}The workers have{{ end }} "
                f"been {VALUE} short of the expected live workers for {level.for_} "
                "(celery_workers_expected, celery_queue_workers_expected).",
            )
        ]  # fmt: skip

    def celery_worker_down(self, name: str, level: Level) -> list[Rule]:
        w = self.agg("worker")
        up = f"max by ({w}) ({self.m('celery_worker_up')})"
        expr = f"""
            (
              time() - max by ({w}) ({self.m("celery_worker_last_heartbeat_timestamp_seconds")})
              # A worker first seen through worker-offline never sent a heartbeat: +Inf.
              or {up} + Inf
            )
            and on ({w})
            ({up} == 0)
        """
        return [
            self.alert(
                name, level, expr, "A Celery worker stopped sending heartbeats.",
                f"Worker {label('worker')} has been down for {level.for_}; "
                + if_seen(
                    f"its last heartbeat arrived {VALUE_DURATION} ago.",
                    "no heartbeat of it was seen.",
                ),
            )
        ]  # fmt: skip

    def celery_workers_saturated(self, name: str, level: Level) -> list[Rule]:
        q, growth = self.agg("queue"), level.duration("growth_window")
        expr = f"""
            {self.utilization} >= {num(level.number("min_utilization"))}
            and on ({self.agg("worker")})
            (
              max by ({self.agg("worker", "queue")}) ({self.m("celery_worker_consuming")})
              * on ({q}) group_left ()
              (max by ({q}) (deriv({self.m("celery_queue_length")}[{growth}])) > 0)
            )
        """
        return [
            self.alert(
                name, level, expr, "A Celery worker's pool is full while its queue grows.",
                f"Worker {label('worker')} has been running {VALUE_PERCENT} of its pool for "
                f"{level.for_} while a queue it consumes kept growing.",
            )
        ]  # fmt: skip

    def celery_worker_memory_high(self, name: str, level: Level) -> list[Rule]:
        w, bound = self.agg("worker"), level.number("max_mib")
        rss = self.m("celery_worker_memory_rss_bytes")
        expr = f"max by ({w}) ({rss}) > {num(bound)} * 1024 * 1024"
        return [
            self.alert(
                name, level, expr, "A Celery worker uses too much memory.",
                f"Worker {label('worker')}'s main and pool processes hold {{{{ $value | "
                f"humanize1024 }}}}B resident, above {num(bound)} MiB, for {level.for_}.",
            )
        ]  # fmt: skip

    def celery_worker_pool_churn_high(self, name: str, level: Level) -> list[Rule]:
        w, window = self.agg("worker"), level.duration("window")
        limit = level.number("max_per_minute")
        replaced = self.m("celery_worker_pool_process_replacements_total")
        expr = f"sum by ({w}) (rate({replaced}[{window}])) * 60 > {num(limit)}"
        return [
            self.alert(
                name, level, expr, "A Celery worker replaces its pool processes too often.",
                f"Worker {label('worker')} replaced {VALUE} pool processes a minute over the "
                f"last {window} (threshold {num(limit)}), for {level.for_}: recycling "
                "(max_tasks_per_child, max_memory_per_child) or crashing processes.",
            )
        ]  # fmt: skip

    def _ratio_alert(
        self,
        *,
        name: str,
        level: Level,
        ratio: str,
        volume: tuple[str, str],
        summary: str,
        what: str,
    ) -> list[Rule]:
        limit = level.number("max_ratio")
        rate, key = volume
        least = num(level.number(key))
        expr = f"""
            {ratio} > {num(limit)}
            # Minimum volume (tasks within the window): a handful of runs makes no rate.
            and on ({self.agg("task")}) {rate} * {self.window_seconds} >= {least}
        """
        noun = key.removeprefix("min_")
        description = (
            f"{VALUE_PERCENT} of task {label('task')} {what} over the last {self.window} "
            f"(threshold {percent(limit)}, at least {least} {noun}), for {level.for_}."
        )
        return [self.alert(name, level, expr, summary, description)]

    def celery_task_failure_rate_high(self, name: str, level: Level) -> list[Rule]:
        return self._ratio_alert(
            name=name, level=level, ratio=self.failed_ratio,
            volume=(self.finished, "min_finished"),
            summary="A Celery task fails too often.", what="runs failed",
        )  # fmt: skip

    def celery_task_retry_rate_high(self, name: str, level: Level) -> list[Rule]:
        return self._ratio_alert(
            name=name, level=level, ratio=self.retried_ratio,
            volume=(self.started, "min_started"),
            summary="A Celery task is retried too often.", what="attempts ended in a retry",
        )  # fmt: skip

    def celery_task_timeout_rate_high(self, name: str, level: Level) -> list[Rule]:
        return self._ratio_alert(
            name=name, level=level, ratio=self.timeouts_ratio,
            volume=(self.started, "min_started"),
            summary="A Celery task hits its time limit too often.", what="runs hit a time limit",
        )  # fmt: skip

    def celery_task_redelivery_rate_high(self, name: str, level: Level) -> list[Rule]:
        return self._ratio_alert(
            name=name, level=level, ratio=self.redelivered_ratio,
            volume=(self.received, "min_received"),
            summary="The broker delivers a Celery task again too often.",
            what="deliveries were redeliveries of an attempt already received",
        )  # fmt: skip

    def celery_tasks_orphaned(self, name: str, level: Level) -> list[Rule]:
        tq, window = self.agg("task", "queue"), level.duration("window")
        orphaned = self.m("celery_task_orphaned_total")
        expr = f"sum by ({tq}) (increase({orphaned}[{window}])) > 0"
        return [
            self.alert(
                name, level, expr, "Celery tasks were lost with their worker.",
                f"{VALUE} {label('task')} task(s) of queue {label('queue')} were running on a "
                f"worker that went down (killed, OOM, restarted) over the last {window}.",
            )
        ]  # fmt: skip

    def celery_task_duration_above_sla(self, name: str, level: Level) -> list[Rule]:
        t, factor = self.agg("task"), level.number("sla_factor")
        scale = "" if factor == 1 else f" * {num(factor)}"
        least = num(level.number("min_finished"))
        expr = f"""
            (
              {self.quantile}
              > on ({t}) max by ({t}) ({self.m("celery_task_sla_seconds")}){scale}
            )
            and on ({t}) {self.durations} * {self.window_seconds} >= {least}
        """
        pct = f"p{num(round(self.config.duration_quantile * 100, 9))}"
        bound = "its SLA" if factor == 1 else f"{times(factor)} its SLA"
        return [
            self.alert(
                name, level, expr, "A Celery task runs longer than its SLA.",
                f"Task {label('task')} took {VALUE_DURATION} at {pct} over the last "
                f"{self.window}, above {bound} of {self.sla_of(factor)}, for {level.for_}.",
            )
        ]  # fmt: skip

    def celery_task_stuck(self, name: str, level: Level) -> list[Rule]:
        t, tq = self.agg("task"), self.agg("task", "queue")
        factor, floor = level.number("sla_factor"), level.duration("min_age")
        floor_s = num(seconds(floor))
        age = self.m("celery_task_oldest_running_age_seconds")
        sla = self.m("celery_task_sla_seconds")
        expr = f"""
            max by ({tq}) ({age})
            > on ({t}) group_left ()
            (
              clamp_min(max by ({t}) ({sla}) * {num(factor)}, {floor_s})
              # A task without a published SLA gets the floor alone.
              or on ({t}) max by ({t}) ({age}) * 0 + {floor_s}
            )
        """
        return [
            self.alert(
                name, level, expr, "A Celery task has been running for too long.",
                f"The oldest running {label('task')} task on queue {label('queue')} started "
                f"{VALUE_DURATION} ago, more than {times(factor)} its SLA and at least {floor}.",
            )
        ]  # fmt: skip

    def celery_beat_heartbeat_stale(self, name: str, level: Level) -> list[Rule]:
        s, limit = self.agg("source"), level.duration("max_age")
        heartbeat = self.m("celery_beat_last_heartbeat_timestamp_seconds")
        expr = f"""
            time() - max by ({s}) ({heartbeat}) > {num(seconds(limit))}
            # A watched source that has seen no heartbeat since the exporter started: +Inf.
            or (max by ({s}) ({self.m("celery_beat_up")}) == 0 unless on ({s}) {heartbeat}) + Inf
        """
        return [
            self.alert(
                name, level, expr, "Celery Beat has stopped sending its heartbeat.",
                f"Beat's newest heartbeat from source {label('source')} "
                + if_seen(f"is {VALUE_DURATION} old", "was never seen since the exporter started")
                + f" (limit {limit}), for {level.for_}: periodic tasks are not being sent.",
            )
        ]  # fmt: skip

    def celery_periodic_task_overdue(self, name: str, level: Level) -> list[Rule]:
        t, grace = self.agg("task"), level.duration("grace")
        # Next due follows the last task-sent (else the exporter's start-up) by the task's
        # schedule, so a daily 03:00 job is overdue at 03:00 plus the grace.
        next_due = self.m("celery_periodic_task_next_due_timestamp_seconds")
        expr = f"time() - max by ({t}) ({next_due}) > {num(seconds(grace))}"
        return [
            self.alert(
                name, level, expr, "A Celery periodic task has not been sent on time.",
                f"Periodic task {label('task')} was due {VALUE_DURATION} ago and has not been "
                f"sent since (grace {grace}), for {level.for_}.",
            )
        ]  # fmt: skip

    def celery_exporter_down(self, name: str, level: Level) -> list[Rule]:
        up = self.m("up")
        return [
            self.alert(
                name, level, f"{up} == 0\nor absent({up})",
                "The Celery exporter is down or missing.",
                f"Prometheus has not scraped the Celery exporter (job {label('job')}"
                "{{ with $labels.instance }}, instance {{ . }}{{ end }}) for "
                f"{level.for_}: every other Celery alert is blind meanwhile.",
            )
        ]  # fmt: skip

    def celery_exporter_broker_unreachable(self, name: str, level: Level) -> list[Rule]:
        return [
            self.alert(
                name, level, f"{self.m('celery_exporter_source_up')} == 0",
                "The Celery exporter cannot reach the broker.",
                f"Exporter {label('instance')} has not been connected to the broker (source "
                f"{label('source')}) for {level.for_}: no events, heartbeats or queue depths "
                "reach it.",
            )
        ]  # fmt: skip

    def celery_exporter_collector_failing(self, name: str, level: Level) -> list[Rule]:
        return [
            self.alert(
                name, level, f"{self.m('celery_exporter_collector_success')} == 0",
                "A Celery exporter collector keeps failing.",
                f"Collector {label('collector')} on {label('instance')} has failed every scrape "
                f"for {level.for_}: its series are missing, so alerts built on them cannot fire.",
            )
        ]  # fmt: skip

    def celery_events_missing(self, name: str, level: Level) -> list[Rule]:
        window = level.duration("window")
        processed = self.m("celery_worker_tasks_processed_total")
        events = self.m(
            "celery_exporter_events_total", 'type=~"task-(received|started|succeeded|failed)"'
        )
        expr = f"""
            # Worker heartbeats (sent even without -E) count processed tasks ...
            sum by ({self.by}) (increase({processed}[{window}])) > 0
            # ... while no worker-side task event arrived.
            unless on ({self.by})
            sum by ({self.by}) (increase({events}[{window}])) > 0
        """
        return [
            self.alert(
                name, level, expr, "Celery workers process tasks but send no task events.",
                f"Workers of job {label('job')} processed {VALUE} tasks in the last {window} "
                "but the exporter received no task events from them: are they running "
                f"without -E (worker_send_task_events)? For {level.for_}.",
            )
        ]  # fmt: skip


def build(config: Config) -> list[tuple[str, list[Rule]]]:
    """The two rule groups, celery and celery-exporter, in a stable order."""
    b = Builder(config)
    methods: dict[str, Callable[[str, Level], list[Rule]]] = {
        "CeleryQueueTooLong": b.celery_queue_too_long,
        "CeleryQueueNoConsumers": b.celery_queue_no_consumers,
        "CeleryWorkersMissing": b.celery_workers_missing,
        "CeleryWorkerDown": b.celery_worker_down,
        "CeleryWorkersSaturated": b.celery_workers_saturated,
        "CeleryWorkerMemoryHigh": b.celery_worker_memory_high,
        "CeleryWorkerPoolChurnHigh": b.celery_worker_pool_churn_high,
        "CeleryTaskFailureRateHigh": b.celery_task_failure_rate_high,
        "CeleryTaskDurationAboveSLA": b.celery_task_duration_above_sla,
        "CeleryTaskRetryRateHigh": b.celery_task_retry_rate_high,
        "CeleryTaskTimeoutRateHigh": b.celery_task_timeout_rate_high,
        "CeleryTaskRedeliveryRateHigh": b.celery_task_redelivery_rate_high,
        "CeleryTasksOrphaned": b.celery_tasks_orphaned,
        "CeleryTaskStuck": b.celery_task_stuck,
        "CeleryBeatHeartbeatStale": b.celery_beat_heartbeat_stale,
        "CeleryPeriodicTaskOverdue": b.celery_periodic_task_overdue,
        "CeleryExporterDown": b.celery_exporter_down,
        "CeleryExporterBrokerUnreachable": b.celery_exporter_broker_unreachable,
        "CeleryExporterCollectorFailing": b.celery_exporter_collector_failing,
        "CeleryEventsMissing": b.celery_events_missing,
    }
    assert list(methods) == list(PARAMS)
    celery: list[Rule] = b.recording_rules()
    exporter: list[Rule] = []
    for name, method in methods.items():
        rules = [rule for level in config.alerts[name] for rule in method(name, level)]
        (exporter if name in EXPORTER_GROUP else celery).extend(rules)
    return [("celery", celery), ("celery-exporter", exporter)]


# --- writing YAML ---


def _block(text: str, indent: str) -> str:
    """A YAML literal block scalar (|-) of text."""
    if any(line != line.rstrip() for line in text.splitlines()) or "\t" in text:
        raise ValueError(f"expression has trailing blanks or tabs: {text!r}")
    return "|-\n" + "\n".join(indent + line if line else "" for line in text.splitlines())


def render(groups: Sequence[tuple[str, Sequence[Rule]]]) -> str:
    """The rules file as YAML text: expressions as literal blocks, other strings JSON-quoted."""
    out = [
        "# Generated by alerts/generate.py from alerts/config.yml: do not edit by hand.",
        "# Change alerts/config.yml, then run: python -m alerts.generate",
        "---",
        "groups:",
    ]
    for group, rules in groups:
        out += [f"  - name: {json.dumps(group)}", "    rules:"]
        for rule in rules:
            key, name = ("record", rule.record) if rule.record else ("alert", rule.alert)
            out.append(f"      - {key}: {json.dumps(name)}")
            out.append(f"        expr: {_block(rule.expr, ' ' * 10)}")
            if rule.for_:
                out.append(f"        for: {rule.for_}")
            for section in ("labels", "annotations"):
                values: Mapping[str, str] = getattr(rule, section)
                if values:
                    out.append(f"        {section}:")
                    out += [f"          {k}: {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


def as_data(groups: Sequence[tuple[str, Sequence[Rule]]]) -> dict[str, object]:
    """The structure the rules file must parse back to."""
    return {"groups": [{"name": g, "rules": [r.as_dict() for r in rules]} for g, rules in groups]}


def generate(
    config_path: Path, runbook_base_url: str | None = None, runbook_path: Path = DEFAULT_RUNBOOK
) -> str:
    """Rules file text for the config at config_path, checked by parsing it back.
    runbook_base_url, when given, replaces the config's."""
    config = parse_config(load_yaml(config_path))
    try:
        runbook = runbook_path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{runbook_path}: {err}") from err
    config = replace(
        config,
        runbook=runbook_steps(runbook, list(PARAMS)),
        runbook_base_url=config.runbook_base_url if runbook_base_url is None else runbook_base_url,
    )
    groups = build(config)
    text = render(groups)
    if parse_yaml(text, "rendered rules") != as_data(groups):
        raise AssertionError("the rendered YAML does not parse back to the rules built")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alerts.generate", description=__doc__)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config YAML")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="rules file to write")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when --out differs from a fresh render"
    )
    parser.add_argument(
        "--runbook-base-url",
        help="URL of your copy of alerts/runbook.md, for runbook_url (default: the config's)",
    )
    args = parser.parse_args(argv)
    try:
        text = generate(args.config, args.runbook_base_url)
    except ConfigError as err:
        sys.stderr.write(f"alerts.generate: {err}\n")
        return 2
    out: Path = args.out
    if args.check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                str(out), "fresh render", n=1,
            )  # fmt: skip
            sys.stderr.write("".join(list(diff)[:60]))
            sys.stderr.write(f"{out} is stale: run python -m alerts.generate\n")
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
