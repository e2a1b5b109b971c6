"""RabbitMQ management HTTP API: the vhost's queues, their unacked counts and consumer use.

AMQP has no verb to list queues or to count unacknowledged messages; the management plugin
has. Its numbers are statistics sampled every ``collect_statistics_interval`` (5 s by default)
and null for a queue created since the last sample, whereas a passive declare is exact and
immediate. So ``AmqpQueueProbe`` takes ready messages and consumers from passive declares, and
from here only which queues exist, unacked counts and consumer utilisation.

One ``GET /api/queues/<vhost>?columns=...`` per poll, with aiohttp on a short-lived event loop
in the poller's thread. Credentials never reach a log line: they are split off the URL, sent
as basic auth, and errors name the URL without them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp
import kombu
import orjson
import yarl

log = logging.getLogger(__name__)

# consumer_capacity is the 3.12+ name of consumer_utilisation; both are asked for, unknown
# columns are simply left out of the reply.
COLUMNS = (
    "name",
    "messages_ready",
    "messages_unacknowledged",
    "consumers",
    "consumer_utilisation",
    "consumer_capacity",
)
# Celery's event queues (ours are celeryev.exporter.*), control and reply queues, and
# server-named queues are plumbing, not task queues.
_SKIPPED_PREFIXES = ("celeryev.", "amq.")
_SKIPPED_SUFFIXES = (".pidbox",)


class ManagementError(RuntimeError):
    """The management API could not be read, or answered something else than a queue list."""


class ManagementQueue(NamedTuple):
    """One queue as the management API last sampled it; None where it reported null."""

    name: str
    ready: int | None
    unacked: int | None
    consumers: int | None
    utilisation: float | None


class Credentials(NamedTuple):
    """The API's base URL without userinfo, and the basic auth to send."""

    base_url: str
    username: str | None
    password: str | None


def is_task_queue(name: str) -> bool:
    """Whether ``name`` may be a Celery task queue rather than Celery's or the broker's own."""
    return (
        bool(name)
        and not name.startswith(_SKIPPED_PREFIXES)
        and not name.endswith(_SKIPPED_SUFFIXES)
        and "reply" not in name
    )


def queues_path(vhost: str) -> str:
    """``/api/queues/<vhost>``, the vhost encoded whole (``/`` is ``%2F``)."""
    return f"/api/queues/{quote(vhost, safe='')}"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _ratio(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    ratio = float(value)
    return ratio if math.isfinite(ratio) and ratio >= 0 else None


def parse_queues(payload: Any) -> list[ManagementQueue]:
    """The queues of a ``/api/queues/<vhost>`` reply; entries without a name are skipped."""
    if not isinstance(payload, list):
        raise ManagementError(f"expected a JSON list of queues, got {type(payload).__name__}")
    queues = []
    for entry in payload:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        utilisation = _ratio(entry.get("consumer_utilisation"))
        if utilisation is None:
            utilisation = _ratio(entry.get("consumer_capacity"))
        queues.append(
            ManagementQueue(
                name=entry["name"],
                ready=_count(entry.get("messages_ready")),
                unacked=_count(entry.get("messages_unacknowledged")),
                consumers=_count(entry.get("consumers")),
                utilisation=utilisation,
            )
        )
    return queues


def split_credentials(
    url: str, *, password: str | None = None, fallback: tuple[str, str] | None = None
) -> Credentials:
    """The URL without userinfo, and who to authenticate as.

    The user is the URL's, else ``fallback``'s (the broker URL's); the password is
    ``password`` (flag, environment or file), else the URL's, else ``fallback``'s when the user
    is ``fallback``'s too.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    username = unquote(parts.username) if parts.username else None
    if password is None and parts.password is not None:
        password = unquote(parts.password)
    if username is None and fallback is not None:
        username = fallback[0]
    if password is None and fallback is not None and username == fallback[0]:
        password = fallback[1]
    return Credentials(base, username, password)


class ManagementClient:
    """Reads one vhost's queues from the management API."""

    def __init__(self, *, credentials: Credentials, vhost: str, timeout: float) -> None:
        self.base_url = credentials.base_url  # no userinfo: safe to log
        self.vhost = vhost
        self._headers = {"Accept": "application/json"}
        if credentials.username is not None:
            userinfo = f"{credentials.username}:{credentials.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(userinfo).decode()
        self._url = yarl.URL(
            f"{self.base_url}{queues_path(vhost)}?columns={','.join(COLUMNS)}", encoded=True
        )
        self._timeout = timeout

    def fetch(self) -> list[ManagementQueue]:
        """Every queue of the vhost; ManagementError (or a connection error) when unreadable.

        Runs its own event loop: call it from a thread without one (the poller's).
        """
        return asyncio.run(self._fetch())

    async def _fetch(self) -> list[ManagementQueue]:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self._url, headers=self._headers) as response,
        ):
            if response.status != 200:
                raise ManagementError(
                    f"{self.base_url}{queues_path(self.vhost)} answered HTTP {response.status}"
                )
            body = await response.read()
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise ManagementError(f"{self.base_url}: reply is not JSON: {err}") from err
        return parse_queues(payload)


def management_client(
    *,
    url: str | None,
    password: str | None,
    broker_url: str,
    timeout: float,
) -> ManagementClient | None:
    """The client for ``--rabbitmq-management-url`` on the broker URL's vhost, if one is set.

    Logs once at start-up what queue depth on RabbitMQ will be based on.
    """
    if url is None:
        log.info(
            "queue depth: passive declares of configured and seen queues; "
            "--rabbitmq-management-url adds discovery and unacked counts"
        )
        return None
    broker = kombu.Connection(broker_url)
    # kombu's amqp transport connects as guest/guest when the URL names nobody.
    fallback = (broker.userid or "guest", broker.password or "guest")
    client = ManagementClient(
        credentials=split_credentials(url, password=password, fallback=fallback),
        vhost=broker.virtual_host,
        timeout=timeout,
    )
    log.info(
        "queue depth: passive declares, and the queues of vhost %r from the management API at %s",
        client.vhost,
        client.base_url,
    )
    return client
