"""Queue depth as the last broker poll saw it, and which queues are worth polling."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import NamedTuple

_REFUSED_REMEMBERED = 10_000


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

    def __init__(
        self, *, configured: Iterable[str], forget_after: float, max_queues: int = 500
    ) -> None:
        self._lock = threading.Lock()
        self._readings: dict[str, QueueReading] = {}
        self.configured = tuple(dict.fromkeys(configured))
        self._forget_after = forget_after
        self._max_learned = max(0, max_queues - len(self.configured))
        self._last_seen: dict[str, float] = {}
        self.refused = 0  # learned queues not polled because max_queues was reached
        self._refused: set[str] = set()

    def publish(self, readings: dict[str, QueueReading]) -> None:
        with self._lock:
            self._readings = readings

    def read(self) -> dict[str, QueueReading]:
        with self._lock:
            return self._readings

    def targets(self, seen: Iterable[str], now: float) -> list[str]:
        """Queues to poll: configured ones always, others while seen within ``forget_after``.

        A queue whose last reading still holds messages counts as seen: a stuck queue that no
        producer names any more must not drop out of celery_queue_length (and its alerts).
        """
        deadline = now - self._forget_after
        for queue, reading in self.read().items():
            if queue in self._last_seen and (reading.length or reading.unacked):
                self._last_seen[queue] = now
        self._last_seen = {q: t for q, t in self._last_seen.items() if t >= deadline}
        for queue in seen:
            if queue in self._last_seen or len(self._last_seen) < self._max_learned:
                self._last_seen[queue] = now
            elif queue not in self.configured and queue not in self._refused:
                # Every series is bounded: past max_queues, newly learned queues wait until
                # others are forgotten. Each such queue is counted once.
                if len(self._refused) < _REFUSED_REMEMBERED:
                    self._refused.add(queue)
                self.refused += 1
        return list(dict.fromkeys([*self.configured, *self._last_seen]))
