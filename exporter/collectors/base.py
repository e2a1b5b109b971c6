"""What a collector is, and the wrapper that keeps one failing collector from failing a scrape."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Protocol

from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)


class Collector(Protocol):
    """Builds metric families from in-memory state; never does I/O."""

    def collect(self) -> Iterable[Metric]: ...


class CollectorResults:
    """Outcome and duration of each collector's last run, for the exporter's self-metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[str, tuple[bool, float]] = {}

    def record(self, name: str, *, ok: bool, seconds: float) -> None:
        with self._lock:
            self._results[name] = (ok, seconds)

    def read(self) -> dict[str, tuple[bool, float]]:
        with self._lock:
            return dict(self._results)


class Isolated:
    """Runs one collector, turning an exception into a log line and a 0 success gauge."""

    def __init__(self, name: str, inner: Collector, results: CollectorResults) -> None:
        self.name = name
        self._inner = inner
        self._results = results

    def collect(self) -> Iterable[Metric]:
        start = time.perf_counter()
        try:
            families = list(self._inner.collect())
        except Exception:  # supervision boundary: a broken collector must not break /metrics
            log.exception("collector %s failed", self.name)
            self._results.record(self.name, ok=False, seconds=time.perf_counter() - start)
            return []
        self._results.record(self.name, ok=True, seconds=time.perf_counter() - start)
        return families

    def describe(self) -> Iterable[Metric]:
        # Names come from metrics/defs.py and cannot clash; an empty describe keeps
        # register() from running a whole collect().
        return []
