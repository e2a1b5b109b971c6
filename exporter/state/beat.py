"""Beat liveness as the Redis-side probes last saw it (the event-side heartbeat lives in
TaskState's watched task names)."""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime
from typing import NamedTuple


class RedBeatReading(NamedTuple):
    lock_ttl: float | None  # seconds left on the lock; None when nobody holds it
    next_due: float | None  # unix time the most overdue schedule entry was due


class BeatReadings(NamedTuple):
    key_heartbeat: float | None  # unix time read from the heartbeat key
    redbeat: RedBeatReading | None


def parse_heartbeat_value(raw: bytes | str | None, fmt: str) -> float | None:
    """A heartbeat key's value as unix time: ``unix`` seconds, ``iso8601``, or ``auto``."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    if fmt in ("unix", "auto"):
        try:
            number = float(text)
        except ValueError:
            if fmt == "unix":
                return None
        else:
            return number if math.isfinite(number) else None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class BeatState:
    """Latest readings, swapped whole by the probe thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readings = BeatReadings(None, None)

    def update(self, readings: BeatReadings) -> None:
        with self._lock:
            self._readings = readings

    def read(self) -> BeatReadings:
        with self._lock:
            return self._readings
