"""Worker inspection: queues, pool size and reserved tasks, asked rarely and in the background.

Each round is three control broadcasts (``active_queues``, ``stats``, ``reserved``) with ``limit``
set to the number of live workers, so each returns as soon as they have all replied; a round runs
every interval and, targeted, when a new worker appears. The queues feed the queue label of task
metrics (state/routing.py), the rest the worker metrics. A scrape never waits on them.

The broadcasts go through kombu's pidbox mailbox, set up as Celery's ``app.control`` sets up its
own (exchange ``celery.pidbox``, replies on ``reply.celery.pidbox``, JSON only), without importing
Celery: that import alone cost the idle daemon 3.4 MiB.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import kombu
from kombu.pidbox import Mailbox

from exporter.state.routing import QueueResolver

log = logging.getLogger(__name__)

# Celery's defaults for its control mailbox: control_exchange, control_queue_ttl and
# control_queue_expires (the reply queue is deleted 10 s after its last use).
CONTROL_EXCHANGE = "celery"
CONTROL_QUEUE_TTL = 300.0
CONTROL_QUEUE_EXPIRES = 10.0


class ControlConnection:
    """One broker connection for control commands, opened when first needed and kept between
    rounds; dropped after a failure (it may be half-broken), so the next round opens a new one."""

    def __init__(self, broker_url: str, transport_options: dict[str, Any], timeout: float) -> None:
        self._broker_url = broker_url
        self._transport_options = transport_options
        self._timeout = timeout
        self._mailbox = control_mailbox()
        self._connection: kombu.Connection | None = None

    def mailbox(self) -> Any:
        """The control mailbox bound to the connection (kombu types it loosely)."""
        if self._connection is None:
            self._connection = kombu.Connection(
                self._broker_url,
                transport_options=self._transport_options,
                connect_timeout=self._timeout,
            )
        return self._mailbox(self._connection)

    def drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # a broken connection must not hide the round's error
                log.debug("releasing the inspection connection failed", exc_info=True)


def control_mailbox() -> Mailbox:
    """The mailbox Celery workers listen on for control commands, as ``app.control`` builds it."""
    return Mailbox(
        CONTROL_EXCHANGE,
        type="fanout",
        accept=["json"],
        serializer="json",
        queue_ttl=CONTROL_QUEUE_TTL,
        reply_queue_ttl=CONTROL_QUEUE_TTL,
        queue_expires=CONTROL_QUEUE_EXPIRES,
        reply_queue_expires=CONTROL_QUEUE_EXPIRES,
    )


def by_worker(replies: Any) -> dict[str, Any]:
    """``[{worker: reply}, ...]`` as the mailbox collects them -> ``{worker: reply}``."""
    merged: dict[str, Any] = {}
    for reply in replies if isinstance(replies, list) else ():
        if isinstance(reply, dict):
            merged.update(reply)
    return merged


class InspectStats:
    """Inspections made, by result; written by the inspector, read by scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, result: str) -> None:
        with self._lock:
            self._counts[result] = self._counts.get(result, 0) + 1

    def read(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def parse_active_queues(replies: Any) -> dict[str, tuple[str, ...]]:
    """``{worker: [{"name": q, ...}, ...]}`` as Celery returns it -> ``{worker: (q, ...)}``."""
    if not isinstance(replies, dict):
        return {}
    parsed: dict[str, tuple[str, ...]] = {}
    for worker, queues in replies.items():
        if isinstance(worker, str) and isinstance(queues, list):
            parsed[worker] = tuple(
                q["name"] for q in queues if isinstance(q, dict) and isinstance(q.get("name"), str)
            )
    return parsed


def parse_concurrency(replies: Any) -> dict[str, int]:
    """``stats`` replies -> pool size per worker (``pool.max-concurrency``)."""
    if not isinstance(replies, dict):
        return {}
    parsed: dict[str, int] = {}
    for worker, stats in replies.items():
        pool = stats.get("pool") if isinstance(stats, dict) else None
        size = pool.get("max-concurrency") if isinstance(pool, dict) else None
        if isinstance(worker, str) and type(size) is int and size >= 0:
            parsed[worker] = size
    return parsed


def parse_reserved(replies: Any) -> dict[str, int]:
    """``reserved`` replies -> number of prefetched, not yet started requests per worker."""
    if not isinstance(replies, dict):
        return {}
    return {
        worker: len(requests)
        for worker, requests in replies.items()
        if isinstance(worker, str) and isinstance(requests, list)
    }


class Inspector:
    """Keeps ``resolver.worker_queues`` fresh from periodic and on-arrival inspections."""

    def __init__(
        self,
        *,
        broker_url: str,
        transport_options: dict[str, Any],
        interval: float,
        timeout: float,
        resolver: QueueResolver,
        live_workers: Callable[[], int],
        stats: InspectStats,
    ) -> None:
        self._interval = interval
        self._timeout = timeout
        self._resolver = resolver
        self._live_workers = live_workers
        self.stats = stats
        self._new: set[str] = set()
        self._new_lock = threading.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # A round holds this lock while it uses the connection.
        self._control = ControlConnection(broker_url, transport_options, timeout)
        self._round = threading.Lock()
        self._closed = False
        # Swapped whole by the inspecting thread, read by scrapes.
        self.concurrency: dict[str, int] = {}
        self.reserved: dict[str, int] = {}

    def worker_appeared(self, hostname: str) -> None:
        """Called from the event thread when a worker is seen for the first time."""
        with self._new_lock:
            self._new.add(hostname)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Inspect on every interval and whenever new workers appear, until ``stop``."""
        self._loop = asyncio.get_running_loop()
        pending: set[str] = set()
        while not stop.is_set():
            with self._new_lock:
                pending, self._new = pending | self._new, set()
            destination = sorted(pending) if pending else None
            try:
                await asyncio.to_thread(self._inspect, destination)
                pending.clear()
            except Exception as err:  # noqa: BLE001 - supervision boundary: broker may be down
                self.stats.add("error")
                log.warning("worker inspection failed: %s", err)
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=self._interval, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stopper.cancel()

    def _inspect(self, destination: list[str] | None) -> None:
        limit = len(destination) if destination else self._live_workers()
        if limit == 0:
            return
        with self._round:
            if self._closed:
                return
            mailbox = self._control.mailbox()
            try:
                active_queues = self._ask(mailbox, "active_queues", destination, limit)
                stats = self._ask(mailbox, "stats", destination, limit)
                reserved = self._ask(mailbox, "reserved", destination, limit)
            except Exception:
                self._control.drop()  # it may be half-broken: a fresh one next round
                raise
            finally:
                # Replies that came after their broadcast's timeout are kept by ticket, for
                # ever: nothing here asks for them again.
                mailbox.unclaimed.clear()
                if self._closed:  # close() came during the round and left this to it
                    self._control.drop()
        queues = parse_active_queues(active_queues)
        self._resolver.set_worker_queues(queues)
        self.concurrency = {**self.concurrency, **parse_concurrency(stats)}
        self.reserved = {**self.reserved, **parse_reserved(reserved)}
        self.stats.add("ok")
        log.debug("inspected %d worker(s): %s", len(queues), queues)

    def _ask(
        self, mailbox: Mailbox, command: str, destination: list[str] | None, limit: int
    ) -> dict[str, Any]:
        """One broadcast and its replies by worker, as ``app.control.inspect()`` makes it."""
        if destination:
            # The reply limit is the number of destinations.
            replies = mailbox.call(destination, command, timeout=self._timeout)
        else:
            replies = mailbox.multi_call(command, timeout=self._timeout, limit=limit)
        return by_worker(replies)

    def forget_worker(self, worker: str) -> None:
        """Drop what was learned of a worker that left for good."""
        self.concurrency = {w: n for w, n in self.concurrency.items() if w != worker}
        self.reserved = {w: n for w, n in self.reserved.items() if w != worker}

    def close(self) -> None:
        """Release the connection; a round in progress (in its thread) does it when it ends."""
        self._closed = True
        if self._round.acquire(blocking=False):
            try:
                self._control.drop()
            finally:
                self._round.release()


class AppLoadError(Exception):
    """--app names something that cannot be imported as a Celery app."""


def load_app(spec: str) -> Any:
    """Import ``module:attribute``: the Celery app it names."""
    import importlib  # noqa: PLC0415 - only with --app

    module_name, _, attribute = spec.partition(":")
    try:
        app: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            app = getattr(app, part)
        app.amqp  # noqa: B018 - anything else is not a Celery app
    except (ImportError, AttributeError) as err:
        raise AppLoadError(f"--app {spec}: cannot load a Celery app: {err}") from err
    return app


def app_router(app: Any) -> Callable[[str], str | None]:
    """Task name -> queue, from the app's routing config."""
    router = app.amqp.router

    def route(task: str) -> str | None:
        try:
            queue = router.route({}, task)["queue"]
        except Exception:
            log.debug("app router failed for task %s", task, exc_info=True)
            return None
        return getattr(queue, "name", None) or (queue if isinstance(queue, str) else None)

    return route
