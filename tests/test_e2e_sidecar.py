"""The worker sidecar end to end: a real prefork worker recycling its pool processes, the real
exporter with --sidecar on the same host (so its /proc shows the worker's processes), real
redis-server and rabbitmq-server; values checked against /proc and the tasks' own pids.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.samples import Sample

from tests import sample_app as sa
from tests.celery_procs import CeleryWorkerProcess, ProcsFactory
from tests.helpers import scrape, value, wait_until
from tests.services import (
    ExporterFactory,
    ExporterProcess,
    RabbitMQServer,
    RedisFactory,
    local_ports,
)

CONCURRENCY = 3
MAX_TASKS_PER_CHILD = 2
TASKS = 12
# Every pool process that exits has run two tasks of this length: it lives longer than the
# sidecar's sampling interval below, so the sidecar sees each one.
TASK_SECONDS = 0.4
SIDECAR_ARGS = (
    "--sidecar",
    "--sidecar-proc-interval-seconds", "0.1",
    "--sidecar-inspect-interval-seconds", "1",
)  # fmt: skip
SETTLE_SECONDS = 30.0
RSS_TOLERANCE = 0.15

POOL = "celery_worker_pool_processes"
REPLACED = "celery_worker_pool_process_replacements_total"
RSS = "celery_worker_memory_rss_bytes"
LARGEST = "celery_worker_pool_process_max_rss_bytes"
CPU = "celery_worker_cpu_seconds_total"
VISIBLE = "celery_worker_processes_visible"
STARTED = "celery_worker_start_time_seconds"


def _start_time(pid: int) -> float:
    """When the process started, unix time: boot time plus its start in clock ticks."""
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    stat = Path(f"/proc/{pid}/stat").read_text()
    return boot + int(stat[stat.rindex(")") + 2 :].split()[19]) / os.sysconf("SC_CLK_TCK")


def _status_rss(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status (not the stat file the sidecar reads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # a zombie has no memory


def _tree_rss(main: int) -> tuple[int, int]:
    """Resident memory of ``main`` and its children summed, and the largest child's (the main
    process's when it has none)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if f"\nPPid:\t{main}\n" in status:
                children.append(_status_rss(int(entry.name)))
    main_rss = _status_rss(main)
    return main_rss + sum(children), max(children, default=main_rss)


def _metric(samples: list[Sample], name: str, worker: CeleryWorkerProcess) -> float | None:
    return value(samples, name, worker=worker.nodename)


def _wait(
    exporter: ExporterProcess, worker: CeleryWorkerProcess, want: dict[str, float]
) -> list[Sample]:
    """Scrape until every metric of ``want`` has exactly that value for the worker."""
    samples: list[Sample] = []

    def reached() -> bool:
        nonlocal samples
        samples = scrape(exporter.port)
        return all(_metric(samples, name, worker) == v for name, v in want.items())

    wait_until(
        reached,
        SETTLE_SECONDS,
        lambda: (
            f"want {want}, got {[(n, _metric(samples, n, worker)) for n in want]}\n"
            f"worker log:\n{worker.log()}\nexporter stderr:\n{exporter.stderr()}"
        ),
    )
    return samples


def _rss_mismatch(exporter: ExporterProcess, worker: CeleryWorkerProcess) -> str | None:
    """Whether the sidecar's memory figures are within 15% of /proc's, read right after the
    scrape: None, or what differs."""
    samples = scrape(exporter.port)
    total, largest = _tree_rss(worker.pid)
    reported = _metric(samples, RSS, worker)
    reported_largest = _metric(samples, LARGEST, worker)
    if reported is None or abs(reported - total) > RSS_TOLERANCE * total:
        return f"{RSS} {reported}, /proc {total}"
    if reported_largest is None or abs(reported_largest - largest) > RSS_TOLERANCE * largest:
        return f"{LARGEST} {reported_largest}, /proc {largest}"
    return None


def _run_tasks(app: Any, count: int, pids: Path) -> list[int]:
    """Send ``count`` record_pid tasks and wait until all have run; the pid of each."""
    done = len(pids.read_text().split()) if pids.exists() else 0
    for _ in range(count):
        app.send_task(sa.RECORD_PID, args=[str(pids), TASK_SECONDS])

    def finished() -> bool:
        return pids.exists() and len(pids.read_text().split()) == done + count

    wait_until(finished, SETTLE_SECONDS, "the record_pid tasks did not all run")
    return [int(pid) for pid in pids.read_text().split()]


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """(kind, server): a private redis-server, or the session's rabbitmq-server."""
    if request.param == "redis":
        factory: RedisFactory = request.getfixturevalue("redis_factory")
        yield "redis", factory()
    else:
        yield "rabbitmq", request.getfixturevalue("rabbitmq_server")


def _assert_no_event_subscription(kind: str, server: Any, exporter: ExporterProcess) -> None:
    """The sidecar neither subscribes to Redis pub/sub nor has an event queue on RabbitMQ."""
    ports = local_ports(exporter.proc.pid)
    if kind == "redis":
        client = redis.Redis(port=server.port)
        try:
            mine = [c for c in client.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]
            assert mine, "the sidecar's Redis connections were not found"
            assert [(c["sub"], c["psub"]) for c in mine] == [("0", "0")] * len(mine)
        finally:
            client.close()
        return
    assert isinstance(server, RabbitMQServer)
    request = urllib.request.Request(server.management_url + "/api/queues")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    with urllib.request.urlopen(request, timeout=10) as response:
        queues = json.loads(response.read())
    assert [q["name"] for q in queues if q["name"].startswith("celeryev")] == []


def test_sidecar_follows_pool_recycling_and_a_restart(
    broker: tuple[str, Any],
    celery_procs: ProcsFactory,
    exporter_factory: ExporterFactory,
    producer_factory: Any,
    tmp_path: Path,
) -> None:
    """Pool size, replacements (from the tasks' own pids), memory against /proc, CPU rising,
    no event subscription, and a restarted worker followed with its counters continuing."""
    kind, server = broker
    worker = celery_procs(server.url).worker(
        queues=[sa.QUEUE_A],
        concurrency=CONCURRENCY,
        extra=["--max-tasks-per-child", str(MAX_TASKS_PER_CHILD)],
        name="sidecar",
    )
    exporter = exporter_factory(server.url, *SIDECAR_ARGS)
    _wait(
        exporter,
        worker,
        {STARTED: _start_time(worker.pid), POOL: CONCURRENCY, REPLACED: 0, VISIBLE: 1},
    )
    before = _metric(scrape(exporter.port), CPU, worker)
    assert before is not None

    app = producer_factory(server.url)
    pids = _run_tasks(app, TASKS, tmp_path / "pids")
    # A pool process exits after its second task and the pool starts another in its place.
    replaced = sum(1 for runs in Counter(pids).values() if runs == MAX_TASKS_PER_CHILD)
    assert replaced >= TASKS // MAX_TASKS_PER_CHILD - CONCURRENCY
    samples = _wait(exporter, worker, {POOL: CONCURRENCY, REPLACED: replaced})
    # Liveness, concurrency, active and reserved are the standalone exporter's series.
    for name in ("celery_worker_up", "celery_worker_concurrency", "celery_worker_tasks_active"):
        assert _metric(samples, name, worker) is None, name
    assert _rss_mismatch(exporter, worker) is None
    after = _metric(samples, CPU, worker)
    assert after is not None and after > before
    # The worker's own CPU time is an upper bound of what was reported before it.
    main = Path(f"/proc/{worker.pid}/stat").read_text()
    ticks = sum(int(v) for v in main[main.rindex(")") + 2 :].split()[11:15])
    assert after <= ticks / os.sysconf("SC_CLK_TCK") + CONCURRENCY * TASK_SECONDS * 2
    _assert_no_event_subscription(kind, server, exporter)

    old_pid = worker.pid
    worker.restart()
    assert worker.pid != old_pid
    # Followed: the start time is the new main process's, the figures its process tree's.
    samples = _wait(
        exporter,
        worker,
        {STARTED: _start_time(worker.pid), POOL: CONCURRENCY, REPLACED: replaced, VISIBLE: 1},
    )
    assert _rss_mismatch(exporter, worker) is None
    restarted = _metric(samples, CPU, worker)
    assert restarted is not None and restarted >= after
    pids = _run_tasks(app, MAX_TASKS_PER_CHILD * CONCURRENCY, tmp_path / "pids")
    since_restart = Counter(pids[TASKS:])
    replaced += sum(1 for runs in since_restart.values() if runs == MAX_TASKS_PER_CHILD)
    _wait(exporter, worker, {POOL: CONCURRENCY, REPLACED: replaced})
    assert "Traceback" not in exporter.stderr()


@pytest.mark.redis
@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_sidecar_pools_without_child_processes(
    pool: str,
    redis_factory: RedisFactory,
    celery_procs: ProcsFactory,
    exporter_factory: ExporterFactory,
) -> None:
    """threads and solo run tasks in the main process: no pool processes, its memory alone."""
    server = redis_factory()
    concurrency = 1 if pool == "solo" else 4
    worker = celery_procs(server.url).worker(
        queues=[sa.QUEUE_A], pool=pool, concurrency=concurrency, name=pool
    )
    exporter = exporter_factory(server.url, *SIDECAR_ARGS)
    samples = _wait(exporter, worker, {POOL: 0, VISIBLE: 1})
    assert _rss_mismatch(exporter, worker) is None
    assert _metric(samples, REPLACED, worker) == 0


@pytest.mark.redis
def test_sidecar_without_the_workers_processes_says_so(
    redis_factory: RedisFactory,
    celery_procs: ProcsFactory,
    exporter_factory: ExporterFactory,
    tmp_path: Path,
) -> None:
    """A /proc that does not show the worker (an empty directory here, another pid namespace in
    a pod without shareProcessNamespace): one log line, visible 0, the inspection still works."""
    server = redis_factory()
    worker = celery_procs(server.url).worker(queues=[sa.QUEUE_A], concurrency=2, name="hidden")
    empty = tmp_path / "proc"
    empty.mkdir()
    exporter = exporter_factory(server.url, *SIDECAR_ARGS, "--sidecar-proc-root", str(empty))
    samples = _wait(exporter, worker, {VISIBLE: 0})
    for name in (POOL, RSS, CPU, REPLACED):
        assert _metric(samples, name, worker) is None, name
    # Several inspection rounds (and dozens of samples) later, still the one line.
    wait_until(
        lambda: (
            (value(scrape(exporter.port), "celery_exporter_inspections_total", result="ok") or 0)
            >= 4
        ),
        SETTLE_SECONDS,
        "fewer than 4 inspection rounds",
    )
    assert exporter.stderr().count("not visible here") == 1, exporter.stderr()
