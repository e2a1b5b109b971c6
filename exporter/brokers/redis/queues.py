"""Redis queue depth, read the way kombu lays queues out.

kombu keeps a queue as one list per priority step (``queue``, ``queue<sep>3``, ...; step 0 is
the bare name and is consumed first), pushes on the left and pops on the right, records
bindings in ``_kombu.binding.<exchange>`` sets, and keeps delivered-but-unacked messages in the
DB-wide ``unacked`` hash and ``unacked_index`` sorted set (names the ``unacked_key`` and
``unacked_index_key`` transport options can change). Every key carries the transport's
``global_keyprefix``, which kombu adds itself only for some commands, so this module uses a
plain client on kombu's connection pool and prefixes every key itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import kombu
import orjson
import redis

from exporter.state.queues import QueueReading, QueueState

log = logging.getLogger(__name__)

# Exchanges of Celery's own plumbing, not task queues.
_SKIPPED_SUFFIXES = (".pidbox",)
SCAN_COUNT = 1000


def parse_binding(member: bytes, sep: str) -> tuple[str, str] | None:
    """``routing_key<sep>pattern<sep>queue`` -> (routing_key, queue)."""
    parts = member.decode("utf-8", "replace").split(sep)
    if len(parts) != 3 or not parts[2]:
        return None
    return parts[0], parts[2]


def queue_key(queue: str, step: int, *, prefix: str, sep: str) -> str:
    """The list holding ``queue``'s messages of priority step ``step``, as kombu names it."""
    return f"{prefix}{queue}{sep}{step}" if step else f"{prefix}{queue}"


def message_task_id(raw: bytes | None) -> str | None:
    """The task id in a kombu envelope (protocol 2 puts it in the headers)."""
    if not raw:
        return None
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) else None


class RedisQueueProbe:
    """Polls every known queue in one pipelined round trip."""

    def __init__(
        self,
        *,
        url: str,
        transport_options: dict[str, Any],
        timeout: float,
        state: QueueState,
        events_exchange: str,
        seen_queues: Callable[[], Iterable[str]],
        sent_times: Callable[[list[str]], dict[str, float]],
        sent_seen: Callable[[], bool],
        clock: Callable[[], float],
        discovery_interval: float,
        max_unacked_scan: int,
    ) -> None:
        options = {"socket_timeout": timeout, **transport_options}
        self._conn = kombu.Connection(url, transport_options=options, connect_timeout=timeout)
        self._state = state
        self._events_exchange = events_exchange
        self._seen_queues = seen_queues
        self._sent_times = sent_times
        self._sent_seen = sent_seen
        self._clock = clock
        self._discovery_interval = discovery_interval
        self._max_unacked_scan = max_unacked_scan
        self._client: Any = None
        self._prefix = ""
        self._sep = "\x06\x16"
        self._steps: list[int] = [0]
        self._next_discovery = 0.0
        self._discovered: list[str] = []
        self._routes: dict[tuple[str, str], str] = {}
        self._last_unacked = 0
        self._unacked_key = "unacked"
        self._unacked_index_key = "unacked_index"

    def _connect(self) -> None:
        channel: Any = self._conn.default_channel
        self._prefix = getattr(channel, "global_keyprefix", "") or ""
        self._sep = channel.sep
        self._steps = sorted(set(channel.priority_steps)) or [0]
        # Renamed by the unacked_key / unacked_index_key transport options.
        self._unacked_key = f"{self._prefix}{channel.unacked_key}"
        self._unacked_index_key = f"{self._prefix}{channel.unacked_index_key}"
        # Same pool (URL, TLS, Sentinel), without kombu's partial key prefixing.
        self._client = redis.Redis(connection_pool=channel.client.connection_pool)

    def __call__(self) -> None:
        if self._client is None:
            self._connect()
        try:
            now = self._clock()
            if now >= self._next_discovery:
                self._discover()
                self._next_discovery = now + self._discovery_interval
            targets = self._state.targets([*self._discovered, *self._seen_queues()], now)
            self._state.publish(self._poll(targets, now))
        except Exception:
            self._client = None
            self._conn.release()
            raise

    def key(self, queue: str, step: int) -> str:
        """The list holding ``queue``'s messages of priority step ``step``."""
        return queue_key(queue, step, prefix=self._prefix, sep=self._sep)

    def _discover(self) -> None:
        """Queues named in kombu's binding tables, and how routing keys map to them."""
        pattern = f"{self._prefix}_kombu.binding.*"
        keys = [
            key.decode()
            for key in self._client.scan_iter(match=pattern, count=SCAN_COUNT)
            if not key.decode().endswith(_SKIPPED_SUFFIXES)
        ]
        exchanges = [key[len(pattern) - 1 :] for key in keys]
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.smembers(key)
        queues: dict[str, None] = {}
        routes: dict[tuple[str, str], str] = {}
        for exchange, members in zip(exchanges, pipe.execute(), strict=True):
            if exchange == self._events_exchange or exchange.startswith("reply."):
                continue
            for member in members:
                parsed = parse_binding(member, self._sep)
                if parsed is not None:
                    routing_key, queue = parsed
                    queues[queue] = None
                    routes.setdefault((exchange, routing_key), queue)
        self._discovered, self._routes = list(queues), routes

    def _poll(self, targets: list[str], now: float) -> dict[str, QueueReading]:
        steps = self._steps
        # A waiting message's age is known only from its task-sent: without task-sent events
        # reading the oldest messages (whole) would be wasted work.
        tails_wanted = self._sent_seen()
        pipe = self._client.pipeline(transaction=False)
        for queue in targets:
            for step in steps:
                key = self.key(queue, step)
                pipe.llen(key)
                if tails_wanted:
                    pipe.lindex(key, -1)  # the consuming end: the oldest message
        pipe.hlen(self._unacked_key)
        # The unacked hash is read whole only while it stayed small at the previous poll,
        # so a huge backlog of prefetched messages cannot make every poll expensive.
        scan_unacked = 0 < self._last_unacked <= self._max_unacked_scan
        if scan_unacked:
            pipe.hgetall(self._unacked_key)
            pipe.zrange(self._unacked_index_key, 0, -1, withscores=True)
        results = pipe.execute()
        unacked = self._unacked(results[-2], results[-1]) if scan_unacked else {}
        self._last_unacked = results[-3] if scan_unacked else results[-1]
        stride = 2 if tails_wanted else 1
        per_queue = len(steps) * stride
        tails: dict[str, list[str]] = {}
        readings: dict[str, QueueReading] = {}
        for index, queue in enumerate(targets):
            chunk = results[index * per_queue : (index + 1) * per_queue]
            by_priority = {step: chunk[i * stride] for i, step in enumerate(steps)}
            if tails_wanted:
                tails[queue] = [tid for tid in map(message_task_id, chunk[1::2]) if tid]
            count, oldest_delivery = unacked.get(queue, (0, None))
            readings[queue] = QueueReading(
                length=sum(by_priority.values()),
                by_priority=by_priority,
                unacked=count if scan_unacked or not self._last_unacked else None,
                oldest_unacked_at=oldest_delivery,
            )
        sent = self._sent_times([tid for ids in tails.values() for tid in ids]) if tails else {}
        for queue, ids in tails.items():
            times = [sent[tid] for tid in ids if tid in sent]
            if times:
                readings[queue] = readings[queue]._replace(oldest_message_at=min(times))
        return readings

    def _unacked(
        self, messages: dict[bytes, bytes], index: list[tuple[bytes, float]]
    ) -> dict[str, tuple[int, float | None]]:
        """Unacked messages per queue: (count, delivery time of the oldest)."""
        delivered = dict(index)
        per_queue: dict[str, tuple[int, float | None]] = {}
        for tag, payload in messages.items():
            try:
                _raw, exchange, routing_key = orjson.loads(payload)
            except (orjson.JSONDecodeError, ValueError, TypeError):
                continue
            queue = self._routes.get((exchange, routing_key), routing_key)
            count, oldest = per_queue.get(queue, (0, None))
            at = delivered.get(tag)
            if at is not None and (oldest is None or at < oldest):
                oldest = at
            per_queue[queue] = (count + 1, oldest)
        return per_queue

    def close(self) -> None:
        self._conn.release()
