"""Connection status an event source publishes for /readyz and the self-metrics."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class SourceStatus:
    """Whether a source is connected, how often it reconnected, and what it holds unread.

    Written by the source's thread, read by scrapes: single attribute writes, no lock needed.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = False
        self.connected_at = 0.0  # unix time of the latest (re)connection
        self.reconnects = 0
        self.buffered_bytes = 0
        self.disconnects: dict[str, int] = {}  # by reason; written by the source thread only
        self._ever_connected = False
        self._lost_at: float | None = None

    def mark_connected(self, where: str) -> None:
        """Record a (re)connection; logs the outage it ends, once."""
        if self._ever_connected:
            self.reconnects += 1
            outage = time.monotonic() - (self._lost_at or time.monotonic())
            log.warning("%s source reconnected to %s after %.1f s", self.name, where, outage)
        else:
            log.info("%s source connected to %s", self.name, where)
        self._ever_connected = True
        self._lost_at = None
        self.connected_at = time.time()
        self.connected = True

    def disconnected(self, reason: str) -> None:
        """Count a connection the broker ended, by its likely cause."""
        self.disconnects = {**self.disconnects, reason: self.disconnects.get(reason, 0) + 1}

    def mark_lost(self, reason: str) -> None:
        """Record a lost connection; logged on the first failure of an outage only."""
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            log.error("%s source lost the broker: %s; reconnecting", self.name, reason)
        else:
            log.debug("%s source still cannot reach the broker: %s", self.name, reason)
        self.connected = False
        self.buffered_bytes = 0
