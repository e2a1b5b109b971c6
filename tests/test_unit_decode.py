"""Unit tests of exporter/events/decode.py: kombu envelopes, AMQP bodies, every drop reason."""

from __future__ import annotations

import base64
import json
import math
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import kombu
import msgpack
import pytest

from exporter.events.decode import JSON, MSGPACK, decode_body, decode_redis_message, parse_event
from exporter.events.model import (
    TASK_TYPES,
    Decoded,
    Dropped,
    DropReason,
    OtherEvent,
    TaskEvent,
    WorkerEvent,
)
from exporter.pipeline import EventPipeline
from exporter.settings import Settings
from exporter.state.labels import TaskLabels
from exporter.state.routing import QueueResolver
from exporter.state.tasks import TaskState
from exporter.state.workers import WorkerState

PICKLE = "application/x-python-serialize"
LIMIT = 1 << 20

HOST = "celery@worker-1"
TS = 1_700_000_000.25


def kombu_envelope(
    payload: Any,
    *,
    routing_key: str = "task.started",
    content_type: str = JSON,
    body: bytes | None = None,
) -> bytes:
    """A message as kombu's Redis transport publishes it on the event channel."""
    raw_body = json.dumps(payload).encode() if body is None else body
    envelope = {
        "body": base64.b64encode(raw_body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"hostname": HOST},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


def task_fields(etype: str, **extra: Any) -> dict[str, Any]:
    """A task event dict with the fields every Celery event carries."""
    fields: dict[str, Any] = {
        "type": etype,
        "uuid": "8b1f3c6e-0000-4000-8000-000000000001",
        "hostname": HOST,
        "timestamp": TS,
        "utcoffset": 0,
        "pid": 4242,
        "clock": 17,
    }
    fields.update(extra)
    return fields


def worker_fields(etype: str, **extra: Any) -> dict[str, Any]:
    """A worker event dict with the fields Celery's Heart sends."""
    fields: dict[str, Any] = {
        "type": etype,
        "hostname": HOST,
        "timestamp": TS,
        "utcoffset": 0,
        "pid": 4242,
        "clock": 3,
        "freq": 2.0,
        "active": 1,
        "processed": 10,
        "loadavg": [0.5, 0.25, 0.125],
        "sw_ident": "py-celery",
        "sw_ver": "5.5.0",
        "sw_sys": "Linux",
    }
    fields.update(extra)
    return fields


UUID = "8b1f3c6e-0000-4000-8000-000000000001"


# --- single envelopes, every tracked type ---


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            task_fields(
                "task-sent",
                name="app.add",
                queue="default",
                eta=None,
                args="(1, 2)",
                kwargs="{}",
                retries=0,
                exchange="",
                routing_key="default",
            ),
            TaskEvent("task-sent", UUID, HOST, TS, "app.add", "default", retries=0),
        ),
        (
            task_fields("task-received", name="app.add", eta="2024-01-01T00:00:00+00:00"),
            TaskEvent(
                "task-received", UUID, HOST, TS, "app.add", None, "2024-01-01T00:00:00+00:00"
            ),
        ),
        (task_fields("task-started"), TaskEvent("task-started", UUID, HOST, TS)),
        (
            task_fields("task-succeeded", result="3", runtime=0.125),
            TaskEvent("task-succeeded", UUID, HOST, TS, runtime=0.125),
        ),
        (
            task_fields("task-succeeded", runtime=2),
            TaskEvent("task-succeeded", UUID, HOST, TS, runtime=2.0),
        ),
        (
            task_fields("task-failed", exception="ValueError('x')", traceback="Traceback..."),
            TaskEvent("task-failed", UUID, HOST, TS, exception="ValueError('x')"),
        ),
        (
            task_fields("task-retried", exception="Retry('later')", traceback="..."),
            TaskEvent("task-retried", UUID, HOST, TS),
        ),
        (task_fields("task-rejected", requeue=False), TaskEvent("task-rejected", UUID, HOST, TS)),
        (
            task_fields("task-revoked", terminated=False, signum=None, expired=False),
            TaskEvent("task-revoked", UUID, HOST, TS),
        ),
        (
            worker_fields("worker-online"),
            WorkerEvent("worker-online", HOST, TS, 2.0, 1, 10, 0.5, 4242),
        ),
        (
            worker_fields("worker-heartbeat", active=0, processed=0, loadavg=[1, 2, 3]),
            WorkerEvent("worker-heartbeat", HOST, TS, 2.0, 0, 0, 1.0, 4242),
        ),
        (
            worker_fields("worker-offline"),
            WorkerEvent("worker-offline", HOST, TS, 2.0, 1, 10, 0.5, 4242),
        ),
    ],
)
def test_single_envelope_decodes_to_typed_event(payload: dict[str, Any], expected: Decoded) -> None:
    """One kombu Redis envelope yields exactly the one typed event its body describes."""
    raw = kombu_envelope(payload, routing_key=payload["type"].replace("-", "."))
    assert decode_redis_message(raw, LIMIT) == [expected]


def test_real_kombu_memory_transport_envelope_decodes() -> None:
    """An envelope produced by kombu itself (memory transport) decodes like a hand-built one."""
    events = [task_fields("task-started"), task_fields("task-succeeded", runtime=0.5)]
    k: Any = kombu  # kombu is only partly annotated
    with k.Connection("memory://") as conn:
        channel: Any = conn.channel()
        exchange = k.Exchange("celeryev", type="topic")
        k.Queue("exporter-test", exchange=exchange, routing_key="#")(channel).declare()
        k.Producer(channel).publish(
            events,
            routing_key="task.multi",
            exchange=exchange,
            serializer="json",
            headers={"hostname": HOST},
            delivery_mode=1,
        )
        message = channel._get("exporter-test")
    assert message["properties"]["body_encoding"] == "base64"
    assert message["content-type"] == JSON
    raw = json.dumps(message).encode()
    assert decode_redis_message(raw, LIMIT) == [
        TaskEvent("task-started", UUID, HOST, TS),
        TaskEvent("task-succeeded", UUID, HOST, TS, runtime=0.5),
    ]


def test_batched_task_multi_list_decodes_every_event_in_order() -> None:
    """A task.multi envelope whose body is a JSON list yields one result per item, in order."""
    batch = [
        task_fields("task-received", uuid="a", name="app.a"),
        task_fields("task-started", uuid="a"),
        {"not": "an event"},
        "a string",
        task_fields("task-succeeded", uuid="a", runtime=1.5),
        task_fields("task-progress", uuid="a", current=3, total=10),
    ]
    result = decode_redis_message(kombu_envelope(batch, routing_key="task.multi"), LIMIT)
    assert result == [
        TaskEvent("task-received", "a", HOST, TS, "app.a"),
        TaskEvent("task-started", "a", HOST, TS),
        Dropped(DropReason.INVALID_EVENT, "event lacks type, hostname or timestamp"),
        Dropped(DropReason.INVALID_EVENT, "event is not an object"),
        TaskEvent("task-succeeded", "a", HOST, TS, runtime=1.5),
        OtherEvent("other"),
    ]


def test_empty_batch_decodes_to_nothing() -> None:
    """An empty task.multi list yields no event and no drop."""
    assert decode_redis_message(kombu_envelope([], routing_key="task.multi"), LIMIT) == []


def test_envelope_without_body_encoding_uses_the_body_text() -> None:
    """Without properties.body_encoding the body string itself is the payload."""
    envelope = {
        "body": json.dumps(task_fields("task-started")),
        "content-type": JSON,
        "properties": {"delivery_info": {"routing_key": "task.started"}},
    }
    raw = json.dumps(envelope).encode()
    assert decode_redis_message(raw, LIMIT) == [TaskEvent("task-started", UUID, HOST, TS)]


# --- AMQP bodies ---


@pytest.mark.parametrize("content_type", [JSON, None, ""])
def test_decode_body_json_single_event(content_type: str | None) -> None:
    """An AMQP JSON body (content type JSON, or none given) decodes to its event."""
    body = json.dumps(task_fields("task-started")).encode()
    assert decode_body(body, content_type, LIMIT) == [TaskEvent("task-started", UUID, HOST, TS)]


def test_event_types_are_the_models_own_strings() -> None:
    """Decoded events carry the model's type strings, not copies from the body: task state
    keeps a task's last event type for every task id it remembers."""
    body = json.dumps([task_fields(kind) for kind in sorted(TASK_TYPES)]).encode()
    kinds = [event.type for event in decode_body(body, JSON, LIMIT) if type(event) is TaskEvent]
    assert sorted(kinds) == sorted(TASK_TYPES)
    own = {kind: kind for kind in TASK_TYPES}
    assert all(kind is own[kind] for kind in kinds)


def test_decode_body_json_list() -> None:
    """An AMQP task.multi body (JSON list) decodes to one event per item."""
    body = json.dumps(
        [task_fields("task-started", uuid="a"), task_fields("task-started", uuid="b")]
    ).encode()
    assert decode_body(body, JSON, LIMIT) == [
        TaskEvent("task-started", "a", HOST, TS),
        TaskEvent("task-started", "b", HOST, TS),
    ]


def test_decode_body_msgpack_is_accepted() -> None:
    """msgpack bodies are decoded like JSON ones, on AMQP and inside Redis envelopes."""
    payload = [task_fields("task-received", name="app.add"), worker_fields("worker-heartbeat")]
    packed = msgpack.packb(payload)
    expected: list[Decoded] = [
        TaskEvent("task-received", UUID, HOST, TS, "app.add"),
        WorkerEvent("worker-heartbeat", HOST, TS, 2.0, 1, 10, 0.5, 4242),
    ]
    assert decode_body(packed, MSGPACK, LIMIT) == expected
    raw = kombu_envelope(None, routing_key="task.multi", content_type=MSGPACK, body=packed)
    assert decode_redis_message(raw, LIMIT) == expected


# --- refusals ---


def _envelope_dict(**override: Any) -> bytes:
    envelope: dict[str, Any] = json.loads(kombu_envelope(task_fields("task-started")))
    envelope.update(override)
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"{not json", DropReason.MALFORMED_ENVELOPE, id="invalid-json-envelope"),
        pytest.param(b"", DropReason.MALFORMED_ENVELOPE, id="empty-message"),
        pytest.param(b"\xff\xfe", DropReason.MALFORMED_ENVELOPE, id="binary-garbage"),
        pytest.param(b"[1, 2]", DropReason.MALFORMED_ENVELOPE, id="envelope-is-a-list"),
        pytest.param(b'"text"', DropReason.MALFORMED_ENVELOPE, id="envelope-is-a-string"),
        pytest.param(b"null", DropReason.MALFORMED_ENVELOPE, id="envelope-is-null"),
        pytest.param(
            json.dumps({"properties": {"body_encoding": "base64"}}).encode(),
            DropReason.MALFORMED_ENVELOPE,
            id="missing-body",
        ),
        pytest.param(_envelope_dict(body=None), DropReason.MALFORMED_ENVELOPE, id="null-body"),
        pytest.param(_envelope_dict(body=123), DropReason.MALFORMED_ENVELOPE, id="numeric-body"),
        pytest.param(
            _envelope_dict(properties="x"), DropReason.MALFORMED_ENVELOPE, id="bad-properties"
        ),
        pytest.param(_envelope_dict(body="abc"), DropReason.MALFORMED_BODY, id="base64-padding"),
        pytest.param(
            _envelope_dict(body="d\u00e9j\u00e0"), DropReason.MALFORMED_BODY, id="base64-non-ascii"
        ),
        pytest.param(
            _envelope_dict(body=base64.b64encode(b"{not json").decode()),
            DropReason.MALFORMED_BODY,
            id="invalid-json-body",
        ),
        pytest.param(
            _envelope_dict(body=base64.b64encode(b"\x80\x81").decode()),
            DropReason.MALFORMED_BODY,
            id="binary-json-body",
        ),
        pytest.param(
            _envelope_dict(**{"content-type": "application/x-yaml"}),
            DropReason.UNSAFE_CONTENT_TYPE,
            id="yaml-envelope",
        ),
        pytest.param(
            _envelope_dict(**{"content-type": PICKLE}),
            DropReason.UNSAFE_CONTENT_TYPE,
            id="pickle-envelope",
        ),
        pytest.param(
            _envelope_dict(**{"content-type": "text/plain"}),
            DropReason.UNSUPPORTED_CONTENT_TYPE,
            id="unknown-content-type",
        ),
    ],
)
def test_redis_envelope_refusals(raw: bytes, reason: DropReason) -> None:
    """Each kind of broken Redis envelope is refused as a single drop with its reason."""
    result = decode_redis_message(raw, LIMIT)
    assert len(result) == 1
    dropped = result[0]
    assert isinstance(dropped, Dropped)
    assert dropped.reason is reason


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        (PICKLE, DropReason.UNSAFE_CONTENT_TYPE),
        ("application/x-yaml", DropReason.UNSAFE_CONTENT_TYPE),
        ("application/yaml", DropReason.UNSAFE_CONTENT_TYPE),
        ("text/plain", DropReason.UNSUPPORTED_CONTENT_TYPE),
        ("application/data", DropReason.UNSUPPORTED_CONTENT_TYPE),
        ("application/json; charset=utf-8", DropReason.UNSUPPORTED_CONTENT_TYPE),
    ],
)
def test_decode_body_content_type_refusals(content_type: str, reason: DropReason) -> None:
    """Bodies of unsafe or unknown content types are refused unread, with the type named."""
    body = json.dumps(task_fields("task-started")).encode()
    assert decode_body(body, content_type, LIMIT) == [
        Dropped(reason, f"content type {content_type!r} is not accepted")
    ]


class _TouchesFile:
    """Unpickling this runs ``touch <path>``: proof of code execution if it ever happens."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_pickle_payload_is_never_unpickled(tmp_path: Path) -> None:
    """A pickle that would create a file is refused as unsafe and the file never appears."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_TouchesFile(marker))

    raw = kombu_envelope(None, routing_key="task.multi", content_type=PICKLE, body=payload)
    assert decode_redis_message(raw, LIMIT) == [
        Dropped(DropReason.UNSAFE_CONTENT_TYPE, f"content type {PICKLE!r} is not accepted")
    ]
    assert decode_body(payload, PICKLE, LIMIT) == [
        Dropped(DropReason.UNSAFE_CONTENT_TYPE, f"content type {PICKLE!r} is not accepted")
    ]
    # Through the whole pipeline too, which is what the sources call.
    pipeline = _pipeline()
    pipeline.feed_redis([raw])
    pipeline.feed_bodies([(payload, PICKLE)])
    assert pipeline.view.stats().dropped == {"unsafe_content_type": 2}
    assert pipeline.view.stats().events == {}
    assert not marker.exists()

    # Control: the payload is armed, so the assertion above proves something.
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_TouchesFile(armed)))
    assert armed.exists()


# --- size limit ---


def test_oversized_redis_message_is_dropped_before_parsing() -> None:
    """A Redis message larger than max_bytes is refused as oversized, even if valid."""
    raw = kombu_envelope(task_fields("task-started"))
    assert decode_redis_message(raw, len(raw)) == [TaskEvent("task-started", UUID, HOST, TS)]
    assert decode_redis_message(raw, len(raw) - 1) == [
        Dropped(DropReason.OVERSIZED, f"message of {len(raw)} bytes")
    ]


def test_oversized_amqp_body_is_dropped() -> None:
    """An AMQP body larger than max_bytes is refused as oversized; exactly max_bytes is read."""
    body = json.dumps(task_fields("task-started")).encode()
    assert decode_body(body, JSON, len(body)) == [TaskEvent("task-started", UUID, HOST, TS)]
    assert decode_body(body, JSON, len(body) - 1) == [
        Dropped(DropReason.OVERSIZED, f"body of {len(body)} bytes")
    ]


# --- event validation ---


@pytest.mark.parametrize(
    ("obj", "detail"),
    [
        pytest.param([1], "event is not an object", id="list"),
        pytest.param(None, "event is not an object", id="null"),
        pytest.param(
            {k: v for k, v in task_fields("task-started").items() if k != "type"},
            "event lacks type, hostname or timestamp",
            id="missing-type",
        ),
        pytest.param(
            task_fields("task-started", type=5),
            "event lacks type, hostname or timestamp",
            id="numeric-type",
        ),
        pytest.param(
            {k: v for k, v in task_fields("task-started").items() if k != "hostname"},
            "event lacks type, hostname or timestamp",
            id="missing-hostname",
        ),
        pytest.param(
            task_fields("task-started", hostname=None),
            "event lacks type, hostname or timestamp",
            id="null-hostname",
        ),
        pytest.param(
            {k: v for k, v in task_fields("task-started").items() if k != "timestamp"},
            "event lacks type, hostname or timestamp",
            id="missing-timestamp",
        ),
        pytest.param(
            task_fields("task-started", timestamp="1700000000"),
            "event lacks type, hostname or timestamp",
            id="string-timestamp",
        ),
        pytest.param(
            task_fields("task-started", timestamp=True),
            "event lacks type, hostname or timestamp",
            id="bool-timestamp",
        ),
        pytest.param(
            task_fields("task-started", timestamp=math.nan),
            "event lacks type, hostname or timestamp",
            id="nan-timestamp",
        ),
        pytest.param(
            task_fields("task-started", timestamp=math.inf),
            "event lacks type, hostname or timestamp",
            id="inf-timestamp",
        ),
        pytest.param(
            worker_fields("worker-heartbeat", timestamp=-math.inf),
            "event lacks type, hostname or timestamp",
            id="minus-inf-timestamp",
        ),
        pytest.param(
            {k: v for k, v in task_fields("task-started").items() if k != "uuid"},
            "task-started event without uuid",
            id="missing-uuid",
        ),
        pytest.param(
            task_fields("task-succeeded", uuid=""),
            "task-succeeded event without uuid",
            id="empty-uuid",
        ),
        pytest.param(
            task_fields("task-failed", uuid=12),
            "task-failed event without uuid",
            id="numeric-uuid",
        ),
    ],
)
def test_invalid_events_are_dropped(obj: Any, detail: str) -> None:
    """Events lacking type, hostname, a finite timestamp or (task events) a uuid are dropped."""
    assert parse_event(obj) == Dropped(DropReason.INVALID_EVENT, detail)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_timestamp_in_msgpack_body_is_dropped(value: float) -> None:
    """NaN and infinite timestamps (possible in msgpack, not JSON) make the event invalid."""
    body = msgpack.packb(worker_fields("worker-heartbeat", timestamp=value))
    assert decode_body(body, MSGPACK, LIMIT) == [
        Dropped(DropReason.INVALID_EVENT, "event lacks type, hostname or timestamp")
    ]


def test_json_non_finite_number_is_a_malformed_body() -> None:
    """JSON has no NaN/Infinity; such a body does not decode at all."""
    body = b'{"type": "task-started", "uuid": "u", "hostname": "h", "timestamp": NaN}'
    assert decode_body(body, JSON, LIMIT) == [
        Dropped(DropReason.MALFORMED_BODY, "body does not decode: JSONDecodeError")
    ]


def test_integer_timestamp_is_accepted_as_float() -> None:
    """An integer timestamp is a valid one, converted to float."""
    event = parse_event(task_fields("task-started", timestamp=1_700_000_000))
    assert event == TaskEvent("task-started", UUID, HOST, 1_700_000_000.0)
    assert isinstance(event, TaskEvent)
    assert type(event.timestamp) is float


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            {"name": 5, "queue": ["q"], "eta": 1234, "runtime": "1.5", "exception": {"e": 1}},
            TaskEvent("task-sent", UUID, HOST, TS),
            id="all-task-optionals-wrong",
        ),
        pytest.param(
            {"name": None, "queue": None, "eta": None, "runtime": None, "exception": None},
            TaskEvent("task-sent", UUID, HOST, TS),
            id="all-task-optionals-null",
        ),
        pytest.param(
            {"runtime": True},
            TaskEvent("task-sent", UUID, HOST, TS),
            id="bool-runtime",
        ),
        pytest.param(
            {"runtime": math.nan},
            TaskEvent("task-sent", UUID, HOST, TS),
            id="nan-runtime",
        ),
        pytest.param(
            {"name": "app.add", "runtime": 3},
            TaskEvent("task-sent", UUID, HOST, TS, "app.add", runtime=3.0),
            id="int-runtime",
        ),
    ],
)
def test_wrong_typed_task_optionals_become_none(extra: dict[str, Any], expected: TaskEvent) -> None:
    """Optional task fields of the wrong type are ignored (None), the event is kept."""
    assert parse_event(task_fields("task-sent", **extra)) == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            {"freq": "2", "active": "1", "processed": 1.5, "loadavg": "0.5"},
            WorkerEvent("worker-heartbeat", HOST, TS),
            id="all-worker-optionals-wrong",
        ),
        pytest.param(
            {"freq": 0, "active": -1, "processed": -5, "loadavg": []},
            WorkerEvent("worker-heartbeat", HOST, TS),
            id="out-of-range",
        ),
        pytest.param(
            {"freq": -2.0, "active": True, "processed": False, "loadavg": ["x", 1.0]},
            WorkerEvent("worker-heartbeat", HOST, TS),
            id="negative-freq-bool-counts",
        ),
        pytest.param(
            {"freq": math.inf, "loadavg": [math.nan]},
            WorkerEvent("worker-heartbeat", HOST, TS, None, 1, 10),
            id="non-finite",
        ),
        pytest.param(
            {"freq": 5, "active": 0, "processed": 0, "loadavg": [2]},
            WorkerEvent("worker-heartbeat", HOST, TS, 5.0, 0, 0, 2.0),
            id="ints-accepted",
        ),
    ],
)
def test_wrong_typed_worker_optionals_become_none(
    extra: dict[str, Any], expected: WorkerEvent
) -> None:
    """Optional worker fields of the wrong type or range are ignored (None), the event is kept."""
    assert parse_event(worker_fields("worker-heartbeat", **extra)) == expected._replace(pid=4242)


def test_on_demand_heartbeat_has_no_counters() -> None:
    """The control-command heartbeat (freq=5, sw_* only) decodes with active/processed None."""
    obj = {
        "type": "worker-heartbeat",
        "hostname": HOST,
        "timestamp": TS,
        "freq": 5,
        "sw_ident": "py-celery",
        "sw_ver": "5.5.0",
        "sw_sys": "Linux",
    }
    assert parse_event(obj) == WorkerEvent("worker-heartbeat", HOST, TS, 5.0, None, None, None)


@pytest.mark.parametrize(
    ("extra", "exception"),
    [
        pytest.param({"exception": "ValueError('x')"}, "ValueError('x')", id="plain"),
        pytest.param(
            {
                "exception": "ExceptionWithTraceback()",
                "traceback": 'Traceback (most recent call last):\n  File "x.py", line 1\n'
                "billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(5.0,)\n",
            },
            "billiard.exceptions.TimeLimitExceeded",
            id="wrapped-hard-time-limit",
        ),
        pytest.param(
            {"exception": "ExceptionWithTraceback()"},
            "ExceptionWithTraceback()",
            id="wrapped-without-traceback",
        ),
        pytest.param(
            {"exception": "ExceptionWithTraceback()", "traceback": "no colon here"},
            "ExceptionWithTraceback()",
            id="wrapped-unreadable-traceback",
        ),
        pytest.param({"exception": 42}, None, id="not-a-string"),
    ],
)
def test_failed_exception_text(extra: dict[str, Any], exception: str | None) -> None:
    """task-failed keeps the exception repr; Celery's wrapper is unwrapped from the traceback."""
    assert parse_event(task_fields("task-failed", **extra)) == TaskEvent(
        "task-failed", UUID, HOST, TS, exception=exception
    )


@pytest.mark.parametrize(
    "etype",
    ["task-progress", "task-cancelled", "worker-custom", "custom", "TASK-STARTED", ""],
)
def test_unknown_event_types_become_other(etype: str) -> None:
    """Well-formed events of untracked types (custom task events included) become 'other'."""
    assert parse_event(task_fields(etype, current=1, total=3)) == OtherEvent("other")


def test_custom_task_progress_event_needs_no_uuid() -> None:
    """A custom event is counted as 'other' without task-field validation."""
    obj = {"type": "task-progress", "hostname": HOST, "timestamp": TS, "progress": 0.5}
    assert parse_event(obj) == OtherEvent("other")


# --- counted through the pipeline ---


def _pipeline() -> EventPipeline:
    settings = Settings()  # defaults, without reading the environment
    resolver = QueueResolver()
    tasks = TaskState(
        labels=TaskLabels(settings),
        resolver=resolver,
        max_tasks=1000,
        ttl=3600.0,
        name_wait=10.0,
        duration_buckets=[1.0],
        queue_wait_buckets=[1.0],
        worker_retention=3600.0,
        queue_forget=900.0,
    )
    workers = WorkerState(
        timeout_heartbeats=3.0, retention=3600.0, max_workers=100, shutdown_grace=300.0
    )
    return EventPipeline(
        tasks=tasks,
        workers=workers,
        clock=lambda: TS + 1.0,
        max_event_bytes=4096,
    )


def test_pipeline_counts_events_and_drops_by_reason() -> None:
    """Mixed input is counted exactly: applied events by type, refusals by reason."""
    pipeline = _pipeline()
    batch = [
        task_fields("task-received", uuid="a", name="app.a"),
        task_fields("task-started", uuid="a"),
        task_fields("task-progress", uuid="a"),
        {"type": "task-started", "hostname": HOST},
    ]
    pipeline.feed_redis(
        [
            kombu_envelope(batch, routing_key="task.multi"),
            kombu_envelope(worker_fields("worker-heartbeat"), routing_key="worker.heartbeat"),
            b"{broken",
            kombu_envelope(task_fields("task-started"), content_type=PICKLE),
            kombu_envelope(task_fields("task-started"), content_type="text/plain"),
            b"x" * 4097,
            _envelope_dict(body="abc"),
        ]
    )
    pipeline.feed_bodies([(json.dumps(task_fields("task-succeeded", uuid="a")).encode(), JSON)])
    pipeline.drop_unreadable("frame too short")
    stats = pipeline.view.stats()
    assert stats.events == {
        "task-received": 1,
        "task-started": 1,
        "other": 1,
        "worker-heartbeat": 1,
        "task-succeeded": 1,
    }
    assert stats.dropped == {
        "invalid_event": 1,
        "malformed_envelope": 2,
        "unsafe_content_type": 1,
        "unsupported_content_type": 1,
        "oversized": 1,
        "malformed_body": 1,
    }
    assert stats.last_event_at == TS
    assert stats.last_event_lag == 1.0
