"""What every broker provides, and the reconnecting event source that runs its session.

A broker (one package each: brokers/redis, brokers/amqp) gives the daemon an event session, a
queue probe and a check of the settings; brokers/__init__.py picks one by URL scheme.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import kombu

from exporter.events.status import SourceStatus
from exporter.logs import redact_url
from exporter.pipeline import EventPipeline
from exporter.settings import Settings
from exporter.state.queues import QueueState

log = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 0.5


def url_scheme(url: str) -> str:
    """The lowercased scheme of ``url``; empty when it has no ``scheme://`` (never the rest,
    which may hold a password)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep and scheme.isascii() and scheme.isidentifier() else ""


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


class Probe(Protocol):
    """A broker probe: one blocking poll per call, its connections released on close."""

    def __call__(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class QueueContext:
    """What a queue probe may learn from the rest of the daemon."""

    state: QueueState  # where readings go
    seen_queues: Callable[[], set[str]]  # queues named by events and inspection
    sent_times: Callable[[list[str]], dict[str, float]]  # task-sent time of waiting task ids
    sent_seen: Callable[[], bool]  # whether producers send task-sent
    clock: Callable[[], float]


class Broker(Protocol):
    """One broker's way of doing each thing the daemon needs from it."""

    schemes: frozenset[str]

    def check(self, settings: Settings, url: str) -> str | None:
        """What is wrong with the settings for this broker, or None."""
        ...

    def event_session(self, url: str, settings: Settings, pipeline: EventPipeline) -> Session:
        """The session reading the event stream."""
        ...

    def queue_probe(self, url: str, settings: Settings, context: QueueContext) -> Probe:
        """The probe reading queue depth."""
        ...
