"""Event sources: one thread per broker connection, reconnecting forever with capped backoff."""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

import kombu

from exporter.events.status import SourceStatus
from exporter.logs import redact_url
from exporter.pipeline import EventPipeline
from exporter.settings import AMQP_SCHEMES, Settings, url_scheme

log = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 0.5


class Session:
    """One connection's life: connect, subscribe, feed the pipeline until stop or an error."""

    def __init__(self, *, url: str, settings: Settings, pipeline: EventPipeline) -> None:
        self.status = SourceStatus("events")
        self._url = url
        self._settings = settings
        self._pipeline = pipeline

    def connection(self, **options: Any) -> kombu.Connection:
        """A kombu connection for the broker URL with the app's transport options."""
        return kombu.Connection(
            self._url,
            transport_options=dict(self._settings.broker_transport_options),
            connect_timeout=self._settings.broker_connect_timeout_seconds,
            **options,
        )

    def run_session(self, stop: threading.Event) -> None:
        raise NotImplementedError


class EventSource:
    """Runs a session in its own thread and starts a new one whenever it ends with an error."""

    def __init__(self, *, session: Session, max_delay: float) -> None:
        self._session = session
        self._max_delay = max_delay
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._supervise, name=f"events-{session.status.name}"
        )
        self.status = session.status

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Ask the session to end and wait for its thread."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("event source did not stop within %.1f s", timeout)

    def _supervise(self) -> None:
        delay = FIRST_RETRY_DELAY
        while not self._stop.is_set():
            try:
                self._session.run_session(self._stop)
            except Exception as err:  # noqa: BLE001 - supervision boundary: every broker failure
                if self.status.connected:  # a working connection broke: retry quickly
                    delay = FIRST_RETRY_DELAY
                self.status.mark_lost(redact_url(f"{type(err).__name__}: {err}"))
                # Jitter keeps a fleet of exporters from reconnecting in lockstep.
                self._stop.wait(delay * random.uniform(0.8, 1.2))  # noqa: S311 - not crypto
                delay = min(delay * 2, self._max_delay)
        self.status.connected = False


def build_event_source(settings: Settings, pipeline: EventPipeline) -> EventSource:
    """The source for the broker URL's transport."""
    url = settings.resolved_broker_url()
    scheme = url_scheme(url)
    session: Session
    if scheme in AMQP_SCHEMES:
        from exporter.events.amqp_source import AmqpSession  # noqa: PLC0415 - per transport

        session = AmqpSession(url=url, settings=settings, pipeline=pipeline)
    else:
        from exporter.events.redis_source import RedisSession  # noqa: PLC0415 - per transport

        session = RedisSession(url=url, settings=settings, pipeline=pipeline)
    return EventSource(session=session, max_delay=settings.reconnect_max_delay_seconds)
