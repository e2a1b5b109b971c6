"""Throughput: a recorded burst published at full speed into a fresh exporter."""

from __future__ import annotations

import contextlib
import statistics
from typing import NamedTuple

import redis as redis_py

from bench import truth
from bench.monitor import Completion, completion, publish_until_idle
from bench.procs import ExporterProcess, ProcStats, RedisServer
from bench.profile import Profile, PySpy
from bench.publish import BurstResult, Publisher, pack
from bench.recording import Message
from bench.report import MIB, Figure, Section, at_least, below, equals

TARGET_RATE = {"unbatched": 60_000.0, "batched": 83_000.0}
# The pod's memory request (charts/celery-exporter/values.yaml): a burst must fit in it.
TARGET_PEAK_RSS_MIB = 128.0


class _Run(NamedTuple):
    published: BurstResult
    done: Completion
    idle_rss: int
    redis_held: int  # bytes: Redis's largest sample of one client's output buffer, last seconds
    stats: ProcStats  # after the burst
    page: str  # /metrics after the burst
    log: str  # the end of the exporter's log
    profile: Profile | None
    profile_error: str | None


def _measure(redis: RedisServer, messages: list[Message], profile: bool) -> _Run:
    expected = truth.truth_of(messages)
    chunks = list(pack(messages, truth.events_per_message(messages)))
    with ExporterProcess(redis.url) as exporter:
        idle_rss = exporter.stats().rss
        publisher = Publisher(redis.port)
        spy = PySpy(exporter.pid) if profile else None
        try:
            # py-spy watches the burst only, not the scrape that reads the result.
            with spy if spy is not None else contextlib.nullcontext():
                burst = publish_until_idle(exporter, publisher, chunks)
        finally:
            publisher.close()
        held = _largest_output_buffer(redis)
        done = completion(exporter, burst, expected.total_events, expected.last_timestamp)
        return _Run(
            burst.published,
            done,
            idle_rss,
            held,
            exporter.stats(),
            exporter.metrics(),
            exporter.log_tail(),
            spy.profile if spy is not None else None,
            spy.error if spy is not None else None,
        )


def _largest_output_buffer(redis: RedisServer) -> int:
    """The most bytes Redis held for one client over the last seconds, by its own samples.

    The exporter's subscriber is the only client that receives a burst: what its reader had not
    taken yet waited there, and Redis cuts it off when this reaches the pub/sub limit.
    """
    client = redis_py.Redis(port=redis.port)
    try:
        return int(client.info("clients")["client_recent_max_output_buffer"])
    finally:
        client.close()


def run(
    redis: RedisServer,
    messages: list[Message],
    variant: str,
    *,
    profile: bool = False,
    number: int | None = None,
) -> tuple[Section, Profile | None]:
    """Replay ``messages`` into a fresh exporter; figures, and a profile when asked.

    ``number`` numbers the section when the burst is repeated.
    """
    expected = truth.truth_of(messages)
    measured = _measure(redis, messages, profile)
    published, done, page = measured.published, measured.done, measured.page
    problems = truth.mismatches(expected, truth.observed(page))
    seconds = done.finished - published.started
    rate = done.counted / seconds if seconds > 0 else 0.0
    reconnects = int(truth.total(page, "celery_exporter_source_reconnects_total"))
    dropped = int(truth.total(page, "celery_exporter_events_dropped_total"))

    section = Section(
        f"{variant} burst"
        + (f" {number}" if number is not None else "")
        + (" (py-spy attached)" if profile else "")
    )
    add = section.add
    add(Figure("events", "events in the burst", expected.total_events))
    add(Figure("counted", "events counted", done.counted))
    add(Figure("messages", "messages published", published.messages))
    add(Figure("megabytes", "bytes published", published.bytes / 1e6, "MB"))
    if profile:
        add(Figure("events_per_second", "events/s counted (py-spy pauses it)", rate, "ev/s"))
    else:
        add(at_least("events_per_second", "events/s counted", rate, "ev/s", TARGET_RATE[variant]))
    add(Figure("seconds", "first publish -> last event counted", seconds, "s"))
    share = 100.0 * done.counted / expected.total_events
    add(at_least("counted_percent", "share counted", share, "%", 100.0))
    add(equals("exact", "every counter equals the truth", not problems, True))
    add(Figure("publish_rate", "publish rate", published.messages / published.seconds, "msg/s"))
    publish_events = expected.total_events / published.seconds
    add(Figure("publish_event_rate", "publish rate (events)", publish_events, "ev/s"))
    peak = measured.stats.peak_rss / MIB
    add(below("peak_rss_mib", "peak RSS (VmHWM)", peak, "MiB", TARGET_PEAK_RSS_MIB))
    add(Figure("idle_rss_mib", "RSS before the burst", measured.idle_rss / MIB, "MiB"))
    held = measured.redis_held / MIB
    add(Figure("redis_held_mib", "held in Redis for it, most sampled", held, "MiB"))
    add(
        Figure(
            "cpu_us_per_event", "CPU per event", 1e6 * done.cpu_seconds / max(done.counted, 1), "us"
        )
    )
    add(equals("reconnects", "source reconnects", reconnects, 0))
    add(equals("unheard", "messages published while unsubscribed", published.unheard, 0))
    add(equals("dropped", "events dropped", dropped, 0))

    section.notes.append(
        f"completion read by {done.by}; the exporter's CPU went idle "
        f"{1000 * (done.idle - done.finished):+.0f} ms from there"
    )
    if reconnects or published.unheard:
        warnings = [
            line for line in measured.log.splitlines() if "WARNING" in line or "ERROR" in line
        ]
        section.notes += [f"  exporter log: {line}" for line in warnings[:6]]
    if problems:
        section.notes.append(f"{len(problems)} counters differ from the truth:")
        section.notes += [f"  {problem}" for problem in problems[:20]]
    if measured.profile_error:
        section.notes.append(f"py-spy failed: {measured.profile_error}")
    return section, measured.profile


# The figures of a run that say nothing was lost or miscounted.
_COMPLETE = ("counted_percent", "exact", "reconnects", "unheard", "dropped")


def _figure(section: Section, key: str) -> Figure:
    return next(figure for figure in section.figures if figure.key == key)


def _number(section: Section, key: str) -> float:
    value = _figure(section, key).value
    if not isinstance(value, int | float):
        raise TypeError(f"{section.name}: {key} is not a number: {value!r}")
    return float(value)


def summary(variant: str, runs: list[Section]) -> Section:
    """The repeated runs of one burst side by side: every one judged, and the spread."""
    peaks = [_number(one, "peak_rss_mib") for one in runs]
    met = sum(bool(_figure(one, "peak_rss_mib").ok) for one in runs)
    complete = sum(
        all(figure.ok for figure in one.figures if figure.key in _COMPLETE) for one in runs
    )
    slowest = min(_number(one, "events_per_second") for one in runs)
    section = Section(f"{variant} bursts, {len(runs)} runs")
    add = section.add
    add(Figure("peak_rss_mib_median", "peak RSS, median", statistics.median(peaks), "MiB"))
    add(Figure("peak_rss_mib_max", "peak RSS, highest", max(peaks), "MiB"))
    add(equals("peak_rss_runs_met", f"runs under {TARGET_PEAK_RSS_MIB:.0f} MiB", met, len(runs)))
    add(Figure("events_per_second_min", "events/s counted, slowest run", slowest, "ev/s"))
    held = max(_number(one, "redis_held_mib") for one in runs)
    add(Figure("redis_held_mib_max", "held in Redis, most sampled in a run", held, "MiB"))
    add(equals("runs_complete", "runs counting all, exactly, unbroken", complete, len(runs)))
    section.notes.append("peak RSS by run: " + ", ".join(f"{peak:.1f}" for peak in peaks) + " MiB")
    return section
