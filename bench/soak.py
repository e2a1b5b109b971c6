"""Soak: ``python -m bench.soak [--duration SECONDS] [--rate EVENTS_PER_S]``.

A steady stream of Celery events, every task with a new id, into one exporter for ten
minutes, scraped every 15 s as Prometheus would: the exporter's RSS must stay flat once its
task map is full and has turned over, and every counter must equal the truth decoded from
what was published.

The stream is ``workload.stream`` (50 task names, 4 queues, 10 workers with heartbeats every
2 s, 4 % failures of 2 exception classes per task, 3 % retries), sent when its timestamps come
due: task-sent one message each from the producers, the workers' task events in ``task.multi``
batches flushed every tick, as a worker flushes its buffered events on each pass of its event
loop (celery/worker/consumer/events.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from bench import truth
from bench.dispatch import cached_recording
from bench.envelope import EnvelopeEncoder, check_compatible
from bench.monitor import wait_counted
from bench.procs import ExporterProcess, ProcStats, RedisServer
from bench.publish import Publisher, pack
from bench.recording import Message
from bench.report import (
    MIB,
    Figure,
    Section,
    below,
    equals,
    finish,
    load_average,
    percentile,
    run_meta,
)
from bench.synthetic import SAMPLE_SPEC
from bench.workload import EPOCH, HEARTBEAT_SECONDS, MAX_RETRIES, SimEvent, WorkloadSpec, stream
from exporter.settings import options

DEFAULT_SECONDS = 600.0
QUICK_SECONDS = 60.0
# About 730 tasks/s, 63 million a day: a large Celery deployment, yet a thirtieth of what the
# exporter takes in a burst, so the soak measures state over time, not throughput. At this rate
# the default task map (100,000 ids) is full after about 140 s.
DEFAULT_RATE = 3000.0
MIN_RATE = 100.0
SPEC = WorkloadSpec(task_events=0, seed=23)  # task_events: the stream has no end
TICK_SECONDS = 0.1
RSS_SECONDS = 5.0
SCRAPE_SECONDS = 15.0  # Prometheus's usual scrape interval
# The Accept header of Prometheus 2.x, and gzip.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,"
    "application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
# A task id must outlive its longest run in the map, or its end is counted as task unknown:
# runtimes are lognormal, and one in a few million runs longer than a minute.
MIN_TASK_LIFETIME_SECONDS = 60.0
TARGET_GROWTH_MIB = 4.0
SAMPLE_SECONDS = 10.0  # of the stream, checked against EventDispatcher's messages
TIMELINE_POINTS = 10


def tasks_per_second(rate: float) -> float:
    """The task rate that gives ``rate`` events/s, heartbeats included."""
    heartbeats = SPEC.workers / HEARTBEAT_SECONDS
    # sent, received, started and an end per attempt; a retry makes another attempt.
    attempts = sum(SPEC.retry_rate**retry for retry in range(MAX_RETRIES + 1))
    return (rate - heartbeats) / (4 * attempts)


def task_map_size(tasks: float, duration: float) -> int:
    """The exporter's default cap, smaller for runs too short for it to fill in a quarter."""
    default: int = options()["task_state_max_tasks"].default()
    return min(default, round(tasks * max(MIN_TASK_LIFETIME_SECONDS, duration / 4)))


def _messages(encoder: EnvelopeEncoder, ticks: Iterable[list[SimEvent]]) -> Iterator[Message]:
    """What goes out, a tick at a time: ``encode`` flushes the workers' batches at its end."""
    for events in ticks:
        yield from encoder.encode(events)


def _sample(spec: WorkloadSpec) -> list[Message]:
    """The first seconds of the stream, ticked as in the run."""
    events = itertools.takewhile(
        lambda event: event.fields["timestamp"] < EPOCH + SAMPLE_SECONDS, stream(spec, EPOCH)
    )
    ticks = itertools.groupby(events, lambda event: int(event.fields["timestamp"] / TICK_SECONDS))
    return list(_messages(EnvelopeEncoder(batched=True), (list(tick) for _, tick in ticks)))


class _Scrape(NamedTuple):
    at: float  # seconds since the start
    seconds: float  # how long it took
    size: int  # bytes on the wire
    series: int
    tracked: int
    evicted: int
    backlog: int  # events published and not yet counted


class _Run(NamedTuple):
    seconds: float  # of publishing
    published: int
    messages: int
    unheard: int
    late: float  # the most an event went out after its timestamp, in seconds
    tally: truth.Tally
    rss: list[tuple[float, int]]  # (seconds since the start, RSS), the last at the end
    scrapes: list[_Scrape]
    before: ProcStats
    # When publishing stopped: the final check's plain-text page (4 MB) is not the soak's.
    after: ProcStats
    counted: int
    page: str  # /metrics then


def _scrape(exporter: ExporterProcess, at: float, published: int) -> _Scrape:
    began = time.perf_counter()
    body = exporter.get("/metrics", PROMETHEUS_HEADERS).body
    seconds = time.perf_counter() - began
    text = (gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body).decode()
    tracked = int(truth.scanned_total(text, "celery_exporter_tracked_tasks"))
    evicted = int(truth.scanned_total(text, "celery_exporter_state_evictions_total"))
    backlog = published - truth.events_counted(text)
    return _Scrape(at, seconds, len(body), truth.sample_count(text), tracked, evicted, backlog)


def _soak(
    exporter: ExporterProcess, publisher: Publisher, spec: WorkloadSpec, duration: float
) -> _Run:
    before = exporter.stats()
    start = time.time()
    # The stream's workers come online half a second before its first task.
    events = stream(spec, start + 0.5)
    encoder = EnvelopeEncoder(batched=True)
    tally = truth.Tally()
    rss: list[tuple[float, int]] = []
    scrapes: list[_Scrape] = []
    published = messages = unheard = 0
    late = 0.0
    upcoming = next(events)
    next_rss = next_scrape = 0.0
    while (now := time.time()) < start + duration:
        due: list[SimEvent] = []
        while upcoming.fields["timestamp"] <= now:
            due.append(upcoming)
            upcoming = next(events)
        if due:
            late = max(late, now - due[0].fields["timestamp"])
        sent = list(_messages(encoder, [due]))
        for chunk in pack(sent, tally.add(sent)):
            unheard += publisher.send(chunk)
            published += chunk.events
            messages += chunk.messages
        elapsed = now - start
        if elapsed >= next_rss:
            rss.append((elapsed, exporter.stats().rss))
            next_rss += RSS_SECONDS
        if elapsed >= next_scrape:
            scrapes.append(_scrape(exporter, elapsed, published))
            next_scrape += SCRAPE_SECONDS
        time.sleep(max(0.0, now + TICK_SECONDS - time.time()))
    seconds = time.time() - start
    after = exporter.stats()
    rss.append((seconds, after.rss))
    counted, _, _ = wait_counted(exporter, published)
    # A fresh page: within one, the task collector's snapshot predates the event count.
    page = exporter.metrics()
    return _Run(
        seconds, published, messages, unheard, late, tally, rss, scrapes, before, after,
        counted, page,
    )  # fmt: skip


class _Warmup(NamedTuple):
    full_at: float | None  # when a scrape first found the task map full, seconds
    # When one found as many ids evicted as the map holds: every id was replaced once, and
    # the map's dict has grown its table for the last time (CPython resizes it to three times
    # the entries in use once deleted slots fill it: +5.7 MiB for 100,000 ids, in the first
    # turnover after it is full). The warm-up ends here.
    steady_at: float | None


class _Flatness(NamedTuple):
    steady_rss: int  # the first RSS sample once warm
    first_max: int  # the most RSS in the first third of the rest of the run
    last_max: int  # in its last third
    slope: float  # bytes per second, least squares over the rest of the run


def _warmup(scrapes: Sequence[_Scrape], cap: int) -> _Warmup:
    full = (scrape.at for scrape in scrapes if scrape.tracked >= cap)
    steady = (scrape.at for scrape in scrapes if scrape.evicted >= cap)
    return _Warmup(next(full, None), next(steady, None))


def _flatness(run: _Run, steady_at: float | None) -> _Flatness | None:
    """RSS once warm; None when too little of the run is left to judge (under a third)."""
    if steady_at is None or run.seconds - steady_at < run.seconds / 3:
        return None
    steady = [(at, rss) for at, rss in run.rss if at >= steady_at]
    third = (run.seconds - steady_at) / 3
    first = max(rss for at, rss in steady if at < steady_at + third)
    last = max(rss for at, rss in steady if at >= run.seconds - third)
    times, sizes = zip(*steady, strict=True)
    slope = statistics.linear_regression(times, sizes).slope
    return _Flatness(steady[0][1], first, last, slope)


def _memory(section: Section, run: _Run, cap: int) -> None:
    """The task map's figures and the exporter's RSS over the run."""
    add = section.add
    page = run.page
    add(Figure("task_map_cap", "task map cap (--task-state-max-tasks)", cap))
    tracked = int(truth.total(page, "celery_exporter_tracked_tasks"))
    add(Figure("tracked_tasks", "tracked tasks at the end", tracked))
    for reason in ("capacity", "ttl"):
        evicted = truth.total_where(page, "celery_exporter_state_evictions_total", "reason", reason)
        add(Figure(f"evictions_{reason}", f"evictions ({reason})", int(evicted)))
    warmup = _warmup(run.scrapes, cap)
    add(Figure("full_after_s", "task map full after (-: never)", warmup.full_at, "s"))
    add(Figure("warm_after_s", "every id replaced once after", warmup.steady_at, "s"))
    add(Figure("idle_rss_mib", "RSS at the start", run.before.rss / MIB, "MiB"))
    flat = _flatness(run, warmup.steady_at)
    if flat is not None:
        add(Figure("warm_rss_mib", "RSS once warm", flat.steady_rss / MIB, "MiB"))
    add(Figure("end_rss_mib", "RSS at the end", run.rss[-1][1] / MIB, "MiB"))
    add(
        Figure("peak_rss_mib", "peak RSS (VmHWM) while publishing", run.after.peak_rss / MIB, "MiB")
    )
    if flat is None:
        section.notes.append(
            "RSS flatness not judged: the task map had not turned over by two thirds of the "
            "run (runs of 4 minutes or more do at 3,000 events/s)"
        )
        return
    add(Figure("first_third_mib", "max RSS, first third once warm", flat.first_max / MIB, "MiB"))
    add(Figure("last_third_mib", "max RSS, last third", flat.last_max / MIB, "MiB"))
    growth = (flat.last_max - flat.first_max) / MIB
    add(below("rss_growth_mib", "RSS growth, last third - first", growth, "MiB", TARGET_GROWTH_MIB))
    slope = flat.slope * 3600 / MIB
    add(Figure("rss_slope_mib_per_hour", "RSS slope once warm", slope, "MiB/h"))


def _timeline(rss: Sequence[tuple[float, int]]) -> str:
    step = max(1, len(rss) // TIMELINE_POINTS)
    return ", ".join(f"{at:.0f} s {size / MIB:.1f}" for at, size in rss[::step])


def run(redis: RedisServer, *, duration: float, rate: float) -> Section:
    spec = dataclasses.replace(SPEC, tasks_per_second=tasks_per_second(rate))
    cap = task_map_size(spec.tasks_per_second, duration)
    real, _ = cached_recording(
        SAMPLE_SPEC, batched=True, redis_url=redis.url, redis_port=redis.port
    )
    problems = check_compatible(real, _sample(spec))
    args = ("--task-state-max-tasks", str(cap))
    with ExporterProcess(redis.url, args) as exporter:
        publisher = Publisher(redis.port)
        try:
            soaked = _soak(exporter, publisher, spec, duration)
        finally:
            publisher.close()
    page = soaked.page
    expected = soaked.tally.truth()
    wrong = truth.mismatches(expected, truth.observed(page))
    cpu = soaked.after.cpu_seconds - soaked.before.cpu_seconds
    latencies = [1000 * scrape.seconds for scrape in soaked.scrapes]

    section = Section("soak")
    add = section.add
    add(Figure("seconds", "publishing", soaked.seconds, "s"))
    add(Figure("events_per_second", "events/s published", soaked.published / soaked.seconds))
    add(Figure("events", "events published", soaked.published))
    add(Figure("messages", "messages published", soaked.messages))
    add(Figure("task_ids", "distinct task ids", len(soaked.tally.names)))
    add(equals("counted", "events counted", soaked.counted, soaked.published))
    add(equals("exact", "every counter equals the truth", not wrong, True))
    _memory(section, soaked, cap)
    add(Figure("cpu_us_per_event", "exporter CPU per event", 1e6 * cpu / soaked.published, "us"))
    add(Figure("cores", "exporter CPU, cores", cpu / soaked.seconds))
    add(Figure("scrapes", "scrapes (OpenMetrics, gzip)", len(soaked.scrapes)))
    add(Figure("scrape_p50_ms", "scrape p50", percentile(latencies, 0.5), "ms"))
    add(Figure("scrape_max_ms", "scrape max", max(latencies), "ms"))
    add(Figure("scrape_bytes", "scrape size at the end, gzip", soaked.scrapes[-1].size, "B"))
    series = [scrape.series for scrape in soaked.scrapes]
    add(Figure("series", "series at the end", series[-1]))
    add(Figure("series_half", "series at half-time", series[len(series) // 2]))
    backlog = max(scrape.backlog for scrape in soaked.scrapes)
    add(Figure("max_backlog", "most events not yet counted at a scrape", backlog))
    add(Figure("late_s", "publisher behind the timestamps, at most", soaked.late, "s"))
    reconnects = int(truth.total(page, "celery_exporter_source_reconnects_total"))
    add(equals("reconnects", "source reconnects", reconnects, 0))
    add(equals("unheard", "messages published while unsubscribed", soaked.unheard, 0))
    dropped = int(truth.total(page, "celery_exporter_events_dropped_total"))
    add(equals("dropped", "events dropped", dropped, 0))
    add(equals("synthetic_ok", "stream envelopes match EventDispatcher's", not problems, True))

    section.notes.append(f"RSS (MiB) over time: {_timeline(soaked.rss)}")
    section.notes += [f"stream differs from EventDispatcher's: {problem}" for problem in problems]
    if wrong:
        section.notes.append(f"{len(wrong)} counters differ from the truth:")
        section.notes += [f"  {problem}" for problem in wrong[:20]]
    return section


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_SECONDS,
        metavar="SECONDS",
        help=f"how long to publish (default {DEFAULT_SECONDS:.0f})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        metavar="EVENTS_PER_S",
        help=f"events per second, heartbeats included (default {DEFAULT_RATE:.0f})",
    )
    args = parser.parse_args(argv)
    if args.rate < MIN_RATE or args.duration <= 0:
        parser.error(f"--rate must be at least {MIN_RATE:.0f}, --duration positive")
    started = time.monotonic()
    load = load_average()
    with RedisServer() as redis:
        print(f"soaking for {args.duration:.0f} s at {args.rate:.0f} events/s")
        section = run(redis, duration=args.duration, rate=args.rate)
    meta = {
        "duration": args.duration,
        "rate": args.rate,
        **run_meta(load, time.monotonic() - started),
    }
    return finish([section], meta, name="soak")


if __name__ == "__main__":
    sys.exit(main())
