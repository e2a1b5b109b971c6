"""Scrape latency with a large state: about 30k series built by replaying a stream."""

from __future__ import annotations

import dataclasses
import time

from bench import truth
from bench.envelope import EnvelopeEncoder
from bench.monitor import paced_replay, wait_counted
from bench.procs import ExporterProcess, RedisServer
from bench.publish import Publisher, pack
from bench.report import Figure, Section, below, equals, percentile
from bench.workload import WorkloadSpec, generate

# 300 names, each routed to one of 5 queues consumed by 2 of the 10 workers, with failures
# of 2 exception classes per task: histograms per (task, queue, worker[, state]) make series.
SPEC = WorkloadSpec(
    task_events=90_000,
    task_names=300,
    workers=10,
    queues=5,
    workers_per_queue=2,
    tasks_per_second=400.0,
    failure_rate=0.012,
    retry_rate=0.01,
    seed=11,
)
QUICK_SPEC = dataclasses.replace(SPEC, task_events=30_000)
SCRAPES = 200
GZIP_SCRAPES = 50  # as Prometheus asks; fewer, as they cost as much as the plain ones
QUICK_SCRAPES = 40
QUICK_GZIP_SCRAPES = 10
TARGET_P99_MS = 50.0
WINDOW_BYTES = 16 * 1024 * 1024


def _time_scrapes(exporter: ExporterProcess, count: int, gzipped: bool) -> tuple[list[float], int]:
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    latencies, size = [], 0
    for _ in range(count):
        started = time.perf_counter()
        response = exporter.get("/metrics", headers)
        latencies.append(1000 * (time.perf_counter() - started))
        size = len(response.body)
    return latencies, size


def run(redis: RedisServer, *, quick: bool, compatible: list[str]) -> Section:
    spec = QUICK_SPEC if quick else SPEC
    messages = list(EnvelopeEncoder(batched=True).encode(generate(spec)))
    expected = truth.truth_of(messages)
    section = Section("scrape")
    with ExporterProcess(redis.url) as exporter:
        publisher = Publisher(redis.port)
        try:
            chunks = pack(messages, truth.events_per_message(messages))
            _, unheard = paced_replay(exporter, publisher, chunks, WINDOW_BYTES)
        finally:
            publisher.close()
        counted, _, _ = wait_counted(exporter, expected.total_events)
        # A fresh page: within one, the task collector's snapshot predates the event count.
        problems = truth.mismatches(expected, truth.observed(exporter.metrics()))
        counts = (QUICK_SCRAPES, QUICK_GZIP_SCRAPES) if quick else (SCRAPES, GZIP_SCRAPES)
        plain, size = _time_scrapes(exporter, counts[0], gzipped=False)
        zipped, zipped_size = _time_scrapes(exporter, counts[1], gzipped=True)
        page = exporter.metrics()
    add = section.add
    add(Figure("events", "events replayed (paced)", counted))
    add(Figure("series", "series in /metrics", truth.sample_count(page), "", "~30,000"))
    add(equals("unheard", "messages published while unsubscribed", unheard, 0))
    add(equals("exact", "every counter equals the truth", not problems, True))
    add(Figure("p50_ms", "/metrics p50", percentile(plain, 0.5), "ms"))
    add(below("p99_ms", "/metrics p99", percentile(plain, 0.99), "ms", TARGET_P99_MS))
    add(Figure("max_ms", "/metrics max", max(plain), "ms"))
    add(Figure("bytes", "/metrics size", size, "B"))
    add(Figure("gzip_p50_ms", "/metrics p50, gzip", percentile(zipped, 0.5), "ms"))
    add(Figure("gzip_p99_ms", "/metrics p99, gzip", percentile(zipped, 0.99), "ms"))
    add(Figure("gzip_bytes", "/metrics size, gzip", zipped_size, "B"))
    add(equals("synthetic_ok", "synthetic envelopes match EventDispatcher's", not compatible, True))
    section.notes.append(
        f"{counts[0]} sequential scrapes ({counts[1]} with gzip), one kept-alive connection"
    )
    if problems:
        section.notes += [f"counter differs: {problem}" for problem in problems[:10]]
    return section
