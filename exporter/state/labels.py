"""Label values: bounded sets, cut to a maximum length, and the worker label modes."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from exporter.settings import Settings, WorkerLabel

log = logging.getLogger(__name__)

OVERFLOW = "other"
UNKNOWN = "unknown"
_SHARED = frozenset({OVERFLOW, UNKNOWN})  # values that take no slot of a limit

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


class LiveLabels:
    """Label values that come and go (workers, queues): at most ``limit`` alive at once.

    A value is held by the raw names mapped to it (nodenames for ``worker``, the queue itself
    for ``queue``) and lives while one of them was used lately; ``expire`` releases the rest
    and returns the values no name holds any more, whose series the caller removes, freeing
    their slots. Past the limit a new name folds into ``other`` and is not remembered (hostile
    input cannot grow this), so once slots free up its next use takes its own value.
    """

    def __init__(
        self,
        *,
        label: str,
        limit: int,
        max_length: int,
        value_of: Callable[[str], str] = str,
    ) -> None:
        self._label = label
        self._limit = limit
        self._max_length = max_length
        self._value_of = value_of
        self._value: dict[str, str] = {}  # raw name -> its value
        self._used: dict[str, float] = {}  # raw name -> last use, our clock
        self._holders: dict[str, int] = {}  # value -> raw names mapped to it
        self._overflowing = False
        self.overflow = 0  # uses folded into 'other'

    def __call__(self, raw: str, now: float) -> str:
        value = self._value.get(raw)
        if value is None:
            value = self._value_of(raw)[: self._max_length]
            if value not in self._holders and value not in _SHARED and self._full():
                self._fold()
                raw = value = OVERFLOW  # 'other' holds itself, for as long as folds come
            if raw not in self._value:
                self._hold(raw, value)
        self._used[raw] = now
        return value

    def _full(self) -> bool:
        """Whether as many values as the limit allows are held, 'other' and 'unknown' aside."""
        shared = sum(value in self._holders for value in _SHARED)
        return len(self._holders) - shared >= self._limit

    def touch(self, raw: str, now: float) -> None:
        """Mark a known name used without admitting it (a worker's heartbeat)."""
        if raw in self._used:
            self._used[raw] = now

    def _hold(self, raw: str, value: str) -> None:
        self._holders[value] = self._holders.get(value, 0) + 1
        self._value[raw] = value

    def _fold(self) -> None:
        self.overflow += 1
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "more than %d %s label values alive at once: new ones are exported as 'other' "
                "until older ones are released (celery_exporter_label_overflow_total{label=%r})",
                self._limit,
                self._label,
                self._label,
            )

    def expire(self, before: float, keep: Callable[[str], bool]) -> set[str]:
        """Release names last used before ``before`` (unless ``keep``); return freed values."""
        freed: set[str] = set()
        stale = [raw for raw, used in self._used.items() if used < before and not keep(raw)]
        for raw in stale:
            del self._used[raw]
            value = self._value.pop(raw)
            held = self._holders[value] - 1
            if held:
                self._holders[value] = held
                continue
            del self._holders[value]
            freed.add(value)
        if self._overflowing and not self._full():
            self._overflowing = False
            log.info("%s label values back under the limit of %d", self._label, self._limit)
        return freed

    @property
    def alive(self) -> int:
        """Distinct values alive, ``other`` and ``unknown`` included."""
        return len(self._holders)


class TaskLabels:
    """Every label value task metrics use, each through its limiter.

    Task names and exception classes do not churn: admitted once, they stay. Workers and
    queues come and go, and leave again (LiveLabels).
    """

    def __init__(self, settings: Settings) -> None:
        length = settings.max_label_length
        self.task = LabelLimiter(limit=settings.max_task_names, max_length=length)
        self.exception = LabelLimiter(limit=settings.max_exception_types, max_length=length)
        self.queue = LiveLabels(label="queue", limit=settings.max_queues, max_length=length)
        self.worker = LiveLabels(
            label="worker",
            limit=settings.max_workers,
            max_length=length,
            value_of=worker_label_function(settings),
        )

    def overflows(self) -> dict[str, int]:
        """Values folded into ``other``, by label name."""
        return {
            "task": self.task.overflow,
            "queue": self.queue.overflow,
            "worker": self.worker.overflow,
            "exception": self.exception.overflow,
        }
