"""Raw broker messages to typed events. Pure: no I/O, no clock, no state.

Only JSON (and msgpack when installed) bodies are decoded. pickle and yaml can run code when
loaded, so messages declaring them are refused without looking inside.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Callable
from typing import Any

import orjson

from exporter.events.model import (
    KNOWN_TYPES,
    OTHER_TYPE,
    TASK_FAILED,
    TASK_TYPES,
    WORKER_TYPES,
    Decoded,
    Dropped,
    DropReason,
    OtherEvent,
    TaskEvent,
    WorkerEvent,
)

JSON = "application/json"
MSGPACK = "application/x-msgpack"
# Content types whose loaders can execute code; refused by name so the log says why.
UNSAFE_CONTENT_TYPES = frozenset(
    {"application/x-python-serialize", "application/x-yaml", "application/yaml"}
)


def _load_msgpack() -> Callable[[bytes], Any] | None:
    try:
        import msgpack  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None

    def unpack(data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    return unpack


_BODY_LOADERS: dict[str, Callable[[bytes], Any]] = {JSON: orjson.loads}
_msgpack = _load_msgpack()
if _msgpack is not None:
    _BODY_LOADERS[MSGPACK] = _msgpack

_WRAPPER = "ExceptionWithTraceback"


def decode_redis_message(raw: bytes, max_bytes: int) -> list[Decoded]:
    """Decode one kombu Redis envelope (JSON with a base64 body) into its event(s)."""
    if len(raw) > max_bytes:
        return [Dropped(DropReason.OVERSIZED, f"message of {len(raw)} bytes")]
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        return [Dropped(DropReason.MALFORMED_ENVELOPE, f"envelope is not JSON: {err}")]
    if type(envelope) is not dict:
        return [Dropped(DropReason.MALFORMED_ENVELOPE, "envelope is not an object")]
    body = envelope.get("body")
    properties = envelope.get("properties")
    if type(body) is not str or type(properties) is not dict:
        return [Dropped(DropReason.MALFORMED_ENVELOPE, "envelope lacks body or properties")]
    if properties.get("body_encoding") == "base64":
        try:
            payload = binascii.a2b_base64(body)
        except (binascii.Error, ValueError) as err:
            return [Dropped(DropReason.MALFORMED_BODY, f"body is not base64: {err}")]
    else:
        payload = body.encode("utf-8", "surrogatepass")
    content_type = envelope.get("content-type")
    return decode_body(payload, content_type if type(content_type) is str else None, max_bytes)


def decode_body(body: bytes, content_type: str | None, max_bytes: int) -> list[Decoded]:
    """Decode a message body of the given content type into its event(s)."""
    loader = _BODY_LOADERS.get(content_type or JSON)
    if loader is None:
        reason = (
            DropReason.UNSAFE_CONTENT_TYPE
            if content_type in UNSAFE_CONTENT_TYPES
            else DropReason.UNSUPPORTED_CONTENT_TYPE
        )
        return [Dropped(reason, f"content type {content_type!r} is not accepted")]
    if len(body) > max_bytes:
        return [Dropped(DropReason.OVERSIZED, f"body of {len(body)} bytes")]
    try:
        decoded = loader(body)
    except Exception as err:  # noqa: BLE001 - any loader failure is bad input, counted by caller
        return [Dropped(DropReason.MALFORMED_BODY, f"body does not decode: {type(err).__name__}")]
    # Celery 4+ sends a list of events under "<group>.multi" (see EventDispatcher.flush).
    if type(decoded) is list:
        return [parse_event(item) for item in decoded]
    return [parse_event(decoded)]


def _number(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        return float(value)
    return None


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _text(value: Any) -> str | None:
    return value if type(value) is str else None


def _exception(obj: dict[str, Any]) -> str | None:
    """The exception repr, or the class named by the traceback's last line when the repr
    only names the wrapper: Celery 5.7 reports hard time limits as ExceptionWithTraceback().
    """
    text = obj.get("exception")
    if type(text) is not str:
        return None
    if text.startswith(_WRAPPER):
        traceback = obj.get("traceback")
        if type(traceback) is str:
            last = traceback.rstrip().rpartition("\n")[2]
            if ":" in last:
                return last.partition(":")[0].strip()
    return text


_TYPE_NAMES = {name: name for name in KNOWN_TYPES}


def parse_event(obj: Any) -> Decoded:
    """Validate one event dict and build its typed form; wrong optional fields become None."""
    if type(obj) is not dict:
        return Dropped(DropReason.INVALID_EVENT, "event is not an object")
    etype = obj.get("type")
    hostname = obj.get("hostname")
    timestamp = _number(obj.get("timestamp"))
    if type(etype) is not str or type(hostname) is not str or timestamp is None:
        return Dropped(DropReason.INVALID_EVENT, "event lacks type, hostname or timestamp")
    # Our own copy of the type string: task state keeps it (a task's last end) for every task.
    etype = _TYPE_NAMES.get(etype, etype)
    if etype in TASK_TYPES:
        uuid = obj.get("uuid")
        if type(uuid) is not str or not uuid:
            return Dropped(DropReason.INVALID_EVENT, f"{etype} event without uuid")
        return TaskEvent(
            etype,
            uuid,
            hostname,
            timestamp,
            _text(obj.get("name")),
            _text(obj.get("queue")),
            _text(obj.get("eta")),
            _number(obj.get("runtime")),
            _exception(obj) if etype == TASK_FAILED else None,
            _count(obj.get("retries")),
        )
    if etype in WORKER_TYPES:
        freq = _number(obj.get("freq"))
        loadavg = obj.get("loadavg")
        load1 = _number(loadavg[0]) if type(loadavg) is list and loadavg else None
        return WorkerEvent(
            etype,
            hostname,
            timestamp,
            freq if freq is not None and freq > 0 else None,
            _count(obj.get("active")),
            _count(obj.get("processed")),
            load1,
            _count(obj.get("pid")),
        )
    return OtherEvent(etype if etype in KNOWN_TYPES else OTHER_TYPE)
