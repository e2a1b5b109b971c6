"""The Redis event session in process, over a real redis-server: a backlog is held compressed,
and every event that waited in it is still counted exactly."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
import redis
from celery.events import EventDispatcher
from kombu import Connection

from exporter.brokers.redis import events as redis_source
from exporter.brokers.redis.events import RedisSession
from exporter.config import load_settings
from exporter.pipeline import EventPipeline
from exporter.state.labels import WorkerFilter
from exporter.state.routing import QueueResolver
from exporter.state.tasks import TaskState
from exporter.state.workers import WorkerState
from tests.helpers import wait_until
from tests.services import RedisServer

EVENTS = 3000
LARGE_EVERY = 500  # every so often an event larger than a parser slice (FEED_BYTES)


def _recorded(url: str) -> list[tuple[bytes, bytes]]:
    """Task-started events as Celery's dispatcher publishes them: (channel, message) pairs."""
    # Any: redis-py types pubsub() from 8.2 on only; the range allows 6.1 and later.
    client: Any = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.psubscribe("*celeryev*")
    recorded: list[tuple[bytes, bytes]] = []
    with cast(Any, Connection)(url) as conn:  # Any: kombu is typed in some versions only
        dispatcher = EventDispatcher(conn, hostname="celery@unit", groups=None)
        for number in range(EVENTS):
            padding = "x" * (40_000 if number % LARGE_EVERY == 0 else 200)
            dispatcher.send("task-started", uuid=f"backlog-{number}", padding=padding)
        dispatcher.close()
    while len(recorded) < EVENTS:
        message = pubsub.get_message(timeout=5)
        assert message is not None, f"recorded {len(recorded)} of {EVENTS} events"
        if message["type"] == "pmessage":
            recorded.append((message["channel"], message["data"]))
    pubsub.close()
    client.close()
    return recorded


def _session(url: str) -> tuple[RedisSession, EventPipeline]:
    """A session of ``url``, not started, and the pipeline it feeds."""
    values: dict[str, Any] = {"broker_url": url}
    settings = load_settings(values)
    pipeline = EventPipeline(
        tasks=TaskState.from_settings(
            settings, resolver=QueueResolver(), worker_filter=WorkerFilter(None)
        ),
        workers=WorkerState.from_settings(settings),
        clock=time.time,
        max_event_bytes=settings.max_event_bytes,
    )
    return RedisSession(url=url, settings=settings, pipeline=pipeline), pipeline


@contextmanager
def _subscribed(url: str) -> Iterator[tuple[RedisSession, EventPipeline]]:
    """A session subscribed in a thread of its own, and the pipeline it feeds."""
    session, pipeline = _session(url)
    stop = threading.Event()
    thread = threading.Thread(target=session.run_session, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: session.status.connected, 10, "never subscribed")
        yield session, pipeline
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def _settled(read: Callable[[], int], timeout: float) -> int:
    """What ``read`` returns once it stays the same for a second."""
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        before, value = value, read()
        if value == before:
            return value
    raise AssertionError(f"still changing after {timeout} s: {value}")


def test_backlog_is_kept_compressed_and_counted_exactly(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the pipeline held (a consumer far behind), a burst of real Celery events piles up
    in the reader's backlog: past the threshold it is compressed, so the backlog holds a
    fraction of the bytes sent. Once the pipeline runs again every event is counted exactly,
    none dropped, and the backlog is empty."""
    monkeypatch.setattr(redis_source, "COMPRESS_ABOVE", 64 * 1024)
    recorded = _recorded(redis_server.url)
    sent = sum(len(message) for _, message in recorded)
    client = redis.Redis.from_url(redis_server.url)
    with _subscribed(redis_server.url) as (source, pipeline):
        with pipeline.lock:
            burst = client.pipeline(transaction=False)
            for channel, message in recorded:
                burst.publish(channel, message)
            burst.execute()
            held = _settled(lambda: source.status.buffered_bytes, 20)
        assert 0 < held < sent / 3, f"{held} bytes held for {sent} bytes sent"
        wait_until(
            lambda: pipeline.view.stats().events.get("task-started", 0) == EVENTS,
            20,
            lambda: f"counted {pipeline.view.stats().events}",
        )
        stats = pipeline.view.stats()
        assert stats.events == {"task-started": EVENTS}
        assert stats.dropped == {}
        wait_until(lambda: source.status.buffered_bytes == 0, 5, "the backlog never drained")
    client.close()


@pytest.mark.parametrize(
    ("socket_behind", "raw_max"),
    [(False, 1 << 40), (True, 1 << 40), (True, 256 * 1024)],
    ids=["socket-keeping-up", "socket-behind", "socket-behind-raw-capped"],
)
def test_reader_compresses_while_the_packer_is_behind(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, socket_behind: bool, raw_max: int
) -> None:
    """With the packer stuck on a chunk, the reader compresses what it reads once the raw
    bytes waiting for the packer pass the threshold: the backlog holds a fraction of the bytes
    sent. Unless the socket's receive buffer is filling up (here: always taken as behind):
    then draining it comes first and the backlog is held raw, up to RAW_BEHIND_MAX, past which
    the reader compresses again. Either way, once the packer runs again every event is
    counted exactly."""
    monkeypatch.setattr(redis_source, "COMPRESS_ABOVE", 64 * 1024)
    monkeypatch.setattr(redis_source, "READ_SIZE", 64 * 1024)
    monkeypatch.setattr(redis_source, "BEHIND_BYTES", 0 if socket_behind else 1 << 40)
    monkeypatch.setattr(redis_source, "RAW_BEHIND_MAX", raw_max)
    packer_free = threading.Event()
    pack = redis_source._Packed.of

    def held_in_packer(data: bytes, compressor: Any) -> redis_source._Packed:
        if threading.current_thread().name == "events-redis-packer":
            packer_free.wait(30)
        return pack(data, compressor)

    monkeypatch.setattr(redis_source._Packed, "of", staticmethod(held_in_packer))
    recorded = _recorded(redis_server.url)
    sent = sum(len(message) for _, message in recorded)
    client = redis.Redis.from_url(redis_server.url)
    with _subscribed(redis_server.url) as (source, pipeline):
        burst = client.pipeline(transaction=False)
        for channel, message in recorded:
            burst.publish(channel, message)
        burst.execute()
        try:
            held = _settled(lambda: source.status.buffered_bytes, 20)
        finally:
            packer_free.set()
        if raw_max < sent:
            assert raw_max < held < sent / 3, f"{held} bytes held for {sent} bytes sent"
        elif socket_behind:
            assert held > sent * 0.9, f"{held} bytes held for {sent} bytes sent"
        else:
            assert 0 < held < sent / 3, f"{held} bytes held for {sent} bytes sent"
        wait_until(
            lambda: pipeline.view.stats().events.get("task-started", 0) == EVENTS,
            20,
            lambda: f"counted {pipeline.view.stats().events}",
        )
        assert pipeline.view.stats().dropped == {}
        wait_until(lambda: source.status.buffered_bytes == 0, 5, "the backlog never drained")
    client.close()


class _BusyPacker:
    """What the consumer asks of its reader, with a packer that is behind until told."""

    def __init__(self) -> None:
        self.chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.busy = threading.Event()
        self.busy.set()
        self.taken_bytes = 0

    def packer_busy(self) -> bool:
        return self.busy.is_set()


def _pmessage(channel: bytes, message: bytes) -> bytes:
    """A pub/sub message as Redis sends it to a pattern subscriber (RESP2)."""
    parts = [b"pmessage", b"pattern", channel, message]
    return b"*4\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def test_consumer_waits_while_the_packer_is_behind(redis_server: RedisServer) -> None:
    """While the packer is behind, the consumer parses nothing (the CPU goes to compression
    first); it goes on once the packer has caught up, and a stop ends the wait."""
    channel, message = _recorded(redis_server.url)[0]
    session, pipeline = _session(redis_server.url)
    reader = _BusyPacker()
    reader.chunks.put(_pmessage(channel, message))
    stop = threading.Event()
    consumer = threading.Thread(
        target=session._consume, args=(cast(Any, reader), stop, "here", "pattern")
    )
    consumer.start()
    try:
        time.sleep(0.5)
        assert pipeline.view.stats().events == {}
        reader.busy.clear()
        wait_until(lambda: pipeline.view.stats().events == {"task-started": 1}, 5, "not parsed")
        reader.busy.set()
        reader.chunks.put(_pmessage(channel, message))
        time.sleep(0.2)
        assert pipeline.view.stats().events == {"task-started": 1}
    finally:
        stop.set()
        consumer.join(5)
    assert not consumer.is_alive()


def test_compressed_chunk_comes_back_a_frame_at_a_time() -> None:
    """A compressed chunk is decompressed a frame at a time, and the frames together are the
    chunk."""
    data = bytes(range(256)) * (3 * redis_source.FRAME_BYTES // 256 + 7)
    packed = redis_source._Packed.of(data, redis_source._compressor())
    assert packed.raw == len(data)
    assert packed.size == sum(map(len, packed.frames)) < len(data) / 8
    pieces = list(redis_source._unpacked(packed))
    assert len(pieces) == len(packed.frames) == -(-len(data) // redis_source.FRAME_BYTES) == 4
    assert all(len(piece) <= redis_source.FRAME_BYTES for piece in pieces)
    assert b"".join(pieces) == data


def test_a_compression_failure_ends_the_session(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk that fails to compress ends the session with the error, counted as a
    disconnect (the source then reconnects), rather than leaving the consumer waiting for a
    packer that is gone."""
    monkeypatch.setattr(redis_source, "COMPRESS_ABOVE", 64 * 1024)

    def failing(data: bytes, compressor: Any) -> redis_source._Packed:
        raise MemoryError("no room to compress")

    monkeypatch.setattr(redis_source._Packed, "of", staticmethod(failing))
    recorded = _recorded(redis_server.url)
    session, pipeline = _session(redis_server.url)
    ended: list[BaseException] = []

    def run() -> None:
        try:
            session.run_session(threading.Event())
        except BaseException as err:  # noqa: BLE001 - what the test looks at
            ended.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: session.status.connected, 10, "never subscribed")
    client = redis.Redis.from_url(redis_server.url)
    with pipeline.lock:  # the consumer falls behind, so a backlog builds and gets compressed
        burst = client.pipeline(transaction=False)
        for channel, message in recorded:
            burst.publish(channel, message)
        burst.execute()
        time.sleep(0.5)
    thread.join(10)
    client.close()
    assert not thread.is_alive()
    assert len(ended) == 1 and isinstance(ended[0], MemoryError), ended
    assert session.status.disconnects == {"error": 1}
