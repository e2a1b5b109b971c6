"""Hostile input: tens of thousands of malformed envelopes and events never crash the decoder or
the pipeline, every refusal is counted, and the next valid event is still counted."""

from __future__ import annotations

import base64
import json
import random
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.events.decode import decode_body, decode_redis_message
from exporter.events.model import Dropped, OtherEvent, TaskEvent, WorkerEvent
from exporter.pipeline import EventPipeline
from exporter.settings import Settings
from exporter.state.routing import QueueResolver
from exporter.state.tasks import TaskState
from exporter.state.workers import WorkerState

MAX_BYTES = 64 * 1024
MUTANTS = 20_000
FUZZ = settings(
    max_examples=5_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
values = scalars | st.lists(scalars, max_size=4) | st.dictionaries(st.text(max_size=8), scalars)
event_types = st.sampled_from(
    ["task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
     "task-retried", "task-rejected", "task-revoked", "worker-online", "worker-heartbeat",
     "worker-offline", "task-progress", "", "x" * 300]
)  # fmt: skip
FIELDS = ["hostname", "timestamp", "uuid", "name", "queue", "eta", "runtime", "exception",
          "traceback", "retries", "freq", "active", "processed", "loadavg"]  # fmt: skip
# Events that look almost right: a real type and real field names with values of any type.
near_events = st.fixed_dictionaries({"type": event_types}, optional=dict.fromkeys(FIELDS, values))
bodies = near_events | st.lists(near_events | values, max_size=10) | values


def envelope(
    body: bytes, content_type: Any = "application/json", encoding: Any = "base64"
) -> bytes:
    """A kombu Redis envelope around ``body``."""
    text = base64.b64encode(body).decode() if encoding == "base64" else body.decode("latin-1")
    return json.dumps(
        {
            "body": text,
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"hostname": "celery@fuzz"},
            "properties": {"body_encoding": encoding, "delivery_info": {}, "priority": 0},
        }
    ).encode()


envelopes = st.one_of(
    st.binary(max_size=512),
    st.builds(
        envelope,
        bodies.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=256),
        st.sampled_from(
            [
                "application/json",
                "application/x-python-serialize",
                "application/x-yaml",
                "application/x-msgpack",
                "text/plain",
                None,
                5,
            ]
        ),
        st.sampled_from(["base64", "utf-8", None]),
    ),
)


def _pipeline() -> EventPipeline:
    config = Settings(task_state_max_tasks=1000, max_workers=10)
    return EventPipeline(
        tasks=TaskState.from_settings(config, resolver=QueueResolver()),
        workers=WorkerState.from_settings(config),
        clock=time.time,
        max_event_bytes=MAX_BYTES,
    )


def _typed(items: list[Any]) -> bool:
    return all(isinstance(i, TaskEvent | WorkerEvent | OtherEvent | Dropped) for i in items)


@FUZZ
@given(envelopes)
def test_redis_envelopes_never_crash_the_decoder(raw: bytes) -> None:
    """Any bytes as a Redis pub/sub payload decode to typed events or counted refusals."""
    assert _typed(decode_redis_message(raw, MAX_BYTES))


@FUZZ
@given(
    bodies.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=512),
    st.sampled_from(["application/json", "application/x-msgpack", None, "text/plain"]),
)
def test_amqp_bodies_never_crash_the_decoder(body: bytes, content_type: str | None) -> None:
    """Any AMQP body, under any content type, decodes to typed events or counted refusals."""
    assert _typed(decode_body(body, content_type, MAX_BYTES))


SEEDS = [
    {"type": "task-sent", "hostname": "gen1@p", "timestamp": 1.0, "uuid": "u1", "name": "t",
     "queue": "q", "retries": 0, "eta": None},
    [{"type": "task-received", "hostname": "celery@w", "timestamp": 1.0, "uuid": "u1",
      "name": "t", "retries": 0},
     {"type": "task-failed", "hostname": "celery@w", "timestamp": 2.0, "uuid": "u1",
      "exception": "ValueError('x')", "traceback": "Traceback..."}],
    {"type": "worker-heartbeat", "hostname": "celery@w", "timestamp": 1.0, "freq": 2.0,
     "active": 0, "processed": 1, "loadavg": [0.1, 0.2, 0.3]},
]  # fmt: skip


def mutate(rng: random.Random, original: bytes) -> bytes:
    """Flip, drop, duplicate or insert bytes, truncate, or nest: what a broken sender makes."""
    data = bytearray(original)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        where = rng.randrange(len(data) + 1)
        if kind == 0 and data:
            data[min(where, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del data[where : where + rng.randint(1, 16)]
        elif kind == 2:
            data[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3:
            data = data[: rng.randrange(len(data) + 1)]
        elif kind == 4:
            data[where:where] = data[where : where + rng.randint(1, 64)]
        else:
            depth = rng.choice([10, 600, 5000])
            data = bytearray(b"[" * depth + bytes(data) + b"]" * depth)
    return bytes(data)


def test_twenty_thousand_mutants_are_counted_and_the_next_valid_event_still_is() -> None:
    """20,000 mutations of real envelopes and bodies (both layers) go through the pipeline:
    no crash, each refusal counted exactly once, and a valid event right after is applied."""
    rng = random.Random(20261121)
    pipeline = _pipeline()
    expected_drops = 0
    for number in range(MUTANTS):
        seed = json.dumps(rng.choice(SEEDS)).encode()
        # Odd: a mangled body in a sound envelope; even: a mangled envelope.
        raw = envelope(mutate(rng, seed)) if number % 2 else mutate(rng, envelope(seed))
        decoded = decode_redis_message(raw, MAX_BYTES)
        assert _typed(decoded)
        expected_drops += sum(1 for item in decoded if type(item) is Dropped)
        pipeline.feed_redis([raw])
    stats = pipeline.view.stats()
    # Repeated task-failed of one task id are refused later, by the state, as duplicates.
    refused = {reason: n for reason, n in stats.dropped.items() if reason != "duplicate"}
    assert sum(refused.values()) == expected_drops
    before = stats.events.get("worker-heartbeat", 0)
    pipeline.feed_redis([envelope(json.dumps(SEEDS[2]).encode())])
    assert pipeline.view.stats().events.get("worker-heartbeat", 0) == before + 1
