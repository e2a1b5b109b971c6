"""The brokers, and the one place that picks one by the broker URL's scheme."""

from __future__ import annotations

from exporter.brokers.amqp import AmqpBroker
from exporter.brokers.base import Broker, EventSource, Probe, QueueContext, url_scheme
from exporter.brokers.redis import SCHEMES as REDIS_SCHEMES
from exporter.brokers.redis import RedisBroker, beat_probe
from exporter.pipeline import EventPipeline
from exporter.settings import Settings

BROKERS: tuple[Broker, ...] = (RedisBroker(), AmqpBroker())
SCHEMES = frozenset(scheme for broker in BROKERS for scheme in broker.schemes)


def for_url(url: str) -> Broker | None:
    """The broker serving ``url``'s scheme; None when no broker does."""
    scheme = url_scheme(url)
    return next((broker for broker in BROKERS if scheme in broker.schemes), None)


def check(settings: Settings) -> str | None:
    """What is wrong with the broker settings, or None."""
    url = settings.resolved_broker_url()
    broker = for_url(url)
    if broker is None:
        scheme = url_scheme(url)
        shown = f"scheme {scheme!r}" if scheme else "without a scheme://"
        return f"broker_url {shown} is not supported; use one of " + ", ".join(sorted(SCHEMES))
    problem = broker.check(settings, url)
    if problem is not None:
        return problem
    if settings.rabbitmq_management_url is not None and not isinstance(broker, AmqpBroker):
        return "rabbitmq_management_url needs an amqp:// broker_url"
    if settings.beat_redis_sources() and (
        url_scheme(settings.resolved_beat_redis_url()) not in REDIS_SCHEMES
    ):
        return (
            "beat_redis_key and beat_redbeat read Redis: set beat_redis_url "
            "when the broker is not Redis"
        )
    return None


def _broker(settings: Settings) -> tuple[Broker, str]:
    url = settings.resolved_broker_url()
    broker = for_url(url)
    assert broker is not None  # enforced by check() when the settings were loaded
    return broker, url


def event_source(settings: Settings, pipeline: EventPipeline) -> EventSource:
    """The reconnecting event source for the broker."""
    broker, url = _broker(settings)
    session = broker.event_session(url, settings, pipeline)
    return EventSource(session=session, max_delay=settings.reconnect_max_delay_seconds)


def queue_probe(settings: Settings, context: QueueContext) -> Probe:
    """The broker's queue-depth probe."""
    broker, url = _broker(settings)
    return broker.queue_probe(url, settings, context)


__all__ = ["Broker", "Probe", "QueueContext", "beat_probe", "check", "event_source", "queue_probe"]
