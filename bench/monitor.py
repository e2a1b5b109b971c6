"""Watching the exporter work: when did it count the last event, and at what CPU cost.

Polling /metrics during a burst would itself load the exporter (a scrape of tens of
thousands of series takes the state lock and tens of milliseconds of CPU; polling every
20 ms slowed a burst by a fifth), so nothing is scraped until the exporter is idle: its CPU
time, read from /proc, stops growing. One scrape then gives the count and the exporter's own
account of when it applied the last event: celery_exporter_event_lag_seconds is its clock at
that moment minus the event's timestamp, so timestamp + lag is the moment, within one decode
batch. When the last event applied is not the recording's last one, or the count falls short,
/metrics is polled instead (resolution POLL_SECONDS).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

from bench.procs import CLOCK_TICKS, ExporterProcess, HttpProcess
from bench.publish import BurstResult, Chunk, Publisher
from bench.truth import events_counted, total

SAMPLE_SECONDS = 0.01
IDLE_SECONDS = 0.3  # no more than one clock tick of CPU over this long: idle
STABLE_SECONDS = 5.0  # a count unchanged this long is final
POLL_SECONDS = 0.25
MAX_SECONDS = 300.0
PACE_SECONDS = 0.05


class Completion(NamedTuple):
    counted: int
    finished: float  # time.monotonic() when the last event was counted
    idle: float  # time.monotonic() when the exporter's CPU stopped growing
    cpu_seconds: float  # exporter CPU from before the burst until idle
    by: str  # how ``finished`` was read


def wait_counted(
    exporter: HttpProcess, expected: int, count: Callable[[str], int] = events_counted
) -> tuple[int, float, str]:
    """Poll /metrics until ``expected`` events are counted or the count stops changing.

    ``count`` reads the events counted off a page (a peer's metrics are not the exporter's).
    """
    page = exporter.metrics()
    counted, changed = count(page), time.monotonic()
    deadline = changed + MAX_SECONDS
    while counted < expected and time.monotonic() - changed < STABLE_SECONDS:
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
        page = exporter.metrics()
        now_counted = count(page)
        if now_counted != counted:
            counted, changed = now_counted, time.monotonic()
    return counted, changed, page


def _wait_idle(exporter: HttpProcess, publishing: threading.Thread) -> tuple[float, float]:
    """Sample the exporter's CPU until publishing ended and it stayed idle; (when, CPU)."""
    samples: list[tuple[float, float]] = []  # (time, exporter CPU seconds)
    window_start = 0  # index of the last sample at least IDLE_SECONDS old
    tick = 1 / CLOCK_TICKS
    deadline = time.monotonic() + MAX_SECONDS
    while True:
        now = time.monotonic()
        samples.append((now, exporter.stats().cpu_seconds))
        while (
            window_start + 1 < len(samples) and samples[window_start + 1][0] <= now - IDLE_SECONDS
        ):
            window_start += 1
        window_full = samples[window_start][0] <= now - IDLE_SECONDS
        idle = samples[-1][1] - samples[window_start][1] <= tick + 1e-9
        if not publishing.is_alive() and window_full and (idle or now > deadline):
            break
        time.sleep(SAMPLE_SECONDS)
    busy_until = samples[window_start][1]
    return next(moment for moment, cpu in samples if cpu >= busy_until), busy_until


class BurstPublisher(Protocol):
    """Redis's pipelined PUBLISH or AMQP's pre-framed basic.publish."""

    def burst(self, chunks: Sequence[Chunk]) -> BurstResult: ...


class Burst(NamedTuple):
    published: BurstResult
    cpu_before: float  # exporter CPU seconds before the first publish
    idle_at: float  # time.monotonic() when its CPU stopped growing
    idle_cpu: float  # its CPU seconds then


def publish_until_idle(
    exporter: HttpProcess,
    publisher: BurstPublisher,
    chunks: Sequence[Chunk],
    *,
    stalled: bool = False,
) -> Burst:
    """Publish ``chunks`` at full speed, then wait until the exporter has nothing left to do.

    ``stalled``: the exporter is stopped (SIGSTOP) while publishing, as a long pause would, so
    the broker has to hold (and bound) the whole burst.
    """
    cpu_before = exporter.stats().cpu_seconds
    outcome: list[BurstResult | BaseException] = []

    def publish() -> None:
        if stalled:
            os.kill(exporter.pid, signal.SIGSTOP)
        try:
            outcome.append(publisher.burst(chunks))
        except BaseException as err:  # noqa: BLE001 - re-raised below
            outcome.append(err)
        finally:
            if stalled:
                os.kill(exporter.pid, signal.SIGCONT)

    thread = threading.Thread(target=publish, name="publish")
    thread.start()
    idle_at, idle_cpu = _wait_idle(exporter, thread)
    thread.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        exporter.check_alive()
        raise result
    return Burst(result, cpu_before, idle_at, idle_cpu)


def completion(
    exporter: ExporterProcess, burst: Burst, expected: int, last_timestamp: float
) -> Completion:
    """How many events the exporter counted and when it counted the last.

    ``last_timestamp`` is the sender's timestamp of the recording's last event.
    """
    page = exporter.metrics()
    counted = events_counted(page)
    applied = total(page, "celery_exporter_last_event_timestamp_seconds")
    lag = total(page, "celery_exporter_event_lag_seconds")
    cpu = burst.idle_cpu - burst.cpu_before
    if counted >= expected and applied == last_timestamp:
        finished = applied + lag - burst.published.wall_offset
        return Completion(counted, finished, burst.idle_at, cpu, "exporter's lag gauge")
    counted, changed, page = wait_counted(exporter, expected)
    cpu = exporter.stats().cpu_seconds - burst.cpu_before
    return Completion(counted, changed, burst.idle_at, cpu, f"polling /metrics ({POLL_SECONDS} s)")


def paced_replay(
    exporter: ExporterProcess, publisher: Publisher, chunks: Iterable[Chunk], window: int
) -> tuple[int, int]:
    """Publish while fewer than ``window`` bytes are published but not yet counted.

    Keeps Redis's pub/sub output buffer and the exporter's own buffer small, for runs that
    measure state rather than throughput. Past the window, publishing resumes once half of
    it is counted, so /metrics is read a few times per window rather than per chunk.
    Returns the events published and the messages that reached no subscriber.
    """
    in_flight: deque[tuple[int, int]] = deque()  # (events published through it, bytes)
    published = pending_bytes = unheard = 0
    for chunk in chunks:
        if pending_bytes > window:
            while pending_bytes > window // 2:
                counted = events_counted(exporter.metrics())
                while in_flight and in_flight[0][0] <= counted:
                    pending_bytes -= in_flight.popleft()[1]
                if pending_bytes > window // 2:
                    time.sleep(PACE_SECONDS)
        unheard += publisher.send(chunk)
        published += chunk.events
        pending_bytes += len(chunk.data)
        in_flight.append((published, len(chunk.data)))
    return published, unheard
