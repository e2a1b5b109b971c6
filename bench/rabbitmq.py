"""RabbitMQ bursts: the recorded stream published into a private broker and a fresh exporter.

The broker is tests/services.py's RabbitMQServer (rabbitmq-server run directly, its own dirs,
ports and epmd). The exporter consumes from its own exclusive queue, whose drops (TTL,
length/byte bound) are dead-lettered and counted as
``celery_exporter_events_dropped_total{reason="broker_*"}``, so a burst is accounted for when
counted + dropped equals what was published. The broker shares the two cores with the
exporter and the publisher; its CPU (beam.smp, from /proc) is reported next to the exporter's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

from prometheus_client.parser import text_string_to_metric_families

from bench import truth
from bench.amqp_replay import (
    AmqpCapture,
    AmqpPublisher,
    Framer,
    compatibility_problems,
    pack,
    to_amqp,
)
from bench.dispatch import cached_recording, send
from bench.monitor import STABLE_SECONDS, Burst, publish_until_idle
from bench.procs import CLOCK_TICKS, ExporterProcess, ProcStats, RedisServer, proc_stats
from bench.profile import Profile, PySpy
from bench.publish import Chunk
from bench.recording import Message
from bench.report import MIB, Figure, Section, at_least, below, equals
from bench.synthetic import SAMPLE_SPEC
from bench.workload import generate
from tests.services import RabbitMQServer

# Targets from the brief: RabbitMQ shares the two cores, so lower than Redis's.
TARGET_RATE = {"unbatched": 20_000.0, "batched": 60_000.0}
TARGET_PEAK_RSS_MIB = 80.0
BOUNDED_LENGTH = 10_000  # --amqp-event-queue-max-length of the bounded case
QUICK_BOUNDED_LENGTH = 2_000
POLL_SECONDS = 0.25
EXPORTER_ARGS = ("--no-collector-queues",)
BROKER_DROP_PREFIX = "broker_"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Broker:
    """A private rabbitmq-server in a temporary directory; ``beam_pid`` is the Erlang VM."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-"))
        self.server = RabbitMQServer(self._dir)
        self.beam_pid = 0

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.amqp_port

    def __enter__(self) -> Self:
        try:
            self.server.start()
            # RABBITMQ_PID_FILE (set by RabbitMQServer) names beam.smp, which does the work.
            self.beam_pid = int((self._dir / "rabbit.pid").read_text().split()[0])
        except BaseException:
            self.server.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def version(self) -> str:
        """``RabbitMQ 3.10.8, Erlang 25.2.3`` from the boot banner."""
        text = _ANSI.sub("", (self._dir / "server.log").read_text(errors="replace"))
        found = [re.search(pattern, text) for pattern in (r"RabbitMQ ([\d.]+)", r"Erlang: +(\S+)")]
        rabbit, erlang = (match.group(1) if match else "?" for match in found)
        return f"RabbitMQ {rabbit}, Erlang {erlang}"

    def stats(self) -> ProcStats:
        return proc_stats(self.beam_pid)


def compatibility(redis: RedisServer, broker: Broker) -> list[str]:
    """Differences between our AMQP messages and those EventDispatcher publishes to RabbitMQ.

    The same small event stream, recorded on Redis (cached) and sent through EventDispatcher
    to RabbitMQ now, captured raw by a queue bound to everything on the event exchange.
    """
    problems: list[str] = []
    events = generate(SAMPLE_SPEC)
    for batched in (False, True):
        recorded, _ = cached_recording(
            SAMPLE_SPEC, batched=batched, redis_url=redis.url, redis_port=redis.port
        )
        capture = AmqpCapture(broker.port)
        send(events, batched=batched, broker_url=broker.url, end=AmqpCapture.end_marker)
        variant = "batched" if batched else "unbatched"
        problems += [f"{variant}: {p}" for p in compatibility_problems(recorded, capture.finish())]
    return problems


class Prepared(NamedTuple):
    """A recording framed for AMQP, with its ground truth."""

    messages: int
    chunks: list[Chunk]
    expected: truth.Truth
    seconds: float  # spent converting and framing


def prepare(messages: list[Message]) -> Prepared:
    started = time.monotonic()
    framer = Framer(AmqpPublisher.CHANNEL_ID, AmqpPublisher.FRAME_MAX)
    converted = (to_amqp(message) for message in messages)
    chunks = list(pack(converted, truth.events_per_message(messages), framer))
    return Prepared(len(messages), chunks, truth.truth_of(messages), time.monotonic() - started)


def broker_dropped(page: str) -> dict[str, int]:
    """celery_exporter_events_dropped_total by reason, split into broker_* and the rest."""
    dropped: dict[str, int] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == "celery_exporter_events_dropped_total" and sample.value:
                reason = sample.labels["reason"]
                dropped[reason] = dropped.get(reason, 0) + int(sample.value)
    return dropped


class _Done(NamedTuple):
    counted: int
    dropped: dict[str, int]  # by reason
    finished: float  # time.monotonic() when the last event was applied
    cpu_seconds: float  # exporter CPU from before the burst until idle
    by: str


def _settle(exporter: ExporterProcess, burst: Burst, prepared: Prepared) -> tuple[_Done, str]:
    """Counted and dropped once the exporter is idle (polling if they still move)."""
    expected = prepared.expected.total_events
    page = exporter.metrics()
    counted, dropped = truth.events_counted(page), broker_dropped(page)
    cpu = burst.idle_cpu - burst.cpu_before
    changed = time.monotonic()
    while (
        counted + sum(dropped.values()) < expected and time.monotonic() - changed < STABLE_SECONDS
    ):
        time.sleep(POLL_SECONDS)
        page = exporter.metrics()
        now = (truth.events_counted(page), broker_dropped(page))
        if now != (counted, dropped):
            (counted, dropped), changed = now, time.monotonic()
        cpu = exporter.stats().cpu_seconds - burst.cpu_before
    applied = truth.total(page, "celery_exporter_last_event_timestamp_seconds")
    if applied == prepared.expected.last_timestamp:
        lag = truth.total(page, "celery_exporter_event_lag_seconds")
        finished = applied + lag - burst.published.wall_offset
        return _Done(counted, dropped, finished, cpu, "exporter's lag gauge"), page
    return _Done(counted, dropped, burst.idle_at, cpu, "the exporter's CPU going idle"), page


def machine_busy() -> float:
    """CPU seconds all processes have spent busy (everything in /proc/stat but idle, iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    # guest time is already counted in user time.
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


class _Run(NamedTuple):
    burst: Burst
    done: _Done
    page: str
    idle_rss: int
    stats: ProcStats
    broker_cpu: float
    machine_cpu: float  # every process on the machine, over the same span as broker_cpu
    span: float  # wall seconds from before the first publish until the exporter was idle
    exporter_span_cpu: float  # exporter CPU over the same span
    publisher_cpu: float
    blocked: int
    log: str
    profile: Profile | None
    profile_error: str | None


def _measure(
    broker: Broker, prepared: Prepared, args: tuple[str, ...], profile: bool, *, stalled: bool
) -> _Run:
    with ExporterProcess(broker.url, (*EXPORTER_ARGS, *args)) as exporter:
        idle_rss = exporter.stats().rss
        publisher = AmqpPublisher(broker.port)
        spy = PySpy(exporter.pid) if profile else None
        span_start = time.monotonic()
        broker_before, machine_before = broker.stats().cpu_seconds, machine_busy()
        try:
            with spy if spy is not None else contextlib.nullcontext():
                burst = publish_until_idle(exporter, publisher, prepared.chunks, stalled=stalled)
        finally:
            publisher.close()
        broker_cpu = broker.stats().cpu_seconds - broker_before
        machine_cpu = machine_busy() - machine_before
        exporter_span_cpu = exporter.stats().cpu_seconds - burst.cpu_before
        span = time.monotonic() - span_start
        done, page = _settle(exporter, burst, prepared)
        assert publisher.last is not None
        return _Run(
            burst,
            done,
            page,
            idle_rss,
            exporter.stats(),
            broker_cpu,
            machine_cpu,
            span,
            exporter_span_cpu,
            publisher.last.publisher_cpu,
            publisher.last.blocked,
            exporter.log_tail(),
            spy.profile if spy is not None else None,
            spy.error if spy is not None else None,
        )


def _accounting(
    section: Section, measured: _Run, expected: truth.Truth, bound: int | None
) -> tuple[int, int]:
    """Counted, dropped and their sum against what was published; (accounted, broker drops)."""
    add, done, events = section.add, measured.done, expected.total_events
    broker = {r: n for r, n in done.dropped.items() if r.startswith(BROKER_DROP_PREFIX)}
    dropped = sum(broker.values())
    accounted = done.counted + dropped
    add(Figure("events", "events published", events))
    add(Figure("messages", "messages published", measured.burst.published.messages))
    add(Figure("megabytes", "bytes published (frames)", measured.burst.published.bytes / 1e6, "MB"))
    add(Figure("counted", "events counted", done.counted))
    add(Figure("dropped_broker", "dropped, reported (broker_*)", dropped))
    for reason, count in sorted(broker.items()):
        add(Figure(f"dropped_{reason}", f"  of which {reason}", count))
    share = 100.0 * done.counted / events
    if bound:
        add(Figure("counted_percent", "share counted", share, "%"))
        # A bound the burst never reached proves nothing about the accounting.
        add(at_least("dropped_min", "broker dropped some (the bound bit)", dropped, "", 1))
    else:
        add(at_least("counted_percent", "share counted", share, "%", 100.0))
    add(equals("accounted_exact", "counted + dropped == published", accounted == events, True))
    if dropped:
        add(Figure("exact", "every counter equals the truth", "n/a (events dropped)"))
    else:
        problems = truth.mismatches(expected, truth.observed(measured.page))
        add(equals("exact", "every counter equals the truth", not problems, True))
        if problems:
            section.notes.append(f"{len(problems)} counters differ from the truth:")
            section.notes += [f"  {problem}" for problem in problems[:20]]
    return accounted, dropped


def _costs(section: Section, measured: _Run, accounted: int) -> None:
    """Memory and CPU: the exporter's, the broker's and the publisher's."""
    add, done = section.add, measured.done
    peak = measured.stats.peak_rss / MIB
    add(below("peak_rss_mib", "peak RSS (VmHWM)", peak, "MiB", TARGET_PEAK_RSS_MIB))
    add(Figure("idle_rss_mib", "RSS before the burst", measured.idle_rss / MIB, "MiB"))
    per_event = 1e6 / max(accounted, 1)
    cpus = (
        ("exporter", done.cpu_seconds),
        ("broker", measured.broker_cpu),
        ("publisher", measured.publisher_cpu),
    )
    for who, cpu in cpus:
        add(Figure(f"{who}_cpu_us_per_event", f"{who} CPU per event", cpu * per_event, "us"))
    # Cores in use from the first publish until the exporter was idle. "others" are py-spy,
    # the bench's own sampling and anything else running on the machine.
    span = measured.span
    shares = (
        ("exporter", measured.exporter_span_cpu),
        ("broker", measured.broker_cpu),
        ("others", measured.machine_cpu - measured.exporter_span_cpu - measured.broker_cpu),
    )
    for who, cpu in shares:
        add(Figure(f"{who}_cores", f"{who} CPU / burst wall time", cpu / span, "cores"))
    idle = (os.cpu_count() or 1) - measured.machine_cpu / span
    add(Figure("idle_cores", "idle CPU / burst wall time", idle, "cores"))


def run(
    broker: Broker,
    prepared: Prepared,
    variant: str,
    *,
    bound: int | None = None,
    profile: bool = False,
) -> tuple[Section, Profile | None]:
    """One burst into a fresh exporter; ``bound`` sets --amqp-event-queue-max-length."""
    args = ("--amqp-event-queue-max-length", str(bound)) if bound else ()
    # A bound only bites when the exporter falls behind: it is stalled for a bounded burst.
    measured = _measure(broker, prepared, args, profile, stalled=bound is not None)
    done, published = measured.done, measured.burst.published
    section = Section(
        f"rabbitmq {variant} burst"
        + (f" (max-length {bound:,})" if bound else "")
        + (" (py-spy attached)" if profile else "")
    )
    add = section.add
    accounted, dropped = _accounting(section, measured, prepared.expected, bound)
    seconds = done.finished - published.started
    rate = accounted / seconds if seconds > 0 else 0.0
    label = "events/s accounted for"
    if profile:
        add(Figure("events_per_second", f"{label} (py-spy pauses it)", rate, "ev/s"))
    elif bound:
        add(Figure("events_per_second", label, rate, "ev/s"))
    else:
        add(at_least("events_per_second", label, rate, "ev/s", TARGET_RATE[variant]))
    add(Figure("seconds", "first publish -> last event applied", seconds, "s"))
    publish_rate = published.messages / published.seconds
    add(Figure("publish_rate", "publish rate (confirmed)", publish_rate, "msg/s"))
    events_rate = prepared.expected.total_events / published.seconds
    add(Figure("publish_event_rate", "publish rate (events)", events_rate, "ev/s"))
    _costs(section, measured, accounted)
    reconnects = int(truth.total(measured.page, "celery_exporter_source_reconnects_total"))
    add(equals("reconnects", "source reconnects", reconnects, 0))
    others = sum(done.dropped.values()) - dropped
    add(equals("dropped_other", "events dropped, other reasons", others, 0))

    share = measured.broker_cpu / max(measured.broker_cpu + done.cpu_seconds, 1e-9)
    section.notes.append(
        f"completion read by {done.by}; the broker used {share:.0%} of broker+exporter CPU"
        + (f"; {measured.blocked} connection.blocked" if measured.blocked else "")
    )
    if reconnects or others or (dropped and not bound):
        section.notes.append(f"drops by reason: {done.dropped}")
        log = [line for line in measured.log.splitlines() if "WARNING" in line or "ERROR" in line]
        section.notes += [f"  exporter log: {line}" for line in log[:6]]
    if measured.profile_error:
        section.notes.append(f"py-spy failed: {measured.profile_error}")
    return section, measured.profile
