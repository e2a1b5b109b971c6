"""AMQP 0-9-1 frames to deliveries, for a connection whose consumers are already set up.

py-amqp reads each frame with three exact-size ``recv`` calls (header, payload, end octet) and
dispatches it through several layers of Python, which is most of the cost of an event at
tens of thousands of events per second. Once our consumers are registered, the connection only
carries deliveries (a method, a content header and body frames), heartbeats and the rare
broker-side close or cancel, so the session reads the socket in large chunks and this parser
cuts them into whole messages.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from amqp.serialization import decode_properties_basic

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE

_FRAME = struct.Struct(">BHI")
_IDS = struct.Struct(">HH")
_SIZE = struct.Struct(">Q")
_FLAGS = struct.Struct(">H")
_REPLY_CODE = struct.Struct(">H")

# (class id, method id)
BASIC_DELIVER = (60, 60)
BASIC_CANCEL = (60, 30)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_CLOSE = (20, 40)
# The first property of class basic, content-type, is present when this flag bit is set.
_CONTENT_TYPE_FLAG = 0x8000
# class id, weight, body size: what precedes the property flags in a content header.
_HEADER_PREFIX = 12

HEARTBEAT = _FRAME.pack(FRAME_HEARTBEAT, 0, 0) + bytes([FRAME_END])


def _close_frame() -> bytes:
    # connection.close: reply code 200, empty reply text, no failing class/method.
    payload = _IDS.pack(*CONNECTION_CLOSE) + _REPLY_CODE.pack(200) + b"\x00" + _IDS.pack(0, 0)
    return _FRAME.pack(FRAME_METHOD, 0, len(payload)) + payload + bytes([FRAME_END])


CLOSE = _close_frame()


class FrameError(ConnectionError):
    """The byte stream is not the AMQP this connection should carry: start afresh."""


class BrokerClosed(ConnectionError):
    """The broker closed the connection or channel, or cancelled one of our consumers."""


class Deliveries(NamedTuple):
    """What one chunk of the stream completed."""

    events: list[tuple[bytes, str | None]]  # (body, content type) for the event consumer
    dead_letters: list[tuple[dict[str, Any], bytes]]  # (properties, body) for the other


class FrameParser:
    """Cuts a connection's byte stream into the messages delivered to two consumers.

    The event consumer's messages keep only their content type (all the decoder needs); the
    dead-letter consumer's keep every property, since the drop reason is in their headers.
    """

    def __init__(self, event_tag: str, dead_letter_tag: str) -> None:
        self._event_tag = event_tag.encode()
        self._dead_letter_tag = dead_letter_tag.encode()
        self._rest = b""  # an incomplete frame, kept for the next chunk
        self._tag: bytes | None = None  # consumer of the delivery in progress
        self._expected = -1  # its body size, once its header has come
        self._received = 0
        self._parts: list[bytes] = []
        self._content_type: str | None = None
        self._properties: dict[str, Any] = {}
        self.closed = False  # the broker confirmed our connection.close

    def feed(self, data: bytes) -> Deliveries:
        """Parse ``data`` after what came before it; return the messages it completed."""
        buf = self._rest + data if self._rest else data
        done = Deliveries([], [])
        end = len(buf)
        pos = 0
        unpack_frame = _FRAME.unpack_from
        while end - pos >= 8:
            kind, _channel, size = unpack_frame(buf, pos)
            start = pos + 7
            stop = start + size
            if stop >= end:
                break
            if buf[stop] != FRAME_END:
                raise FrameError(f"frame of type {kind} does not end with the frame-end octet")
            if kind == FRAME_BODY:
                self._body(buf[start:stop], done)
            elif kind == FRAME_HEADER:
                self._header(buf, start, done)
            elif kind == FRAME_METHOD:
                self._method(buf, start)
            elif kind != FRAME_HEARTBEAT:
                raise FrameError(f"unknown frame type {kind}")
            pos = stop + 1
        self._rest = buf[pos:]
        return done

    def _method(self, buf: bytes, at: int) -> None:
        ids = _IDS.unpack_from(buf, at)
        if self._tag is not None:
            raise FrameError(f"method {ids} inside the content of a delivery")
        if ids == BASIC_DELIVER:
            length = buf[at + 4]
            self._tag = buf[at + 5 : at + 5 + length]
            self._expected = -1
        elif ids in (CONNECTION_CLOSE, CHANNEL_CLOSE):
            (code,) = _REPLY_CODE.unpack_from(buf, at + 4)
            length = buf[at + 6]
            text = buf[at + 7 : at + 7 + length].decode("utf-8", "replace")
            what = "connection" if ids == CONNECTION_CLOSE else "channel"
            raise BrokerClosed(f"the broker closed the {what}: {code} {text}")
        elif ids == BASIC_CANCEL:
            raise BrokerClosed("the broker cancelled our consumer (was the queue deleted?)")
        elif ids == CONNECTION_CLOSE_OK:
            self.closed = True
        # Anything else (connection.blocked/unblocked, channel.flow) concerns publishers.

    def _header(self, buf: bytes, at: int, done: Deliveries) -> None:
        if self._tag is None or self._expected >= 0:
            raise FrameError("content header without a delivery")
        (self._expected,) = _SIZE.unpack_from(buf, at + 4)
        flags_at = at + _HEADER_PREFIX
        if self._tag == self._event_tag:
            (flags,) = _FLAGS.unpack_from(buf, flags_at)
            if flags & _CONTENT_TYPE_FLAG:
                length = buf[flags_at + 2]
                self._content_type = buf[flags_at + 3 : flags_at + 3 + length].decode(
                    "utf-8", "replace"
                )
            else:
                self._content_type = None
        else:
            self._properties, _ = decode_properties_basic(buf, flags_at)
        if self._expected == 0:
            self._deliver(b"", done)

    def _body(self, chunk: bytes, done: Deliveries) -> None:
        if self._expected < 0:
            raise FrameError("body frame without a content header")
        if not self._parts and len(chunk) == self._expected:
            self._deliver(chunk, done)
            return
        self._parts.append(chunk)
        self._received += len(chunk)
        if self._received >= self._expected:
            body = b"".join(self._parts)
            self._parts.clear()
            self._received = 0
            self._deliver(body, done)

    def _deliver(self, body: bytes, done: Deliveries) -> None:
        tag, self._tag, self._expected = self._tag, None, -1
        if tag == self._event_tag:
            done.events.append((body, self._content_type))
        elif tag == self._dead_letter_tag:
            done.dead_letters.append((self._properties, body))
        else:
            raise FrameError(f"delivery for a consumer we did not register: {tag!r}")
