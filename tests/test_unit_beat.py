"""Unit tests of the Beat pieces: heartbeat key values, and exporter.beat's schedule entry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

import exporter.beat
from exporter.beat import DEFAULT_INTERVAL, ENTRY_NAME, HEARTBEAT_KEY, HEARTBEAT_TASK
from exporter.state.beat import parse_heartbeat_value

# 2024-05-06T05:08:09.5Z
T = 1714972089.5
MIDNIGHT = 1714953600.0  # 2024-05-06T00:00:00Z

PARSE_CASES: list[Any] = [
    # raw value, format, expected unix time (None: no heartbeat)
    (None, "auto", None),
    (None, "unix", None),
    (None, "iso8601", None),
    # unix seconds
    ("1714972089.5", "auto", T),
    (b"1714972089.5", "auto", T),
    ("1714972089.5", "unix", T),
    (b" 1714972089.5\r\n", "unix", T),
    ("1714972089", "auto", 1714972089.0),
    ("1.7149720895e9", "auto", T),
    (repr(T), "unix", T),  # what exporter.beat's task writes
    ("1714972089.5", "iso8601", None),
    ("1714972089", "iso8601", None),
    # ISO-8601
    ("2024-05-06T05:08:09.5Z", "auto", T),
    ("2024-05-06T05:08:09.500000+00:00", "auto", T),
    ("2024-05-06T07:08:09.5+02:00", "auto", T),
    ("2024-05-06T00:38:09.5-04:30", "iso8601", T),
    ("2024-05-06T05:08:09.5", "auto", T),  # no zone: UTC
    ("2024-05-06 05:08:09.5", "iso8601", T),
    (b"2024-05-06T05:08:09.5Z\n", "iso8601", T),
    ("2024-05-06", "auto", MIDNIGHT),
    ("2024-05-06T05:08:09.5Z", "unix", None),
    # unreadable
    ("", "auto", None),
    ("   ", "iso8601", None),
    ("yesterday", "auto", None),
    ("yesterday", "unix", None),
    ("2024-13-01T00:00:00Z", "auto", None),
    (b"\xff\xfe\x00", "auto", None),
    # Not finite: a key holding "inf" would keep celery_beat_up at 1 for ever.
    ("inf", "auto", None),
    ("nan", "unix", None),
]


@pytest.mark.parametrize(("raw", "fmt", "expected"), PARSE_CASES)
def test_parse_heartbeat_value(raw: bytes | str | None, fmt: str, expected: float | None) -> None:
    """Each heartbeat key value reads as the exact unix time it names in the given format
    (``auto`` tries unix seconds, then ISO-8601; a naive ISO time is UTC), or as no heartbeat
    when the key is missing or its value does not parse in that format."""
    assert parse_heartbeat_value(raw, fmt) == expected


def test_schedule_default_entry() -> None:
    """schedule() is one entry that sends exporter.beat.heartbeat every 30 s with the default
    key, a key TTL of four intervals, and messages that expire after one interval."""
    assert exporter.beat.schedule() == {
        ENTRY_NAME: {
            "task": HEARTBEAT_TASK,
            "schedule": DEFAULT_INTERVAL,
            "kwargs": {"key": HEARTBEAT_KEY, "ttl": DEFAULT_INTERVAL * 4},
            "options": {"expires": DEFAULT_INTERVAL},
        }
    }
    assert (ENTRY_NAME, HEARTBEAT_TASK, HEARTBEAT_KEY, DEFAULT_INTERVAL) == (
        "celery-exporter-beat-heartbeat",
        "exporter.beat.heartbeat",
        "celery_beat_heartbeat",
        30.0,
    )


def test_schedule_custom_interval_and_key() -> None:
    """schedule(interval, key) carries the interval into the schedule, the TTL (4x) and the
    expiry, and the key into the task's kwargs."""
    assert exporter.beat.schedule(1.5, "my:key") == {
        ENTRY_NAME: {
            "task": HEARTBEAT_TASK,
            "schedule": 1.5,
            "kwargs": {"key": "my:key", "ttl": 6.0},
            "options": {"expires": 1.5},
        }
    }


@pytest.fixture
def app() -> Iterator[Celery]:
    """A Celery app on the in-memory transport, closed after the test."""
    celery_app = Celery("unit-beat", broker="memory://", set_as_current=False)
    try:
        yield celery_app
    finally:
        celery_app.close()


def test_install_adds_the_entry_and_keeps_others(app: Celery) -> None:
    """install() adds the heartbeat entry to an app's beat_schedule, keeps the entries already
    there, and a second install() replaces the heartbeat entry rather than adding another."""
    other = {"task": "app.cleanup", "schedule": 60.0}
    app.conf.beat_schedule = {"cleanup": other}
    exporter.beat.install(app)
    assert app.conf.beat_schedule == {"cleanup": other, **exporter.beat.schedule()}
    exporter.beat.install(app, interval=5.0, key="hb")
    assert app.conf.beat_schedule == {"cleanup": other, **exporter.beat.schedule(5.0, "hb")}


def test_install_on_an_app_without_schedule(app: Celery) -> None:
    """install() on a fresh app (beat_schedule empty) leaves exactly the heartbeat entry, and
    the shipped task is registered with the app under its name."""
    exporter.beat.install(app, interval=1.0)
    assert app.conf.beat_schedule == exporter.beat.schedule(1.0)
    assert HEARTBEAT_TASK in app.tasks


def test_heartbeat_task_is_a_no_op_without_redis(app: Celery) -> None:
    """On a broker that is not Redis the heartbeat task writes nothing and succeeds: the event
    stream alone carries the heartbeat."""
    result: Any = app.tasks[HEARTBEAT_TASK].apply(kwargs={"key": "k", "ttl": 10})
    assert result.successful()
    assert result.get() is None
