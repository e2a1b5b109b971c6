"""Redis event session: kombu builds the connection, a reader thread drains the socket.

kombu resolves the URL (redis, rediss, sentinel), the transport options and the channel naming
(fanout prefix, global key prefix), so the subscription matches what Celery publishes. Frames are
then read straight off that connection's socket: Redis disconnects a pub/sub subscriber whose
unread output passes ``client-output-buffer-limit pubsub`` (32 MB by default), so one thread does
nothing but move bytes from the socket into a bounded buffer, while this one parses them with
hiredis and applies them in batches. A burst then waits in our memory instead of Redis's.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import struct
import threading
import time
from typing import Any, cast

import hiredis

from exporter import heap
from exporter.brokers.base import Session
from exporter.compat import redis_socket
from exporter.events.status import SourceStatus
from exporter.logs import redact_url
from exporter.pipeline import EventPipeline

log = logging.getLogger(__name__)

# recv() returns what the kernel holds, up to this; a turn of the reader waits for the GIL,
# so a burst is read in few large turns.
READ_SIZE = 4 * 1024 * 1024
# A TLS recv() returns one record (16 KiB) at most, and allocates what it is asked for first:
# 200 MB over local TLS took 0.87 s read 4 MiB at a time, 0.26 s 64 KiB at a time.
TLS_READ_SIZE = 64 * 1024
# hiredis moves its unread bytes down after every reply it returns, so parsing costs time in
# proportion to what was fed at once: per message, 0.4 µs fed 16 KiB at a time, 1.3 µs fed
# 256 KiB, 17 µs fed 4 MiB.
FEED_BYTES = 16 * 1024
# Bytes of frames decoded per pipeline batch: large enough to amortise the lock and call
# overhead, small enough that a scrape never waits long for the lock and that the batch's
# messages and events, alive at once, stay a few MiB.
BATCH_BYTES = 256 * 1024
# Bytes parsed between two trims of the heap, and the backlog whose end trims it too: a trim
# costs up to a few milliseconds, and decoding a burst leaves freed pages between live blocks.
TRIM_EVERY = 16 * 1024 * 1024
TRIM_AFTER_BACKLOG = 1024 * 1024
# A read that finds this much waiting means Redis sends faster than the reader reads: the rest
# of the burst then waits in Redis's output buffer.
BEHIND_BYTES = 2 * 1024 * 1024
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


def _set_poll_timeout(sock: socket.socket) -> None:
    """Make a read wait at most POLL_SECONDS, in one call that releases the GIL once.

    Python's own socket timeout polls first and reads after, taking the GIL back twice a turn,
    each time waiting up to the switch interval (5 ms) while the consumer parses (bench: 4 of 4
    unbatched bursts counted whole on a busy machine, against 2 of 4). A TLS socket retries
    inside OpenSSL and never returns the kernel's timeout: it keeps Python's.
    """
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(POLL_SECONDS)
        return
    sock.settimeout(None)
    seconds = int(POLL_SECONDS)
    timeval = struct.pack("ll", seconds, int((POLL_SECONDS - seconds) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


class _SocketReader(threading.Thread):
    """Moves bytes from the socket into ``chunks`` until EOF, error or stop.

    At most ``limit`` bytes wait to be taken; past it the reader stops reading, and the
    backlog waits in Redis (which may cut us off: counted as a slow consumer, reconnected).
    """

    def __init__(
        self, sock: socket.socket, *, limit: int, stop: threading.Event, status: SourceStatus
    ) -> None:
        super().__init__(name="events-redis-reader")
        self._sock = sock
        self._limit = limit
        self._stop_event = stop
        self._status = status
        self.chunks: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()
        self.read_bytes = 0  # written by the reader only
        self.taken_bytes = 0  # written by the consuming thread only
        self._behind_at = -float("inf")

    def backlog(self) -> int:
        """Bytes read off the socket and not yet taken."""
        return self.read_bytes - self.taken_bytes

    def behind_recently(self) -> bool:
        """Whether Redis held part of the stream for us within the last minutes: the backlog
        was full, the socket filled up, or the reader was not scheduled at all (a stalled or
        starved process)."""
        return time.monotonic() - self._behind_at < SLOW_CONSUMER_WINDOW

    def run(self) -> None:
        sock, chunks, stop = self._sock, self.chunks, self._stop_event
        read_size = TLS_READ_SIZE if isinstance(sock, ssl.SSLSocket) else READ_SIZE
        last_turn = time.monotonic()
        try:
            while not stop.is_set():
                turn = time.monotonic()
                # Every turn waits at most POLL_SECONDS on the socket: a much longer gap
                # means this thread did not run while Redis kept sending.
                if turn - last_turn > POLL_SECONDS * STALL_FACTOR:
                    self._behind_at = turn
                last_turn = turn
                backlog = self.backlog()
                self._status.buffered_bytes = backlog
                if backlog > self._limit:
                    self._behind_at = turn
                    stop.wait(0.005)
                    continue
                try:
                    data = sock.recv(read_size)
                except (TimeoutError, BlockingIOError):  # the poll timeout: a turn without data
                    continue
                if not data:
                    chunks.put(SubscriberLost("connection closed by the server"))
                    return
                if len(data) >= BEHIND_BYTES:
                    self._behind_at = turn
                self.read_bytes += len(data)
                chunks.put(data)
        except Exception as err:  # noqa: BLE001 - ends the session, which reconnects
            chunks.put(err)


class RedisSession(Session):
    """One pub/sub subscription to Celery's event channel."""

    def run_session(self, stop: threading.Event) -> None:
        conn = self.connection()
        redis_conn: Any = None
        reader: _SocketReader | None = None
        # The reader's own: it ends with this session, however the session ends.
        reader_stop = threading.Event()
        try:
            channel = conn.default_channel  # connects and pings, honouring the options
            pattern = subscription_pattern(channel, self._settings.events_exchange)
            # Any: kombu's Channel declares no ``client`` (the Redis transport's adds it).
            pool = cast(Any, channel).client.connection_pool
            redis_conn = pool.get_connection()
            redis_conn.send_command("PSUBSCRIBE", pattern)
            sock = redis_socket(redis_conn)
            _set_poll_timeout(sock)
            reader = _SocketReader(
                sock, limit=self._settings.event_buffer_bytes, stop=reader_stop, status=self.status
            )
            reader.start()
            self._consume(reader, stop, redact_url(conn.as_uri()), pattern)
        finally:
            reader_stop.set()
            if redis_conn is not None:
                redis_conn.disconnect()
            if reader is not None:
                reader.join(POLL_SECONDS * 4)
            conn.release()

    def _consume(
        self, reader: _SocketReader, stop: threading.Event, where: str, pattern: str
    ) -> None:
        framer = _Framer(self._pipeline, self.status, f"{where} ({pattern})")
        untrimmed = 0  # bytes parsed since the heap was last trimmed
        backlog = 0  # the largest backlog since then
        while not stop.is_set():
            try:
                chunk = reader.chunks.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if isinstance(chunk, BaseException):
                framer.flush()
                raise self._classify(chunk, reader, partial=framer.partial())
            backlog = max(backlog, reader.backlog())
            framer.take(chunk)
            reader.taken_bytes += len(chunk)
            untrimmed += len(chunk)
            drained = reader.chunks.empty()
            if drained:
                # Nothing else waits: apply the last partial batch now, not with the next chunk.
                framer.flush()
            if untrimmed >= TRIM_EVERY or (drained and backlog >= TRIM_AFTER_BACKLOG):
                heap.trim()
                untrimmed = backlog = 0

    def _classify(
        self, ended: BaseException, reader: _SocketReader, *, partial: bool
    ) -> BaseException:
        """Count the disconnect by its likely cause; say so once in the log."""
        slow = partial or reader.behind_recently()
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


class _Framer:
    """Parses the pub/sub stream and applies the event payloads to the pipeline in batches."""

    def __init__(self, pipeline: EventPipeline, status: SourceStatus, where: str) -> None:
        self._parser = hiredis.Reader()
        self._pipeline = pipeline
        self._status = status
        self._where = where
        self._batch: list[bytes] = []
        self._batch_bytes = 0

    def partial(self) -> bool:
        """Whether the stream ended inside a frame."""
        return bool(self._parser.has_data())

    def take(self, data: bytes) -> None:
        """Parse ``data``, applying every batch it completes."""
        parser = self._parser
        for offset in range(0, len(data), FEED_BYTES):
            size = min(FEED_BYTES, len(data) - offset)
            parser.feed(data, offset, size)
            reply = parser.gets()
            while reply is not False:
                is_array = type(reply) in _ARRAY_TYPES
                if is_array and len(reply) == 4:
                    self._batch.append(reply[3])  # [b"pmessage", pattern, channel, data]
                elif is_array and reply and reply[0] == b"psubscribe":
                    self._status.mark_connected(self._where)
                elif isinstance(reply, hiredis.ReplyError):
                    raise SubscriberLost(f"Redis refused the subscription: {reply}")
                else:
                    self._pipeline.drop_unreadable(f"unexpected pub/sub frame {reply!r:.100}")
                reply = parser.gets()
            self._batch_bytes += size
            if self._batch_bytes >= BATCH_BYTES:
                self.flush()

    def flush(self) -> None:
        """Apply the payloads parsed so far."""
        if self._batch:
            self._pipeline.feed_redis(self._batch)
            self._batch = []
        self._batch_bytes = 0
