"""Typed Celery events, as the decoder hands them to the state.

NamedTuples rather than frozen dataclasses: they are immutable and typed too, and building one
costs a third as much, which matters at tens of thousands of events a second (see bench/).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

TASK_SENT = "task-sent"
TASK_RECEIVED = "task-received"
TASK_STARTED = "task-started"
TASK_SUCCEEDED = "task-succeeded"
TASK_FAILED = "task-failed"
TASK_RETRIED = "task-retried"
TASK_REJECTED = "task-rejected"
TASK_REVOKED = "task-revoked"
WORKER_ONLINE = "worker-online"
WORKER_HEARTBEAT = "worker-heartbeat"
WORKER_OFFLINE = "worker-offline"

TASK_TYPES = frozenset(
    {
        TASK_SENT,
        TASK_RECEIVED,
        TASK_STARTED,
        TASK_SUCCEEDED,
        TASK_FAILED,
        TASK_RETRIED,
        TASK_REJECTED,
        TASK_REVOKED,
    }
)
WORKER_TYPES = frozenset({WORKER_ONLINE, WORKER_HEARTBEAT, WORKER_OFFLINE})
# Event types counted one by one in celery_exporter_events_total; anything else is "other".
KNOWN_TYPES = TASK_TYPES | WORKER_TYPES
OTHER_TYPE = "other"


class TaskEvent(NamedTuple):
    """A task-* event. Only task-sent carries ``queue``; only sent and received carry ``name``."""

    type: str
    uuid: str
    hostname: str
    timestamp: float
    name: str | None = None
    queue: str | None = None
    eta: str | None = None
    runtime: float | None = None
    exception: str | None = None
    retries: int | None = None  # sent and received: which attempt (0 for the first)


class WorkerEvent(NamedTuple):
    """A worker-* event; the on-demand heartbeat carries no active/processed/loadavg."""

    type: str
    hostname: str
    timestamp: float
    freq: float | None = None
    active: int | None = None
    processed: int | None = None
    load1: float | None = None
    pid: int | None = None  # the worker's main process: a new one means it restarted


class OtherEvent(NamedTuple):
    """A well-formed event of a type we do not track (custom task events, for instance)."""

    type: str


class DropReason(enum.StrEnum):
    """Why a message or event was not applied (label ``reason``)."""

    MALFORMED_ENVELOPE = "malformed_envelope"
    MALFORMED_BODY = "malformed_body"
    UNSAFE_CONTENT_TYPE = "unsafe_content_type"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    INVALID_EVENT = "invalid_event"
    OVERSIZED = "oversized"
    DUPLICATE = "duplicate"  # an attempt's end event seen again (not counted twice)
    # Dropped by RabbitMQ from our event queue, counted through dead-lettering (in events).
    BROKER_TTL = "broker_ttl"
    BROKER_OVERFLOW = "broker_overflow"
    BROKER_OTHER = "broker_other"


class Dropped(NamedTuple):
    """A message or event that was refused, with a short reason for the log."""

    reason: DropReason
    detail: str


Event = TaskEvent | WorkerEvent | OtherEvent
Decoded = Event | Dropped
