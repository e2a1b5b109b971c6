"""A small Celery app for the local demo: tasks that succeed, fail, retry and take a while.

``python scripts/demo_app.py produce`` publishes a steady mix of them until interrupted.
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any

from celery import Celery

app = Celery("demo", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_send_sent_event=True,
    task_routes={"demo.report": {"queue": "reports"}},
    broker_connection_retry_on_startup=True,
)


@app.task(name="demo.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="demo.flaky")
def flaky() -> str:
    if random.random() < 0.2:  # noqa: S311 - demo randomness
        raise ConnectionError("upstream unavailable")
    return "ok"


@app.task(name="demo.report")
def report() -> str:
    time.sleep(random.uniform(0.1, 2.0))  # noqa: S311 - demo randomness
    return "done"


@app.task(name="demo.fetch", bind=True, max_retries=3)
def fetch(self: Any) -> str:  # bound: a Task
    if random.random() < 0.3:  # noqa: S311 - demo randomness
        raise self.retry(countdown=1)
    return "fetched"


def produce() -> None:
    """Publish a mix of tasks, a few per second, until interrupted."""
    while True:
        add.delay(1, 2)
        flaky.delay()
        fetch.delay()
        if random.random() < 0.3:  # noqa: S311 - demo randomness
            report.delay()
        time.sleep(0.5)


if __name__ == "__main__" and sys.argv[1:] == ["produce"]:
    produce()
