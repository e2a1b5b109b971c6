"""Worker inspection: which queues each worker consumes, asked rarely and in the background.

One ``active_queues`` broadcast per interval, with ``limit`` set to the number of live workers so
it returns as soon as they have all replied, plus a targeted one when a new worker appears. The
answers feed the queue label of task metrics (see state/routing.py); a scrape never waits on them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from exporter.state.routing import QueueResolver

log = logging.getLogger(__name__)


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
        self._broker_url = broker_url
        self._transport_options = transport_options
        self._interval = interval
        self._timeout = timeout
        self._resolver = resolver
        self._live_workers = live_workers
        self.stats = stats
        self._new: set[str] = set()
        self._new_lock = threading.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: Any = None

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
        if self._app is None:
            from celery import Celery  # noqa: PLC0415 - heavy, and only needed here

            self._app = Celery("celery-exporter", broker=self._broker_url, set_as_current=False)
            self._app.conf.broker_transport_options = self._transport_options
            self._app.conf.broker_connection_timeout = self._timeout
        limit = len(destination) if destination else self._live_workers()
        if limit == 0:
            return
        inspect = self._app.control.inspect(
            timeout=self._timeout, limit=limit, destination=destination
        )
        queues = parse_active_queues(inspect.active_queues())
        self.stats.add("ok")
        self._resolver.set_worker_queues(queues)
        log.debug("inspected %d worker(s): %s", len(queues), queues)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


def load_app_router(spec: str) -> Callable[[str], str | None]:
    """Import ``module:attribute`` and return task name -> queue from its routing config."""
    import importlib  # noqa: PLC0415 - only with --app

    module_name, _, attribute = spec.partition(":")
    app: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        app = getattr(app, part)
    router = app.amqp.router

    def route(task: str) -> str | None:
        try:
            queue = router.route({}, task)["queue"]
        except Exception:
            log.debug("app router failed for task %s", task, exc_info=True)
            return None
        return getattr(queue, "name", None) or (queue if isinstance(queue, str) else None)

    return route
