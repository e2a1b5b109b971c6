"""The app's ``beat_schedule``, read with Celery's own schedule classes: when each entry is due.

Each entry's schedule (a number or timedelta becomes ``celery.schedules.schedule``, as Beat
makes it; crontab, solar and subclasses of Celery's ``BaseSchedule`` as they are) answers
"when is it due after a run at t?" through ``remaining_estimate``, with the app's timezone and
its "now" pinned to t: what Beat computes right after sending the task at t. Celery is
imported only here, and this module only with ``--app``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from exporter.inspect import AppLoadError
from exporter.state.beat import NextDue


class _Instant:
    """A schedule's ``nowfun``: returns the moment set last, so one answer reads one instant."""

    def __init__(self) -> None:
        self.moment = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.moment


def _next_due(schedule: Any, tz: Any) -> NextDue:
    instant = _Instant()
    # The app's schedule objects are this process's own copy (the exporter imported the app):
    # pinning their clock changes nothing for Beat.
    schedule.nowfun = instant
    lock = threading.Lock()

    def next_due(after: float) -> float:
        moment = datetime.fromtimestamp(after, tz)
        with lock:
            instant.moment = moment
            remaining: timedelta = schedule.remaining_estimate(moment)
        return (moment.astimezone(UTC) + remaining).timestamp()

    return next_due


def read_schedule(app: Any, spec: str, started: float) -> dict[str, list[NextDue]]:
    """Each task of the app's ``beat_schedule`` -> its entries' due-time functions.

    AppLoadError names the first entry that names no task, is no Celery schedule, or cannot
    say when it is due (tried once, after ``started``).
    """
    from celery.schedules import BaseSchedule, maybe_schedule  # noqa: PLC0415 - only with --app

    entries = app.conf.beat_schedule or {}
    schedules: dict[str, list[NextDue]] = {}
    for name, entry in entries.items():
        where = f"--app {spec}: beat_schedule entry {name!r}"
        task = entry.get("task") if isinstance(entry, dict) else None
        if not isinstance(task, str) or not task:
            raise AppLoadError(f"{where}: no task name")
        raw = entry.get("schedule")
        if isinstance(raw, bool) or not isinstance(raw, int | float | timedelta | BaseSchedule):
            raise AppLoadError(
                f"{where}: schedule {raw!r} is not a Celery schedule "
                "(a number, timedelta, crontab, solar or other celery.schedules.BaseSchedule)"
            )
        # As Beat's ScheduleEntry makes it: numbers and timedeltas become intervals, and the
        # schedule is bound to the app (its timezone).
        schedule = maybe_schedule(raw, entry.get("relative", False), app)
        next_due = _next_due(schedule, app.timezone)
        try:
            next_due(started)
        except Exception as err:
            raise AppLoadError(f"{where}: cannot tell when it is due: {err!r}") from err
        schedules.setdefault(task, []).append(next_due)
    return schedules
