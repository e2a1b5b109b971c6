"""RabbitMQ event session: our own exclusive queue on Celery's exchange, and every drop counted.

Celery's receiver queue is transient and non-exclusive, which RabbitMQ 4.x refuses, and it drops
messages older than 5 s without a word. Ours is exclusive (deleted with our connection) with a
TTL and a length bound we choose (overflow drops the oldest). Whatever the broker drops for
either reason is dead-lettered to a second exclusive queue of ours, which is drained and
counted (``celery_exporter_events_dropped_total{reason="broker_ttl"|"broker_overflow"}``), so
counted plus dropped equals what was published.

Messages are taken from py-amqp without building kombu Message objects, and applied in
batches: the body goes straight to the decoder.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import Any

import kombu
import orjson

from exporter.config import Settings
from exporter.events.model import DropReason
from exporter.events.source import Session
from exporter.logs import redact_url

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 30
# Messages are applied in batches of up to this many, at most this long after the first.
BATCH_MESSAGES = 512
BATCH_PAUSE_SECONDS = 0.02

# x-death reasons (RabbitMQ's dead-lettering) -> our drop reasons.
_DEATH_REASONS = {
    "expired": DropReason.BROKER_TTL,
    "maxlen": DropReason.BROKER_OVERFLOW,
}


def event_queue(settings: Settings, name: str, dead_letters: str) -> kombu.Queue:
    """Our event queue, bound to everything on Celery's (topic) event exchange."""
    # Declared exactly as Celery declares it (topic, durable), or RabbitMQ refuses the redeclare.
    exchange = kombu.Exchange(settings.events_exchange, type="topic")
    return kombu.Queue(
        name,
        exchange,
        routing_key="#",
        exclusive=True,
        auto_delete=True,
        durable=False,
        queue_arguments={
            "x-message-ttl": int(settings.amqp_event_queue_ttl_seconds * 1000),
            "x-max-length": settings.amqp_event_queue_max_length,
            "x-max-length-bytes": settings.amqp_event_queue_max_bytes,
            "x-overflow": "drop-head",
            # Through the default exchange, straight into the dead-letter queue by name.
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letters,
        },
    )


def dead_letter_queue(settings: Settings, name: str) -> kombu.Queue:
    """Where the broker puts what it drops from our event queue; bound like the main one."""
    return kombu.Queue(
        name,
        exclusive=True,
        auto_delete=True,
        durable=False,
        # Bounded in bytes only: it must hold a whole burst of drops from the main queue.
        queue_arguments={"x-max-length-bytes": settings.amqp_dead_letter_max_bytes},
    )


def death_reason(headers: Any) -> DropReason:
    """The drop reason RabbitMQ recorded in a dead-lettered message's x-death header."""
    deaths = headers.get("x-death") if isinstance(headers, dict) else None
    first = deaths[0] if isinstance(deaths, list) and deaths else None
    reason = first.get("reason") if isinstance(first, dict) else None
    if isinstance(reason, bytes):
        reason = reason.decode("ascii", "replace")
    return _DEATH_REASONS.get(reason or "", DropReason.BROKER_OTHER)


def events_in(body: bytes) -> int:
    """How many events a message carries: a ``*.multi`` message is a list of them."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 1
    return len(decoded) if isinstance(decoded, list) else 1


class AmqpSession(Session):
    """One consumer on a freshly declared event queue, one on its dead-letter queue."""

    def run_session(self, stop: threading.Event) -> None:
        settings = self._settings
        conn = self.connection(heartbeat=HEARTBEAT_SECONDS)
        try:
            conn.connect()
            channel: Any = conn.channel()
            # py-amqp would decode every body to str, and the decoder wants bytes back.
            channel.auto_decode = False
            name = f"celeryev.exporter.{uuid.uuid4()}"
            dropped_name = f"{name}.dropped"
            dead_letter_queue(settings, dropped_name)(channel).declare()
            event_queue(settings, name, dropped_name)(channel).declare()
            batch: list[tuple[bytes, str | None]] = []

            def on_message(message: Any) -> None:
                batch.append((message.body, message.properties.get("content_type")))

            def on_dropped(message: Any) -> None:
                self._pipeline.note_broker_drop(
                    death_reason(message.properties.get("application_headers")),
                    events_in(message.body),
                )

            channel.basic_consume(queue=dropped_name, no_ack=True, callback=on_dropped)
            channel.basic_consume(queue=name, no_ack=True, callback=on_message)
            self.status.mark_connected(f"{redact_url(conn.as_uri())} (queue {name})")
            self._consume(conn, batch, stop)
        finally:
            conn.release()

    def _consume(
        self, conn: Any, batch: list[tuple[bytes, str | None]], stop: threading.Event
    ) -> None:
        feed = self._pipeline.feed_bodies
        next_beat = time.monotonic() + POLL_SECONDS
        opened = 0.0  # when the open batch got its first message
        while not stop.is_set():
            # A short timeout while a batch is open, so a lull flushes it promptly.
            timeout = BATCH_PAUSE_SECONDS if batch else POLL_SECONDS
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=timeout)
            now = time.monotonic()
            if batch:
                opened = opened or now
                if len(batch) >= BATCH_MESSAGES or now - opened >= BATCH_PAUSE_SECONDS:
                    feed(batch)
                    batch.clear()
                    opened = 0.0
            # Heartbeats go out only from here, busy or idle, or RabbitMQ closes on us.
            if now >= next_beat:
                conn.heartbeat_check()
                next_beat = now + POLL_SECONDS
