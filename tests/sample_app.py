"""A Celery app for the end-to-end tests: tasks with known outcomes, routed to several queues.

Workers run it as ``celery -A tests.sample_app worker``; the broker comes from ``TEST_BROKER_URL``
and whether publishing emits task-sent from ``TEST_SEND_SENT_EVENT`` (default on). The test
process publishes through ``make_app(url)`` producers instead, one per broker, and sends tasks
by name, so it never needs the module-level app's environment.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

# kombu's Queue is unannotated; through Any, strict mypy lets it be called.
_Queue: Any = Queue

BROKER_ENV = "TEST_BROKER_URL"
SEND_SENT_EVENT_ENV = "TEST_SEND_SENT_EVENT"

# Queues: A takes the tasks that end well, B the ones that fail or are revoked, C is for tests
# that need a queue no router names (the queue then comes from the worker's single queue).
# Nothing is ever sent to IDLE: a worker starts on it and is told to consume more when ready.
QUEUE_A = "e2e_a"
QUEUE_B = "e2e_b"
QUEUE_C = "e2e_c"
QUEUE_IDLE = "e2e_idle"
QUEUES = (QUEUE_A, QUEUE_B, QUEUE_C, QUEUE_IDLE)

OK = "tests.sample_app.ok"
FAIL_VALUE = "tests.sample_app.fail_value"
FAIL_KEY = "tests.sample_app.fail_key"
RETRY = "tests.sample_app.retry_then_succeed"
SLEEP = "tests.sample_app.sleep"
RETRY_FAIL = "tests.sample_app.retry_then_fail"
LOST_ONCE = "tests.sample_app.lost_once"
RECORD_PID = "tests.sample_app.record_pid"

ROUTES = {
    OK: {"queue": QUEUE_A},
    RETRY: {"queue": QUEUE_A},
    FAIL_VALUE: {"queue": QUEUE_B},
    FAIL_KEY: {"queue": QUEUE_B},
    SLEEP: {"queue": QUEUE_B},
    RETRY_FAIL: {"queue": QUEUE_B},
    LOST_ONCE: {"queue": QUEUE_B},
    RECORD_PID: {"queue": QUEUE_A},
}
MAX_RETRIES = 5
RETRY_FAIL_RETRIES = 2


def make_app(broker_url: str, *, send_sent_event: bool = True, name: str = "e2e") -> Celery:
    """An app on ``broker_url`` with the test routing; producers and the worker share it."""
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        task_send_sent_event=send_sent_event,
        task_queues=[_Queue(queue) for queue in QUEUES],
        task_routes=ROUTES,
        task_default_queue=QUEUE_A,
        # No result backend: events are the only output the tests look at.
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2.0,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app(
    os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"),
    send_sent_event=os.environ.get(SEND_SENT_EVENT_ENV, "1") == "1",
)


def ok(value: int) -> int:
    """Succeeds."""
    return value


def fail_value() -> None:
    """Fails with ValueError."""
    raise ValueError("e2e value failure")


def fail_key() -> None:
    """Fails with KeyError."""
    raise KeyError("e2e-missing-key")


def retry_then_succeed(self: Any, times: int) -> int:
    """Retries (at once) exactly ``times`` times, then succeeds with the number of retries."""
    retries: int = self.request.retries
    if retries < times:
        raise self.retry(countdown=0)
    return retries


def retry_then_fail(self: Any) -> None:
    """Retries (at once) until its retries run out: fails with MaxRetriesExceededError."""
    raise self.retry(countdown=0)


def lost_once(marker: str) -> str:
    """Kills its own pool process the first time (the marker file does not exist yet), as an
    OOM kill would; succeeds when delivered again."""
    path = Path(marker)
    if not path.exists():
        path.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return marker


def sleep(seconds: float) -> float:
    """Sleeps: long enough to be seen running, or revoked before it runs."""
    time.sleep(seconds)
    return seconds


def record_pid(path: str, seconds: float) -> int:
    """Sleeps, then appends the pid of the process that ran it to ``path``: which pool
    process ran which task, with no result backend."""
    time.sleep(seconds)
    pid = os.getpid()
    with Path(path).open("a", encoding="utf-8") as file:
        file.write(f"{pid}\n")
    return pid


# Registered by call rather than decorator: the functions keep their types for mypy, and the
# tests publish by name only.
app.task(name=OK)(ok)
app.task(name=FAIL_VALUE)(fail_value)
app.task(name=FAIL_KEY)(fail_key)
app.task(name=RETRY, bind=True, max_retries=MAX_RETRIES)(retry_then_succeed)
app.task(name=SLEEP)(sleep)
app.task(name=RETRY_FAIL, bind=True, max_retries=RETRY_FAIL_RETRIES)(retry_then_fail)
# Acknowledged once done; requeued when its pool process dies (Celery's documented pair).
app.task(name=LOST_ONCE, acks_late=True, reject_on_worker_lost=True)(lost_once)
app.task(name=RECORD_PID)(record_pid)
