"""Redis (``redis://``, ``rediss://``, ``sentinel://``): events from pub/sub, queue depth from
the lists kombu keeps, Beat from its keys.

The modules below are imported when used: an AMQP daemon loads no redis-py (6 MiB idle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.settings import Settings

if TYPE_CHECKING:
    from exporter.brokers.base import Probe, QueueContext, Session
    from exporter.pipeline import EventPipeline
    from exporter.state.beat import BeatState

SCHEMES = frozenset({"redis", "rediss", "sentinel"})


class RedisBroker:
    schemes = SCHEMES

    def check(self, settings: Settings, url: str) -> str | None:
        return None

    def event_session(self, url: str, settings: Settings, pipeline: EventPipeline) -> Session:
        from exporter.brokers.redis.events import RedisSession  # noqa: PLC0415 - when used

        return RedisSession(url=url, settings=settings, pipeline=pipeline)

    def queue_probe(self, url: str, settings: Settings, context: QueueContext) -> Probe:
        from exporter.brokers.redis.queues import RedisQueueProbe  # noqa: PLC0415 - when used

        return RedisQueueProbe(
            url=url,
            transport_options=dict(settings.broker_transport_options),
            timeout=settings.broker_connect_timeout_seconds,
            state=context.state,
            events_exchange=settings.events_exchange,
            seen_queues=context.seen_queues,
            sent_times=context.sent_times,
            sent_seen=context.sent_seen,
            clock=context.clock,
            discovery_interval=settings.queue_discovery_interval_seconds,
            max_unacked_scan=settings.queue_max_unacked_scan,
        )


def beat_probe(settings: Settings, state: BeatState) -> Probe:
    """The probe reading Beat's heartbeat key and RedBeat's schedule, whatever the broker."""
    from exporter.brokers.redis.beat import RedisBeatProbe  # noqa: PLC0415 - when used

    return RedisBeatProbe(
        url=settings.resolved_beat_redis_url(),
        transport_options=dict(settings.broker_transport_options),
        timeout=settings.broker_connect_timeout_seconds,
        state=state,
        heartbeat_key=settings.beat_redis_key,
        heartbeat_format=settings.beat_redis_key_format.value,
        redbeat_prefix=settings.beat_redbeat_key_prefix if settings.beat_redbeat else None,
        redbeat_lock_key=settings.beat_redbeat_lock_key
        or f"{settings.beat_redbeat_key_prefix}:lock",
        # Its entries are decoded with the app's timezone (exporter.schedule).
        redbeat_entries=settings.beat_redbeat and settings.app is not None,
    )
