"""Generates grafana/dashboards/*.json from code with grafana-foundation-sdk (Grafana 11.6).

python -m grafana.generate            rewrites the JSON files
python -m grafana.generate --check    exits 1 when the committed files differ from the code
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders import (
    common as common_builders,
)
from grafana_foundation_sdk.builders import (
    dashboard,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

from exporter.metrics import defs
from exporter.metrics.defs import MetricDef

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
TAGS = ("celery", "celery-exporter")
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE_INTERVAL = "$__rate_interval"

# Variables a board may filter on besides job and namespace; each is a label of some metrics.
Filter = Literal["queue", "task", "worker"]
VARIABLE_QUERIES: Mapping[str, str] = {
    "job": "label_values(celery_exporter_build_info, job)",
    # An absent namespace label matches the "All" value .*, so clusters without one still work.
    "namespace": 'label_values(celery_exporter_build_info{job=~"$job"}, namespace)',
    "queue": 'label_values(celery_queue_length{job=~"$job", namespace=~"$namespace"}, queue)',
    "task": (
        "label_values(celery_task_received_total"
        '{job=~"$job", namespace=~"$namespace", queue=~"$queue"}, task)'
    ),
    "worker": 'label_values(celery_worker_up{job=~"$job", namespace=~"$namespace"}, worker)',
}

# (PromQL, legend) of one query; a panel's queries get refIds A, B, C... in order.
Target = tuple[str, str]
# Dashed series (expectations: SLA, expected counts) are told apart from measured ones.
DASHED = [
    model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})
]
UP_DOWN = {0: ("down", "red"), 1: ("up", "green")}
OK_FAILED = {0: ("failed", "red"), 1: ("ok", "green")}
NEUTRAL = ((None, "blue"),)


def match(label: str) -> str:
    """A regex matcher of the label against the dashboard variable of the same name."""
    return f'{label}=~"${label}"'


def json_dumps(data: object) -> str:
    """The committed form of a dashboard: sorted keys, two-space indent, final newline."""
    return json.dumps(data, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


class Board:
    """One dashboard under construction: its variables, selectors, panel ids and layout."""

    def __init__(
        self, *, uid: str, title: str, description: str, filters: Sequence[Filter]
    ) -> None:
        self.filters = tuple(filters)
        self._ids = itertools.count(1)
        self.builder = (
            dashboard.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(list(TAGS))
            .editable()
            .timezone("browser")
            .refresh("1m")
            .time("now-3h", "now")
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .link(
                dashboard.DashboardLink("Celery dashboards")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags(list(TAGS))
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
            .with_variable(
                dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
            )
        )
        for name in ("job", "namespace", *self.filters):
            self.builder.with_variable(
                dashboard.QueryVariable(name)
                .label(name.capitalize())
                .datasource(DATASOURCE)
                .query(VARIABLE_QUERIES[name])
                .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(model.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
                .multi(True)
                .include_all(True)
                .all_value(".*")
                .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
            )

    # --- PromQL ---

    def sel(self, metric: MetricDef, *matchers: str, suffix: str = "") -> str:
        """The metric's selector, filtered by job, namespace and the board's variables it has."""
        assert not suffix or metric.kind == "histogram"
        parts = [match("job"), match("namespace")]
        parts += [match(label) for label in self.filters if label in metric.labels]
        return f"{metric.name}{suffix}{{{', '.join([*parts, *matchers])}}}"

    def rate(self, metric: MetricDef, *matchers: str, suffix: str = "") -> str:
        """Per-second rate of a counter (or histogram series) over $__rate_interval."""
        return f"rate({self.sel(metric, *matchers, suffix=suffix)}[{RATE_INTERVAL}])"

    def increase(self, metric: MetricDef, *matchers: str) -> str:
        """Increase of a counter over $__rate_interval, for events too rare for a rate."""
        return f"increase({self.sel(metric, *matchers)}[{RATE_INTERVAL}])"

    def quantile(self, q: float, metric: MetricDef, by: str, *matchers: str) -> str:
        """The q-quantile of a histogram per `by` group."""
        buckets = self.rate(metric, *matchers, suffix="_bucket")
        return f"histogram_quantile({q}, sum by ({by}, le) ({buckets}))"

    def failure_ratio(self, by: str = "") -> str:
        """Failed over finished (succeeded + failed) tasks; no data while nothing finishes."""
        group = f" by ({by})" if by else ""
        succeeded, failed = self.rate(defs.TASK_SUCCEEDED), self.rate(defs.TASK_FAILED)
        # Failed series carry an extra `exception` label, so `or` never drops one of them:
        # `failed or 0 * succeeded` gives groups without failures a 0 instead of no data.
        return (
            f"sum{group} ({failed} or 0 * {succeeded}) / (sum{group} ({succeeded} or {failed}) > 0)"
        )

    # --- panels ---

    def row(self, title: str) -> None:
        """Starts a row; the panels added next belong to it."""
        self.builder.with_row(dashboard.Row(title).id(next(self._ids)))

    def _add(
        self,
        panel: timeseries.Panel | stat.Panel | statetimeline.Panel | table.Panel,
        *,
        title: str,
        description: str,
        unit: str,
        targets: Sequence[Target],
        width: int,
        height: int,
        instant: bool = False,
    ) -> None:
        panel.id(next(self._ids)).title(title).description(description).unit(unit)
        panel.datasource(DATASOURCE).span(width).height(height)
        assert len(targets) <= 10, title
        for ref_id, (expr, legend) in zip("ABCDEFGHIJ", targets, strict=False):
            query = prometheus.Dataquery().ref_id(ref_id).datasource(DATASOURCE).expr(expr)
            query.legend_format(legend)
            if instant:
                query.instant().format(prometheus_model.PromQueryFormat.TABLE)
            panel.with_target(query)
        self.builder.with_panel(panel)

    def timeseries(
        self,
        title: str,
        unit: str,
        targets: Sequence[Target],
        *,
        description: str,
        width: int = 12,
        height: int = 8,
        min_val: float | None = 0,
        max_val: float | None = None,
        dashed: str | None = None,
    ) -> None:
        """A time series panel with a table legend (mean, max, last) below it."""
        panel = (
            timeseries.Panel()
            .legend(
                common_builders.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.TABLE)
                .placement(common.LegendPlacement.BOTTOM)
                .show_legend(True)
                .calcs(["mean", "max", "lastNotNull"])
            )
            .tooltip(
                common_builders.VizTooltipOptions()
                .mode(common.TooltipDisplayMode.MULTI)
                .sort(common.SortOrder.DESCENDING)
            )
            .fill_opacity(10)
            .show_points(common.VisibilityMode.NEVER)
        )
        if min_val is not None:
            panel.min(min_val)
        if max_val is not None:
            panel.max(max_val)
        if dashed is not None:
            panel.override_by_regexp(dashed, DASHED)
        self._add(
            panel, title=title, description=description, unit=unit, targets=targets,
            width=width, height=height,
        )  # fmt: skip

    def stat(
        self,
        title: str,
        unit: str,
        targets: Sequence[Target],
        *,
        description: str,
        width: int = 4,
        height: int = 4,
        steps: Iterable[tuple[float | None, str]] = NEUTRAL,
        states: Mapping[int, tuple[str, str]] | None = None,
    ) -> None:
        """A single-value panel (last value) coloured by threshold steps or value states."""
        panel = (
            stat.Panel()
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
            .graph_mode(common.BigValueGraphMode.AREA)
            .color_mode(common.BigValueColorMode.VALUE)
            .thresholds(thresholds(steps))
        )
        if states is not None:
            panel.mappings([value_map(states)])
        self._add(
            panel, title=title, description=description, unit=unit, targets=targets,
            width=width, height=height,
        )  # fmt: skip

    def timeline(
        self,
        title: str,
        targets: Sequence[Target],
        *,
        description: str,
        states: Mapping[int, tuple[str, str]],
        width: int = 12,
        height: int = 8,
    ) -> None:
        """A state timeline of a 0/1 predicate gauge, one lane per series."""
        panel = (
            statetimeline.Panel()
            .mappings([value_map(states)])
            .thresholds(thresholds(NEUTRAL))
            .show_value(common.VisibilityMode.NEVER)
            .merge_values(True)
            .fill_opacity(80)
            .legend(common_builders.VizLegendOptions().show_legend(False))
        )
        self._add(
            panel, title=title, description=description, unit="none", targets=targets,
            width=width, height=height,
        )  # fmt: skip

    def table(
        self,
        title: str,
        targets: Sequence[Target],
        *,
        description: str,
        width: int = 12,
        height: int = 8,
    ) -> None:
        """A table of the current label sets of instant queries (time and value hidden)."""
        panel = table.Panel().with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True, "Value": True}},
            )
        )
        self._add(
            panel, title=title, description=description, unit="none", targets=targets,
            width=width, height=height, instant=True,
        )  # fmt: skip

    def build(self) -> model.Dashboard:
        """The finished dashboard model."""
        return self.builder.build()


def thresholds(
    steps: Iterable[tuple[float | None, str]],
) -> cogbuilder.Builder[model.ThresholdsConfig]:
    """Absolute threshold steps; the first step's value is None (minus infinity)."""
    return (
        dashboard.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def value_map(states: Mapping[int, tuple[str, str]]) -> model.ValueMap:
    """Maps each value of a predicate gauge to a text and a colour."""
    return model.ValueMap(
        options={
            str(value): model.ValueMappingResult(text=text, color=color, index=index)
            for index, (value, (text, color)) in enumerate(sorted(states.items()))
        }
    )


# --- Overview ---


def overview() -> model.Dashboard:
    """Is Celery healthy: workers, throughput, failures, queues and Beat at a glance."""
    b = Board(
        uid="celery-overview",
        title="Celery / Overview",
        description="Workers, task throughput and failures, queue backlog and Beat liveness.",
        filters=("queue", "task"),
    )
    b.row("Summary")
    b.stat(
        "Workers up", "none",
        [(f"sum({b.sel(defs.WORKER_UP)})", "up"),
         (f"sum({b.sel(defs.WORKERS_EXPECTED)})", "expected")],
        description="Workers whose heartbeats arrive on time, and the configured expectation.",
    )  # fmt: skip
    b.stat(
        "Tasks succeeded", "ops", [(f"sum({b.rate(defs.TASK_SUCCEEDED)})", "succeeded")],
        description="Tasks succeeding per second.",
    )  # fmt: skip
    b.stat(
        "Failure ratio", "percentunit", [(b.failure_ratio(), "failed")],
        description="Failed over finished tasks.",
        steps=((None, "green"), (0.01, "orange"), (0.1, "red")),
    )  # fmt: skip
    b.stat(
        "Messages queued", "short", [(f"sum({b.sel(defs.QUEUE_LENGTH)})", "queued")],
        description="Messages waiting in the broker, all queues and priorities.",
    )  # fmt: skip
    b.stat(
        "Beat", "none", [(f"max({b.sel(defs.BEAT_UP)})", "beat")],
        description="Up while some Beat heartbeat source is younger than the configured age.",
        states=UP_DOWN,
    )  # fmt: skip
    b.stat(
        "Beat heartbeat age", "s",
        [(f"time() - max({b.sel(defs.BEAT_LAST_HEARTBEAT)})", "age")],
        description="Time since Beat's newest heartbeat, from any source.",
        steps=((None, "green"), (120, "red")),
    )  # fmt: skip
    b.row("Tasks and queues")
    b.timeseries(
        "Throughput", "ops",
        [(f"sum({b.rate(defs.TASK_SUCCEEDED)})", "succeeded"),
         (f"sum({b.rate(defs.TASK_FAILED)})", "failed")],
        description="Tasks finishing per second, by outcome.",
    )  # fmt: skip
    b.timeseries(
        "Failures and retries by queue", "ops",
        [(f"sum by (queue) ({b.rate(defs.TASK_FAILED)})", "{{queue}} failed"),
         (f"sum by (queue) ({b.rate(defs.TASK_RETRIED)})", "{{queue}} retried")],
        description="Tasks failing, and attempts ending in a retry, per second.",
    )  # fmt: skip
    b.timeseries(
        "Failure ratio by queue", "percentunit", [(b.failure_ratio("queue"), "{{queue}}")],
        description="Failed over finished tasks per queue.", max_val=1,
    )  # fmt: skip
    b.timeseries(
        "Queue length", "short", [(f"max by (queue) ({b.sel(defs.QUEUE_LENGTH)})", "{{queue}}")],
        description="Messages waiting per queue (max over exporter replicas reading one broker).",
    )  # fmt: skip
    b.timeseries(
        "Workers up", "none",
        [(f"sum({b.sel(defs.WORKER_UP)})", "up"),
         (f"sum({b.sel(defs.WORKERS_EXPECTED)})", "expected")],
        description="Live workers against the configured expectation (dashed).",
        dashed="expected",
    )  # fmt: skip
    beat_rows(b)
    return b.build()


def beat_rows(b: Board) -> None:
    """Beat liveness, RedBeat and periodic tasks."""
    b.row("Beat and periodic tasks")
    b.timeseries(
        "Beat heartbeat age", "s",
        [(f"time() - max by (source) ({b.sel(defs.BEAT_LAST_HEARTBEAT)})", "{{source}}")],
        description="Time since Beat's last heartbeat per source (events, redis_key, redbeat).",
    )  # fmt: skip
    b.timeline(
        "Beat up", [(f"max by (source) ({b.sel(defs.BEAT_UP)})", "{{source}}")],
        description="Whether each source's last heartbeat is recent enough.", states=UP_DOWN,
    )  # fmt: skip
    b.timeseries(
        "RedBeat lock TTL", "s", [(f"max({b.sel(defs.REDBEAT_LOCK_TTL)})", "lock TTL")],
        description="Seconds left on RedBeat's lock; no data while nobody holds it.", width=8,
    )  # fmt: skip
    b.timeseries(
        "RedBeat most overdue entry", "s",
        [(f"time() - min({b.sel(defs.REDBEAT_NEXT_DUE)})", "overdue by")],
        description="How late the most overdue schedule entry is (negative: not due yet).",
        width=8, min_val=None,
    )  # fmt: skip
    b.timeseries(
        "Periodic tasks: time since last run", "s",
        [(f"time() - max by (task) ({b.sel(defs.PERIODIC_LAST_SENT)})", "{{task}}"),
         (f"max by (task) ({b.sel(defs.PERIODIC_INTERVAL)})", "{{task}} expected interval")],
        description="Time since each periodic task was last sent, against the expected "
        "interval (dashed) of those named in --periodic-tasks.",
        width=8, dashed=".* expected interval$",
    )  # fmt: skip
    b.timeseries(
        "Periodic tasks: overdue by", "s",
        [(f"time() - max by (task) ({b.sel(defs.PERIODIC_NEXT_DUE)})", "{{task}}")],
        description="How long past its next due time each periodic task is, by its schedule "
        "(negative: not due yet). CeleryPeriodicTaskOverdue fires once it is past its grace.",
        min_val=None,
    )  # fmt: skip
    b.timeseries(
        "Periodic tasks: missed runs", "short",
        [(f"sum by (task) ({b.increase(defs.PERIODIC_MISSED)})", "{{task}}")],
        description="Due times each periodic task let pass by more than the grace "
        "(--periodic-task-grace-seconds) without a task-sent.",
    )  # fmt: skip


# --- Tasks ---


def tasks() -> model.Dashboard:
    """Per-task rates, durations against SLAs, queue wait, failures and running tasks."""
    b = Board(
        uid="celery-tasks",
        title="Celery / Tasks",
        description="Per-task rates, durations against SLAs, queue wait, failures, running tasks.",
        filters=("queue", "task"),
    )
    b.row("Rates")
    steps = (
        ("sent", defs.TASK_SENT), ("received", defs.TASK_RECEIVED),
        ("started", defs.TASK_STARTED), ("succeeded", defs.TASK_SUCCEEDED),
        ("failed", defs.TASK_FAILED), ("retried", defs.TASK_RETRIED),
        ("rejected", defs.TASK_REJECTED), ("revoked", defs.TASK_REVOKED),
    )  # fmt: skip
    b.timeseries(
        "Lifecycle", "ops", [(f"sum({b.rate(metric)})", name) for name, metric in steps],
        description="Tasks per second at each lifecycle step (sent needs task_send_sent_event).",
    )  # fmt: skip
    b.timeseries(
        "Succeeded by task", "ops",
        [(f"sum by (task) ({b.rate(defs.TASK_SUCCEEDED)})", "{{task}}")],
        description="Tasks succeeding per second.",
    )  # fmt: skip
    b.timeseries(
        "Failed by task", "ops", [(f"sum by (task) ({b.rate(defs.TASK_FAILED)})", "{{task}}")],
        description="Tasks failing per second (time limits included).",
    )  # fmt: skip
    b.timeseries(
        "Failure ratio by task", "percentunit", [(b.failure_ratio("task"), "{{task}}")],
        description="Failed over finished tasks.", max_val=1,
    )  # fmt: skip
    b.timeseries(
        "Retried, rejected, revoked by task", "ops",
        [(f"sum by (task) ({b.rate(defs.TASK_RETRIED)})", "{{task}} retried"),
         (f"sum by (task) ({b.rate(defs.TASK_REJECTED)})", "{{task}} rejected"),
         (f"sum by (task) ({b.rate(defs.TASK_REVOKED)})", "{{task}} revoked")],
        description="Attempts ending in a retry, and tasks rejected or revoked, per second.",
        width=24,
    )  # fmt: skip
    b.timeseries(
        "Redelivered and orphaned by task", "ops",
        [(f"sum by (task) ({b.rate(defs.TASK_REDELIVERED)})", "{{task}} redelivered"),
         (f"sum by (task) ({b.rate(defs.TASK_ORPHANED)})", "{{task}} orphaned")],
        description="Attempts the broker delivered again, and tasks lost with their worker "
        "(went down, restarted) before they ended, per second.",
    )  # fmt: skip
    b.timeseries(
        "Retries: recovered vs exhausted", "ops",
        [(f"sum by (task) ({b.rate(defs.TASK_RECOVERED)})", "{{task}} recovered"),
         (f"sum by (task) ({b.rate(defs.TASK_RETRIES_EXHAUSTED)})", "{{task}} exhausted")],
        description="Tasks that succeeded after a retry, and tasks that failed after one.",
    )  # fmt: skip
    duration_rows(b)
    failure_rows(b)
    return b.build()


def duration_rows(b: Board) -> None:
    """Run time quantiles against each task's SLA, and queue wait."""
    b.row("Duration")
    sla = (f"max by (task) ({b.sel(defs.TASK_SLA)})", "{{task}} SLA")
    succeeded = 'state="succeeded"'
    for q in (0.5, 0.95, 0.99):
        name = f"p{round(q * 100)}"
        b.timeseries(
            f"Duration {name} vs SLA", "s",
            [(b.quantile(q, defs.TASK_DURATION, "task", succeeded), f"{{{{task}}}} {name}"), sla],
            description=f"{name} run time of succeeded tasks against the task's SLA (dashed).",
            width=8, dashed=".* SLA$",
        )  # fmt: skip
    b.timeseries(
        "Mean duration by state", "s",
        [(f"sum by (task, state) ({b.rate(defs.TASK_DURATION, suffix='_sum')})"
          f" / sum by (task, state) ({b.rate(defs.TASK_DURATION, suffix='_count')})",
          "{{task}} {{state}}")],
        description="Mean run time; failed is the time from started to failed.",
    )  # fmt: skip
    b.timeseries(
        "Queue wait p95", "s",
        [(b.quantile(0.95, defs.TASK_QUEUE_WAIT, "queue, task"), "{{queue}} {{task}}")],
        description="p95 time from sent (or received, or the ETA) to started.",
    )  # fmt: skip


def failure_rows(b: Board) -> None:
    """Failures by exception, time limits, and tasks running now."""
    b.row("Failures and running tasks")
    b.timeseries(
        "Failures by exception", "ops",
        [(f"sum by (task, exception) ({b.rate(defs.TASK_FAILED)})", "{{task}}: {{exception}}")],
        description="Tasks failing per second, by exception class.",
    )  # fmt: skip
    b.timeseries(
        "Time limits hit", "ops",
        [(f"sum by (task, kind) ({b.rate(defs.TASK_TIMEOUTS)})", "{{task}} {{kind}}")],
        description="Tasks hitting their soft or hard time limit per second (also failures).",
    )  # fmt: skip
    b.timeseries(
        "Running tasks", "short", [(f"sum by (task) ({b.sel(defs.TASK_RUNNING)})", "{{task}}")],
        description="Tasks started and not finished yet.",
    )  # fmt: skip
    b.timeseries(
        "Oldest running task age", "s",
        [(f"max by (task) ({b.sel(defs.TASK_OLDEST_RUNNING_AGE)})", "{{task}}"),
         (f"max by (task) ({b.sel(defs.TASK_SLA)})", "{{task}} SLA")],
        description="Age of the longest-running unfinished task, against its SLA (dashed).",
        dashed=".* SLA$",
    )  # fmt: skip


# --- Queues ---


def queues() -> model.Dashboard:
    """Broker-side backlog, ages and consumers per queue."""
    b = Board(
        uid="celery-queues",
        title="Celery / Queues",
        description="Queue depth, unacknowledged messages, ages, consumers and workers per queue.",
        filters=("queue",),
    )
    # Replicas of the exporter read the same broker: max, so they never add up.
    b.row("Backlog")
    b.timeseries(
        "Queue length", "short", [(f"max by (queue) ({b.sel(defs.QUEUE_LENGTH)})", "{{queue}}")],
        description="Messages waiting to be delivered, all priorities summed.",
    )  # fmt: skip
    b.timeseries(
        "Queue length by priority", "short",
        [(f"max by (queue, priority) ({b.sel(defs.QUEUE_LENGTH_BY_PRIORITY)})",
          "{{queue}} priority {{priority}}")],
        description="Messages waiting per priority step (Redis, --queue-priority-metrics).",
    )  # fmt: skip
    b.timeseries(
        "Unacknowledged", "short", [(f"max by (queue) ({b.sel(defs.QUEUE_UNACKED)})", "{{queue}}")],
        description="Messages delivered to workers and not acknowledged: prefetched, running, ETA.",
    )  # fmt: skip
    b.timeseries(
        "Published vs started", "ops",
        [(f"sum by (queue) ({b.rate(defs.TASK_SENT)})", "{{queue}} published"),
         (f"sum by (queue) ({b.rate(defs.TASK_STARTED)})", "{{queue}} started")],
        description="Tasks entering (task-sent) and leaving (task-started) each queue per second.",
    )  # fmt: skip
    b.row("Ages")
    b.timeseries(
        "Oldest message age", "s",
        [(f"max by (queue) ({b.sel(defs.QUEUE_OLDEST_MESSAGE_AGE)})", "{{queue}}")],
        description="Age of the oldest waiting message whose task-sent was seen (Redis).",
    )  # fmt: skip
    b.timeseries(
        "Oldest unacknowledged age", "s",
        [(f"max by (queue) ({b.sel(defs.QUEUE_OLDEST_UNACKED_AGE)})", "{{queue}}")],
        description="Time since the oldest unacknowledged message was delivered (Redis).",
    )  # fmt: skip
    b.row("Consumers")
    b.timeseries(
        "Broker consumers", "short",
        [(f"max by (queue) ({b.sel(defs.QUEUE_CONSUMERS)})", "{{queue}}")],
        description="Consumers the broker counts on each queue (RabbitMQ).",
    )  # fmt: skip
    b.timeseries(
        "Consumer utilisation", "percentunit",
        [(f"max by (queue) ({b.sel(defs.QUEUE_CONSUMER_UTILISATION)})", "{{queue}}")],
        description="Share of time each queue could deliver to its consumers at once; below "
        "100% prefetch or concurrency hold it back (RabbitMQ, --rabbitmq-management-url).",
        max_val=1,
    )  # fmt: skip
    b.timeseries(
        "Workers per queue vs expected", "short",
        [(f"max by (queue) ({b.sel(defs.QUEUE_WORKERS)})", "{{queue}}"),
         (f"max by (queue) ({b.sel(defs.QUEUE_WORKERS_EXPECTED)})", "{{queue}} expected")],
        description="Live workers consuming each queue (inspection), against the configured "
        "expectation (dashed).",
        dashed=".* expected$",
    )  # fmt: skip
    return b.build()


# --- Workers ---


def workers() -> model.Dashboard:
    """Liveness, load and capacity of each worker."""
    b = Board(
        uid="celery-workers",
        title="Celery / Workers",
        description="Worker liveness, active and reserved tasks, utilization, heartbeats, load.",
        filters=("worker",),
    )
    b.row("Liveness")
    b.timeline(
        "Worker up", [(f"max by (worker) ({b.sel(defs.WORKER_UP)})", "{{worker}}")],
        description="Up while heartbeats arrive on time; down after worker-offline or missed "
        "heartbeats (kept for --worker-retention-seconds).",
        states=UP_DOWN, width=16,
    )  # fmt: skip
    b.timeseries(
        "Workers up vs expected", "short",
        [(f"sum({b.sel(defs.WORKER_UP)})", "up"),
         (f"sum({b.sel(defs.WORKERS_EXPECTED)})", "expected")],
        description="Live workers against the configured expectation (dashed).",
        width=8, dashed="expected",
    )  # fmt: skip
    b.timeseries(
        "Heartbeat age", "s",
        [(f"time() - max by (worker) ({b.sel(defs.WORKER_LAST_HEARTBEAT)})", "{{worker}}"),
         (f"max by (worker) ({b.sel(defs.WORKER_HEARTBEAT_INTERVAL)})", "{{worker}} interval")],
        description="Time since each worker's last heartbeat, against its own heartbeat "
        "interval (dashed).",
        dashed=".* interval$",
    )  # fmt: skip
    b.table(
        "Queues consumed",
        [(f"max by (worker, queue) ({b.sel(defs.WORKER_CONSUMING)})", "")],
        description="Which queues each worker consumes, as learned by inspection.",
    )  # fmt: skip
    b.row("Capacity")
    b.timeseries(
        "Active tasks", "short",
        [(f"max by (worker) ({b.sel(defs.WORKER_TASKS_ACTIVE)})", "{{worker}}")],
        description="Tasks executing, as of each worker's last heartbeat.", width=8,
    )  # fmt: skip
    b.timeseries(
        "Concurrency", "short",
        [(f"max by (worker) ({b.sel(defs.WORKER_CONCURRENCY)})", "{{worker}}")],
        description="Pool size (max concurrency) of each worker, as learned by inspection.",
        width=8,
    )  # fmt: skip
    b.timeseries(
        "Utilization", "percentunit",
        [(f"max by (worker) ({b.sel(defs.WORKER_TASKS_ACTIVE)})"
          f" / (max by (worker) ({b.sel(defs.WORKER_CONCURRENCY)}) > 0)", "{{worker}}")],
        description="Active tasks over pool size.", width=8, max_val=1,
    )  # fmt: skip
    b.timeseries(
        "Reserved tasks", "short",
        [(f"max by (worker) ({b.sel(defs.WORKER_TASKS_RESERVED)})", "{{worker}}")],
        description="Tasks prefetched and not started, at the last inspection.", width=8,
    )  # fmt: skip
    b.timeseries(
        "Processed rate", "ops",
        [(f"sum by (worker) ({b.rate(defs.WORKER_TASKS_PROCESSED)})", "{{worker}}")],
        description="Tasks each worker accepts per second, from its heartbeats.", width=8,
    )  # fmt: skip
    b.timeseries(
        "Load average (1m)", "short",
        [(f"max by (worker) ({b.sel(defs.WORKER_LOAD1)})", "{{worker}}")],
        description="One-minute load average of each worker's host.", width=8,
    )  # fmt: skip
    b.row("Processes (worker sidecar, --sidecar)")
    b.timeseries(
        "Memory", "bytes",
        [(f"max by (worker) ({b.sel(defs.WORKER_MEMORY_RSS)})", "{{worker}}"),
         (f"max by (worker) ({b.sel(defs.WORKER_POOL_PROCESS_MAX_RSS)})",
          "{{worker}} largest pool process")],
        description="Resident memory of each worker's main and pool processes together, and of "
        "its largest pool process (dashed).",
        width=8, dashed=".* largest pool process$",
    )  # fmt: skip
    b.timeseries(
        "CPU", "percentunit",
        [(f"sum by (worker) ({b.rate(defs.WORKER_CPU)})", "{{worker}}")],
        description="Cores each worker's processes use, recycled pool processes included.",
        width=8,
    )  # fmt: skip
    b.timeseries(
        "Pool processes and replacements", "short",
        [(f"max by (worker) ({b.sel(defs.WORKER_POOL_PROCESSES)})", "{{worker}}"),
         (f"sum by (worker) ({b.increase(defs.WORKER_POOL_REPLACEMENTS)})", "{{worker}} replaced")],
        description="Live pool processes, and those that exited and were replaced (dashed): "
        "max_tasks_per_child or max_memory_per_child recycling, or crashes.",
        width=8, dashed=".* replaced$",
    )  # fmt: skip
    b.timeseries(
        "Worker restarts and /proc", "short",
        [(f"max by (worker) (changes({b.sel(defs.WORKER_START_TIME)}[{RATE_INTERVAL}]))",
          "{{worker}} restarted"),
         (f"min by (worker) ({b.sel(defs.WORKER_PROCESSES_VISIBLE)})", "{{worker}} visible")],
        description="Restarts of each worker's main process, and whether the sidecar sees its "
        "processes (0: the pod does not share its process namespace).",
        width=24,
    )  # fmt: skip
    return b.build()


# --- Exporter health ---


def exporter() -> model.Dashboard:
    """Is the exporter itself healthy: sources, events, state, pollers and collectors."""
    b = Board(
        uid="celery-exporter-health",
        title="Celery / Exporter health",
        description="The exporter's own health: event sources, event flow, state, pollers.",
        filters=(),
    )
    scope = f"{match('job')}, {match('namespace')}"
    b.row("Process")
    b.stat(
        "Exporters up", "none", [(f"sum(up{{{scope}}})", "up")],
        description="Exporter targets Prometheus scrapes successfully.", width=4,
    )  # fmt: skip
    b.table(
        "Build info",
        [(f"max by (instance, version, python_version, kombu_version)"
          f" ({b.sel(defs.BUILD_INFO)})", "")],
        description="Versions each exporter instance runs.", width=20, height=4,
    )  # fmt: skip
    b.timeline(
        "Event source connected",
        [(f"min by (instance, source) ({b.sel(defs.SOURCE_UP)})", "{{instance}} {{source}}")],
        description="Whether each event source is connected to the broker.", states=UP_DOWN,
    )  # fmt: skip
    b.timeseries(
        "Reconnects", "short",
        [(f"sum by (instance, source) ({b.increase(defs.SOURCE_RECONNECTS)})",
          "{{instance}} {{source}} reconnects"),
         (f"sum by (instance, source, reason) ({b.increase(defs.SOURCE_DISCONNECTS)})",
          "{{instance}} {{source}} disconnected: {{reason}}")],
        description="Broker connections re-established after a loss, and the disconnects "
        "the broker made by likely cause (slow_consumer: Redis cut off a subscriber that "
        "fell behind).",
    )  # fmt: skip
    b.row("Events")
    b.timeseries(
        "Events by type", "ops",
        [(f"sum by (type) ({b.rate(defs.EVENTS)})", "{{type}}")],
        description="Events applied per second, by event type.",
    )  # fmt: skip
    b.timeseries(
        "Dropped by reason", "ops",
        [(f"sum by (reason) ({b.rate(defs.EVENTS_DROPPED)})", "{{reason}}")],
        description="Event messages or events refused per second, by reason.",
    )  # fmt: skip
    b.timeseries(
        "Event lag", "s",
        [(f"max by (instance) ({b.sel(defs.EVENT_LAG)})", "{{instance}} lag"),
         (f"time() - max by (instance) ({b.sel(defs.LAST_EVENT)})", "{{instance}} since last")],
        description="Receive time minus sender time of the last event, and time since the last "
        "event's sender timestamp.",
        min_val=None,
    )  # fmt: skip
    b.timeseries(
        "Event buffer", "bytes",
        [(f"max by (instance) ({b.sel(defs.EVENT_BUFFER)})", "{{instance}}")],
        description="Bytes read from the broker and not yet decoded (Redis).",
    )  # fmt: skip
    state_rows(b)
    return b.build()


def state_rows(b: Board) -> None:
    """Correlation state, label limits, pollers, inspections and collectors."""
    b.row("State and labels")
    b.timeseries(
        "Tracked tasks", "short",
        [(f"max by (instance) ({b.sel(defs.TRACKED_TASKS)})", "{{instance}}")],
        description="Task ids remembered for correlation.", width=8,
    )  # fmt: skip
    b.timeseries(
        "Evictions by reason", "ops",
        [(f"sum by (reason) ({b.rate(defs.STATE_EVICTIONS)})", "{{reason}}")],
        description="Task ids forgotten per second: capacity (map full) or ttl (idle).", width=8,
    )  # fmt: skip
    b.timeseries(
        "Label overflow", "ops",
        [(f"sum by (label) ({b.rate(defs.LABEL_OVERFLOW)})", "{{label}}")],
        description="Label values folded into 'other' per second; raise the label's limit.",
        width=8,
    )  # fmt: skip
    b.row("Pollers and collectors")
    b.timeseries(
        "Time since poll success", "s",
        [(f"time() - max by (instance, poller) ({b.sel(defs.POLL_LAST_SUCCESS)})",
          "{{instance}} {{poller}}")],
        description="Time since each background poller last succeeded.", width=8,
    )  # fmt: skip
    b.timeseries(
        "Poll duration", "s",
        [(f"max by (instance, poller) ({b.sel(defs.POLL_DURATION)})", "{{instance}} {{poller}}")],
        description="How long each poller's last successful poll took.", width=8,
    )  # fmt: skip
    b.timeseries(
        "Poll errors", "short",
        [(f"sum by (instance, poller) ({b.increase(defs.POLL_ERRORS)})",
          "{{instance}} {{poller}}")],
        description="Failed polls per poller.", width=8,
    )  # fmt: skip
    b.timeseries(
        "Inspections by result", "short",
        [(f"sum by (result) ({b.increase(defs.INSPECTIONS)})", "{{result}}")],
        description="Worker inspections (broadcasts) made, by result.", width=8,
    )  # fmt: skip
    b.timeline(
        "Collector success",
        [(f"min by (instance, collector) ({b.sel(defs.COLLECTOR_SUCCESS)})",
          "{{instance}} {{collector}}")],
        description="Whether each collector's last scrape succeeded.", states=OK_FAILED,
        width=8,
    )  # fmt: skip
    b.timeseries(
        "Collector duration", "s",
        [(f"max by (instance, collector) ({b.sel(defs.COLLECTOR_DURATION)})",
          "{{instance}} {{collector}}")],
        description="How long each collector's last scrape took.", width=8,
    )  # fmt: skip


# File name -> the function building that dashboard.
DASHBOARDS: Mapping[str, Callable[[], model.Dashboard]] = {
    "overview.json": overview,
    "tasks.json": tasks,
    "queues.json": queues,
    "workers.json": workers,
    "exporter.json": exporter,
}


def render_all() -> dict[str, str]:
    """Every dashboard's file name and committed JSON text."""
    return {name: json_dumps(build()) for name, build in DASHBOARDS.items()}


def stale_files(directory: Path, rendered: Mapping[str, str]) -> list[str]:
    """Files in the directory that differ from the rendering, are missing or are not generated."""
    stale = [
        name
        for name, text in rendered.items()
        if not (directory / name).is_file() or (directory / name).read_text("utf-8") != text
    ]
    stale += sorted(p.name for p in directory.glob("*.json") if p.name not in rendered)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the dashboards, or with --check reports stale ones and returns 1."""
    parser = argparse.ArgumentParser(
        prog="python -m grafana.generate", description="Generate the Grafana dashboards."
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when any file is stale"
    )
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="output directory")
    args = parser.parse_args(argv)
    out: Path = args.out
    rendered = render_all()
    if args.check:
        stale = stale_files(out, rendered)
        if stale:
            sys.stderr.write(
                f"stale in {out}: {', '.join(stale)}; run python -m grafana.generate "
                "(and delete files it does not generate)\n"
            )
            return 1
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (out / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
