"""The private parts of other libraries the exporter relies on, all of them, in one place.

Each reads one attribute that the library does not promise to keep. The event readers take
over a socket the broker library opened and handshaked (TLS, Sentinel, AUTH, heartbeats
negotiated) and parse its bytes themselves, in bulk: that is where the event throughput in
bench/README.md comes from. ``tests/test_unit_compat.py`` checks each against the installed
versions, so an upgrade that moves one fails the suite, not production.
"""

from __future__ import annotations

import socket
from typing import Any


class IncompatibleLibrary(RuntimeError):
    """An installed library no longer has what the exporter reads from it."""


def redis_socket(connection: Any) -> socket.socket:
    """The socket of a connected redis-py ``Connection`` (its ``_sock``)."""
    sock = getattr(connection, "_sock", None)
    if not isinstance(sock, socket.socket):
        raise IncompatibleLibrary(
            "redis-py's Connection has no connected socket in _sock: this redis-py version is "
            "not supported (see requirements.lock)"
        )
    return sock


def amqp_socket_and_pending(transport: Any) -> tuple[socket.socket, bytes]:
    """The socket of a connected py-amqp transport and the bytes it read past the last frame
    it parsed (its ``_read_buffer``), which belong to the next one."""
    sock = getattr(transport, "sock", None)
    pending = getattr(transport, "_read_buffer", None)
    if not isinstance(sock, socket.socket) or not isinstance(pending, bytes | bytearray):
        raise IncompatibleLibrary(
            "py-amqp's transport has no sock and _read_buffer: this amqp version is not "
            "supported (see requirements.lock)"
        )
    return sock, bytes(pending)
