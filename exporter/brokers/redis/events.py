"""Redis event session: kombu builds the connection, a reader thread drains the socket.

kombu resolves the URL (redis, rediss, sentinel), the transport options and the channel naming
(fanout prefix, global key prefix), so the subscription matches what Celery publishes. Frames are
then read straight off that connection's socket: Redis disconnects a pub/sub subscriber whose
unread output passes ``client-output-buffer-limit pubsub`` (32 MB by default), so one thread does
nothing but move bytes from the socket into a bounded buffer while this one parses them with
hiredis and decodes them in bulk. A burst then waits in our buffer instead of Redis's, and
while more than a few MiB wait there a third thread keeps them zstd-compressed (Celery's base64
envelopes shrink 8 times at level 1, at ~1 GB/s with the GIL released). Compression comes first:
when raw bytes queue up for it, the reader compresses too (as long as it keeps up with Redis)
and the consumer steps aside.
"""

from __future__ import annotations

import array
import fcntl
import logging
import math
import queue
import socket
import sys
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

import hiredis

from exporter import heap
from exporter.brokers.base import Session
from exporter.compat import redis_socket
from exporter.events.status import SourceStatus
from exporter.logs import redact_url
from exporter.pipeline import EventPipeline

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

log = logging.getLogger(__name__)

# recv() returns what the kernel holds, up to this: a MiB per turn during a burst, so the reader
# keeps up with fewer turns (each one waits for the GIL), yet is back on the socket within about
# a millisecond when it compresses a chunk itself. With 2 MiB, Redis held more of a burst for us:
# under a 20 MB pub/sub limit the bench's batched burst got cut off 4 times in 5, against 1.
READ_SIZE = 1024 * 1024
# Backlog past which chunks are kept compressed until parsed; below it they pass as they are,
# so a consumer that keeps up never pays for compression.
COMPRESS_ABOVE = 4 * 1024 * 1024
# GIL switch interval once a Redis session runs: a thread waiting for the GIL gets it after at
# most this long. The reader needs it back after every recv() while the consumer and the packer
# keep it busy; with CPython's 5 ms, bench bursts (220 MB/s) left up to 30 MB waiting in Redis,
# which disconnects at 32 MB, against up to 20 MB with 1 ms.
SWITCH_INTERVAL = 0.001
# hiredis moves its unread bytes down after every reply it returns, so parsing costs time in
# proportion to what was fed at once: per message, 0.4 µs fed 16 KiB at a time, 1.3 µs fed
# 256 KiB, 17 µs fed 4 MiB.
FEED_BYTES = 16 * 1024
# Bytes of frames decoded per pipeline batch: large enough to amortise the lock and call
# overhead, small enough that a scrape never waits long for the lock and that the batch's
# messages and events, alive at once, stay a few MiB (bench burst peak 2.5 MiB lower than with
# 512 KiB, at the same rate).
BATCH_BYTES = 256 * 1024
# Raw bytes per compressed frame; each frame decompresses in one call. Smaller frames compress
# worse: 7.7 times at 256 KiB, 8.1 at 512.
FRAME_BYTES = 512 * 1024
# Unread bytes in the socket's receive buffer past which the reader is behind Redis: it then
# queues what it reads as it is, whatever waits for the packer (up to the buffer limit), since
# what the kernel cannot take waits in Redis's output buffer, which cuts us off when full. A
# starved process (py-spy attached, a CPU quota) was cut off in mid-burst otherwise.
BEHIND_BYTES = 2 * 1024 * 1024
# Raw bytes waiting for the packer past which the reader compresses what it reads even while
# behind: then it drains the socket at about half the speed, and Redis holds more of a burst,
# rather than memory growing without bound while the packer is starved. Bench batched bursts:
# peaks up to 89 MiB without it (up to 26 MiB raw), at most 76.6 with it.
RAW_BEHIND_MAX = 12 * 1024 * 1024
# Bytes of compressed chunks parsed between two trims of the heap (and once the backlog is
# gone): a trim costs up to a few milliseconds, and decoding leaves freed pages behind.
TRIM_EVERY = 4 * 1024 * 1024
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


class _Packed(NamedTuple):
    """A chunk kept as zstd frames of up to FRAME_BYTES each."""

    frames: tuple[bytes, ...]
    size: int  # bytes held
    raw: int  # bytes they stand for

    @classmethod
    def of(cls, data: bytes, compressor: zstd.ZstdCompressor) -> _Packed:
        view = memoryview(data)
        frames = tuple(
            compressor.compress(view[start : start + FRAME_BYTES], zstd.ZstdCompressor.FLUSH_FRAME)
            for start in range(0, len(data), FRAME_BYTES)
        )
        return cls(frames, sum(map(len, frames)), len(data))

    @property
    def saved(self) -> int:
        """Bytes compression saved."""
        return self.raw - self.size


def _compressor() -> zstd.ZstdCompressor:
    # A 256 KiB window: a context of about 1 MiB (zstd's defaults took 3.3 MiB for 4 MiB
    # chunks); Celery's envelopes still shrink 8 times in frames of 512 KiB.
    return zstd.ZstdCompressor(
        options={
            zstd.CompressionParameter.compression_level: 1,
            zstd.CompressionParameter.window_log: 18,
        }
    )


def _unpacked(chunk: bytes | _Packed) -> Iterator[bytes]:
    """A chunk's bytes: a raw chunk as it is, a packed one a frame at a time."""
    if isinstance(chunk, _Packed):
        for frame in chunk.frames:
            yield zstd.decompress(frame)
    else:
        yield chunk


def _unread(sock: socket.socket) -> int:
    """Bytes the kernel has received on ``sock`` that nobody has read yet."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count, True)
    return count[0]


class _SocketReader(threading.Thread):
    """Moves bytes from the socket into ``chunks`` until EOF, error or stop; bounded.

    A second thread, the packer, passes them on and compresses those that arrive while more
    than ``compress_above`` bytes wait (``_Packed``). Compressing every chunk in the reader made
    each of its turns wait twice for the GIL and once for a core; on a busy machine Redis then
    reached its pub/sub limit in about half the bench bursts. So the reader compresses only what
    it reads while the packer is more than ``compress_above`` behind and the socket is not
    filling up (BEHIND_BYTES), and until the packer is back under half of that the consumer
    yields the CPU (unless the packer died). Parsing frees memory at ~80 MB/s, compressing
    frees it 8 times over at ~1 GB/s: on a machine busy with Redis itself the consumer otherwise
    took most of the CPU the process got, and the bench's unbatched burst waited raw, 36 MiB
    over idle at its peak (19 now, most of it compressed).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        limit: int,
        compress_above: int,
        stop: threading.Event,
        status: SourceStatus,
    ) -> None:
        super().__init__(name="events-redis-reader")
        self._sock = sock
        self._limit = limit
        self._compress_above = compress_above
        self._stop_event = stop
        self._status = status
        self._read: queue.SimpleQueue[bytes | _Packed | BaseException] = queue.SimpleQueue()
        self.chunks: queue.SimpleQueue[bytes | _Packed | BaseException] = queue.SimpleQueue()
        self._packer = threading.Thread(target=self._pack, name="events-redis-packer")
        # The backlog held in memory is read - saved by compression - taken; each counter is
        # written by one thread only. The reader's:
        self.read_bytes = 0
        self.queued_raw = 0  # read bytes queued for the packer as they are
        self.reader_saved = 0
        # The packer's:
        self.passed_raw = 0  # bytes of queued_raw passed on, compressed or not
        self.packer_saved = 0
        # The consuming thread's:
        self.taken_bytes = 0
        self._paused_at = -math.inf

    def start(self) -> None:
        super().start()
        self._packer.start()

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        self._packer.join(timeout)

    def backlog(self) -> int:
        """Bytes read off the socket and not yet taken, as held (compressed or not)."""
        return self.read_bytes - self.reader_saved - self.packer_saved - self.taken_bytes

    def raw_waiting(self) -> int:
        """Bytes queued for the packer uncompressed, not passed on yet."""
        return self.queued_raw - self.passed_raw

    def packer_busy(self) -> bool:
        """Whether the running packer is more than half the compression threshold behind."""
        return self.raw_waiting() > self._compress_above // 2 and self._packer.is_alive()

    def paused_recently(self) -> bool:
        """Whether the reader fell behind within the last minutes: it stopped reading for
        backpressure, or was not scheduled at all (a stalled or starved process)."""
        return time.monotonic() - self._paused_at < SLOW_CONSUMER_WINDOW

    def run(self) -> None:
        sock, read, stop = self._sock, self._read, self._stop_event
        compressor = _compressor()
        last_turn = time.monotonic()
        try:
            while not stop.is_set():
                turn = time.monotonic()
                # Every turn waits at most POLL_SECONDS on the socket: a much longer gap
                # means this thread did not run while Redis kept sending.
                if turn - last_turn > POLL_SECONDS * STALL_FACTOR:
                    self._paused_at = turn
                last_turn = turn
                backlog = self.backlog()
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
                    read.put(SubscriberLost("connection closed by the server"))
                    return
                self.read_bytes += len(data)
                raw = self.raw_waiting()
                if raw > self._compress_above and (
                    raw > RAW_BEHIND_MAX or _unread(sock) < BEHIND_BYTES
                ):
                    packed = _Packed.of(data, compressor)
                    self.reader_saved += packed.saved
                    read.put(packed)
                else:
                    self.queued_raw += len(data)
                    read.put(data)
        except Exception as err:  # noqa: BLE001 - ends the session, which reconnects
            read.put(err)

    def _pack(self) -> None:
        read, chunks, stop = self._read, self.chunks, self._stop_event
        compressor = _compressor()
        while not stop.is_set():
            try:
                chunk = read.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if isinstance(chunk, BaseException):
                chunks.put(chunk)
                return
            if isinstance(chunk, _Packed):
                chunks.put(chunk)
                continue
            if self.backlog() > self._compress_above:
                try:
                    packed = _Packed.of(chunk, compressor)
                except Exception as err:  # noqa: BLE001 - ends the session, which reconnects
                    chunks.put(err)
                    return
                self.packer_saved += packed.saved
                chunks.put(packed)
            else:
                chunks.put(chunk)
            self.passed_raw += len(chunk)


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
            # Any: kombu's Channel declares no ``client`` (the Redis transport's adds it).
            pool = cast(Any, channel).client.connection_pool
            redis_conn = pool.get_connection()
            redis_conn.send_command("PSUBSCRIBE", pattern)
            sock = redis_socket(redis_conn)
            sock.settimeout(POLL_SECONDS)
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
            limit = settings.event_buffer_bytes
            reader = _SocketReader(
                sock,
                limit=limit,
                compress_above=min(COMPRESS_ABOVE, limit // 2),
                stop=stop,
                status=self.status,
            )
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
        framer = _Framer(self._pipeline, self.status, f"{where} ({pattern})")
        untrimmed = 0  # bytes of compressed chunks parsed since the heap was last trimmed
        while not stop.is_set():
            try:
                chunk = reader.chunks.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            while not isinstance(chunk, BaseException):
                while reader.packer_busy() and not stop.is_set():
                    time.sleep(0.001)  # the packer first (see _SocketReader)
                for data in _unpacked(chunk):
                    framer.take(data)
                if isinstance(chunk, _Packed):
                    reader.taken_bytes += chunk.size
                    untrimmed += chunk.raw
                    if untrimmed >= TRIM_EVERY:
                        heap.trim()
                        untrimmed = 0
                else:
                    reader.taken_bytes += len(chunk)
                try:
                    chunk = reader.chunks.get_nowait()
                except queue.Empty:
                    break
            # Nothing else waits: apply the last partial batch now, not with the next chunk.
            framer.flush()
            if untrimmed:
                heap.trim()
                untrimmed = 0
            if isinstance(chunk, BaseException):
                raise self._classify(chunk, reader, partial=framer.partial())

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
