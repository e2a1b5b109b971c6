"""Redis event session: kombu builds the connection, a reader thread drains the socket.

kombu resolves the URL (redis, rediss, sentinel), the transport options and the channel naming
(fanout prefix, global key prefix), so the subscription matches what Celery publishes. Frames are
then read straight off that connection's socket: Redis disconnects a pub/sub subscriber whose
unread output passes ``client-output-buffer-limit pubsub`` (32 MB by default), so one thread does
nothing but move bytes from the socket into a bounded buffer while this one parses them with
hiredis and decodes them in bulk. A burst then waits in our buffer instead of Redis's.
"""

from __future__ import annotations

import logging
import math
import queue
import socket
import threading
import time
from typing import Any

import hiredis

from exporter.events.source import Session
from exporter.events.status import SourceStatus
from exporter.logs import redact_url

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# Bytes of frames decoded per pipeline batch: large enough to amortise the lock and call
# overhead, small enough that a scrape never waits long for the lock.
BATCH_BYTES = 512 * 1024
POLL_SECONDS = 0.5
# Redis's default pubsub limit disconnects after 60 s over the soft limit: a backed-up reader
# within that window makes a disconnect look like that.
SLOW_CONSUMER_WINDOW = 90.0
STALL_FACTOR = 4
# redis-py negotiates RESP3 when it can: pub/sub messages then arrive as push frames.
_ARRAY_TYPES = (list, hiredis.PushNotification)


class SubscriberLost(ConnectionError):
    """The pub/sub connection ended (closed by Redis, reset, or refused)."""


def subscription_pattern(channel: Any, exchange: str) -> str:
    """The PSUBSCRIBE pattern kombu's Redis channel would use for a fanout exchange."""
    # kombu formats '/{db}.' into keyprefix_fanout when it builds its pool; PUBLISH gets
    # global_keyprefix prepended by kombu's prefixing client, PSUBSCRIBE must add it here.
    prefix = getattr(channel, "global_keyprefix", "") or ""
    topic = f"{channel.keyprefix_fanout}{exchange}"
    return f"{prefix}{topic}/*" if channel.fanout_patterns else f"{prefix}{topic}"


class _SocketReader(threading.Thread):
    """Moves bytes from the socket into ``chunks`` until EOF, error or stop; bounded."""

    def __init__(
        self, sock: socket.socket, limit: int, stop: threading.Event, status: SourceStatus
    ) -> None:
        super().__init__(name="events-redis-reader")
        self._sock = sock
        self._limit = limit
        self._stop_event = stop
        self._status = status
        self.chunks: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()
        self.read_bytes = 0
        self.consumed_bytes = 0  # written by the consuming thread
        self._paused_at = -math.inf

    def paused_recently(self) -> bool:
        """Whether the reader fell behind within the last minutes: it stopped reading for
        backpressure, or was not scheduled at all (a stalled or starved process)."""
        return time.monotonic() - self._paused_at < SLOW_CONSUMER_WINDOW

    def run(self) -> None:
        sock, chunks, stop = self._sock, self.chunks, self._stop_event
        last_turn = time.monotonic()
        try:
            while not stop.is_set():
                turn = time.monotonic()
                # Every turn waits at most POLL_SECONDS on the socket: a much longer gap
                # means this thread did not run while Redis kept sending.
                if turn - last_turn > POLL_SECONDS * STALL_FACTOR:
                    self._paused_at = turn
                last_turn = turn
                backlog = self.read_bytes - self.consumed_bytes
                self._status.buffered_bytes = backlog
                if backlog > self._limit:
                    # Stop reading: the backlog now waits in Redis (and may get us cut off,
                    # which is counted as a reconnect) rather than growing our memory.
                    self._paused_at = time.monotonic()
                    stop.wait(0.005)
                    continue
                try:
                    data = sock.recv(READ_SIZE)
                except TimeoutError:
                    continue
                if not data:
                    chunks.put(SubscriberLost("connection closed by the server"))
                    return
                self.read_bytes += len(data)
                chunks.put(data)
        except OSError as err:
            chunks.put(err)


class RedisSession(Session):
    """One pub/sub subscription to Celery's event channel."""

    def run_session(self, stop: threading.Event) -> None:
        settings = self._settings
        conn = self.connection()
        redis_conn: Any = None
        reader: _SocketReader | None = None
        try:
            channel = conn.default_channel  # connects and pings, honouring the options
            pattern = subscription_pattern(channel, settings.events_exchange)
            pool = channel.client.connection_pool  # type: ignore[attr-defined]  # Redis Channel
            redis_conn = pool.get_connection()
            redis_conn.send_command("PSUBSCRIBE", pattern)
            sock: socket.socket = redis_conn._sock
            sock.settimeout(POLL_SECONDS)
            reader = _SocketReader(sock, settings.event_buffer_bytes, stop, self.status)
            reader.start()
            self._consume(reader, stop, redact_url(conn.as_uri()), pattern)
        finally:
            if reader is not None:
                stop_reader = reader.is_alive()
                if redis_conn is not None:
                    redis_conn.disconnect()
                if stop_reader:
                    reader.join(POLL_SECONDS * 4)
            conn.release()

    def _consume(
        self, reader: _SocketReader, stop: threading.Event, where: str, pattern: str
    ) -> None:
        parser = hiredis.Reader()
        feed = self._pipeline.feed_redis
        while not stop.is_set():
            try:
                first = reader.chunks.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            taken, ended = self._gather(first, reader, parser)
            feed(self._frames(parser, where, pattern))
            reader.consumed_bytes += taken
            if ended is not None:
                raise self._classify(ended, reader, partial=parser.has_data())

    @staticmethod
    def _gather(
        chunk: bytes | BaseException, reader: _SocketReader, parser: hiredis.Reader
    ) -> tuple[int, BaseException | None]:
        """Feed ``chunk`` and what else is waiting (up to a batch) to the parser.

        Returns the bytes taken from the reader's backlog, and the error that ended the
        connection if one came after them: what was read before it is applied first.
        """
        fed = 0
        while True:
            if isinstance(chunk, BaseException):
                return fed, chunk
            parser.feed(chunk)
            fed += len(chunk)
            if fed >= BATCH_BYTES:
                return fed, None
            try:
                chunk = reader.chunks.get_nowait()
            except queue.Empty:
                return fed, None

    def _frames(self, parser: hiredis.Reader, where: str, pattern: str) -> list[bytes]:
        """The event payloads among the complete frames parsed so far."""
        messages: list[bytes] = []
        reply = parser.gets()
        while reply is not False:
            is_array = type(reply) in _ARRAY_TYPES
            if is_array and len(reply) == 4:
                messages.append(reply[3])  # [b"pmessage", pattern, channel, data]
            elif is_array and reply and reply[0] == b"psubscribe":
                self.status.mark_connected(f"{where} ({pattern})")
            elif isinstance(reply, hiredis.ReplyError):
                raise SubscriberLost(f"Redis refused the subscription: {reply}")
            else:
                self._pipeline.drop_unreadable(f"unexpected pub/sub frame {reply!r:.100}")
            reply = parser.gets()
        return messages

    def _classify(
        self, ended: BaseException, reader: _SocketReader, *, partial: bool
    ) -> BaseException:
        """Count the disconnect by its likely cause; say so once in the log."""
        slow = partial or reader.paused_recently()
        reason = (
            "slow_consumer" if slow else "closed" if isinstance(ended, SubscriberLost) else "error"
        )
        self.status.disconnected(reason)
        if slow:
            return SubscriberLost(
                f"{ended}; it cut a message short or came while the reader was backed up, as "
                "when Redis disconnects a slow subscriber (client-output-buffer-limit pubsub)"
            )
        return ended
