"""Redis reads for Beat liveness: the heartbeat key, and RedBeat's lock and schedule."""

from __future__ import annotations

import math
from typing import Any

import kombu
import redis

from exporter.state.beat import BeatReadings, BeatState, RedBeatReading, parse_heartbeat_value

NO_KEY = -2


class RedisBeatProbe:
    """One GET, and for RedBeat one PTTL and one ZRANGE, in a single pipelined round trip; when
    RedBeat's entries are watched, a second one reads each entry's definition and meta."""

    def __init__(
        self,
        *,
        url: str,
        transport_options: dict[str, Any],
        timeout: float,
        state: BeatState,
        heartbeat_key: str | None,
        heartbeat_format: str,
        redbeat_prefix: str | None,
        redbeat_lock_key: str | None,
        redbeat_entries: bool = False,
    ) -> None:
        options = {"socket_timeout": timeout, **transport_options}
        self._conn = kombu.Connection(url, transport_options=options, connect_timeout=timeout)
        self._state = state
        self._heartbeat_key = heartbeat_key
        self._heartbeat_format = heartbeat_format
        self._redbeat_prefix = redbeat_prefix
        self._redbeat_lock_key = redbeat_lock_key
        self._redbeat_entries = redbeat_entries
        self._client: Any = None
        self._key_prefix = ""

    def __call__(self) -> None:
        if self._client is None:
            channel: Any = self._conn.default_channel
            # kombu prefixes the SET the heartbeat task makes but not GET, and some commands
            # but not others: a plain client on its pool, keys prefixed here where they are.
            self._key_prefix = getattr(channel, "global_keyprefix", "") or ""
            self._client = redis.Redis(connection_pool=channel.client.connection_pool)
        try:
            readings = self._read()
        except Exception:
            self._client = None
            self._conn.release()
            raise
        self._state.update(readings)

    def _read(self) -> BeatReadings:
        pipe = self._client.pipeline(transaction=False)
        if self._heartbeat_key:
            pipe.get(self._key_prefix + self._heartbeat_key)
        if self._redbeat_prefix is not None:
            # RedBeat uses its own client: its keys never carry kombu's global prefix.
            pipe.pttl(self._redbeat_lock_key)
            last = -1 if self._redbeat_entries else 0
            pipe.zrange(f"{self._redbeat_prefix}:schedule", 0, last, withscores=True)
        results = list(pipe.execute())
        heartbeat = None
        if self._heartbeat_key:
            heartbeat = parse_heartbeat_value(results.pop(0), self._heartbeat_format)
        redbeat = None
        if self._redbeat_prefix is not None:
            pttl, first = results
            # PTTL: -2 no such key (nobody holds the lock), -1 held without expiry.
            lock_ttl = None if pttl == NO_KEY else math.inf if pttl < 0 else pttl / 1000.0
            next_due = float(first[0][1]) if first else None
            entries = self._read_entries([key for key, _ in first]) if self._redbeat_entries else ()
            redbeat = RedBeatReading(lock_ttl, next_due, entries)
        return BeatReadings(heartbeat, redbeat)

    def _read_entries(self, keys: list[bytes]) -> tuple[tuple[bytes | None, bytes | None], ...]:
        """Each scheduled entry's (definition, meta), from the hash RedBeat keeps per entry."""
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "definition", "meta")
        return tuple((definition, meta) for definition, meta in pipe.execute())

    def close(self) -> None:
        self._conn.release()
