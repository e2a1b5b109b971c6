"""A Celery app whose beat_schedule the exporter reads (``--app tests.beat_schedule_app:app``):
an interval entry every 2 s and a crontab entry every minute, in UTC.

Beat runs it as ``celery -A tests.beat_schedule_app beat``, the broker from ``TEST_BROKER_URL``
(as for tests.sample_app); the exporter imports it only for the schedule. No worker runs the
tasks: Beat's task-sent events carry the runs. With ``TEST_REDBEAT=1`` it is configured for
RedBeat on the same Redis, as tests.beat_app is.
"""

from __future__ import annotations

import os

from celery.schedules import crontab

from tests import beat_app, sample_app

INTERVAL_TASK = "tests.periodic.every_two_seconds"
INTERVAL_SECONDS = 2.0
CRONTAB_TASK = "tests.periodic.every_minute"

broker_url = os.environ.get(sample_app.BROKER_ENV, "redis://127.0.0.1:6379/0")
app = sample_app.make_app(broker_url, name="e2e-schedule")
app.conf.timezone = "UTC"
app.conf.beat_max_loop_interval = 1
app.conf.beat_schedule = {
    "two-seconds": {"task": INTERVAL_TASK, "schedule": INTERVAL_SECONDS},
    "minutely": {"task": CRONTAB_TASK, "schedule": crontab()},
}
if os.environ.get(beat_app.REDBEAT_ENV) == "1":
    app.conf.update(
        redbeat_redis_url=broker_url, redbeat_lock_timeout=beat_app.REDBEAT_LOCK_TIMEOUT
    )
