"""Memory: a million distinct task ids through a fresh exporter with default settings."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from bench import truth
from bench.monitor import paced_replay, wait_counted
from bench.procs import ExporterProcess, RedisServer
from bench.publish import Chunk, Publisher, pack, prefetched
from bench.report import MIB, Figure, Section, below, equals
from bench.synthetic import lifecycle_messages

IDS = 1_000_000
QUICK_IDS = 100_000
NAMES = 10  # few label sets: the pacing reads /metrics, and ids are what this measures
WORKERS = 10
EVENTS_PER_ID = 3  # received, started, succeeded: a worker fleet without task-sent events
TARGET_PEAK_RSS_MIB = 150.0
WINDOW_BYTES = 16 * 1024 * 1024
CHUNK_MESSAGES = 250  # about 2 MB of task.multi batches


def _chunks(ids: int) -> Iterator[Chunk]:
    """Generated while publishing: the whole stream would take a gigabyte to hold."""
    stream = lifecycle_messages(ids, names=NAMES, workers=WORKERS)
    while batch := list(islice(stream, CHUNK_MESSAGES)):
        messages, counts = zip(*batch, strict=True)
        yield from pack(messages, counts, size=CHUNK_MESSAGES)


def run(redis: RedisServer, *, quick: bool, compatible: list[str]) -> Section:
    ids = QUICK_IDS if quick else IDS
    expected = ids * EVENTS_PER_ID
    section = Section("memory")
    with ExporterProcess(redis.url) as exporter:
        idle_rss = exporter.stats().rss
        publisher = Publisher(redis.port)
        try:
            published, unheard = paced_replay(
                exporter, publisher, prefetched(_chunks(ids)), WINDOW_BYTES
            )
        finally:
            publisher.close()
        counted, _, page = wait_counted(exporter, published)
        stats = exporter.stats()
    evictions = {
        reason: truth.total_where(page, "celery_exporter_state_evictions_total", "reason", reason)
        for reason in ("capacity", "ttl")
    }
    tracked = int(truth.total(page, "celery_exporter_tracked_tasks"))
    reconnects = int(truth.total(page, "celery_exporter_source_reconnects_total"))
    add = section.add
    add(Figure("task_ids", "distinct task ids", ids))
    add(equals("events", "events counted", counted, expected))
    peak = stats.peak_rss / MIB
    add(below("peak_rss_mib", "peak RSS (VmHWM)", peak, "MiB", TARGET_PEAK_RSS_MIB))
    add(Figure("rss_mib", "RSS at the end", stats.rss / MIB, "MiB"))
    add(Figure("idle_rss_mib", "RSS before", idle_rss / MIB, "MiB"))
    add(Figure("tracked_tasks", "tracked tasks", tracked))
    add(Figure("evictions_capacity", "evictions (capacity)", int(evictions["capacity"])))
    add(Figure("evictions_ttl", "evictions (ttl)", int(evictions["ttl"])))
    add(equals("reconnects", "source reconnects", reconnects, 0))
    add(equals("unheard", "messages published while unsubscribed", unheard, 0))
    add(equals("synthetic_ok", "synthetic envelopes match EventDispatcher's", not compatible, True))
    section.notes.append(
        f"task.multi batches of 24, paced to <= {WINDOW_BYTES // MIB} MiB in flight"
    )
    return section
