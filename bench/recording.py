"""Recorded pub/sub traffic: (channel, payload) pairs, stored on disk and captured off Redis."""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hiredis

Message = tuple[bytes, bytes]  # (channel, payload) exactly as PUBLISH takes them

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
_MAGIC = b"celery-exporter-bench recording 1\n"
_LENGTHS = struct.Struct(">II")


def save(path: Path, messages: Iterable[Message]) -> None:
    """Write atomically, so an interrupted run never leaves a truncated cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [_MAGIC]
    for channel, payload in messages:
        parts += (_LENGTHS.pack(len(channel), len(payload)), channel, payload)
    partial = path.with_suffix(".partial")
    partial.write_bytes(b"".join(parts))
    partial.replace(path)


def load(path: Path) -> list[Message]:
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise ValueError(f"{path} is not a recording")
    messages: list[Message] = []
    offset, end = len(_MAGIC), len(data)
    while offset < end:
        channel_len, payload_len = _LENGTHS.unpack_from(data, offset)
        offset += _LENGTHS.size
        channel = data[offset : offset + channel_len]
        offset += channel_len
        messages.append((channel, data[offset : offset + payload_len]))
        offset += payload_len
    return messages


def resp_command(*parts: bytes) -> bytes:
    """One command in the Redis protocol (RESP2 array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out += (b"$%d\r\n" % len(part), part, b"\r\n")
    return b"".join(out)


class Capture:
    """A raw PSUBSCRIBE on its own socket: a thread only receives, parsing happens at the end.

    Nothing but ``recv`` runs while recording, so the capture never falls behind the
    dispatcher. ``finish`` publishes an end marker and returns everything before it.
    """

    def __init__(self, port: int, pattern: bytes) -> None:
        self._port = port
        self._end_channel = pattern.rstrip(b"*") + b"bench.end-of-recording"
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(resp_command(b"PSUBSCRIBE", pattern))
        self._parser = hiredis.Reader()
        self._chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        threading.Thread(target=self._read, name="capture", daemon=True).start()
        # The confirmation comes first: once it is read, every later PUBLISH is captured.
        reply = self._next_reply(time.monotonic() + 10)
        if not (isinstance(reply, list) and reply[0] == b"psubscribe"):
            raise RuntimeError(f"unexpected reply to PSUBSCRIBE: {reply!r}")

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while data := self._sock.recv(1 << 20):
                self._chunks.put(data)
        self._chunks.put(b"")

    def _next_reply(self, deadline: float) -> Any:
        while (reply := self._parser.gets()) is False:
            chunk = self._chunks.get(timeout=max(0.0, deadline - time.monotonic()))
            if not chunk:
                raise ConnectionError("Redis closed the capture connection")
            self._parser.feed(chunk)
        return reply

    def finish(self, timeout: float = 60) -> list[Message]:
        """Everything published on the pattern since the subscription, in order."""
        with socket.create_connection(("127.0.0.1", self._port)) as sock:
            sock.sendall(resp_command(b"PUBLISH", self._end_channel, b""))
            sock.recv(64)
        deadline = time.monotonic() + timeout
        messages: list[Message] = []
        try:
            while True:
                _kind, _pattern, channel, payload = self._next_reply(deadline)
                if channel == self._end_channel:
                    return messages
                messages.append((channel, payload))
        finally:
            # shutdown, not just close: the reading thread's recv would keep the socket open.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
