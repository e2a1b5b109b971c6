"""Synthetic event messages in kombu's Redis envelope, for streams too big for the dispatcher.

kombu serialises the event with ``json.dumps`` (default separators), base64-encodes it into
``body`` and wraps it as ``Channel.prepare_message`` does; ``check_compatible`` compares the
result with messages EventDispatcher really published.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from bench.recording import Message
from bench.workload import SimEvent

BUFFER_LIMIT = 24
UTCOFFSET = 0.0  # what celery.utils.time.utcoffset() gives on a UTC host


class EnvelopeEncoder:
    """Builds the bytes EventDispatcher + kombu publish for events, batched or not."""

    def __init__(self, *, batched: bool, exchange: str = "celeryev", db: int = 0) -> None:
        self._batched = batched
        self._exchange = exchange
        self._prefix = f"/{db}.{exchange}/"
        self._clock = 0
        self._pids: dict[str, int] = {}
        self._buffers: dict[str, list[dict[str, Any]]] = {}

    def _event(self, event: SimEvent) -> dict[str, Any]:
        self._clock += 1
        pid = self._pids.setdefault(event.hostname, 1000 + len(self._pids))
        body = {"hostname": event.hostname, "utcoffset": UTCOFFSET, "pid": pid}
        body["clock"] = self._clock
        body.update(event.fields)
        body["type"] = event.type
        return body

    def message(self, body: Any, hostname: str, routing_key: str) -> Message:
        """One published message: the channel and kombu's JSON envelope."""
        encoded = base64.b64encode(json.dumps(body).encode()).decode()
        envelope = {
            "body": encoded,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"hostname": hostname},
            "properties": {
                "delivery_mode": 1,
                "delivery_info": {"exchange": self._exchange, "routing_key": routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return (self._prefix + routing_key).encode(), json.dumps(envelope).encode()

    def encode(self, events: Iterable[SimEvent]) -> Iterator[Message]:
        """Messages for ``events`` in publish order; buffers are flushed at the end."""
        for event in events:
            body = self._event(event)
            buffered = self._batched and event.type.startswith("task-")
            if not buffered or event.type == "task-sent":
                yield self.message(body, event.hostname, event.type.replace("-", "."))
                continue
            buffer = self._buffers.setdefault(event.hostname, [])
            buffer.append(body)
            if len(buffer) >= BUFFER_LIMIT:
                yield self.flush_one(event.hostname)
        yield from self.flush()

    def flush_one(self, hostname: str) -> Message:
        batch = self._buffers.pop(hostname)
        return self.message(batch, hostname, "task.multi")

    def flush(self) -> Iterator[Message]:
        for hostname in list(self._buffers):
            yield self.flush_one(hostname)


def _shape(value: Any) -> Any:
    """Keys (in order) and value types, recursively."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _envelope_shape(payload: bytes) -> str:
    envelope = orjson.loads(payload)
    envelope["properties"]["delivery_tag"] = str(uuid.UUID(int=0))
    shape = _shape(envelope)
    shape["properties"] = envelope["properties"]  # these values must match, not just types
    return json.dumps(shape)


def _shapes(messages: Iterable[Message]) -> tuple[dict[bytes, set[str]], dict[str, set[str]]]:
    """Envelope shapes by channel and event shapes by event type."""
    envelopes: dict[bytes, set[str]] = {}
    events: dict[str, set[str]] = {}
    for channel, payload in messages:
        envelopes.setdefault(channel, set()).add(_envelope_shape(payload))
        body = orjson.loads(base64.b64decode(orjson.loads(payload)["body"]))
        for event in body if isinstance(body, list) else [body]:
            events.setdefault(event["type"], set()).add(json.dumps(_shape(event)))
    return envelopes, events


def check_compatible(real: Iterable[Message], synthetic: Iterable[Message]) -> list[str]:
    """How synthetic messages differ in structure from real ones; empty when compatible.

    Every synthetic envelope must have the shape (keys in order, value types, properties) of
    a real one on the same channel, and every synthetic event the shape of a real event of
    its type.
    """
    real_envelopes, real_events = _shapes(real)
    synthetic_envelopes, synthetic_events = _shapes(synthetic)
    problems = []
    for channel, shapes in synthetic_envelopes.items():
        if channel not in real_envelopes:
            problems.append(f"no real message on {channel!r}")
        elif extra := shapes - real_envelopes[channel]:
            problems.append(f"{channel!r}: envelope {sorted(extra)[0]} not among the real ones")
    for etype, shapes in synthetic_events.items():
        if etype not in real_events:
            problems.append(f"no real {etype} event")
        elif extra := shapes - real_events[etype]:
            problems.append(f"{etype}: {sorted(extra)[0]} not among the real shapes")
    return problems
