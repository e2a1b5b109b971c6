"""A Celery app for the Beat tests: the sample app plus the shipped heartbeat entry at 1 s.

Beat and its worker run it as ``celery -A tests.beat_app beat|worker``; the broker comes from
``TEST_BROKER_URL`` (as for tests.sample_app). With ``TEST_REDBEAT=1`` it is configured for
RedBeat on the same Redis, with a short lock timeout and loop interval so that a dead Beat's
lock expires within seconds.
"""

from __future__ import annotations

import os

import exporter.beat
from tests import sample_app

REDBEAT_ENV = "TEST_REDBEAT"

HEARTBEAT_INTERVAL = 1.0
REDBEAT_LOCK_TIMEOUT = 5
MAX_LOOP_INTERVAL = 1

# The heartbeat has no route: it goes to the sample app's default queue.
HEARTBEAT_QUEUE = sample_app.QUEUE_A

broker_url = os.environ.get(sample_app.BROKER_ENV, "redis://127.0.0.1:6379/0")
app = sample_app.make_app(broker_url, name="e2e-beat")
exporter.beat.install(app, interval=HEARTBEAT_INTERVAL)
app.conf.beat_max_loop_interval = MAX_LOOP_INTERVAL
if os.environ.get(REDBEAT_ENV) == "1":
    app.conf.update(
        redbeat_redis_url=broker_url,
        redbeat_lock_timeout=REDBEAT_LOCK_TIMEOUT,
    )
