"""RabbitMQ event session: our own exclusive, auto-deleting queue bound to Celery's exchange.

Celery's receiver queue is transient and non-exclusive, which RabbitMQ 4.x refuses, and it drops
messages older than 5 s without a word. Ours is exclusive (deleted with our connection), with a
TTL and a length bound we choose. Messages are taken from py-amqp without building kombu Message
objects: the body goes straight to the decoder.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import Any

import kombu

from exporter.config import Settings
from exporter.events.status import SourceStatus
from exporter.logs import redact_url
from exporter.pipeline import EventPipeline

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 30


def event_queue(settings: Settings, name: str) -> kombu.Queue:
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
        },
    )


class AmqpSession:
    """One consumer on a freshly declared event queue."""

    def __init__(self, *, url: str, settings: Settings, pipeline: EventPipeline) -> None:
        self.status = SourceStatus("events")
        self._url = url
        self._settings = settings
        self._pipeline = pipeline

    def run_session(self, stop: threading.Event) -> None:
        settings = self._settings
        conn = kombu.Connection(
            self._url,
            transport_options=dict(settings.broker_transport_options),
            connect_timeout=settings.broker_connect_timeout_seconds,
            heartbeat=HEARTBEAT_SECONDS,
        )
        try:
            conn.connect()
            channel: Any = conn.channel()
            name = f"celeryev.exporter.{uuid.uuid4()}"
            event_queue(settings, name)(channel).declare()
            feed = self._pipeline.feed_body

            def on_message(message: Any) -> None:
                body = message.body
                feed(
                    body if isinstance(body, bytes) else body.encode(),
                    message.properties.get("content_type"),
                )

            channel.basic_consume(queue=name, no_ack=True, callback=on_message)
            self.status.mark_connected(f"{redact_url(conn.as_uri())} (queue {name})")
            next_beat = time.monotonic() + POLL_SECONDS
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=POLL_SECONDS)
                # Heartbeats go out only from here, busy or idle, or RabbitMQ closes on us.
                if time.monotonic() >= next_beat:
                    conn.heartbeat_check()
                    next_beat = time.monotonic() + POLL_SECONDS
        finally:
            conn.release()
