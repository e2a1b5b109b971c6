"""Collectors and the exposition: a fixed state rendered and compared with tests/golden/.

``UPDATE_GOLDEN=1 python -m pytest tests/test_unit_collectors.py`` rewrites the golden file.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import kombu
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.collectors.base import CollectorResults, Isolated
from exporter.collectors.registry import build_registry
from exporter.collectors.sidecar import SidecarCollector
from exporter.config import load_settings
from exporter.events.model import TaskEvent, WorkerEvent
from exporter.events.status import SourceStatus
from exporter.inspect import Inspector, InspectStats
from exporter.metrics import defs
from exporter.pipeline import EventPipeline
from exporter.poller import Poller
from exporter.sidecar.pool import PoolSnapshot
from exporter.sidecar.watcher import WorkerReport
from exporter.state.beat import BeatReadings, BeatState, RedBeatReading, periodic_state
from exporter.state.queues import QueueReading, QueueState
from exporter.state.routing import QueueResolver
from exporter.state.tasks import TaskState
from exporter.state.workers import WorkerState
from tests.helpers import Clock

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"
SIDECAR_GOLDEN = Path(__file__).parent / "golden" / "sidecar.txt"
PROMTOOL_HINT = "promtool not found: apt-get install prometheus"
T0 = 1_700_000_000.0
W1 = "celery@worker-1"
W2 = "celery@worker-2"
PRODUCER = "gen4242@web-1"


pytestmark = pytest.mark.usefixtures("clean_environment")


class Exporter:
    """Everything the daemon wires between the broker and /metrics, minus the broker."""

    def __init__(self, *, inspector: bool = True, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "task_duration_buckets": "0.5,1,5",
            "task_queue_wait_buckets": "1,10,60",
            # process_* change between two scrapes: their own test collects once.
            "collector_process": False,
        }
        values.update(overrides)
        self.settings = settings = load_settings(values)
        self.clock = Clock(T0)
        self.resolver = QueueResolver()
        tasks = TaskState.from_settings(settings, resolver=self.resolver)
        workers = WorkerState.from_settings(settings)
        self.inspector: Inspector | None = None
        if inspector:
            self.inspector = Inspector(
                broker_url="memory://",
                transport_options={},
                interval=60.0,
                timeout=1.0,
                resolver=self.resolver,
                live_workers=lambda: 0,
                stats=InspectStats(),
            )
        self.pipeline = EventPipeline(
            tasks=tasks,
            workers=workers,
            clock=self.clock,
            max_event_bytes=settings.max_event_bytes,
            on_worker_gone=self.resolver.forget_worker,
        )
        self.source = SourceStatus("redis")
        self.beat: BeatState | None = None
        self.pollers: list[Poller] = []
        if settings.collector_beat and settings.beat_redis_sources():
            self.beat = BeatState()
            self.pollers.append(
                Poller(
                    name="beat",
                    probe=self._probe,
                    interval=10.0,
                    timeout=5.0,
                    clock=self.clock,
                )
            )
        self.beat_readings = BeatReadings(None, None)
        self.queues: QueueState | None = None
        if settings.collector_queues:
            self.queues = QueueState(
                configured=settings.queues, forget_after=settings.queue_forget_seconds
            )
        self.registry = build_registry(
            settings=settings,
            view=self.pipeline.view,
            resolver=self.resolver,
            sources=[self.source],
            inspector=self.inspector,
            beat=self.beat,
            periodic=periodic_state(
                settings.periodic_tasks,
                {},
                grace=settings.periodic_task_grace_seconds,
                started=T0,
            ),
            redbeat_entries=None,
            queues=self.queues,
            pollers=self.pollers,
            clock=self.clock,
        )

    def _probe(self) -> None:
        """Stands in for the Redis Beat probe: publishes the readings set on the harness."""
        assert self.beat is not None
        self.beat.update(self.beat_readings)

    def task(self, etype: str, uuid: str, ts: float, host: str = W1, **fields: Any) -> None:
        self.pipeline.apply([TaskEvent(f"task-{etype}", uuid, host, ts, **fields)])

    def worker(self, etype: str, host: str, ts: float, *fields: Any) -> None:
        self.pipeline.apply([WorkerEvent(f"worker-{etype}", host, ts, *fields)])

    def render(self) -> str:
        return generate_latest(self.registry).decode("utf-8")


def fixed_state() -> Exporter:
    """A small but complete state: every metric family has at least one series."""
    e = Exporter(
        beat_redis_key="celery_beat_heartbeat",
        beat_redbeat=True,
        periodic_tasks='{"app.tasks.report": 60, "app.tasks.nightly": 86400}',
        queues="default,priority",
        queue_priority_metrics=True,
        task_sla_seconds='{"app.tasks.report": 30}',
        workers_expected=2,
        # W2 consumes two queues: its tasks wait for a task-sent that never comes, released
        # by the sweeps below with queue "unknown".
        task_name_wait_seconds=0,
        workers_expected_per_queue='{"default": 2, "priority": 1}',
    )
    c = e.clock
    assert e.inspector is not None
    e.resolver.set_worker_queues({W1: ("default",), W2: ("default", "priority")})
    e.resolver.set_worker_queues({"celery@ghost": ("default",)})  # never seen: not exported
    e.inspector.concurrency = {W1: 4, W2: 8, "celery@ghost": 2}
    e.inspector.reserved = {W1: 1, W2: 0}
    for result in ("ok", "ok", "error"):
        e.inspector.stats.add(result)
    e.source.connected = True
    e.source.reconnects = 1
    e.source.buffered_bytes = 512

    e.worker("online", W1, T0, 2.0, 0, 0, 0.25)
    e.worker("online", W2, T0, 2.0, 0, 0, 1.5)
    # succeeded, with task-sent: queue from the producer
    e.task("sent", "a", T0, host=PRODUCER, name="app.tasks.add", queue="default")
    e.task("received", "a", T0 + 0.5, name="app.tasks.add")
    e.task("started", "a", T0 + 2)
    e.task("succeeded", "a", T0 + 2.75, runtime=0.75)
    # failed, without task-sent: queue from the worker's single queue
    e.task("received", "b", T0 + 1, name="app.tasks.charge")
    e.task("started", "b", T0 + 1.5)
    e.task("failed", "b", T0 + 4, exception="billing.errors.CardDeclined('4242')")
    # retried then succeeded
    e.task("sent", "c", T0, host=PRODUCER, name="app.tasks.fetch", queue="priority")
    e.task("received", "c", T0 + 1, host=W2, name="app.tasks.fetch")
    e.task("started", "c", T0 + 1, host=W2)
    e.task("retried", "c", T0 + 2, host=W2, exception="Retry('503')")
    e.task("sent", "c", T0 + 2, host=W2, name="app.tasks.fetch", queue="priority")
    e.task("received", "c", T0 + 3, host=W2, name="app.tasks.fetch")
    e.task("started", "c", T0 + 30, host=W2)
    e.task("succeeded", "c", T0 + 31, host=W2, runtime=1.0)
    # hard time limit
    e.task("received", "d", T0 + 5, name="app.tasks.slow")
    e.task("started", "d", T0 + 5)
    e.task("failed", "d", T0 + 65, exception="TimeLimitExceeded(60,)")
    # revoked before any worker received it; rejected by a worker
    e.task("sent", "e", T0, host=PRODUCER, name="app.tasks.add", queue="default")
    e.task("revoked", "e", T0 + 1)
    e.task("received", "f", T0 + 1, name="app.tasks.cleanup")
    e.task("rejected", "f", T0 + 2)
    # a worker lost under task_reject_on_worker_lost: rejected, then delivered again
    e.task("received", "i", T0 + 6, name="app.tasks.add", retries=0)
    e.task("started", "i", T0 + 6.5)
    e.task("rejected", "i", T0 + 7)
    e.task("received", "i", T0 + 8, name="app.tasks.add", retries=0)
    e.task("started", "i", T0 + 8.5)
    e.task("succeeded", "i", T0 + 9, runtime=0.5)
    # retried, then out of retries
    e.task("received", "k", T0 + 10, name="app.tasks.charge", retries=0)
    e.task("started", "k", T0 + 10)
    e.task("retried", "k", T0 + 11, exception="Retry('declined')")
    e.task("received", "k", T0 + 12, name="app.tasks.charge", retries=1)
    e.task("started", "k", T0 + 12)
    e.task("failed", "k", T0 + 13, exception="billing.errors.CardDeclined('4242')")
    # running on W1 when it restarts under the same name: orphaned
    e.task("received", "j", T0 + 14, name="app.tasks.slow")
    e.task("started", "j", T0 + 14)
    c.now = T0 + 20
    e.worker("online", W1, T0 + 20, 2.0, 0, 0, 0.25)
    # still running on W2, seen at T0 + 40 and T0 + 70
    c.now = T0 + 40
    e.worker("heartbeat", W2, T0 + 40, 2.0, 1, 5, 1.25)
    e.task("received", "g", T0 + 39, host=W2, name="app.tasks.report")
    e.task("started", "g", T0 + 40, host=W2)
    e.pipeline.sweep()
    c.now = T0 + 70
    # W1 keeps beating, W2 goes quiet at T0 + 70 (down from T0 + 76)
    e.worker("heartbeat", W2, T0 + 70, 2.0, 2, 6, 1.25)
    e.task("received", "h", T0 + 69, host=W2, name="app.tasks.report")
    e.task("started", "h", T0 + 70, host=W2)
    e.pipeline.sweep()
    # Beat: its heartbeat task through events, the key and RedBeat through the poller
    e.task("sent", "beat-1", T0 + 60, host="beat@scheduler", name="exporter.beat.heartbeat",
           queue="celery")  # fmt: skip
    e.beat_readings = BeatReadings(T0 + 90, RedBeatReading(lock_ttl=1400.0, next_due=T0 + 95))
    for poller in e.pollers:
        asyncio.run(poller.poll_once())
    # the broker's queues as the queue poller last read them
    assert e.queues is not None
    e.queues.publish(
        {
            "default": QueueReading(
                length=12,
                by_priority={0: 10, 3: 2},
                unacked=3,
                oldest_message_at=T0 + 40,
                oldest_unacked_at=T0 + 90,
                consumers=2,
            ),
            "priority": QueueReading(length=0, by_priority={0: 0}),
        }
    )
    # a custom event and refused messages
    e.pipeline.feed_bodies([(b'{"type": "task-progress", "hostname": "w", "timestamp": 1}', None)])
    e.pipeline.feed_redis([b"not json", b"[]"])
    e.pipeline.feed_bodies([(b"\x80\x04.", "application/x-python-serialize")])
    c.now = T0 + 99
    e.worker("heartbeat", W1, T0 + 99, 2.0, 0, 5, 0.5)
    c.now = T0 + 100
    return e


_BUILD_INFO = re.compile(r"^celery_exporter_build_info\{.*\} 1\.0$", re.M)
_DURATION = re.compile(
    r"^(celery_exporter_(?:collector|poll)_duration_seconds\{[^}]*\}) \S+$", re.M
)


def normalise(text: str) -> str:
    """Replace what varies between runs: the versions and the collectors' own run time."""
    text = _BUILD_INFO.sub(
        'celery_exporter_build_info{kombu_version="KOMBU",python_version="PYTHON",'
        'version="VERSION"} 1.0',
        text,
    )
    return _DURATION.sub(r"\1 0.0", text)


def promtool_check(exposition: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(PROMTOOL_HINT, pytrace=False)
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_golden_exposition() -> None:
    """The fixed state renders exactly tests/golden/metrics.txt (versions and timings masked)."""
    rendered = normalise(fixed_state().render())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(rendered, encoding="utf-8")
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing: run with UPDATE_GOLDEN=1", pytrace=False)
    assert rendered == GOLDEN.read_text(encoding="utf-8")


class _Watcher:
    """What the sidecar collector asks of its watcher: fixed reports."""

    def reports(self) -> dict[str, WorkerReport]:
        pool = PoolSnapshot(
            main_pid=4242, main_start_ticks=100, pool_processes=3, replacements=4,
            cpu_seconds=12.5, rss_bytes=300 << 20, largest_pool_rss_bytes=90 << 20,
        )  # fmt: skip
        return {
            W1: WorkerReport(True, True, pool, T0),
            # not shared /proc: no pids, no process series
            W2: WorkerReport(False, False, None, None),
        }


def sidecar_page() -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SidecarCollector(cast(Any, _Watcher())))
    return generate_latest(registry).decode("utf-8")


def test_sidecar_golden_exposition() -> None:
    """A worker sidecar's fixed reports render exactly tests/golden/sidecar.txt."""
    rendered = sidecar_page()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        SIDECAR_GOLDEN.write_text(rendered, encoding="utf-8")
    assert rendered == SIDECAR_GOLDEN.read_text(encoding="utf-8")


def test_build_info_names_the_running_versions() -> None:
    """celery_exporter_build_info carries the exporter, Python and kombu versions, value 1."""
    text = fixed_state().render()
    (line,) = _BUILD_INFO.findall(text)
    assert line == (
        f'celery_exporter_build_info{{kombu_version="{kombu.__version__}",'
        f'python_version="{platform.python_version()}",version="{__version__}"}} 1.0'
    )


def test_promtool_accepts_the_golden_file() -> None:
    """promtool check metrics (the real binary) accepts the golden exposition without remarks."""
    result = promtool_check(GOLDEN.read_text(encoding="utf-8"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_promtool_accepts_the_live_rendering() -> None:
    """promtool also accepts the exposition as rendered, unmasked."""
    result = promtool_check(fixed_state().render())
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_running_gauges_and_oldest_age() -> None:
    """celery_task_running counts unfinished tasks; the oldest age runs from when we saw it."""
    e = fixed_state()
    reg = e.registry
    labels = {"task": "app.tasks.report", "queue": "unknown"}
    assert reg.get_sample_value("celery_task_running", labels) == 2.0
    assert reg.get_sample_value("celery_task_oldest_running_age_seconds", labels) == 60.0
    e.clock.now = T0 + 130
    assert reg.get_sample_value("celery_task_oldest_running_age_seconds", labels) == 90.0
    e.task("succeeded", "g", T0 + 131, host=W2, runtime=91.0)
    assert reg.get_sample_value("celery_task_running", labels) == 1.0
    assert reg.get_sample_value("celery_task_oldest_running_age_seconds", labels) == 60.0
    # Idle: 0, not absent, for a task and queue that ran.
    idle = {"task": "app.tasks.add", "queue": "default"}
    assert reg.get_sample_value("celery_task_running", idle) == 0.0
    assert reg.get_sample_value("celery_task_oldest_running_age_seconds", idle) == 0.0


def test_worker_series_follow_worker_state() -> None:
    """celery_worker_up is 1 for a beating worker, 0 for a quiet one, and both are exported."""
    e = fixed_state()
    reg = e.registry
    assert reg.get_sample_value("celery_worker_up", {"worker": W1}) == 1.0
    assert reg.get_sample_value("celery_worker_up", {"worker": W2}) == 0.0
    assert reg.get_sample_value("celery_worker_consuming", {"worker": "celery@ghost"}) is None
    assert reg.get_sample_value("celery_worker_concurrency", {"worker": "celery@ghost"}) is None
    assert reg.get_sample_value("celery_worker_tasks_active", {"worker": W2}) == 2.0


def test_disabled_collectors_export_nothing_of_theirs() -> None:
    """--no-collector-tasks/--no-collector-workers drop those families; self-metrics stay."""
    e = Exporter(inspector=False, collector_tasks=False, collector_workers=False)
    e.task("received", "a", T0, name="x")
    e.worker("online", W1, T0, 2.0, 0, 0, 0.0)
    names = {name for name, _ in _samples(e.registry)}
    assert {n for n in names if not n.startswith("celery_exporter_")} == set()
    assert ("celery_exporter_events_total", (("type", "task-received"),)) in _samples(e.registry)


def test_hostile_task_name_renders_a_valid_cut_exposition() -> None:
    """A 10 kB task name with newlines, quotes and backslashes is cut and escaped correctly."""
    e = Exporter(inspector=False)
    name = ('evil"\n\\task{le="1"} 1\n# TYPE x counter\n' * 400)[:10_240]
    assert len(name) == 10_240
    e.task("sent", "a", T0, host=PRODUCER, name=name, queue='q"\n')
    e.task("received", "a", T0, name=name)
    e.task("started", "a", T0)
    e.task("failed", "a", T0 + 1, exception="ValueError('\"\\n')")
    text = e.render()
    cut = name[: e.settings.max_label_length]
    assert len(cut) == 200
    samples = _samples(e.registry)
    assert samples[("celery_task_sent_total", (("queue", 'q"\n'), ("task", cut)))] == 1.0
    key = (("queue", 'q"\n'), ("task", cut), ("worker", W1))
    assert samples[("celery_task_received_total", key)] == 1.0
    assert samples[("celery_task_started_total", key)] == 1.0
    failed = (("exception", "ValueError"), *key)
    assert samples[("celery_task_failed_total", failed)] == 1.0
    # Every line is a comment or one sample: nothing the name holds broke the framing.
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ", "celery_")), line
    result = promtool_check(text)
    assert (result.returncode, result.stderr) == (0, "")


class _Broken:
    def collect(self) -> Iterable[Metric]:
        raise RuntimeError("boom")


def test_failing_collector_is_isolated() -> None:
    """A collector that raises yields nothing and is recorded as failed, without raising."""
    results = CollectorResults()
    isolated = Isolated("broken", _Broken(), results)
    assert list(isolated.collect()) == []
    ok, seconds = results.read()["broken"]
    assert ok is False
    assert isinstance(seconds, float)
    assert list(isolated.describe()) == []


def test_golden_file_covers_every_defined_metric() -> None:
    """Every metric of metrics/defs.py is in a golden file, with its declared type."""
    pages = GOLDEN.read_text(encoding="utf-8") + SIDECAR_GOLDEN.read_text(encoding="utf-8")
    kinds = {family.name: family.type for family in text_string_to_metric_families(pages)}
    # The parser names counter families without their _total suffix.
    declared = {d.name.removesuffix("_total") if d.kind == "counter" else d.name: d.kind
                for d in defs.ALL}  # fmt: skip
    assert kinds == declared


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_fast_rendering_matches_client_python(
    openmetrics: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter's own renderer writes exactly what client_python's generate_latest writes
    for the same families (text format and OpenMetrics), hostile label values included, and
    cutting the page into chunks (here after every 200 characters) changes nothing."""
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest

    from exporter.metrics import family
    from exporter.metrics.family import render

    monkeypatch.setattr(family, "CHUNK_CHARS", 200)

    e = fixed_state()
    e.task("received", "hostile", T0, name='a "quoted"\\name\nwith newline', host=W1)
    list(e.registry.collect())  # the self-metrics report the collectors' previous run
    expected = (om_latest if openmetrics else generate_latest)(e.registry).decode()
    rendered = render(e.registry.collect(), openmetrics=openmetrics).decode()
    assert normalise(rendered) == normalise(expected)


class _Collected:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_process_and_platform_families_render_as_client_python_writes_them(
    openmetrics: bool,
) -> None:
    """With the process collector on, /metrics has client_python's standard process_* and
    python_info families, written exactly as client_python writes them, beside ours."""
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest

    from exporter.metrics.family import render

    e = Exporter(collector_process=True)
    families = list(e.registry.collect())
    names = {family.name for family in families}
    assert {
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_cpu_seconds",
        "process_open_fds",
        "process_max_fds",
        "python_info",
    } <= names
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(families))
    expected = (om_latest if openmetrics else generate_latest)(registry).decode()
    assert render(families, openmetrics=openmetrics).decode() == expected


class _EdgeFamilies:
    """Families whose rows take every path of the renderer: labels sorted before and after
    "le", none at all, one, hostile values, counts past a million, floats, infinities."""

    def collect(self) -> Iterable[Metric]:
        from exporter.metrics.family import HistogramFamily, ScalarFamily

        bounds = ["0.5", "1.0", "+Inf"]
        around = HistogramFamily("celery_test_seconds", "Doc.", ["exception", "task"], bounds)
        around.add_metric(["KeyError", 'a "b"\\c\nd'], [1, 2, 3], 0.1 + 0.2)
        around.add_metric(["ValueError", "t"], [999_999, 1, 0], 1e9)
        around.add_metric(["ValueError", "u"], [0, 0, 0], 0)
        yield around
        bare = HistogramFamily("celery_test_bare_seconds", "Doc.", [], bounds)
        bare.add_metric([], [3, 0, 2_000_000], 12.5)
        yield bare
        one = ScalarFamily("celery_test_total", "Doc.", "counter", ["task"])
        one.add_rows([(["t"], 1_000_000), (['q"uoted'], 2.5), (["n"], 0)])
        yield one
        none = ScalarFamily("celery_test_ratio", "Doc.", "gauge", [])
        none.add_metric([], float("inf"))
        yield none


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_fast_rendering_edge_cases_match_client_python(openmetrics: bool) -> None:
    """Rows outside the fixed state's range render as client_python renders them too."""
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest

    from exporter.metrics.family import render

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EdgeFamilies())
    expected = (om_latest if openmetrics else generate_latest)(registry).decode()
    assert render(registry.collect(), openmetrics=openmetrics).decode() == expected
    # The rows really cross a million: Go's formatting switches to an exponent there.
    assert 'le="+Inf"} 2.000003e+06' in expected and 'le="1.0",task="t"} 1e+06' in expected


def test_histogram_refuses_counts_that_do_not_match_its_buckets() -> None:
    from exporter.metrics.family import HistogramFamily

    family = HistogramFamily("celery_test_seconds", "Doc.", [], ["1.0", "+Inf"])
    with pytest.raises(ValueError, match="3 counts for 2 buckets"):
        family.add_metric([], [1, 2, 3], 0.0)
