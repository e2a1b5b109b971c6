"""Every private attribute exporter/compat.py reads, on the installed libraries and real
brokers: an upgrade that moves one fails here, loudly, before it reaches a deployment."""

from __future__ import annotations

import socket
from typing import Any

import amqp
import pytest
import redis
from prometheus_client.metrics_core import Metric

from exporter.compat import IncompatibleLibrary, amqp_socket_and_pending, redis_socket
from exporter.metrics.family import ScalarFamily
from tests.services import RabbitMQServer, RedisServer


@pytest.mark.redis
def test_redis_connection_exposes_its_socket(redis_server: RedisServer) -> None:
    """redis-py's Connection keeps its connected socket in _sock: the event reader reads it."""
    pool = redis.ConnectionPool.from_url(redis_server.url)
    connection: Any = pool.get_connection()  # Any: redis-py types it in some versions only
    try:
        connection.send_command("PING")
        sock = redis_socket(connection)
        assert sock.recv(64) == b"+PONG\r\n"
    finally:
        pool.disconnect()


@pytest.mark.rabbitmq
def test_amqp_transport_exposes_its_socket_and_read_buffer(
    rabbitmq_server: RabbitMQServer,
) -> None:
    """py-amqp's transport keeps its socket in sock and what it read past the last frame in
    _read_buffer: the AMQP event session takes both over."""
    conn = amqp.Connection(
        f"127.0.0.1:{rabbitmq_server.amqp_port}", userid="guest", password="guest"
    )
    conn.connect()
    try:
        sock, pending = amqp_socket_and_pending(conn.transport)
        assert isinstance(sock, socket.socket)
        assert sock.getpeername()[1] == rabbitmq_server.amqp_port
        assert pending == b""  # connected and idle: nothing read ahead
    finally:
        conn.close()


def test_a_moved_attribute_is_a_clear_error() -> None:
    class Moved:
        sock = None

    with pytest.raises(IncompatibleLibrary, match="redis-py"):
        redis_socket(Moved())
    with pytest.raises(IncompatibleLibrary, match="amqp version"):
        amqp_socket_and_pending(Moved())


def test_client_python_metric_still_has_what_our_families_fill_in() -> None:
    """Our families are client_python Metrics built without Metric.__init__ (metrics/family.py):
    the attributes its exposition reads must be the ones they set."""
    plain = Metric("celery_x", "Doc.", "gauge")
    ours = ScalarFamily("celery_x", "Doc.", "gauge", ["task"])
    ours.add_metric(["t"], 1.0)
    assert set(vars(plain)) == {"name", "documentation", "type", "unit", "samples"}
    for attribute in ("name", "documentation", "type", "unit", "samples"):
        assert hasattr(ours, attribute), attribute
