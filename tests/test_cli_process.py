"""The real ``python -m exporter`` process: exit codes, broker outages, secrets, signals."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import bad_schedule_app
from tests import sample_app as sa
from tests.helpers import Expected, http_get, scrape, value, wait_for_metrics, wait_until
from tests.scenarios import wait_worker_up
from tests.services import (
    REPO_ROOT,
    ExporterFactory,
    ExporterProcess,
    ProducerFactory,
    RedisFactory,
    WorkerFactory,
    free_port,
)

PASSWORD = "secret"  # the value no output may contain
SETTLE_SECONDS = 40.0


def _python(*argv: str) -> subprocess.CompletedProcess[str]:
    """This interpreter run with ``argv`` in the repository, to its end."""
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
        check=False,
    )


@pytest.mark.parametrize(
    ("flag", "bad_value", "env"),
    [
        ("--port", "eighty", "CELERY_EXPORTER_PORT"),
        ("--inspect-interval-seconds", "-1", "CELERY_EXPORTER_INSPECT_INTERVAL_SECONDS"),
        ("--log-level", "LOUD", "CELERY_EXPORTER_LOG_LEVEL"),
        ("--task-duration-buckets", "2,1", "CELERY_EXPORTER_TASK_DURATION_BUCKETS"),
    ],
)
def test_bad_flag_value_exits_2_with_one_line(flag: str, bad_value: str, env: str) -> None:
    """A wrong flag value makes the process exit with code 2 at once, printing exactly one
    line on stderr that names the flag and its environment variable, and nothing on stdout."""
    result = _python("-m", "exporter", flag, bad_value)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0]
    assert env in lines[0]
    assert result.stdout == ""


def test_unreadable_beat_schedule_exits_2_naming_the_entry() -> None:
    """An --app whose beat_schedule holds an entry that is no Celery schedule (a cron string):
    the process exits with code 2 before serving, with one line on stderr naming the app and
    the entry, and nothing on stdout."""
    spec = "tests.bad_schedule_app:app"
    result = _python("-m", "exporter", "--app", spec, "--port", str(free_port()))
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        f"celery-exporter: error: --app {spec}: beat_schedule entry "
        f"{bad_schedule_app.BAD_ENTRY!r}: schedule '0 3 * * *' is not a Celery schedule "
        "(a number, timedelta, crontab, solar or other celery.schedules.BaseSchedule)"
    ]
    assert result.stdout == ""


def test_broker_down_keeps_serving_and_hides_the_password(
    exporter_factory: ExporterFactory,
) -> None:
    """With the broker down (closed port) the exporter keeps running: /healthz is 200, /readyz
    503, celery_exporter_source_up 0; the broker password never shows in stderr, /metrics or
    /readyz; SIGTERM then ends it with exit code 0 within 2 s."""
    url = f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}/0"
    exporter = exporter_factory(url, "--log-level", "DEBUG", wait_ready=False)

    wait_until(
        lambda: "lost the broker" in exporter.stderr(),
        20,
        lambda: f"no broker error logged; stderr:\n{exporter.stderr()}",
    )
    assert exporter.proc.poll() is None, exporter.stderr()
    assert http_get(exporter.url + "/healthz").status == 200
    ready = http_get(exporter.url + "/readyz")
    assert ready.status == 503, ready
    metrics = http_get(exporter.url + "/metrics")
    assert metrics.status == 200
    assert value(scrape(exporter.port), "celery_exporter_source_up", source="events") == 0
    assert PASSWORD not in ready.body
    assert PASSWORD not in metrics.body

    started = time.monotonic()
    returncode = exporter.terminate(timeout=2.0)
    elapsed = time.monotonic() - started
    assert returncode == 0, exporter.stderr()
    assert elapsed < 2.0
    assert PASSWORD not in exporter.stderr()


def test_the_started_process_serves_with_the_command_line_typed(tmp_path: Path) -> None:
    """One process: the pid that was started serves /healthz, with the command line and the
    interpreter options the user typed; SIGTERM ends it with 0 and the password never shows."""
    url = f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}/0"
    exporter = ExporterProcess(url, tmp_path, "--log-level", "DEBUG")
    exporter.argv[1:1] = ["-X", "faulthandler"]
    exporter.start()
    wait_until(
        lambda: http_get(exporter.url + "/healthz").status == 200,
        20,
        lambda: f"/healthz never answered; stderr:\n{exporter.stderr()}",
    )
    proc = Path("/proc", str(exporter.proc.pid))
    cmdline = (proc / "cmdline").read_bytes()
    assert cmdline.split(b"\0")[:-1] == [arg.encode() for arg in exporter.argv]
    # The standard process metrics describe this very process.
    samples = scrape(exporter.port)
    ticks = os.sysconf("SC_CLK_TCK")
    started = int((proc / "stat").read_text().rpartition(")")[2].split()[19]) / ticks
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    assert value(samples, "process_start_time_seconds") == pytest.approx(boot + started, abs=0.01)
    soft_fds = next(
        int(line.split()[3])
        for line in (proc / "limits").read_text().splitlines()
        if line.startswith("Max open files")
    )
    assert value(samples, "process_max_fds") == soft_fds
    assert value(samples, "python_info", version=platform.python_version()) == 1
    wait_until(lambda: "lost the broker" in exporter.stderr(), 20, exporter.stderr)
    assert exporter.terminate(timeout=2.0) == 0, exporter.stderr()
    assert PASSWORD not in exporter.stderr()


@pytest.mark.redis
def test_redis_restart_reconnects_and_counting_resumes(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    worker_factory: WorkerFactory,
    producer_factory: ProducerFactory,
) -> None:
    """Redis is killed after 3 tasks were counted and started again: the exporter reports
    source_up 0, then reconnects (celery_exporter_source_reconnects_total exactly 1, source_up
    1), and the 4 tasks sent afterwards are added exactly: 7 sent, received, started and
    succeeded."""
    redis = redis_factory()
    exporter = exporter_factory(redis.url)
    producer = producer_factory(redis.url)
    worker = worker_factory(redis.url, queues=[sa.QUEUE_A], pool="solo", name="restart")
    wait_worker_up(exporter, worker)

    def expect(count: int) -> Expected:
        labels = {"task": sa.OK, "queue": sa.QUEUE_A, "worker": worker.nodename}
        exp = Expected()
        exp.add("celery_task_sent_total", count, task=sa.OK, queue=sa.QUEUE_A)
        for name in ("received", "started", "succeeded"):
            exp.add(f"celery_task_{name}_total", count, **labels)
        return exp

    for i in range(3):
        producer.send_task(sa.OK, args=[i])
    wait_for_metrics(exporter.port, expect(3), SETTLE_SECONDS)

    redis.stop(kill=True)
    wait_until(
        lambda: value(scrape(exporter.port), "celery_exporter_source_up", source="events") == 0,
        10,
        "source_up did not drop to 0 with Redis killed",
    )
    redis.start()
    reconnected = Expected()
    reconnected.add("celery_exporter_source_up", 1, source="events")
    reconnected.add("celery_exporter_source_reconnects_total", 1, source="events")
    wait_for_metrics(exporter.port, reconnected, 20)

    for i in range(4):
        producer.send_task(sa.OK, args=[i])
    samples = wait_for_metrics(exporter.port, expect(7), SETTLE_SECONDS)
    reconnected.check(samples)
