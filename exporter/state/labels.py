"""Label values: bounded sets, cut to a maximum length, and the worker label modes."""

from __future__ import annotations

import re
from collections.abc import Callable

from exporter.settings import Settings, WorkerLabel

OVERFLOW = "other"
UNKNOWN = "unknown"

_WORKER_CACHE_SIZE = 10_000
_EXCEPTION_CLASS = re.compile(r"\s*([A-Za-z_][\w.]*)")


class LabelLimiter:
    """Admits at most ``limit`` distinct values; later ones fold into ``other`` and are counted.

    Overflowing values are not remembered, so hostile input cannot grow the cache either.
    """

    def __init__(self, *, limit: int, max_length: int) -> None:
        self._limit = limit
        self._max_length = max_length
        self._admitted: dict[str, str] = {}
        self.overflow = 0

    def __call__(self, raw: str) -> str:
        value = self._admitted.get(raw)
        if value is not None:
            return value
        if len(self._admitted) >= self._limit:
            self.overflow += 1
            return OVERFLOW
        value = raw[: self._max_length]
        self._admitted[raw] = value
        return value


def exception_class(text: str | None) -> str:
    """The class name at the head of an exception repr: ``ValueError('x')`` -> ``ValueError``."""
    if not text:
        return UNKNOWN
    match = _EXCEPTION_CLASS.match(text)
    return match.group(1).rsplit(".", 1)[-1] if match else UNKNOWN


def worker_label_function(settings: Settings) -> Callable[[str], str]:
    """Map a worker nodename (``celery@host-1``) to the ``worker`` label of task metrics."""
    mode = settings.worker_label
    if mode is WorkerLabel.FULL:
        return lambda nodename: nodename
    if mode is WorkerLabel.HOST:
        return lambda nodename: nodename.rpartition("@")[2]
    if mode is WorkerLabel.NONE:
        return lambda _nodename: ""
    assert settings.worker_label_regex is not None  # enforced by Settings
    pattern = re.compile(settings.worker_label_regex)
    group = "group" if "group" in pattern.groupindex else 1

    def by_group(nodename: str) -> str:
        match = pattern.search(nodename)
        return (match.group(group) or nodename) if match else nodename

    return by_group


class WorkerFilter:
    """Sidecar mode: which worker nodenames this exporter speaks for (all when no pattern)."""

    def __init__(self, pattern: str | None) -> None:
        self.active = pattern is not None
        self._pattern = re.compile(pattern) if pattern is not None else None
        self._cache: dict[str, bool] = {}

    def __call__(self, nodename: str) -> bool:
        if self._pattern is None:
            return True
        matched = self._cache.get(nodename)
        if matched is None:
            if len(self._cache) >= _WORKER_CACHE_SIZE:
                self._cache.clear()
            matched = self._cache[nodename] = self._pattern.search(nodename) is not None
        return matched


class TaskLabels:
    """Every label value task metrics use, each through its limiter, worker values cached."""

    def __init__(self, settings: Settings) -> None:
        length = settings.max_label_length
        self.task = LabelLimiter(limit=settings.max_task_names, max_length=length)
        self.queue = LabelLimiter(limit=settings.max_queues, max_length=length)
        self._worker_limiter = LabelLimiter(limit=settings.max_workers, max_length=length)
        self.exception = LabelLimiter(limit=settings.max_exception_types, max_length=length)
        self._worker_of = worker_label_function(settings)
        self._worker_cache: dict[str, str] = {}

    def worker(self, nodename: str) -> str:
        value = self._worker_cache.get(nodename)
        if value is None:
            value = self._worker_limiter(self._worker_of(nodename))
            if len(self._worker_cache) >= _WORKER_CACHE_SIZE:
                # Autoscaled pods bring new nodenames forever; recomputing is cheap.
                self._worker_cache.clear()
            if value != OVERFLOW:
                self._worker_cache[nodename] = value
        return value

    def overflows(self) -> dict[str, int]:
        """Values folded into ``other``, by label name."""
        return {
            "task": self.task.overflow,
            "queue": self.queue.overflow,
            "worker": self._worker_limiter.overflow,
            "exception": self.exception.overflow,
        }
