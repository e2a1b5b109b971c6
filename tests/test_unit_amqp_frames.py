"""The AMQP frame parser, fed frames written by py-amqp's own frame writer (what RabbitMQ sends
is byte-compatible: same framing, same property table encoding)."""

from __future__ import annotations

from typing import Any

import amqp
import pytest
from amqp import method_framing, serialization, spec

from exporter.brokers.amqp.events import death_reason
from exporter.brokers.amqp.frames import (
    CLOSE,
    HEARTBEAT,
    BrokerClosed,
    Deliveries,
    FrameError,
    FrameParser,
)
from exporter.events.model import DropReason

EVENTS = "events"
DROPPED = "dropped"
CHANNEL = 1


class _Sink:
    """py-amqp's transport and connection, as far as its frame writer needs them."""

    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self.bytes_sent = 0
        self.parts: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self.parts.append(bytes(data))  # the writer reuses its buffer


def frames(
    method: tuple[int, int],
    args: bytes = b"",
    *,
    body: bytes | None = None,
    frame_max: int = 131072,
    channel: int = CHANNEL,
    **properties: Any,
) -> bytes:
    sink = _Sink(frame_max)
    write = method_framing.frame_writer(sink, sink)
    content = amqp.Message(body, **properties) if body is not None else None
    write(1, channel, method, args, content)
    return b"".join(sink.parts)


def deliver(tag: str, body: bytes, *, frame_max: int = 131072, **properties: Any) -> bytes:
    args = serialization.dumps("sLbss", (tag, 7, False, "celeryev", "task.multi"))
    return frames(spec.Basic.Deliver, args, body=body, frame_max=frame_max, **properties)


def parse(*chunks: bytes) -> Deliveries:
    parser = FrameParser(EVENTS, DROPPED)
    done = Deliveries([], [])
    for chunk in chunks:
        got = parser.feed(chunk)
        done.events.extend(got.events)
        done.dead_letters.extend(got.dead_letters)
    return done


def test_deliveries_keep_body_and_content_type() -> None:
    stream = (
        deliver(EVENTS, b'{"type": "task-started"}', content_type="application/json")
        + HEARTBEAT
        + deliver(EVENTS, b"\x81\xa4type", content_type="application/x-msgpack")
        + deliver(EVENTS, b"no type")
    )
    assert parse(stream).events == [
        (b'{"type": "task-started"}', "application/json"),
        (b"\x81\xa4type", "application/x-msgpack"),
        (b"no type", None),
    ]


def test_any_split_of_the_stream_gives_the_same_messages() -> None:
    stream = deliver(EVENTS, b"[1, 2, 3]", content_type="application/json") + deliver(
        EVENTS, b"", content_type="application/json"
    )
    whole = parse(stream)
    assert whole.events == [(b"[1, 2, 3]", "application/json"), (b"", "application/json")]
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == whole
    for cut in range(len(stream)):
        assert parse(stream[:cut], stream[cut:]) == whole


def test_a_body_larger_than_a_frame_is_joined() -> None:
    body = bytes(range(256)) * 80
    stream = deliver(EVENTS, body, frame_max=4096, content_type="application/json")
    assert stream.count(bytes([3, 0, CHANNEL])) >= 5  # really split into body frames
    assert parse(stream).events == [(body, "application/json")]


def test_dead_letters_keep_their_headers() -> None:
    death = {"reason": "maxlen", "queue": "celeryev.exporter.x", "count": 1}
    stream = deliver(DROPPED, b"[{}, {}]", application_headers={"x-death": [death]})
    (properties, body), *rest = parse(stream).dead_letters
    assert not rest
    assert body == b"[{}, {}]"
    assert death_reason(properties["application_headers"]) is DropReason.BROKER_OVERFLOW


def test_broker_close_and_cancel_end_the_session() -> None:
    close = serialization.dumps("BsBB", (320, "CONNECTION_FORCED - shutdown", 0, 0))
    with pytest.raises(BrokerClosed, match="closed the connection: 320 CONNECTION_FORCED"):
        parse(frames(spec.Connection.Close, close, channel=0))
    channel_close = serialization.dumps("BsBB", (404, "NOT_FOUND", 50, 10))
    with pytest.raises(BrokerClosed, match="closed the channel: 404 NOT_FOUND"):
        parse(frames(spec.Channel.Close, channel_close))
    cancel = serialization.dumps("sb", (EVENTS, True))
    with pytest.raises(BrokerClosed, match="cancelled our consumer"):
        parse(frames(spec.Basic.Cancel, cancel))


def test_close_ok_is_noticed_and_publisher_methods_ignored() -> None:
    parser = FrameParser(EVENTS, DROPPED)
    blocked = serialization.dumps("s", ("low on memory",))
    parser.feed(frames(spec.Connection.Blocked, blocked, channel=0))
    assert not parser.closed
    parser.feed(frames(spec.Connection.CloseOk, channel=0))
    assert parser.closed


def test_frames_we_send_are_what_py_amqp_would_send() -> None:
    assert (
        frames(spec.Connection.Close, serialization.dumps("BsBB", (200, "", 0, 0)), channel=0)
        == CLOSE
    )
    sink = _Sink(131072)
    method_framing.frame_writer(sink, sink)(8, 0, None, None, None)
    assert b"".join(sink.parts) == HEARTBEAT


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (deliver(EVENTS, b"{}")[:-1] + b"\x00", "frame-end"),
        (b"\x09" + HEARTBEAT[1:], "unknown frame type 9"),
        (deliver(EVENTS, b"{}")[-(8 + 2) :], "body frame without a content header"),
        (deliver("someone-else", b"{}"), "consumer we did not register"),
        (deliver(EVENTS, b"{}")[:-10] + deliver(EVENTS, b"{}"), "inside the content"),
    ],
    ids=["frame-end", "frame-type", "orphan-body", "unknown-consumer", "method-in-content"],
)
def test_a_stream_out_of_step_is_refused(stream: bytes, error: str) -> None:
    with pytest.raises(FrameError, match=error):
        parse(stream)
