"""A Celery app whose beat_schedule has an entry that is no schedule, for the start-up error
test: ``--app tests.bad_schedule_app:app``."""

from __future__ import annotations

from celery import Celery

BAD_ENTRY = "nightly-report"

app = Celery("bad-schedule", broker="memory://", set_as_current=False)
app.conf.beat_schedule = {
    "every-minute": {"task": "proj.tasks.ping", "schedule": 60.0},
    BAD_ENTRY: {"task": "proj.tasks.report", "schedule": "0 3 * * *"},
}
