"""Worker inspection against a pidbox node on kombu's in-memory transport (real brokers and
workers: test_e2e_inspect.py), and the reply parsers on malformed replies."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import pytest

from exporter.inspect import (
    Inspector,
    InspectStats,
    by_worker,
    control_mailbox,
    parse_active_queues,
    parse_concurrency,
    parse_reserved,
)
from exporter.state.routing import QueueResolver

WORKER = "celery@w1"
# The in-memory transport polls its queues; once a second by default.
FAST = {"polling_interval": 0.01}
Handlers = dict[str, Callable[..., Any]]


def _handlers(stats_gate: threading.Event | None = None, stats_wait: float = 5.0) -> Handlers:
    def stats(_state: Any) -> dict[str, Any]:
        if stats_gate is not None:
            stats_gate.wait(stats_wait)
        return {"pool": {"max-concurrency": 4}}

    return {
        "active_queues": lambda _state: [{"name": "a"}, {"name": "b"}],
        "stats": stats,
        "reserved": lambda _state: [{"id": "t1"}, {"id": "t2"}],
    }


@pytest.fixture
def worker_node() -> Iterator[Callable[[Handlers], None]]:
    """Starts a pidbox node named WORKER answering with the handlers given, as a worker does."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(handlers: Handlers) -> None:
        connection = kombu.Connection("memory://", transport_options=FAST)
        node = control_mailbox()(connection).Node(
            WORKER, handlers=handlers, channel=connection.channel()
        )
        node.listen()

        def serve() -> None:
            while not stop.is_set():
                try:
                    connection.drain_events(timeout=0.05)
                except TimeoutError:
                    continue
            connection.release()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)


def _inspector(resolver: QueueResolver | None = None, timeout: float = 2.0) -> Inspector:
    return Inspector(
        broker_url="memory://",
        transport_options=FAST,
        interval=60.0,
        timeout=timeout,
        resolver=resolver or QueueResolver(),
        live_workers=lambda: 1,
        stats=InspectStats(),
    )


def test_a_round_learns_queues_pool_size_and_reserved(
    worker_node: Callable[[Handlers], None],
) -> None:
    worker_node(_handlers())
    resolver = QueueResolver()
    inspector = _inspector(resolver)
    inspector._inspect(None)
    assert resolver.worker_queues == {WORKER: ("a", "b")}
    assert inspector.concurrency == {WORKER: 4}
    assert inspector.reserved == {WORKER: 2}
    assert inspector.stats.read() == {"ok": 1}
    inspector._inspect([WORKER])  # targeted, on the connection kept from the first round
    assert inspector.stats.read() == {"ok": 2}
    inspector.close()
    assert inspector._control._connection is None


def test_close_during_a_round_leaves_the_connection_to_the_round(
    worker_node: Callable[[Handlers], None],
) -> None:
    """close() from the event loop while a round runs in its thread does not pull the
    connection from under it: the round finishes, then releases it; later rounds do nothing."""
    gate = threading.Event()
    worker_node(_handlers(stats_gate=gate))
    inspector = _inspector()
    errors: list[BaseException] = []

    def round_() -> None:
        try:
            inspector._inspect(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            errors.append(err)

    thread = threading.Thread(target=round_)
    thread.start()
    while inspector._control._connection is None and thread.is_alive():
        thread.join(0.01)
    assert not errors
    inspector.close()
    assert inspector._control._connection is not None  # still the round's
    gate.set()
    thread.join(10)
    assert not errors
    assert inspector.concurrency == {WORKER: 4}
    assert inspector._control._connection is None
    inspector._inspect(None)
    assert inspector._control._connection is None
    assert inspector.stats.read() == {"ok": 1}


def test_a_reply_after_its_timeout_is_not_kept(worker_node: Callable[[Handlers], None]) -> None:
    """A worker answers ``stats`` after the broadcast gave up: the reply arrives during the next
    broadcast of the round, which files it under its ticket (kombu's pidbox keeps such replies
    until asked for them, which nothing does); the round drops it at its end."""
    worker_node(_handlers(stats_gate=threading.Event(), stats_wait=1.3))
    inspector = _inspector(timeout=1.0)
    inspector._inspect(None)
    assert inspector.concurrency == {}
    assert inspector.stats.read() == {"ok": 1}
    assert not inspector._control._mailbox.unclaimed


def test_by_worker_merges_replies_and_skips_malformed_ones() -> None:
    replies = [{"celery@a": 1}, "junk", {"celery@b": 2}, None]
    assert by_worker(replies) == {"celery@a": 1, "celery@b": 2}
    assert by_worker(None) == {}
    assert by_worker({"celery@a": 1}) == {}


def test_parsers_skip_malformed_replies() -> None:
    assert parse_active_queues(
        {"celery@a": [{"name": "q"}, {"name": 3}, "x"], "celery@b": "junk", 5: []}
    ) == {"celery@a": ("q",)}
    assert parse_concurrency(
        {
            "celery@a": {"pool": {"max-concurrency": 4}},
            "celery@b": {"pool": {"max-concurrency": True}},
            "celery@c": {"pool": {"max-concurrency": -1}},
            "celery@d": {"pool": "x"},
        }
    ) == {"celery@a": 4}
    assert parse_reserved({"celery@a": [{}, {}], "celery@b": None}) == {"celery@a": 2}
    assert parse_active_queues(None) == {}
    assert parse_concurrency([]) == {}
    assert parse_reserved("x") == {}
