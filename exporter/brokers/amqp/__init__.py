"""RabbitMQ (``amqp://``, ``amqps://``, ``pyamqp://``): events from a queue of our own, queue
depth from passive declares and, when given, the management API.

The modules below are imported when used: a Redis daemon loads none of them (0.4 MiB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from exporter.brokers.base import url_scheme
from exporter.settings import Settings

if TYPE_CHECKING:
    from exporter.brokers.base import Probe, QueueContext, Session
    from exporter.pipeline import EventPipeline

SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})


class AmqpBroker:
    schemes = SCHEMES

    def check(self, settings: Settings, url: str) -> str | None:
        if "ssl_" in urlsplit(url).query:
            # kombu hands them to py-amqp as socket-wrapping arguments, which it rejects on
            # every connection attempt: a broker that never connects, far from the cause.
            return (
                "broker_url: ssl_* URL parameters are for Redis; for amqps give TLS options "
                'as broker_transport_options {"ssl": {"ca_certs": ..., ...}}'
            )
        management = settings.rabbitmq_management_url
        if management is not None and url_scheme(management.get_secret_value()) not in (
            "http",
            "https",
        ):
            return "rabbitmq_management_url must be an http:// or https:// URL"
        return None

    def event_session(self, url: str, settings: Settings, pipeline: EventPipeline) -> Session:
        from exporter.brokers.amqp.events import AmqpSession  # noqa: PLC0415 - when used

        return AmqpSession(url=url, settings=settings, pipeline=pipeline)

    def queue_probe(self, url: str, settings: Settings, context: QueueContext) -> Probe:
        from exporter.brokers.amqp.management import management_client  # noqa: PLC0415
        from exporter.brokers.amqp.queues import AmqpQueueProbe  # noqa: PLC0415 - when used

        timeout = settings.broker_connect_timeout_seconds
        management = settings.rabbitmq_management_url
        return AmqpQueueProbe(
            url=url,
            transport_options=dict(settings.broker_transport_options),
            timeout=timeout,
            state=context.state,
            seen_queues=context.seen_queues,
            clock=context.clock,
            management=management_client(
                url=management.get_secret_value() if management else None,
                password=settings.rabbitmq_management_password_value(),
                broker_url=url,
                timeout=timeout,
            ),
        )
