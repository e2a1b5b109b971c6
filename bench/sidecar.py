"""What a worker sidecar costs at two event rates: ``python -m bench.sidecar [--seconds S]``.

The sidecar (``--sidecar``) reads no event stream: it pings for its worker, asks it alone for
stats, active and reserved, and reads its processes from /proc. Here the soak's stream (10
workers, heartbeats, failures and retries) is published at two rates into Redis, read by one
standalone exporter (for comparison), while one sidecar watches one real prefork worker
(3 pool processes) on the same Redis, at its default intervals. Per rate: the sidecar's CPU
and RSS, the Redis commands its connections issued (seen by MONITOR), the control messages it
published and the replies pushed to its reply queue, per minute; and the standalone's CPU.
The README's placement section quotes these figures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench.envelope import EnvelopeEncoder
from bench.procs import ExporterProcess, RedisServer
from bench.publish import Publisher, pack
from bench.report import MIB, Figure, Section, equals, finish, load_average, run_meta
from bench.soak import SPEC, TICK_SECONDS, tasks_per_second
from bench.truth import events_counted, events_per_message
from bench.workload import SimEvent, stream
from tests.services import local_ports

RATES = (1000.0, 5000.0)
SECONDS = 60.0
REPLY_QUEUE_SUFFIX = b".reply.celery.pidbox"
WORKER_APP = "tests.sample_app"


class _Monitor:
    """Redis MONITOR in a thread: commands from given client ports, and reply-queue pushes."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(b"MONITOR\r\n")
        self.lines: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        with contextlib.suppress(OSError):  # close() ends it
            while chunk := self._sock.recv(1 << 16):
                buffer += chunk
                *complete, buffer = buffer.split(b"\r\n")
                # The event stream's own PUBLISHes are many and not the sidecar's.
                self.lines.extend(
                    line for line in complete if b'"PUBLISH"' not in line or b"pidbox" in line
                )

    def close(self) -> None:
        self._sock.close()


def _count(lines: list[bytes], ports: set[int]) -> tuple[int, int, int]:
    """(commands from ``ports``, PUBLISHes from them, LPUSHes onto a reply queue)."""
    commands = published = replies = 0
    for line in lines:
        # +1700000000.123456 [0 127.0.0.1:40123] "LPUSH" "key" ...
        head, _, rest = line.partition(b"] ")
        port = int(head.rsplit(b":", 1)[-1]) if b":" in head else -1
        command = rest.split(b" ", 1)[0].strip(b'"').upper()
        if port in ports:
            commands += 1
            published += command == b"PUBLISH"
        if command == b"LPUSH" and REPLY_QUEUE_SUFFIX in rest:
            replies += 1
    return commands, published, replies


def _worker(url: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env["TEST_BROKER_URL"] = url
    argv = [sys.executable, "-m", "celery", "-A", WORKER_APP, "worker", "-E", "-c", "3"]
    argv += ["-n", f"bench@{socket.gethostname()}", "--without-gossip", "--without-mingle"]
    log = (workdir / "worker.log").open("wb")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def _publish(publisher: Publisher, rate: float, seconds: float) -> int:
    """The soak's stream at ``rate`` events/s for ``seconds``; the events published."""
    spec = dataclasses.replace(SPEC, tasks_per_second=tasks_per_second(rate))
    start = time.time()
    events = stream(spec, start + 0.5)
    encoder = EnvelopeEncoder(batched=True)
    upcoming = next(events)
    published = 0
    while (now := time.time()) < start + seconds:
        due: list[SimEvent] = []
        while upcoming.fields["timestamp"] <= now:
            due.append(upcoming)
            upcoming = next(events)
        sent = list(encoder.encode(due))
        for chunk in pack(sent, events_per_message(sent)):
            publisher.send(chunk)
            published += chunk.events
        time.sleep(max(0.0, now + TICK_SECONDS - time.time()))
    return published


def _measure(redis: RedisServer, rate: float, seconds: float) -> Section:
    section = Section(f"sidecar-{rate:.0f}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-sidecar-"))
    worker = _worker(redis.url, workdir)
    try:
        with contextlib.ExitStack() as stack:
            standalone = stack.enter_context(ExporterProcess(redis.url))
            sidecar = stack.enter_context(ExporterProcess(redis.url, ("--sidecar",)))
            _wait_watching(sidecar)
            publisher = Publisher(redis.port, subscribers=1)
            monitor = _Monitor(redis.port)
            before = [exporter.stats() for exporter in (standalone, sidecar)]
            began = time.monotonic()
            try:
                published = _publish(publisher, rate, seconds)
            finally:
                publisher.close()
            elapsed = time.monotonic() - began
            after = [exporter.stats() for exporter in (standalone, sidecar)]
            ports = local_ports(sidecar.pid)
            monitor.close()
            counted = events_counted(standalone.metrics())
            subscribed = _subscriptions(redis.port, ports)
    finally:
        worker.terminate()
        worker.wait(20)
    cores = [(a.cpu_seconds - b.cpu_seconds) / elapsed for a, b in zip(after, before, strict=True)]
    commands, requests, replies = _count(monitor.lines, ports)
    per_minute = 60.0 / elapsed
    add = section.add
    add(Figure("events_per_second", "events/s published", published / elapsed))
    # The real worker sends events of its own too.
    every = counted >= published
    add(equals("all_counted", "the standalone read every published event", every, True))
    add(Figure("standalone_cores", "standalone exporter, CPU", cores[0], "cores"))
    add(Figure("sidecar_cores", "worker sidecar, CPU", cores[1], "cores"))
    add(Figure("sidecar_rss_mib", "worker sidecar, RSS", after[1].rss / MIB, "MiB"))
    add(Figure("sidecar_commands_per_minute", "Redis commands from the sidecar, per minute",
               commands * per_minute))  # fmt: skip
    add(Figure("sidecar_sent_per_minute", "control messages the sidecar published, per minute",
               requests * per_minute))  # fmt: skip
    add(Figure("sidecar_replies_per_minute", "replies to the sidecar, per minute",
               replies * per_minute))  # fmt: skip
    add(equals("sidecar_subscriptions", "pub/sub subscriptions of the sidecar", subscribed, 0))
    return section


def _wait_watching(sidecar: ExporterProcess) -> None:
    """Until the sidecar exports its worker's pool processes."""
    deadline = time.monotonic() + 30
    while "celery_worker_pool_processes{" not in sidecar.metrics():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sidecar never found its worker:\n{sidecar.log_tail()}")
        time.sleep(0.5)


def _subscriptions(port: int, ports: set[int]) -> int:
    """Channels and patterns the clients on ``ports`` subscribe to (CLIENT LIST)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"CLIENT LIST\r\n")
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
            data += sock.recv(1 << 16)
    total = 0
    for line in data.decode().splitlines()[1:]:
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "addr" in fields and int(fields["addr"].rsplit(":", 1)[1]) in ports:
            total += int(fields["sub"]) + int(fields["psub"])
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sidecar", description=__doc__)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per rate (default 60)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    load = load_average()
    sections = []
    with RedisServer() as redis:
        for rate in RATES:
            print(f"{rate:.0f} events/s; 1 standalone exporter, 1 worker sidecar")
            sections.append(_measure(redis, rate, args.seconds))
    meta = run_meta(load, time.monotonic() - started)
    return finish(sections, meta, name="sidecar")


if __name__ == "__main__":
    sys.exit(main())
