"""Unit tests of the periodic tasks read from an app: due times by Celery's own schedule
classes (exporter/schedule.py) and the missed due times counted from runs (state/beat.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import crontab, schedule
from redbeat.decoder import RedBeatJSONEncoder

from exporter.inspect import AppLoadError
from exporter.schedule import RedBeatEntries, read_schedule
from exporter.state.beat import PeriodicReading, PeriodicState, interval_due, periodic_state

SPEC = "proj:app"
# 2024-05-06T05:08:09.5Z, a Monday; 10:38:09.5 in Asia/Kolkata (UTC+05:30, no DST).
T = 1714972089.5
KOLKATA = "Asia/Kolkata"


def utc(text: str) -> float:
    """``YYYY-MM-DD HH:MM[:SS]`` in UTC as unix time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture
def app() -> Iterator[Celery]:
    """A Celery app on the in-memory transport, in Asia/Kolkata, closed after the test."""
    celery_app = Celery("unit-schedule", broker="memory://", set_as_current=False)
    celery_app.conf.timezone = KOLKATA
    try:
        yield celery_app
    finally:
        celery_app.close()


def _schedules(app: Celery, entries: dict[str, Any]) -> dict[str, Any]:
    app.conf.beat_schedule = entries
    return read_schedule(app, SPEC, T)


def test_interval_entries_are_due_an_interval_after_each_run(app: Celery) -> None:
    """A number and a timedelta (as Beat makes them, celery.schedules.schedule) and a
    schedule object: each due its interval after the run it is asked about, to the
    microsecond."""
    dues = _schedules(
        app,
        {
            "number": {"task": "t.number", "schedule": 2.0},
            "delta": {"task": "t.delta", "schedule": timedelta(minutes=5)},
            "object": {"task": "t.object", "schedule": schedule(timedelta(hours=1))},
        },
    )
    assert {task: len(entries) for task, entries in dues.items()} == {
        "t.number": 1,
        "t.delta": 1,
        "t.object": 1,
    }
    assert dues["t.number"][0](T) == T + 2
    assert dues["t.delta"][0](T) == T + 300
    assert dues["t.object"][0](T + 0.25) == T + 3600.25


def test_crontab_entries_are_due_by_the_app_timezone(app: Celery) -> None:
    """Crontabs read in the app's timezone (Asia/Kolkata): daily at 03:00 is 21:30 UTC the day
    before; every 15 minutes falls on :15 UTC (:45 local); every minute is the next whole
    minute, also from a run exactly on a minute; Mondays at 09:00 local, asked on a Monday
    after 09:00, is next Monday."""
    dues = _schedules(
        app,
        {
            "daily": {"task": "t.daily", "schedule": crontab(hour=3, minute=0)},
            "quarter": {"task": "t.quarter", "schedule": crontab(minute="*/15")},
            "minute": {"task": "t.minute", "schedule": crontab()},
            "weekly": {
                "task": "t.weekly",
                "schedule": crontab(hour=9, minute=0, day_of_week="mon"),
            },
        },
    )
    assert dues["t.daily"][0](T) == utc("2024-05-06 21:30")
    assert dues["t.quarter"][0](T) == utc("2024-05-06 05:15")
    assert dues["t.minute"][0](T) == utc("2024-05-06 05:09")
    assert dues["t.minute"][0](utc("2024-05-06 05:09")) == utc("2024-05-06 05:10")
    assert dues["t.weekly"][0](T) == utc("2024-05-13 03:30")


def test_entries_sharing_a_task_are_all_kept(app: Celery) -> None:
    """Two entries of one task: both due-time functions are kept under the task."""
    dues = _schedules(
        app,
        {
            "hourly": {"task": "t.report", "schedule": crontab(minute=0)},
            "often": {"task": "t.report", "schedule": 600.0},
        },
    )
    assert sorted(due(T) for due in dues["t.report"]) == [T + 600, utc("2024-05-06 05:30")]


class _Broken(schedule):  # type: ignore[misc]  # celery ships no type hints
    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        raise ValueError("no idea")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"task": "t.x", "schedule": "0 3 * * *"}, "schedule '0 3 * * *' is not a Celery"),
        ({"task": "t.x", "schedule": None}, "schedule None is not a Celery schedule"),
        ({"task": "t.x", "schedule": [60]}, "schedule [60] is not a Celery schedule"),
        ({"task": "t.x", "schedule": True}, "schedule True is not a Celery schedule"),
        ({"task": "t.x", "schedule": _Broken(60)}, "cannot tell when it is due: ValueError"),
        ({"schedule": 60}, "no task name"),
    ],
)
def test_unreadable_entries_are_a_start_up_error(
    app: Celery, entry: dict[str, Any], problem: str
) -> None:
    """An entry whose schedule is no Celery schedule, or raises when asked when it is due, or
    that names no task: AppLoadError naming the app and the entry."""
    app.conf.beat_schedule = {"fine": {"task": "t.ok", "schedule": 1.0}, "bad-entry": entry}
    with pytest.raises(AppLoadError) as err:
        read_schedule(app, SPEC, T)
    message = str(err.value)
    assert message.startswith(f"--app {SPEC}: beat_schedule entry 'bad-entry': {problem}")


# --- missed due times -------------------------------------------------------------------

S = 1_700_000_000.0  # exporter start-up
GRACE = 10.0


def _state(**dues: Any) -> PeriodicState:
    return PeriodicState({task: [due] for task, due in dues.items()}, grace=GRACE, started=S)


def test_missed_due_times_count_once_each() -> None:
    """Every minute, never run: due S+60 first; no due time is missed until one's grace ran
    out (at S+70 exactly, not yet); past S+190, three are missed, and reading again counts
    nothing twice. A run at S+200 moves next due to S+260 and keeps the count; the due time
    S+260 missed by S+275 makes four."""
    state = _state(task=interval_due(60))
    assert state.read({}, S) == {"task": PeriodicReading(S + 60, 0)}
    assert state.read({}, S + 70) == {"task": PeriodicReading(S + 60, 0)}
    assert state.read({}, S + 70.5) == {"task": PeriodicReading(S + 60, 1)}
    assert state.read({}, S + 191) == {"task": PeriodicReading(S + 60, 3)}
    assert state.read({}, S + 191) == {"task": PeriodicReading(S + 60, 3)}
    assert state.read({"task": S + 200}, S + 201) == {"task": PeriodicReading(S + 260, 3)}
    assert state.read({"task": S + 200}, S + 270) == {"task": PeriodicReading(S + 260, 3)}
    assert state.read({"task": S + 200}, S + 275) == {"task": PeriodicReading(S + 260, 4)}


def test_runs_within_grace_miss_nothing() -> None:
    """Runs each a few seconds late (within the grace): nothing is missed, next due follows
    each run."""
    state = _state(task=interval_due(60))
    last = S
    for late in (1.0, 9.5, 0.25, 5.0):
        last += 60 + late
        assert state.read({"task": last}, last + 0.5) == {"task": PeriodicReading(last + 60, 0)}


def test_a_late_run_counts_what_it_missed_without_a_read_between() -> None:
    """A run 15 s after its due time S+60 (past the 10 s grace), read only afterwards: that
    due time counts as missed, as if a read had come between."""
    state = _state(task=interval_due(60))
    assert state.read({"task": S + 75}, S + 80) == {"task": PeriodicReading(S + 135, 1)}


def test_entries_sharing_one_schedule_object_answer_each_for_itself(app: Celery) -> None:
    """Two entries on one module-level crontab object: each one's next due follows its own
    last run, whatever the other was asked last (whole hours in Asia/Kolkata are :30 UTC)."""
    hourly = crontab(minute=0)
    dues = _schedules(
        app,
        {
            "a": {"task": "t.a", "schedule": hourly},
            "b": {"task": "t.b", "schedule": hourly},
        },
    )
    (due_a,), (due_b,) = dues["t.a"], dues["t.b"]
    early, late = utc("2024-05-06 05:10"), utc("2024-05-06 07:10")
    assert (due_a(early), due_b(late), due_a(early)) == (
        utc("2024-05-06 05:30"),
        utc("2024-05-06 07:30"),
        utc("2024-05-06 05:30"),
    )


def test_crontab_missed_by_the_minute(app: Celery) -> None:
    """Every minute (a real crontab), never run from T (05:08:09.5): at 05:12:05 the due times
    05:09, 05:10 and 05:11 are missed (05:12 is within its 10 s grace), at 05:12:30 four. A
    run at 05:13:00.004 moves next due to 05:14 and misses nothing more."""
    dues = _schedules(app, {"minute": {"task": "t.minute", "schedule": crontab()}})
    state = PeriodicState(dues, grace=GRACE, started=T)
    first = utc("2024-05-06 05:09")
    assert state.read({}, utc("2024-05-06 05:12:05")) == {"t.minute": PeriodicReading(first, 3)}
    assert state.read({}, utc("2024-05-06 05:12:30")) == {"t.minute": PeriodicReading(first, 4)}
    sent = utc("2024-05-06 05:13") + 0.004
    assert state.read({"t.minute": sent}, sent) == {
        "t.minute": PeriodicReading(utc("2024-05-06 05:14"), 4)
    }


def test_entries_sharing_a_task_take_the_earliest_due(app: Celery) -> None:
    """Hourly at :00 local (:30 UTC) and every 40 minutes, one task, from T (05:08:09.5): next
    due is the earlier, 05:30; missed due times come from both: by 06:20 with no run, 05:30
    and 06:10 (40 minutes on) are missed. A run at 06:15 (heard at 06:20) is due next at
    06:30 (hourly); one at 06:30:05 at 07:10:05 (40 minutes on)."""
    dues = _schedules(
        app,
        {
            "hourly": {"task": "t.report", "schedule": crontab(minute=0)},
            "often": {"task": "t.report", "schedule": 2400.0},
        },
    )
    state = PeriodicState(dues, grace=GRACE, started=T)
    half_past_five = utc("2024-05-06 05:30")
    assert state.read({}, T) == {"t.report": PeriodicReading(half_past_five, 0)}
    assert state.read({}, utc("2024-05-06 06:20")) == {
        "t.report": PeriodicReading(half_past_five, 2)
    }
    run = utc("2024-05-06 06:15")
    assert state.read({"t.report": run}, utc("2024-05-06 06:20")) == {
        "t.report": PeriodicReading(utc("2024-05-06 06:30"), 2)
    }
    run = utc("2024-05-06 06:30:05")
    assert state.read({"t.report": run}, run) == {"t.report": PeriodicReading(run + 2400, 2)}


def test_periodic_state_joins_the_config_and_the_app() -> None:
    """--periodic-tasks entries are due an interval after each run; a task in both the config
    and the app's schedule follows the app's (a weekday crontab must not be judged by a daily
    interval); nothing watched is no state."""
    state = periodic_state(
        {"t.config": 300.0, "t.both": 60.0},
        {"t.both": [interval_due(120)], "t.app": [interval_due(30)]},
        grace=GRACE,
        started=S,
    )
    assert state is not None
    assert state.tasks == ["t.both", "t.app", "t.config"]
    assert state.read({"t.config": S + 5}, S + 6) == {
        "t.both": PeriodicReading(S + 120, 0),
        "t.app": PeriodicReading(S + 30, 0),
        "t.config": PeriodicReading(S + 305, 0),
    }
    assert periodic_state({}, {}, grace=GRACE, started=S) is None


# --- RedBeat's entries ------------------------------------------------------------------


def _redbeat(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, cls=RedBeatJSONEncoder).encode()


def test_redbeat_entries_read_with_redbeats_own_encoding(app: Celery) -> None:
    """Definitions and metas as RedBeat writes them (its own JSON encoder): an interval and a
    crontab entry give their task, due times in the app's timezone and RedBeat's last run; a
    disabled entry, one deleted between the reads, one with no schedule and one that is not
    JSON are left out; an entry never run has no last run."""
    reader = RedBeatEntries(app, SPEC)
    ran = datetime.fromtimestamp(T, UTC).astimezone(ZoneInfo(KOLKATA))
    raw = [
        (
            _redbeat({"name": "i", "task": "t.interval", "schedule": schedule(30.0)}),
            _redbeat({"last_run_at": ran, "total_run_count": 3}),
        ),
        (
            _redbeat({"name": "c", "task": "t.daily", "schedule": crontab(hour=3, minute=0)}),
            None,
        ),
        (
            _redbeat({"name": "d", "task": "t.off", "schedule": schedule(5.0), "enabled": False}),
            None,
        ),
        (None, None),
        (_redbeat({"name": "n", "task": "t.none", "schedule": None}), None),
        (b"not json", None),
    ]
    entries = reader.read(raw)
    assert [(e.task, e.last_run) for e in entries] == [("t.interval", T), ("t.daily", None)]
    assert entries[0].next_due(T) == T + 30
    assert entries[1].next_due(T) == utc("2024-05-06 21:30")
    # Read again: the same decoded entries, not rebuilt.
    again = reader.read(raw)
    assert [e.next_due for e in again] == [e.next_due for e in entries]


def test_dynamic_entries_come_and_go() -> None:
    """Entries read at run time join those of start-up: a new task is watched from when it was
    first seen, a task of both takes the earliest due, a task gone is dropped, and a start-up
    task keeps its own schedule when the dynamic one goes."""
    state = PeriodicState({"t.static": [interval_due(60)]}, grace=GRACE, started=S)
    state.update_dynamic({"t.new": [interval_due(30)], "t.static": [interval_due(20)]}, S + 5)
    assert state.read({}, S + 6) == {
        "t.static": PeriodicReading(S + 20, 0),
        "t.new": PeriodicReading(S + 35, 0),
    }
    state.update_dynamic({}, S + 7)
    assert state.read({}, S + 8) == {"t.static": PeriodicReading(S + 60, 0)}
    assert state.tasks == ["t.static"]
