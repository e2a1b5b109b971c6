"""RabbitMQ event session: our own exclusive queue on Celery's exchange, and every drop counted.

Celery's receiver queue is transient and non-exclusive, which RabbitMQ 4.x refuses, and it drops
messages older than 5 s without a word. Ours is exclusive (deleted with our connection) with a
TTL and a length bound we choose (overflow drops the oldest). Whatever the broker drops for
either reason is dead-lettered to a second exclusive queue of ours, which is drained and
counted (``celery_exporter_events_dropped_total{reason="broker_ttl"|"broker_overflow"}``), so
counted plus dropped equals what was published.

Once the consumers are registered the session reads the socket itself, in large chunks, and
applies whatever one read completed as one batch: the body goes straight to the decoder.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from typing import Any

import kombu
import orjson

from exporter.brokers.amqp.frames import CLOSE, HEARTBEAT, FrameParser
from exporter.brokers.base import Session
from exporter.compat import amqp_socket_and_pending
from exporter.events.model import DropReason
from exporter.logs import redact_url
from exporter.settings import Settings

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
CLOSE_SECONDS = 0.5
# Everything one read returns is applied as one batch: up to this many bytes of frames.
READ_SIZE = 512 * 1024
EVENT_TAG = "events"
DEAD_LETTER_TAG = "dropped"

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
    """One consumer on a freshly declared event queue, one on its dead-letter queue.

    py-amqp opens the connection, declares the queues and registers the consumers; from then on
    the session reads the socket itself (see ``frames``) and keeps the heartbeats going.
    """

    def run_session(self, stop: threading.Event) -> None:
        settings = self._settings
        conn = self.connection(heartbeat=settings.amqp_heartbeat_seconds)
        amqp_conn: Any = None
        try:
            conn.connect()
            amqp_conn = conn.connection
            channel: Any = conn.channel()
            # py-amqp would decode every body to str, and the decoder wants bytes.
            channel.auto_decode = False
            name = f"celeryev.exporter.{uuid.uuid4()}"
            dropped_name = f"{name}.dropped"
            dead_letter_queue(settings, dropped_name)(channel).declare()
            event_queue(settings, name, dropped_name)(channel).declare()
            # Whatever arrives while py-amqp still reads (until the last consume-ok) goes
            # through these callbacks; everything after, through the frame parser.
            channel.basic_consume(
                queue=dropped_name,
                no_ack=True,
                consumer_tag=DEAD_LETTER_TAG,
                callback=lambda m: self._dropped([(m.properties, m.body)]),
            )
            channel.basic_consume(
                queue=name,
                no_ack=True,
                consumer_tag=EVENT_TAG,
                callback=lambda m: self._pipeline.feed_bodies(
                    [(m.body, m.properties.get("content_type"))]
                ),
            )
            self.status.mark_connected(f"{redact_url(conn.as_uri())} (queue {name})")
            sock, pending = amqp_socket_and_pending(amqp_conn.transport)
            self._consume(sock, pending, amqp_conn.heartbeat or 0, stop)
        finally:
            if amqp_conn is not None:
                # The stream is ours now: py-amqp's closing handshake would misread it.
                amqp_conn.collect()
            conn.release()

    def _consume(
        self, sock: socket.socket, pending: bytes, heartbeat: float, stop: threading.Event
    ) -> None:
        parser = FrameParser(EVENT_TAG, DEAD_LETTER_TAG)
        feed = self._pipeline.feed_bodies
        sock.settimeout(POLL_SECONDS)
        last_in = last_out = time.monotonic()
        data = pending
        while not stop.is_set():
            if data:
                events, dead_letters = parser.feed(data)
                if events:
                    feed(events)
                if dead_letters:
                    self._dropped(dead_letters)
            # RabbitMQ sends heartbeats at half its interval when idle and closes on a client
            # that sends nothing for two; the same rule in the other direction finds a dead
            # broker behind a connection that still looks open.
            now = time.monotonic()
            if heartbeat and now - last_out >= heartbeat / 2:
                sock.sendall(HEARTBEAT)
                last_out = now
            if heartbeat and now - last_in > heartbeat * 2:
                raise ConnectionError(f"nothing from the broker for {now - last_in:.0f} s")
            try:
                data = sock.recv(READ_SIZE)
            except TimeoutError:
                data = b""
                continue
            if not data:
                raise ConnectionError("the broker closed the connection")
            last_in = now
        self._close(sock, parser)

    @staticmethod
    def _close(sock: socket.socket, parser: FrameParser) -> None:
        """Say goodbye the protocol's way, so the broker logs no abrupt disconnect."""
        sock.sendall(CLOSE)
        deadline = time.monotonic() + CLOSE_SECONDS
        sock.settimeout(CLOSE_SECONDS)
        # Until close-ok, the protocol says every other frame is to be discarded. A broker that
        # does not answer in time is left to notice the closed socket.
        with contextlib.suppress(OSError):
            while not parser.closed and time.monotonic() < deadline:
                data = sock.recv(READ_SIZE)
                if not data:
                    return
                parser.feed(data)

    def _dropped(self, dead_letters: list[tuple[dict[str, Any], bytes]]) -> None:
        """Count dead-lettered messages by reason, one pipeline call per reason."""
        counts: Counter[DropReason] = Counter()
        for properties, body in dead_letters:
            counts[death_reason(properties.get("application_headers"))] += events_in(body)
        for reason, events in counts.items():
            self._pipeline.note_broker_drop(reason, events)
