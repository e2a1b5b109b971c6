"""The processes the benchmark runs: a private redis-server and the real exporter."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.02)


class ProcStats(NamedTuple):
    """What /proc says about a process: CPU seconds (user+system) and memory in bytes."""

    cpu_seconds: float
    rss: int
    peak_rss: int


def proc_stats(pid: int) -> ProcStats:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    memory: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0]) * 1024
    return ProcStats(cpu, memory["VmRSS"], memory["VmHWM"])


class _Process:
    """A child process with a log file, stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# redis-server samples each client's output buffer in its cron, hz times a second, for INFO's
# client_recent_max_output_buffer; its default 10 could miss all of a 0.1 s burst.
REDIS_HZ = 500


class RedisServer:
    """redis-server with its default configuration apart from port, dir, persistence and hz."""

    def __init__(self) -> None:
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self._process: _Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> Self:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self._dir)]
        argv += ["--hz", str(REDIS_HZ)]
        self._process = _Process("redis", argv, self._dir)
        _wait_port(self.port, 10)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class Response(NamedTuple):
    status: int
    body: bytes


class HttpProcess:
    """A child process serving HTTP on ``port``, ready once ``ready_path`` answers 200."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str) -> None:
        self.name = name
        self.port = port
        self._dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self._argv = argv
        self._ready_path = ready_path
        self._process: _Process | None = None
        self._http: http.client.HTTPConnection | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> Self:
        self._process = _Process(self.name, self._argv, self._dir)
        self._wait_ready(30)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            self._http.close()
        if self._process is not None:
            self._process.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            self._process.check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get(self._ready_path).status == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        """One GET over a kept-alive connection (reconnecting once if it was closed)."""
        for attempt in (1, 2):
            if self._http is None:
                self._http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self._http.request("GET", path, headers=headers or {})
                response = self._http.getresponse()
                return Response(response.status, response.read())
            except (OSError, http.client.HTTPException):
                self._http.close()
                self._http = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def metrics(self) -> str:
        response = self.get("/metrics")
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
        return response.body.decode()

    def stats(self) -> ProcStats:
        return proc_stats(self.pid)

    def check_alive(self) -> None:
        """Raise with the end of its log if the process has exited."""
        assert self._process is not None
        self._process.check_alive()

    def log_tail(self) -> str:
        return self._process.log_tail() if self._process is not None else ""


class ExporterProcess(HttpProcess):
    """``python -m exporter`` against a Redis URL, on a free port, inspection off."""

    def __init__(self, broker_url: str, extra_args: tuple[str, ...] = ()) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "exporter", "--broker-url", broker_url]
        argv += ["--port", str(port), "--host", "127.0.0.1"]
        argv += ["--inspect-interval-seconds", "0", *extra_args]
        super().__init__("exporter", argv, port, "/readyz")
