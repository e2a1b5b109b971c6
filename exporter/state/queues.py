"""Queue depth as the last broker poll saw it, and which queues are worth polling."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import NamedTuple


class QueueReading(NamedTuple):
    """One queue at one poll; None where the broker cannot tell."""

    length: int
    by_priority: dict[int, int]
    unacked: int | None = None
    oldest_message_at: float | None = None  # unix time the oldest waiting message was sent
    oldest_unacked_at: float | None = None  # unix time the oldest unacked one was delivered
    consumers: int | None = None
    consumer_utilisation: float | None = None  # RabbitMQ management API, 0..1


class QueueState:
    """The latest readings (swapped whole by the poller) and the queues learned over time."""

    def __init__(self, *, configured: Iterable[str], forget_after: float) -> None:
        self._lock = threading.Lock()
        self._readings: dict[str, QueueReading] = {}
        self.configured = tuple(dict.fromkeys(configured))
        self._forget_after = forget_after
        self._last_seen: dict[str, float] = {}

    def publish(self, readings: dict[str, QueueReading]) -> None:
        with self._lock:
            self._readings = readings

    def read(self) -> dict[str, QueueReading]:
        with self._lock:
            return self._readings

    def targets(self, seen: Iterable[str], now: float) -> list[str]:
        """Queues to poll: configured ones always, others while seen within ``forget_after``."""
        for queue in seen:
            self._last_seen[queue] = now
        deadline = now - self._forget_after
        self._last_seen = {q: t for q, t in self._last_seen.items() if t >= deadline}
        return list(dict.fromkeys([*self.configured, *self._last_seen]))
