"""The worker(s) of this pod, watched from inside it: targeted inspection and /proc.

No event stream: every ``inspect_interval`` the watcher asks only its own workers, by name,
for ``stats`` (the main pid); every ``proc_interval`` it reads their processes from /proc.
Liveness, concurrency, active and reserved tasks are the standalone exporter's series (from
heartbeats and its own inspection): exported here too, ``sum()`` over the job would count them
twice and live workers would look doubled. Its broker traffic is a constant per pod, whatever the
cluster's event rate. The workers' nodenames are given, or found by a ping that only workers
named ``*@<hostname>`` answer (the worker checks the pattern, so others stay silent), asked
at start-up, whenever a watched worker is silent or its main process is gone, and every
``DISCOVER_EVERY`` rounds for a worker started later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from typing import Any, NamedTuple

from kombu.pidbox import Mailbox

from exporter.inspect import ControlConnection, InspectStats, by_worker
from exporter.sidecar.pool import PoolSnapshot, PoolTracker
from exporter.sidecar.procfs import CLOCK_TICKS, ProcReader

log = logging.getLogger(__name__)

DISCOVER_EVERY = 10


class WorkerReport(NamedTuple):
    """One watched worker as the collector shows it."""

    visible: bool | None  # its main process is in our /proc (None: no pid learned yet)
    live: bool  # ``pool`` describes processes running now, not the last ones seen
    pool: PoolSnapshot | None
    started: float | None  # when the main process started (unix time)


def _main_pid(stats: Any) -> int | None:
    pid = stats.get("pid") if isinstance(stats, dict) else None
    return pid if type(pid) is int and pid > 0 else None


class SidecarWatcher:
    """Inspects the pod's workers and samples their processes; scrapes read ``reports()``."""

    def __init__(
        self,
        *,
        broker_url: str,
        transport_options: dict[str, Any],
        hostname: str,
        workers: list[str],
        inspect_interval: float,
        proc_interval: float,
        timeout: float,
        proc: ProcReader,
        stats: InspectStats,
    ) -> None:
        self._control = ControlConnection(broker_url, transport_options, timeout)
        self._pattern = f"*@{hostname}"
        self._fixed = bool(workers)
        self._names: list[str] = list(workers)
        self._inspect_interval = inspect_interval
        self._proc_interval = proc_interval
        self._timeout = timeout
        self._proc = proc
        self._boot_time = proc.boot_time()
        self.stats = stats
        self._rounds = 0
        self._rediscover = True
        self._urgent = False  # a main process went away: inspect at the next sample
        self._mains: dict[str, int] = {}
        self._answered: dict[str, Any] = {}
        self._trackers: dict[str, PoolTracker] = {}
        self._visible: dict[str, bool] = {}
        self._live: set[str] = set()  # workers whose main process the last sample found
        self._told_invisible = False
        # Our own pid and parent's: a worker pid naming one of them lives in another pid
        # namespace (its container's pid 1 is ours too), not in ours.
        self._ourselves = {os.getpid(), os.getppid()}
        self._lock = threading.Lock()
        self._reports: dict[str, WorkerReport] = {}
        self.connected = False

    def reports(self) -> dict[str, WorkerReport]:
        with self._lock:
            return dict(self._reports)

    async def run(self, stop: asyncio.Event) -> None:
        """Inspect every inspect_interval (sooner when a worker is lost) and sample /proc every
        proc_interval, until ``stop``."""
        next_round = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_round or self._urgent:
                self._urgent = False
                next_round = time.monotonic() + self._inspect_interval
                try:
                    await asyncio.to_thread(self._inspect)
                    self.connected = True
                    self.stats.add("ok")
                except Exception as err:  # noqa: BLE001 - supervision boundary: broker may be down
                    self.connected = False
                    self.stats.add("error")
                    self._control.drop()
                    log.warning("worker inspection failed: %s", err)
            try:
                await asyncio.to_thread(self._sample)
            except Exception:  # supervision boundary: /proc must not stop the watcher
                log.exception("reading the workers' processes failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._proc_interval)

    def _inspect(self) -> None:
        mailbox = self._control.mailbox()
        try:
            if not self._fixed and (self._rediscover or self._rounds % DISCOVER_EVERY == 0):
                self._discover(mailbox)
            self._rounds += 1
            if not self._names:
                return
            stats = self._ask(mailbox, "stats")
        finally:
            mailbox.unclaimed.clear()  # late replies are kept by ticket, never asked for again
        self._answered = {name: stats[name] for name in self._names if name in stats}
        for name, reply in self._answered.items():
            pid = _main_pid(reply)
            if pid is not None:
                self._mains[name] = pid
        self._rediscover = len(self._answered) < len(self._names)
        with self._lock:
            self._reports = {
                name: WorkerReport(
                    visible=self._visible.get(name),
                    live=name in self._live,
                    pool=self._trackers[name].snapshot if name in self._trackers else None,
                    started=None,
                )
                for name in self._names
            }
        self._publish()

    def _discover(self, mailbox: Mailbox) -> None:
        # Celery's own control calls it too: the public calls take no pattern.
        replies = mailbox._broadcast(
            "ping", reply=True, timeout=self._timeout, pattern=self._pattern, matcher="glob"
        )
        found = sorted(by_worker(replies))
        # A worker once watched stays (celery_worker_up 0 while it is silent).
        names = sorted({*self._names, *found})
        if names != self._names:
            log.info("watching worker(s) %s", ", ".join(names))
        self._names = names

    def _ask(self, mailbox: Mailbox, command: str) -> dict[str, Any]:
        return by_worker(mailbox.call(self._names, command, timeout=self._timeout))

    def _sample(self) -> None:
        live: set[str] = set()
        for name, pid in list(self._mains.items()):
            # The main process first: a pool process reaped after this read is still counted
            # among the children read next, never twice.
            main = None if pid in self._ourselves else self._proc.process(pid)
            if main is None:
                self._lost(name, pid)
                continue
            self._visible[name] = True
            tracker = self._trackers.setdefault(name, PoolTracker())
            tracker.sample(main, self._proc.children(pid))
            live.add(name)
        self._live = live
        self._publish()

    def _publish(self) -> None:
        """The reports with the latest samples in them."""
        with self._lock:
            self._reports = {
                name: report._replace(
                    visible=self._visible.get(name),
                    live=name in self._live,
                    pool=self._trackers[name].snapshot if name in self._trackers else None,
                    started=self._started(name),
                )
                for name, report in self._reports.items()
            }

    def _started(self, name: str) -> float | None:
        tracker = self._trackers.get(name)
        if tracker is None or tracker.snapshot is None or self._boot_time is None:
            return None
        return self._boot_time + tracker.snapshot.main_start_ticks / CLOCK_TICKS

    def _lost(self, name: str, pid: int) -> None:
        """The worker's main process is not in our /proc: it restarted, or never was there."""
        if self._visible.get(name):
            # It was here: the worker restarted (or stopped). Ask again for its new pid.
            log.info("worker %s: main process %d is gone", name, pid)
            del self._mains[name]
            self._rediscover = self._urgent = True
            return
        self._visible[name] = False
        if not self._told_invisible:
            self._told_invisible = True
            log.warning(
                "worker %s: its main process (pid %d) is not in %s; the worker's processes "
                "are not visible here: run this exporter in the worker's pod with "
                "shareProcessNamespace: true (celery_worker_processes_visible is 0)",
                name,
                pid,
                self._proc.root,
            )

    def close(self) -> None:
        self._control.drop()
