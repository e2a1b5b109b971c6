"""Recordings made by Celery itself: EventDispatcher publishes, a raw PSUBSCRIBE captures.

Workers' task events go through a dispatcher with ``buffer_group=['task']`` in the batched
variant, as the worker's event loop sets it up (celery/worker/consumer/events.py); task-sent
always goes through an unbuffered one, as ``app.amqp.send_task_message`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import recording
from bench.recording import Capture, Message
from bench.workload import SimEvent, WorkloadSpec, generate

BUFFER_LIMIT = 24
EVENT_PATTERN = b"/0.celeryev/*"


def cache_path(spec: WorkloadSpec, batched: bool) -> Path:
    import celery
    import kombu

    variant = "batched" if batched else "unbatched"
    versions = f"celery{celery.__version__}-kombu{kombu.__version__}"
    return recording.CACHE_DIR / f"dispatcher-{variant}-{spec.key()}-{versions}.rec"


def cached_recording(
    spec: WorkloadSpec, *, batched: bool, redis_url: str, redis_port: int
) -> tuple[list[Message], bool]:
    """The recording for ``spec`` and whether it came from the cache."""
    path = cache_path(spec, batched)
    if path.exists():
        return recording.load(path), True
    events = generate(spec)
    messages = record(events, batched=batched, redis_url=redis_url, redis_port=redis_port)
    recording.save(path, messages)
    return messages, False


def send(
    events: Sequence[SimEvent], *, batched: bool, broker_url: str, end: Callable[[Any], None]
) -> None:
    """Send ``events`` with EventDispatcher on one connection, then ``end(channel)``.

    Every dispatcher publishes on the connection's default channel, which ``end`` gets, so
    whatever it publishes comes after the events.
    """
    from celery import Celery
    from celery.events import EventDispatcher

    app = Celery("bench", broker=broker_url, set_as_current=False)
    dispatchers: dict[tuple[str, bool], Any] = {}
    with app.connection_for_write() as conn:

        def dispatcher(hostname: str, buffered: bool) -> Any:
            key = (hostname, buffered)
            if key not in dispatchers:
                dispatchers[key] = EventDispatcher(
                    conn,
                    hostname=hostname,
                    app=app,
                    buffer_group=["task"] if buffered else None,
                    buffer_limit=BUFFER_LIMIT,
                )
            return dispatchers[key]

        for event in events:
            buffered = batched and event.type.startswith("task-") and event.type != "task-sent"
            dispatcher(event.hostname, buffered).send(event.type, **event.fields)
        for each in dispatchers.values():
            each.flush()
            each.close()
        end(conn.default_channel)


def record(
    events: Sequence[SimEvent], *, batched: bool, redis_url: str, redis_port: int
) -> list[Message]:
    """Send ``events`` with EventDispatcher and return what it published, in order."""
    capture = Capture(redis_port, EVENT_PATTERN)
    started = time.monotonic()
    send(events, batched=batched, broker_url=redis_url, end=lambda _channel: None)
    messages = capture.finish()
    elapsed = time.monotonic() - started
    variant = "batched" if batched else "unbatched"
    print(
        f"  recorded {len(events)} events ({variant}) with EventDispatcher: "
        f"{len(messages)} messages in {elapsed:.1f} s ({len(events) / elapsed:.0f} events/s)"
    )
    return messages
