"""The app's ``beat_schedule`` (and RedBeat's entries), read with Celery's own schedule classes:
when each entry is due.

Each entry's schedule (a number or timedelta becomes ``celery.schedules.schedule``, as Beat
makes it; crontab, solar and subclasses of Celery's ``BaseSchedule`` as they are) answers
"when is it due after a run at t?" through ``remaining_estimate``, with the app's timezone and
its "now" pinned to t: what Beat computes right after sending the task at t. Celery is
imported only here, and this module only with ``--app``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from exporter.inspect import AppLoadError
from exporter.state.beat import NextDue, RedBeatEntry

log = logging.getLogger(__name__)


class _Instant:
    """A schedule's ``nowfun``: returns the moment set last, so one answer reads one instant."""

    def __init__(self) -> None:
        self.moment = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.moment


# Entries may share one schedule object (a module-level crontab): each answer pins the
# object's clock to its own instant, under one lock.
_PINNED = threading.Lock()


def _next_due(schedule: Any, tz: Any) -> NextDue:
    # The app's schedule objects are this process's own (the exporter imported the app):
    # pinning their clock changes nothing for Beat.
    instant = _Instant()

    def next_due(after: float) -> float:
        moment = datetime.fromtimestamp(after, tz)
        with _PINNED:
            schedule.nowfun = instant
            instant.moment = moment
            remaining: timedelta | None = schedule.remaining_estimate(moment)
        if remaining is None:  # a schedule with no run after this one (RedBeat's rrule)
            return math.inf
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


class RedBeatEntries:
    """RedBeat's entries as its scheduler stores them (the hash at ``<prefix><name>``: JSON
    ``definition`` and ``meta``), decoded with redbeat's own decoder: each enabled entry's task,
    when it is due after a run, and RedBeat's own record of its last run."""

    def __init__(self, app: Any, spec: str) -> None:
        try:
            from redbeat.decoder import RedBeatJSONDecoder  # noqa: PLC0415 - only with RedBeat
        except ImportError as err:
            raise AppLoadError(
                f"--app {spec} with --beat-redbeat reads RedBeat's entries with celery-redbeat, "
                f"which cannot be imported ({err}): pip install celery-redbeat"
            ) from err
        self._decoder: type[json.JSONDecoder] = RedBeatJSONDecoder
        self._app = app
        # Decoded definitions by their JSON: a schedule is rebuilt only when its entry changes.
        self._known: dict[bytes, tuple[str, NextDue] | None] = {}

    def read(self, raw: Sequence[tuple[bytes | None, bytes | None]]) -> list[RedBeatEntry]:
        """The entries of one poll, ``(definition, meta)`` each; unreadable ones left out."""
        known: dict[bytes, tuple[str, NextDue] | None] = {}
        entries: list[RedBeatEntry] = []
        for definition, meta in raw:
            if definition is None:
                continue  # deleted between the two reads
            parsed = self._known.get(definition)
            if definition not in self._known:
                try:
                    parsed = self._decode(definition)
                except Exception:  # an entry written by anyone: skipped, never fatal
                    log.debug("RedBeat entry not watched: %r", definition, exc_info=True)
            known[definition] = parsed
            if parsed is not None:
                entries.append(RedBeatEntry(*parsed, self._last_run(meta)))
        self._known = known
        return entries

    def _decode(self, definition: bytes) -> tuple[str, NextDue] | None:
        """An enabled entry's task and due times; None for a disabled one."""
        from celery.schedules import BaseSchedule, maybe_schedule  # noqa: PLC0415 - see above

        fields = json.loads(definition, cls=self._decoder)
        schedule = fields["schedule"]
        if not fields.get("enabled", True):
            return None
        if not isinstance(schedule, BaseSchedule):
            raise TypeError(f"schedule {schedule!r} is not a Celery schedule")
        schedule = maybe_schedule(schedule, app=self._app)
        next_due = _next_due(schedule, self._app.timezone)
        next_due(time.time())  # one that cannot tell is left out here, not at every scrape
        return str(fields["task"]), next_due

    def _last_run(self, meta: bytes | None) -> float | None:
        try:
            last_run = json.loads(meta, cls=self._decoder)["last_run_at"] if meta else None
        except (ValueError, KeyError, TypeError):
            return None
        return last_run.timestamp() if isinstance(last_run, datetime) else None
