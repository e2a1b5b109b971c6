"""Pure helpers of queue depth: kombu's Redis key layout and envelopes, the RabbitMQ management
API's reply, credentials and URL, how a RabbitMQ reading is assembled, and the settings."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import orjson
import pytest

from exporter.brokers.amqp.management import (
    COLUMNS,
    Credentials,
    ManagementClient,
    ManagementError,
    ManagementQueue,
    is_task_queue,
    management_client,
    parse_queues,
    queues_path,
    split_credentials,
)
from exporter.brokers.amqp.queues import AmqpQueueProbe
from exporter.brokers.redis.queues import message_task_id, parse_binding, queue_key
from exporter.cli import ConfigError, main, parse_settings
from exporter.settings import EXIT_CONFIG
from exporter.state.queues import QueueReading, QueueState

KOMBU_SEP = "\x06\x16"
SECRET = "s3cret-pw"


pytestmark = pytest.mark.usefixtures("clean_environment")


# --- Redis: kombu's layout ---


@pytest.mark.parametrize(
    ("member", "sep", "expected"),
    [
        (f"celery{KOMBU_SEP}{KOMBU_SEP}celery".encode(), KOMBU_SEP, ("celery", "celery")),
        (f"rk{KOMBU_SEP}pat{KOMBU_SEP}q".encode(), KOMBU_SEP, ("rk", "q")),
        (f"{KOMBU_SEP}{KOMBU_SEP}q".encode(), KOMBU_SEP, ("", "q")),  # fanout: no routing key
        (b"rk|*|q", "|", ("rk", "q")),  # the sep transport option
        (f"rk{KOMBU_SEP}{KOMBU_SEP}".encode(), KOMBU_SEP, None),  # no queue
        (b"rk|q", "|", None),  # too few parts
        (b"a|b|c|d", "|", None),  # too many parts
        (b"\xff|x|q\xfe", "|", ("\ufffd", "q\ufffd")),  # not UTF-8: replaced, not raised
    ],
)
def test_parse_binding(member: bytes, sep: str, expected: tuple[str, str] | None) -> None:
    """A ``_kombu.binding.<exchange>`` member is routing_key<sep>pattern<sep>queue."""
    assert parse_binding(member, sep) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (orjson.dumps({"headers": {"id": "abc-1", "task": "t"}, "body": "e30="}), "abc-1"),
        (orjson.dumps({"headers": {"id": 5}}), None),  # not a string
        (orjson.dumps({"headers": {}}), None),  # protocol 1: the id is in the body
        (orjson.dumps({"headers": "x"}), None),
        (orjson.dumps([1, 2]), None),
        (b"not json", None),
        (b"", None),
        (None, None),  # LINDEX of an empty list
    ],
)
def test_message_task_id(raw: bytes | None, expected: str | None) -> None:
    """The task id of a kombu envelope from its protocol 2 headers, else None."""
    assert message_task_id(raw) == expected


@pytest.mark.parametrize(
    ("queue", "step", "prefix", "sep", "expected"),
    [
        ("celery", 0, "", KOMBU_SEP, "celery"),  # step 0 is the bare name
        ("celery", 3, "", KOMBU_SEP, f"celery{KOMBU_SEP}3"),
        ("celery", 9, "tenant:", KOMBU_SEP, f"tenant:celery{KOMBU_SEP}9"),
        ("celery", 0, "tenant:", KOMBU_SEP, "tenant:celery"),
        ("q", 5, "", ":", "q:5"),
        ("q", 10, "p/", "|", "p/q|10"),
    ],
)
def test_queue_key(queue: str, step: int, prefix: str, sep: str, expected: str) -> None:
    """The list of one priority step: prefix, queue, then sep and step unless step is 0."""
    assert queue_key(queue, step, prefix=prefix, sep=sep) == expected


# --- RabbitMQ management API ---


def test_parse_queues_reads_every_column() -> None:
    """Each entry becomes a ManagementQueue; consumer_capacity stands in for the older
    consumer_utilisation; nulls, negatives, booleans and strings read None; entries that are
    not objects or have no string name are skipped."""
    payload = [
        {
            "name": "celery",
            "messages_ready": 12,
            "messages_unacknowledged": 3,
            "consumers": 2,
            "consumer_utilisation": 0.75,
        },
        {"name": "fresh", "messages_ready": None, "messages_unacknowledged": None},
        {"name": "new", "consumer_capacity": 1, "consumers": True, "messages_ready": -1},
        {"name": "odd", "messages_ready": "7", "consumer_utilisation": "high"},
        {"messages_ready": 4},
        {"name": 5},
        "celery",
    ]
    assert parse_queues(payload) == [
        ManagementQueue("celery", ready=12, unacked=3, consumers=2, utilisation=0.75),
        ManagementQueue("fresh", ready=None, unacked=None, consumers=None, utilisation=None),
        ManagementQueue("new", ready=None, unacked=None, consumers=None, utilisation=1.0),
        ManagementQueue("odd", ready=None, unacked=None, consumers=None, utilisation=None),
    ]


@pytest.mark.parametrize("payload", [{"error": "not_authorised"}, None, "x", 5])
def test_parse_queues_refuses_what_is_not_a_list(payload: Any) -> None:
    """An error object (or anything but a list) is a ManagementError, not an empty vhost."""
    with pytest.raises(ManagementError, match="expected a JSON list"):
        parse_queues(payload)


@pytest.mark.parametrize(
    ("name", "task_queue"),
    [
        ("celery", True),
        ("e2e_a", True),
        ("emails.high", True),
        ("celeryev.0b1c", False),  # a Celery event receiver
        ("celeryev.exporter.5f2e.dropped", False),  # the exporter's own
        ("celery@host.celery.pidbox", False),  # a worker's control queue
        ("4e3f.reply.celery.pidbox", False),  # a control reply queue
        ("amq.gen-JzTY20BRgKO", False),  # server-named
        ("", False),
    ],
)
def test_is_task_queue(name: str, task_queue: bool) -> None:
    """Celery's event, control and reply queues and server-named queues are not task queues."""
    assert is_task_queue(name) is task_queue


@pytest.mark.parametrize(
    ("vhost", "path"),
    [("/", "/api/queues/%2F"), ("prod", "/api/queues/prod"), ("a/b c", "/api/queues/a%2Fb%20c")],
)
def test_queues_path_encodes_the_whole_vhost(vhost: str, path: str) -> None:
    """The vhost is one path segment: every ``/`` in it is encoded."""
    assert queues_path(vhost) == path


@pytest.mark.parametrize(
    ("url", "password", "fallback", "expected"),
    [
        (
            "http://mon:pw@rabbit:15672/",
            None,
            ("guest", "guest"),
            Credentials("http://rabbit:15672", "mon", "pw"),
        ),
        (  # the password flag or file wins over the URL's
            "http://mon:pw@rabbit:15672",
            "file-pw",
            None,
            Credentials("http://rabbit:15672", "mon", "file-pw"),
        ),
        (  # nobody named: the broker URL's user and password
            "https://rabbit/management/",
            None,
            ("app", "app-pw"),
            Credentials("https://rabbit/management", "app", "app-pw"),
        ),
        (  # another user than the broker's never gets the broker's password
            "http://mon@rabbit:15672",
            None,
            ("app", "app-pw"),
            Credentials("http://rabbit:15672", "mon", None),
        ),
        (
            "http://app@rabbit:15672",
            None,
            ("app", "app-pw"),
            Credentials("http://rabbit:15672", "app", "app-pw"),
        ),
        (  # percent-encoded userinfo, IPv6 host
            "http://m%40x:p%3Aw%2F@[::1]:15672",
            None,
            None,
            Credentials("http://[::1]:15672", "m@x", "p:w/"),
        ),
        ("http://rabbit:15672", None, None, Credentials("http://rabbit:15672", None, None)),
    ],
)
def test_split_credentials(
    url: str, password: str | None, fallback: tuple[str, str] | None, expected: Credentials
) -> None:
    """The base URL loses its userinfo (it is logged); user and password are resolved apart."""
    assert split_credentials(url, password=password, fallback=fallback) == expected


def test_management_client_takes_vhost_and_credentials_from_the_broker_url() -> None:
    """Without userinfo in the management URL, the broker URL's user, password and vhost."""
    client = management_client(
        url="http://rabbit:15672",
        password=None,
        broker_url="amqp://app:app-pw@rabbit:5672/prod%2Feu",
        timeout=1.0,
    )
    assert client is not None
    assert (client.base_url, client.vhost) == ("http://rabbit:15672", "prod/eu")
    assert management_client(url=None, password=None, broker_url="amqp://h//", timeout=1) is None


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers like the management API; remembers what it was asked."""

    status: ClassVar[int] = 200
    body: ClassVar[bytes] = b"[]"
    requests: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        type(self).requests.append((self.path, self.headers.get("Authorization")))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        """Quiet."""


@pytest.fixture
def management_server() -> Iterator[tuple[str, type[_Handler]]]:
    """A loopback HTTP server with a fresh handler class: (base URL, handler class)."""
    handler = type("Handler", (_Handler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_management_client_fetches_the_vhost_with_basic_auth(
    management_server: tuple[str, type[_Handler]],
) -> None:
    """One GET of /api/queues/%2F with the columns asked for and basic auth; the reply parsed."""
    base, handler = management_server
    handler.body = orjson.dumps(
        [{"name": "celery", "messages_ready": 1, "messages_unacknowledged": 2, "consumers": 3}]
    )
    client = ManagementClient(
        credentials=split_credentials(f"{base.replace('//', '//guest:guest@')}/"),
        vhost="/",
        timeout=5.0,
    )
    assert client.fetch() == [ManagementQueue("celery", 1, 2, 3, None)]
    assert handler.requests == [
        (f"/api/queues/%2F?columns={','.join(COLUMNS)}", "Basic Z3Vlc3Q6Z3Vlc3Q=")
    ]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, b'{"error":"not_authorized"}', "answered HTTP 401"),
        (200, b"<html>", "reply is not JSON"),
        (200, b'{"error": "x"}', "expected a JSON list"),
    ],
)
def test_management_client_errors_name_the_url_without_the_password(
    management_server: tuple[str, type[_Handler]], status: int, body: bytes, message: str
) -> None:
    """A refusal or a reply that is no queue list is a ManagementError naming the URL, never
    the password."""
    base, handler = management_server
    handler.status, handler.body = status, body
    client = ManagementClient(
        credentials=split_credentials(base, password=SECRET, fallback=("guest", "x")),
        vhost="/",
        timeout=5.0,
    )
    with pytest.raises(ManagementError, match=message) as caught:
        client.fetch()
    assert SECRET not in str(caught.value)


def test_management_client_unreachable_raises_without_the_password() -> None:
    """Nothing listening: aiohttp's connection error, whose text has no credentials."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ManagementClient(
        credentials=split_credentials(f"http://mon:{SECRET}@127.0.0.1:{port}"),
        vhost="/",
        timeout=2.0,
    )
    with pytest.raises(aiohttp.ClientConnectionError) as caught:
        client.fetch()
    assert SECRET not in str(caught.value)


# --- RabbitMQ readings ---


def _probe(*, configured: list[str], management: bool) -> AmqpQueueProbe:
    client = (
        ManagementClient(
            credentials=Credentials("http://127.0.0.1:1", None, None), vhost="/", timeout=1
        )
        if management
        else None
    )
    return AmqpQueueProbe(
        url="amqp://guest:guest@127.0.0.1:1//",  # never connected by these tests
        transport_options={},
        timeout=1.0,
        state=QueueState(configured=configured, forget_after=60),
        seen_queues=list,
        clock=lambda: 0.0,
        management=client,
    )


def test_reading_takes_ready_and_consumers_from_the_declare_and_unacked_from_the_api() -> None:
    """The passive declare's exact ready and consumer counts win over the sampled ones."""
    probe = _probe(configured=[], management=True)
    stats = ManagementQueue("q", ready=99, unacked=4, consumers=7, utilisation=0.5)
    assert probe.reading("q", (2, 1), stats) == QueueReading(
        length=2, by_priority={}, unacked=4, consumers=1, consumer_utilisation=0.5
    )
    # Not sampled yet (a new queue): no unacked series rather than a wrong 0.
    fresh = ManagementQueue("q", None, None, None, None)
    assert probe.reading("q", (3, 0), fresh) == QueueReading(length=3, by_priority={}, consumers=0)
    assert probe.reading("q", (3, 0), None) == QueueReading(length=3, by_priority={}, consumers=0)


def test_reading_of_a_queue_the_declare_cannot_read() -> None:
    """Missing and configured: 0 (unacked 0 too when the API is there); missing and not
    configured: no reading; another connection's exclusive queue: the API's numbers."""
    with_api = _probe(configured=["conf"], management=True)
    without_api = _probe(configured=["conf"], management=False)
    assert with_api.reading("conf", None, None) == QueueReading(0, {}, unacked=0, consumers=0)
    assert without_api.reading("conf", None, None) == QueueReading(0, {}, consumers=0)
    assert with_api.reading("gone", None, None) is None
    locked = ManagementQueue("locked", ready=5, unacked=1, consumers=1, utilisation=None)
    assert with_api.reading("locked", None, locked) == QueueReading(5, {}, 1, consumers=1)


def test_virtual_host_is_read_as_kombu_reads_it() -> None:
    """``//`` at the end of the broker URL is the vhost ``/``."""
    assert _probe(configured=[], management=False).virtual_host == "/"


def test_a_failing_management_api_fails_the_poll_before_any_amqp_call() -> None:
    """The HTTP error propagates (the poller counts it); the AMQP side is not even tried."""
    probe = _probe(configured=["conf"], management=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        probe()


# --- settings ---


def test_management_settings_and_password_precedence(tmp_path: Path) -> None:
    """The URL stays secret; the password file wins over the flag (and its variable)."""
    secret_file = tmp_path / "pw"
    secret_file.write_text(f"{SECRET}\n", encoding="utf-8")
    base = ["--broker-url", "amqp://guest:guest@rabbit//"]
    settings = parse_settings([*base, "--rabbitmq-management-url", f"http://u:{SECRET}@r:15672"])
    assert SECRET not in repr(settings)
    assert settings.rabbitmq_management_password_value() is None
    settings = parse_settings(
        [
            *base,
            "--rabbitmq-management-url", "http://r:15672",
            "--rabbitmq-management-password", "flag-pw",
        ]
    )  # fmt: skip
    assert settings.rabbitmq_management_password_value() == "flag-pw"
    settings = parse_settings(
        [
            *base,
            "--rabbitmq-management-url", "http://r:15672",
            "--rabbitmq-management-password", "flag-pw",
            "--rabbitmq-management-password-file", str(secret_file),
        ]
    )  # fmt: skip
    assert settings.rabbitmq_management_password_value() == SECRET


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--broker-url", "redis://r:6379/0", "--rabbitmq-management-url", "http://r:15672"],
            "needs an amqp:// broker_url",
        ),
        (
            ["--broker-url", "amqp://r//", "--rabbitmq-management-url", f"ftp://u:{SECRET}@r"],
            "must be an http:// or https:// URL",
        ),
        (
            [
                "--broker-url", "amqp://r//",
                "--rabbitmq-management-url", "http://r:15672",
                "--rabbitmq-management-password-file", "/nonexistent/pw",
            ],
            "is not a readable file",
        ),
    ],
)  # fmt: skip
def test_management_settings_are_checked(argv: list[str], message: str) -> None:
    """A management URL without an AMQP broker, of another scheme, or a missing password file
    is a configuration error that never echoes the URL's password."""
    with pytest.raises(ConfigError, match=message) as caught:
        parse_settings(argv)
    assert SECRET not in str(caught.value)


def test_management_url_error_exits_2_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command line's exit code 2 and one line, without the password."""
    code = main(
        ["--broker-url", "redis://r:6379/0", "--rabbitmq-management-url", f"http://u:{SECRET}@r"]
    )
    assert code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "rabbitmq_management_url needs an amqp:// broker_url" in err
    assert SECRET not in err


def test_learned_queues_are_capped_by_max_queues() -> None:
    """Past max_queues, queues learned from the broker or events are not polled, each refused
    queue is counted once, and configured queues are always polled."""
    state = QueueState(configured=["always"], forget_after=60, max_queues=3)
    assert state.targets(["a", "b", "c", "d"], now=0.0) == ["always", "a", "b"]
    assert state.refused == 2
    assert state.targets(["a", "b", "c", "d"], now=1.0) == ["always", "a", "b"]
    assert state.refused == 2
    # Once "a" is forgotten, a refused queue takes its place.
    assert state.targets(["b", "c"], now=61.5) == ["always", "b", "c"]


def test_a_queue_holding_messages_stays_polled() -> None:
    """A learned queue that nothing names any more is forgotten after forget_after, unless
    its last reading still holds messages: a stuck queue keeps celery_queue_length."""
    state = QueueState(configured=[], forget_after=60)
    assert state.targets(["stuck", "idle"], now=0.0) == ["stuck", "idle"]
    state.publish({"stuck": QueueReading(5, {}), "idle": QueueReading(0, {}, unacked=0)})
    assert state.targets([], now=50.0) == ["stuck", "idle"]
    assert state.targets([], now=100.0) == ["stuck"]
    state.publish({"stuck": QueueReading(0, {}, unacked=2)})
    assert state.targets([], now=150.0) == ["stuck"]
    state.publish({"stuck": QueueReading(0, {}, unacked=0)})
    assert state.targets([], now=200.0) == ["stuck"]
    assert state.targets([], now=260.0) == []
