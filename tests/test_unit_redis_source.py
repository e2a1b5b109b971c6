"""The Redis event session in process, over a real redis-server: a backlog is held compressed,
and every event that waited in it is still counted exactly."""

from __future__ import annotations

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


def _session(url: str, **options: Any) -> tuple[RedisSession, EventPipeline]:
    """A session of ``url``, not started, and the pipeline it feeds."""
    values: dict[str, Any] = {"broker_url": url, **options}
    settings = load_settings(values)
    pipeline = EventPipeline(
        tasks=TaskState.from_settings(settings, resolver=QueueResolver()),
        workers=WorkerState.from_settings(settings),
        clock=time.time,
        max_event_bytes=settings.max_event_bytes,
    )
    return RedisSession(url=url, settings=settings, pipeline=pipeline), pipeline


@contextmanager
def _subscribed(url: str, **options: Any) -> Iterator[tuple[RedisSession, EventPipeline]]:
    """A session subscribed in a thread of its own, and the pipeline it feeds."""
    session, pipeline = _session(url, **options)
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


def test_backlog_waits_in_the_reader_and_is_counted_exactly(redis_server: RedisServer) -> None:
    """With the pipeline held (a consumer far behind), a burst of real Celery events piles up
    in the reader's backlog, all of it read off the socket. Once the pipeline runs again every
    event is counted exactly, none dropped, and the backlog is empty."""
    recorded = _recorded(redis_server.url)
    framed = sum(len(_pmessage(channel, message)) for channel, message in recorded)
    client = redis.Redis.from_url(redis_server.url)
    with _subscribed(redis_server.url) as (source, pipeline):
        with pipeline.lock:
            _publish(client, recorded)
            held = _settled(lambda: source.status.buffered_bytes, 20)
            # What the consumer took before it blocked on the lock is no longer held.
            assert framed - redis_source.READ_SIZE < held <= framed
        _wait_counted(pipeline)
        wait_until(lambda: source.status.buffered_bytes == 0, 5, "the backlog never drained")
    client.close()


def test_reader_stops_reading_at_its_limit(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``--event-buffer-bytes`` the reader stops reading and the rest of a burst waits in
    Redis (within its pub/sub limit here); once the consumer runs again, every event is
    counted exactly, without a disconnect."""
    monkeypatch.setattr(redis_source, "READ_SIZE", 64 * 1024)
    recorded = _recorded(redis_server.url)
    framed = sum(len(_pmessage(channel, message)) for channel, message in recorded)
    limit = 1024 * 1024
    assert framed > 2 * limit
    client = redis.Redis.from_url(redis_server.url)
    with _subscribed(redis_server.url, event_buffer_bytes=limit) as (source, pipeline):
        with pipeline.lock:
            _publish(client, recorded)
            held = _settled(lambda: source.status.buffered_bytes, 20)
            assert limit < held <= limit + redis_source.READ_SIZE
        _wait_counted(pipeline)
        assert source.status.disconnects == {}
    client.close()


def _publish(client: Any, recorded: list[tuple[bytes, bytes]]) -> None:
    burst = client.pipeline(transaction=False)
    for channel, message in recorded:
        burst.publish(channel, message)
    burst.execute()


def _wait_counted(pipeline: EventPipeline) -> None:
    wait_until(
        lambda: pipeline.view.stats().events.get("task-started", 0) == EVENTS,
        20,
        lambda: f"counted {pipeline.view.stats().events}",
    )
    stats = pipeline.view.stats()
    assert stats.events == {"task-started": EVENTS}
    assert stats.dropped == {}


def _pmessage(channel: bytes, message: bytes) -> bytes:
    """A pub/sub message as Redis sends it to a pattern subscriber (RESP2)."""
    parts = [b"pmessage", b"pattern", channel, message]
    return b"*4\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)
