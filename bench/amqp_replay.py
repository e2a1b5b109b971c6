"""Replay into RabbitMQ: the recorded stream as the AMQP messages Celery publishes, pre-framed.

A Redis recording holds kombu's envelope around each event body; on AMQP the same body goes
out raw, with the envelope's fields as message properties (``to_amqp``). ``compatibility``
checks this against what EventDispatcher itself publishes to RabbitMQ.

py-amqp's ``basic_publish`` tops out near 22k messages/s on one core here (it builds every
frame in Python), below the rate the exporter is meant to reach, so the frames are built in
advance by py-amqp's own frame writer (the bytes ``basic_publish`` would write) and written
in large chunks on one channel: messages reach the exchange in recorded order. The channel is
in confirm mode and a second thread reads the broker's acks, so a burst ends when RabbitMQ
has taken (routed and enqueued) every message, not when the last byte left the socket.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import amqp
import orjson
from amqp import method_framing, serialization, spec

from bench.publish import BurstResult, Chunk, chunked
from bench.recording import Message

EXCHANGE = "celeryev"
CHUNK_MESSAGES = 1000
_FRAME_HEADER = struct.Struct(">BHI")
_METHOD = struct.Struct(">HH")
_CONFIRM = struct.Struct(">QB")  # delivery tag, flags (bit 0: multiple)
_BASIC_ACK = (60, 80)
_BASIC_NACK = (60, 120)
_CONNECTION_CLOSE = (10, 50)
_CHANNEL_CLOSE = (20, 40)
_CONNECTION_BLOCKED = (10, 60)


class AmqpMessage(NamedTuple):
    exchange: str
    routing_key: str
    body: bytes
    properties: dict[str, Any]  # py-amqp's names: content_type, application_headers, ...


def to_amqp(message: Message) -> AmqpMessage:
    """The AMQP message kombu's py-amqp transport publishes for a recorded Redis envelope."""
    _channel, payload = message
    envelope = orjson.loads(payload)
    props = envelope["properties"]
    info = props["delivery_info"]
    # kombu.transport.pyamqp.Channel.prepare_message: these, then the publish properties.
    properties = {
        "priority": props["priority"],
        "content_type": envelope["content-type"],
        "content_encoding": envelope["content-encoding"],
        "application_headers": envelope["headers"],
        "delivery_mode": props["delivery_mode"],
    }
    body = envelope["body"].encode()
    if props.get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return AmqpMessage(info["exchange"], info["routing_key"], body, properties)


class _Sink:
    """Stands in for py-amqp's transport and connection: keeps what the frame writer writes."""

    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self.bytes_sent = 0  # the writer counts frames here
        self.parts: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self.parts.append(bytes(data))  # the writer reuses its buffer: copy


class Framer:
    """basic.publish frames (method, header, body) for a channel, as py-amqp writes them."""

    def __init__(self, channel_id: int, frame_max: int) -> None:
        self._channel_id = channel_id
        self._sink = _Sink(frame_max)
        self._write = method_framing.frame_writer(self._sink, self._sink)
        self._args: dict[tuple[str, str], bytes] = {}

    def frames(self, message: AmqpMessage) -> bytes:
        key = (message.exchange, message.routing_key)
        args = self._args.get(key)
        if args is None:
            # basic_publish's argument signature: ticket, exchange, routing key, mandatory,
            # immediate; Celery sets neither flag.
            args = serialization.dumps("Bssbb", (0, *key, False, False))
            self._args[key] = args
        content = amqp.Message(message.body, **message.properties)
        self._write(1, self._channel_id, spec.Basic.Publish, args, content)
        data = b"".join(self._sink.parts)
        self._sink.parts.clear()
        return data


def pack(
    messages: Iterable[AmqpMessage],
    events_per_message: Iterable[int],
    framer: Framer,
    size: int = CHUNK_MESSAGES,
) -> Iterator[Chunk]:
    """The frames of ``messages`` in chunks of ``size`` messages, with the events they carry."""
    return chunked(map(framer.frames, messages), events_per_message, size)


class _Confirms:
    """Reads the broker's frames on the publishing socket and counts confirmed publishes."""

    def __init__(self, sock: socket.socket, total: int) -> None:
        self._sock = sock
        self._total = total
        self._upto = 0  # every delivery tag up to this one is confirmed
        self._singles: set[int] = set()  # confirmed one by one, beyond _upto
        self.blocked = 0  # connection.blocked notifications (a broker resource alarm)
        self.cpu_seconds = 0.0

    def _confirm(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._upto = max(self._upto, tag)
            self._singles = {single for single in self._singles if single > self._upto}
        else:
            self._singles.add(tag)
        while self._upto + 1 in self._singles:
            self._upto += 1
            self._singles.discard(self._upto)

    def _method(self, frame: memoryview) -> None:
        method = _METHOD.unpack_from(frame, 0)
        if method == _BASIC_ACK:
            tag, flags = _CONFIRM.unpack_from(frame, 4)
            self._confirm(tag, bool(flags & 1))
        elif method == _BASIC_NACK:
            tag, _flags = _CONFIRM.unpack_from(frame, 4)
            raise RuntimeError(f"RabbitMQ nacked publish {tag}")
        elif method in (_CONNECTION_CLOSE, _CHANNEL_CLOSE):
            code, text = serialization.loads("Bs", bytes(frame[4:]), 0)[0][:2]
            raise ConnectionError(f"RabbitMQ closed the publishing channel: {code} {text}")
        elif method == _CONNECTION_BLOCKED:
            self.blocked += 1

    def read(self) -> None:
        """Until every publish is confirmed."""
        started = time.thread_time()
        buf = bytearray()
        try:
            while self._upto < self._total:
                data = self._sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("RabbitMQ closed the publishing connection")
                buf += data
                view, offset = memoryview(buf), 0
                while len(buf) - offset >= _FRAME_HEADER.size:
                    kind, _channel, size = _FRAME_HEADER.unpack_from(buf, offset)
                    end = offset + _FRAME_HEADER.size + size + 1  # + frame-end octet
                    if end > len(buf):
                        break
                    if kind == 1:
                        self._method(view[offset + _FRAME_HEADER.size : end - 1])
                    offset = end
                view.release()
                del buf[:offset]
        finally:
            self.cpu_seconds = time.thread_time() - started


class AmqpBurst(NamedTuple):
    result: BurstResult
    publisher_cpu: float  # CPU seconds of the writing and the ack-reading thread
    blocked: int  # connection.blocked notifications during the burst


class AmqpPublisher:
    """One py-amqp connection and confirm-mode channel whose socket the burst writes directly.

    Frames are built in advance for CHANNEL_ID and FRAME_MAX (RabbitMQ's default), which the
    connection must have negotiated.
    """

    CHANNEL_ID = 1
    FRAME_MAX = 131_072

    def __init__(self, port: int) -> None:
        self._conn: Any = amqp.Connection(
            f"127.0.0.1:{port}", userid="guest", password="guest", heartbeat=0
        )
        self._conn.connect()
        self._channel: Any = self._conn.channel()
        self._channel.confirm_select()
        negotiated = (self._channel.channel_id, self._conn.frame_max)
        if negotiated != (self.CHANNEL_ID, self.FRAME_MAX):
            self.close()
            raise RuntimeError(f"channel and frame_max {negotiated}: the frames were not built so")
        self.last: AmqpBurst | None = None

    def close(self) -> None:
        # The socket was read outside py-amqp, so no closing handshake: just let go of it.
        with contextlib.suppress(Exception):
            self._conn.collect()

    def burst(self, chunks: Sequence[Chunk]) -> BurstResult:
        """Write every chunk as fast as RabbitMQ reads them; return once all are confirmed."""
        transport = self._conn.transport
        if transport._read_buffer:  # py-amqp must hold no bytes we would miss
            raise RuntimeError("py-amqp holds unread bytes; cannot take over its socket")
        sock: socket.socket = transport.sock
        sock.settimeout(None)
        total = sum(chunk.messages for chunk in chunks)
        confirms = _Confirms(sock, total)
        failure: list[BaseException] = []

        def read() -> None:
            try:
                confirms.read()
            except BaseException as err:  # noqa: BLE001 - handed to the writing thread
                failure.append(err)

        reader = threading.Thread(target=read, name="publish-confirms")
        wall_offset = time.time() - time.monotonic()
        cpu_started = time.thread_time()
        started = time.monotonic()
        reader.start()
        try:
            for chunk in chunks:
                sock.sendall(chunk.data)
        finally:
            writer_cpu = time.thread_time() - cpu_started
            reader.join()
        finished = time.monotonic()
        if failure:
            raise failure[0]
        size = sum(len(chunk.data) for chunk in chunks)
        result = BurstResult(started, finished, total, size, wall_offset, 0)
        self.last = AmqpBurst(result, writer_cpu + confirms.cpu_seconds, confirms.blocked)
        return result


class AmqpCapture:
    """An exclusive queue bound to everything on Celery's event exchange; raw bodies kept."""

    END_KEY = "bench.end-of-recording"

    def __init__(self, port: int) -> None:
        self._conn: Any = amqp.Connection(f"127.0.0.1:{port}", userid="guest", password="guest")
        self._conn.connect()
        channel: Any = self._conn.channel()
        channel.auto_decode = False  # bodies as the bytes on the wire
        # Declared as Celery declares it, or the broker refuses Celery's redeclare.
        channel.exchange_declare(EXCHANGE, "topic", durable=True, auto_delete=False)
        queue, _, _ = channel.queue_declare("", exclusive=True)
        channel.queue_bind(queue, EXCHANGE, "#")
        self.messages: list[AmqpMessage] = []
        self._ended = False
        channel.basic_consume(queue, no_ack=True, callback=self._got)

    def _got(self, message: Any) -> None:
        info = message.delivery_info
        if info["routing_key"] == self.END_KEY:
            self._ended = True
            return
        self.messages.append(
            AmqpMessage(info["exchange"], info["routing_key"], message.body, message.properties)
        )

    @classmethod
    def end_marker(cls, channel: Any) -> None:
        """Publish the end marker on ``channel``: after everything published on it before."""
        channel.basic_publish(amqp.Message(b""), exchange=EXCHANGE, routing_key=cls.END_KEY)

    def finish(self, timeout: float = 30) -> list[AmqpMessage]:
        deadline = time.monotonic() + timeout
        try:
            while not self._ended:
                if time.monotonic() > deadline:
                    raise TimeoutError("the end marker never arrived")
                with contextlib.suppress(socket.timeout):
                    self._conn.drain_events(timeout=1)
            return self.messages
        finally:
            with contextlib.suppress(Exception):
                self._conn.close()


_PID = re.compile(rb'"pid": \d+')


def compatibility_problems(
    recorded: Sequence[Message], captured: Sequence[AmqpMessage]
) -> list[str]:
    """Differences between ``to_amqp`` of a Redis recording and EventDispatcher's own AMQP
    messages for the same events (bodies compared byte for byte but the sender's pid)."""
    converted = [to_amqp(message) for message in recorded]
    if len(converted) != len(captured):
        return [f"{len(converted)} messages converted, {len(captured)} published by Celery"]
    problems: list[str] = []
    for index, (ours, real) in enumerate(zip(converted, captured, strict=True)):
        if (ours.exchange, ours.routing_key) != (real.exchange, real.routing_key):
            problems.append(f"message {index}: routed {ours[:2]}, Celery's {real[:2]}")
        if ours.properties != real.properties:
            problems.append(f"message {index}: properties {ours.properties} != {real.properties}")
        if _PID.sub(b'"pid": 0', ours.body) != _PID.sub(b'"pid": 0', real.body):
            problems.append(f"message {index}: body differs")
        if len(problems) >= 5:
            break
    return problems
