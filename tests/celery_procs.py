"""Real ``celery worker`` and ``celery beat`` processes with any app and any options.

tests/services.py's CeleryWorker runs tests.sample_app with fixed options; the Beat and worker
utilization tests need other apps (tests.beat_app), Beat itself, a given pool size and extra
worker flags. Processes run in their own process group (killed whole) and are all killed by
``CeleryProcesses.close()``.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from celery.utils.nodenames import host_format

from tests import sample_app
from tests.services import _child_env, _Process, log_tail, worker_args


class CeleryProcess:
    """``python -m celery -A <app> <command> ...`` with the broker in ``TEST_BROKER_URL``."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.argv = [sys.executable, "-m", "celery", *argv]
        self.env = env
        self.log_path = workdir / f"{name}.log"
        self._process = _Process(name, self.log_path)

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def pid(self) -> int:
        assert self._process.proc is not None, f"{self.name} is not running"
        return self._process.proc.pid

    def start(self) -> None:
        self._process.spawn(self.argv, env=self.env)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (warm shutdown) or SIGKILL (a crash); the whole process group goes."""
        self._process.stop(kill=kill, timeout=20)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return log_tail(self.log_path, 60)


class CeleryWorkerProcess(CeleryProcess):
    """A worker with events on (-E); ``nodename`` is what the exporter labels it with."""

    def __init__(self, workdir: Path, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        super().__init__(workdir, name, argv, env)
        self.nodename: str = host_format(f"{name}@%h")


class CeleryProcesses:
    """Starts workers and Beats on one broker; ``close()`` stops every one still running."""

    def __init__(self, broker_url: str, workdir: Path) -> None:
        self.broker_url = broker_url
        self.workdir = workdir
        self._started: list[CeleryProcess] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **_child_env(),
            sample_app.BROKER_ENV: self.broker_url,
            sample_app.SEND_SENT_EVENT_ENV: "1",
            **extra,
        }

    def worker(
        self,
        *,
        app: str = "tests.sample_app",
        queues: Sequence[str],
        pool: str = "prefork",
        concurrency: int = 2,
        name: str = "e2e",
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> CeleryWorkerProcess:
        """Start ``celery -A app worker -E`` with a 1 s heartbeat, no gossip, no mingle."""
        unique = f"{name}-{uuid.uuid4().hex[:8]}"
        argv = [*worker_args(app, f"{unique}@%h", queues, pool, concurrency), *extra]
        worker = CeleryWorkerProcess(self.workdir, unique, argv, env or self.env())
        self._started.append(worker)
        worker.start()
        return worker

    def beat(
        self,
        *,
        app: str = "tests.beat_app",
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        name: str = "beat",
    ) -> CeleryProcess:
        """Start ``celery -A app beat`` with its schedule file in the work dir, no pidfile."""
        argv = [
            "-A", app, "beat",
            "-s", str(self.workdir / f"{name}-schedule"),
            "--pidfile=",
            "--loglevel", "INFO",
            *extra,
        ]  # fmt: skip
        beat = CeleryProcess(self.workdir, name, argv, env or self.env())
        self._started.append(beat)
        beat.start()
        return beat

    def close(self) -> None:
        """Kill (SIGKILL) every process still running: tests end on throwaway brokers, and a
        prefork worker's warm shutdown costs seconds."""
        for process in self._started:
            process.stop(kill=True)


ProcsFactory = Callable[[str], CeleryProcesses]
