"""Background polling: run a blocking probe in a thread every interval, never on a scrape."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger(__name__)


class PollStats(NamedTuple):
    last_success: float | None
    duration: float | None
    errors: int


class Poller:
    """Calls ``probe`` every ``interval`` seconds in a worker thread; failures are counted and
    logged once per outage, and the probe's last good result stays in place meanwhile."""

    def __init__(
        self,
        *,
        name: str,
        probe: Callable[[], None],
        interval: float,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self._probe = probe
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._last_success: float | None = None
        self._duration: float | None = None
        self._errors = 0
        self._failing = False

    def stats(self) -> PollStats:
        with self._lock:
            return PollStats(self._last_success, self._duration, self._errors)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            await self.poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)

    async def poll_once(self) -> None:
        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._probe), self._timeout)
        except Exception as err:  # noqa: BLE001 - supervision boundary: the broker may be down
            with self._lock:
                self._errors += 1
            if not self._failing:
                # One line per outage; the traceback adds nothing to "connection refused".
                log.error("%s poll failed: %s: %s", self.name, type(err).__name__, err)  # noqa: TRY400
            self._failing = True
            return
        finished = self._clock()
        with self._lock:
            self._last_success = finished
            self._duration = time.perf_counter() - start
        if self._failing:
            log.warning("%s poll recovered", self.name)
        self._failing = False
