"""A Celery app for the queue-depth tests: late acks, so prefetched and running tasks stay unacked.

Workers run it as ``celery -A tests.queue_app worker --prefetch-multiplier N`` with the broker in
``TEST_BROKER_URL`` (as tests.sample_app) and its transport options in ``TEST_TRANSPORT_OPTIONS``;
the test process publishes through ``make_app``, which takes the same options.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

from tests.sample_app import BROKER_ENV

# The app's broker_transport_options (JSON), for a worker run with the options under test.
TRANSPORT_OPTIONS_ENV = "TEST_TRANSPORT_OPTIONS"

SLEEP = "tests.queue_app.sleep"
NOOP = "tests.queue_app.noop"


def make_app(
    broker_url: str,
    *,
    transport_options: dict[str, Any] | None = None,
    send_sent_event: bool = True,
    name: str = "queues",
) -> Celery:
    """An app with late acks on ``broker_url``; tasks are sent by name to explicit queues."""
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_send_sent_event=send_sent_event,
        broker_transport_options=transport_options or {},
        task_acks_late=True,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2.0,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app(
    os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"),
    transport_options=json.loads(os.environ.get(TRANSPORT_OPTIONS_ENV) or "{}"),
)


def sleep(seconds: float) -> float:
    """Holds its worker process (and, acked late, its message) for ``seconds``."""
    time.sleep(seconds)
    return seconds


def noop() -> None:
    """Does nothing; only ever published, never run, by the queue tests."""


app.task(name=SLEEP)(sleep)
app.task(name=NOOP)(noop)
