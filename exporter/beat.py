"""Celery-side helper: a Beat heartbeat task and the schedule entry that runs it.

Add it to your app with one line (Beat and workers both import the app)::

    exporter.beat.install(app)                # every 30 s

Beat then sends ``exporter.beat.heartbeat`` every interval; the exporter sees it in the event
stream (source ``events``), and the worker running it writes the unix time to the Redis key
``celery_beat_heartbeat`` when the broker is Redis (source ``redis_key``).
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, shared_task

HEARTBEAT_TASK = "exporter.beat.heartbeat"
HEARTBEAT_KEY = "celery_beat_heartbeat"
ENTRY_NAME = "celery-exporter-beat-heartbeat"
DEFAULT_INTERVAL = 30.0


def _heartbeat(self: Any, key: str = HEARTBEAT_KEY, ttl: float = 600.0) -> None:
    """Write the current unix time to ``key`` (expiring after ``ttl``) on a Redis broker."""
    with self.app.connection_for_write() as conn:
        if conn.transport.driver_type != "redis":
            return  # the event stream alone carries the heartbeat
        # kombu's client applies the transport's global_keyprefix, as the exporter expects.
        conn.default_channel.client.set(key, repr(time.time()), ex=max(1, round(ttl)))


# Registered without decorator syntax: celery ships no type hints, and an untyped decorator
# would untype the function.
heartbeat: Any = shared_task(name=HEARTBEAT_TASK, bind=True, ignore_result=True)(_heartbeat)


def schedule(
    interval: float = DEFAULT_INTERVAL, key: str = HEARTBEAT_KEY
) -> dict[str, dict[str, Any]]:
    """The beat_schedule entry: the heartbeat every ``interval`` seconds, expiring unrun."""
    return {
        ENTRY_NAME: {
            "task": HEARTBEAT_TASK,
            "schedule": interval,
            # A key that outlives a few intervals would hide a dead Beat; one that expires
            # sooner than an interval would flap.
            "kwargs": {"key": key, "ttl": interval * 4},
            # A heartbeat that waited longer than an interval says nothing about Beat now.
            "options": {"expires": interval},
        }
    }


def install(app: Celery, interval: float = DEFAULT_INTERVAL, key: str = HEARTBEAT_KEY) -> None:
    """Add the heartbeat entry to ``app``'s beat_schedule."""
    app.conf.beat_schedule = {**(app.conf.beat_schedule or {}), **schedule(interval, key)}
