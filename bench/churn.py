"""Pod churn: ``python -m bench.churn [--pods N] [--quick]``.

Worker pods start and stop one after another, as rollouts and autoscaling start them in a
Kubernetes cluster: 10,000 pods is about a week of a busy cluster's churn (60 pods an hour).
The week is compressed: each pod lives 1.5 s, beats every 0.5 s as a worker with that
``freq`` does, runs 5 tasks of 200 names and leaves with worker-offline; every tenth is killed
instead (its heartbeats stop, as after an OOM kill). The exporter runs with its defaults (the
full nodename as worker label, the worst case) but for a retention of 2 s. A steady worker
lives through the whole run beside them.

Scraped every second: series, bytes, scrape time and RSS over time. Targets: series and bytes
flat once the first pods have been retained and released (set by live plus retained pods,
not by pods ever seen); peak RSS <= 150 MiB; scrape p99 <= 100 ms at the plateau. Exact:
task-sent per task name and every event type against what was published, and every counter
of the steady worker against what it ran.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from prometheus_client.parser import text_string_to_metric_families

from bench import truth
from bench.envelope import EnvelopeEncoder
from bench.monitor import wait_counted
from bench.procs import ExporterProcess, ProcStats, RedisServer
from bench.publish import Publisher, pack
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
from bench.workload import SimEvent, task_names

PODS = 10_000
QUICK_PODS = 1_500
MIN_PODS = 1_000  # 25 s: two thirds of it past the warm-up
PODS_PER_SECOND = 40.0
POD_SECONDS = 1.5
HEARTBEAT_SECONDS = 0.5
TASKS_PER_POD = 5
TASK_NAMES = 200
QUEUES = ("celery", "default", "emails", "reports")
KILLED_EVERY = 10
RETENTION_SECONDS = 2.0
STEADY = "celery@steady"
STEADY_TASK = "app.steady"
PRODUCER = "gen@producer"
STEADY_COUNTERS = {f"celery_task_{m}_total" for m in ("received", "started", "succeeded")}
TICK_SECONDS = 0.05
# Not a whole second: the exporter's sweep releases a second's worth of pods about once a
# second, and scrapes in step with it would sample one phase of that sawtooth, drifting.
SCRAPE_SECONDS = 0.7
# Warm once the first pods have lived, gone down (killed: 3 heartbeat intervals) and been
# retained: from then on, as many pods leave as come.
WARM_SECONDS = POD_SECONDS + 3 * HEARTBEAT_SECONDS + RETENTION_SECONDS + 2.0
TARGET_RSS_MIB = 150.0
TARGET_SCRAPE_P99_MS = 100.0
TARGET_GROWTH = 0.10  # series, last third over first third of the plateau


class _Stream:
    """The pods' and the steady worker's events in time order, generated as they come due."""

    def __init__(self, pods: int, start: float, seed: int = 11) -> None:
        self.rng = random.Random(seed)
        self.names = task_names(TASK_NAMES)
        self.queue_of = {name: QUEUES[i % len(QUEUES)] for i, name in enumerate(self.names)}
        self.queue_of[STEADY_TASK] = QUEUES[0]
        self.pods = pods
        self.start = start
        self.end = start + pods / PODS_PER_SECOND + POD_SECONDS
        self.steady: dict[tuple[str, str], int] = {}  # (metric, task) -> the steady worker's
        self._heap: list[tuple[float, int, SimEvent]] = []
        self._order = itertools.count()

    def _emit(self, at: float, hostname: str, etype: str, **fields: Any) -> None:
        fields["timestamp"] = round(at, 6)
        heapq.heappush(self._heap, (at, next(self._order), SimEvent(hostname, etype, fields)))

    def _beat(self, at: float, host: str, etype: str, processed: int) -> None:
        self._emit(at, host, etype, freq=HEARTBEAT_SECONDS, active=0, processed=processed,
                   loadavg=[0.5, 0.4, 0.3], sw_ident="py-celery", sw_ver="5.7.0",
                   sw_sys="Linux")  # fmt: skip

    def _task(self, at: float, host: str) -> None:
        name = STEADY_TASK if host == STEADY else self.rng.choice(self.names)
        queue = self.queue_of[name]
        task_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        runtime = 0.01
        self._emit(at, PRODUCER, "task-sent", uuid=task_id, root_id=task_id, parent_id=None,
                   name=name, args="()", kwargs="{}", retries=0, eta=None, expires=None,
                   queue=queue, exchange="", routing_key=queue)  # fmt: skip
        self._emit(at + 0.002, host, "task-received", uuid=task_id, name=name, args="()",
                   kwargs="{}", root_id=task_id, parent_id=None, retries=0, eta=None,
                   expires=None)  # fmt: skip
        self._emit(at + 0.004, host, "task-started", uuid=task_id)
        self._emit(at + 0.004 + runtime, host, "task-succeeded", uuid=task_id, result="None",
                   runtime=runtime)  # fmt: skip
        if host == STEADY:
            for metric in ("received", "started", "succeeded"):
                key = (f"celery_task_{metric}_total", name)
                self.steady[key] = self.steady.get(key, 0) + 1

    def _pod(self, number: int) -> None:
        host = f"celery@worker-{number:05d}"
        born = self.start + number / PODS_PER_SECOND
        died = born + POD_SECONDS
        self._beat(born, host, "worker-online", 0)
        beats = int(POD_SECONDS / HEARTBEAT_SECONDS)
        for beat in range(1, beats):
            self._beat(born + beat * HEARTBEAT_SECONDS, host, "worker-heartbeat", beat)
        for task in range(TASKS_PER_POD):
            self._task(born + 0.1 + task * (POD_SECONDS - 0.2) / TASKS_PER_POD, host)
        if number % KILLED_EVERY != KILLED_EVERY - 1:
            self._beat(died, host, "worker-offline", TASKS_PER_POD)

    def _steady(self) -> None:
        at, beat = self.start, 0
        while at <= self.end:
            self._beat(at, STEADY, "worker-online" if beat == 0 else "worker-heartbeat", beat)
            self._task(at + 0.05, STEADY)
            at += HEARTBEAT_SECONDS
            beat += 1

    def __iter__(self) -> Iterator[SimEvent]:
        self._steady()
        for number in range(self.pods):
            born = self.start + number / PODS_PER_SECOND
            while self._heap and self._heap[0][0] < born:
                yield heapq.heappop(self._heap)[2]
            self._pod(number)
        while self._heap:
            yield heapq.heappop(self._heap)[2]


class _Sample(NamedTuple):
    at: float  # seconds since the start
    pods: int  # pods started so far
    workers: int  # celery_worker_up series: pods alive or retained
    lag: float  # celery_exporter_event_lag_seconds: how far behind the exporter applies
    series: int
    size: int  # bytes, plain text
    seconds: float  # the scrape
    rss: int


def _steady_counts(page: str) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.labels.get("worker") == STEADY and sample.name in STEADY_COUNTERS:
                key = (sample.name, sample.labels["task"])
                found[key] = found.get(key, 0) + int(sample.value)
    return found


def _worker_values(page: str) -> set[str]:
    return {
        sample.labels["worker"]
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name.startswith("celery_task_") and "worker" in sample.labels
    }


class _Outcome(NamedTuple):
    stream: _Stream
    tally: truth.Tally
    samples: list[_Sample]
    published: int
    counted: int
    before: ProcStats
    after: ProcStats
    live_page: str  # once every event was counted, the last pods still retained
    final_page: str  # once they were released


def _run(exporter: ExporterProcess, publisher: Publisher, pods: int) -> _Outcome:
    start = time.time() + 0.5
    stream = _Stream(pods, start)
    events = iter(stream)
    encoder = EnvelopeEncoder(batched=False)
    tally = truth.Tally()
    samples: list[_Sample] = []
    published = 0
    before = exporter.stats()
    upcoming: SimEvent | None = next(events)
    next_scrape = start
    while upcoming is not None:
        now = time.time()
        due: list[SimEvent] = []
        while upcoming is not None and upcoming.fields["timestamp"] <= now:
            due.append(upcoming)
            upcoming = next(events, None)
        sent = list(encoder.encode(due))
        for chunk in pack(sent, tally.add(sent)):
            publisher.send(chunk)
            published += chunk.events
        if now >= next_scrape:
            began = time.perf_counter()
            page = exporter.metrics()
            took = time.perf_counter() - began
            born = min(pods, max(0, int((now - start) * PODS_PER_SECOND) + 1))
            series, rss = truth.sample_count(page), exporter.stats().rss
            workers = page.count("\ncelery_worker_up{")
            lag = truth.scanned_total(page, "celery_exporter_event_lag_seconds")
            samples.append(_Sample(now - start, born, workers, lag, series, len(page), took, rss))
            next_scrape += SCRAPE_SECONDS
        time.sleep(max(0.0, now + TICK_SECONDS - time.time()))
    after = exporter.stats()
    counted, _, _ = wait_counted(exporter, published)
    live_page = exporter.metrics()
    # The steady worker's last heartbeat went out at the end: wait for every pod to be released.
    time.sleep(RETENTION_SECONDS + 3 * HEARTBEAT_SECONDS + 2.0)
    final_page = exporter.metrics()
    return _Outcome(stream, tally, samples, published, counted, before, after, live_page,
                    final_page)  # fmt: skip


def _report(run: _Outcome) -> Section:
    stream, samples, published = run.stream, run.samples, run.published
    section = Section("churn")
    add = section.add
    expected = run.tally.truth()
    observed = truth.observed(run.final_page)
    sent_want = {k: v for k, v in expected.counters.items() if k[0] == "celery_task_sent_total"}
    sent_got = {k: v for k, v in observed.counters.items() if k[0] == "celery_task_sent_total"}
    plateau = [s for s in samples if s.at >= WARM_SECONDS]
    third = max(1, len(plateau) // 3)
    first, last = plateau[:third], plateau[-third:]
    growth = max(s.series for s in last) / max(s.series for s in first) - 1
    seconds = samples[-1].at
    cpu = run.after.cpu_seconds - run.before.cpu_seconds
    latencies = [1000 * s.seconds for s in plateau]

    add(Figure("pods", "pods started", stream.pods))
    add(Figure("seconds", "publishing", seconds, "s"))
    add(Figure("events", "events published", published))
    add(equals("counted", "events counted", run.counted, published))
    add(equals("events_exact", "events by type equal what was published",
               expected.events == observed.events, True))  # fmt: skip
    add(equals("sent_exact", "task-sent per task name exact", sent_want == sent_got, True))
    add(equals("steady_exact", "the steady worker's counters exact",
               _steady_counts(run.live_page) == stream.steady, True))  # fmt: skip
    add(Figure("series_first", "series, first third of the plateau (max)",
               max(s.series for s in first)))  # fmt: skip
    add(Figure("series_last", "series, last third (max)", max(s.series for s in last)))
    add(below("series_growth", "series growth, last third over first", growth, "",
              TARGET_GROWTH))  # fmt: skip
    add(Figure("bytes_last_kib", "/metrics, last third (max)",
               max(s.size for s in last) / 1024, "KiB"))  # fmt: skip
    add(below("peak_rss_mib", "peak RSS (VmHWM)", run.after.peak_rss / MIB, "MiB", TARGET_RSS_MIB))
    # RSS still rises with the task-id map, bounded by --task-state-max-tasks (see the soak).
    tracked = int(truth.total(run.live_page, "celery_exporter_tracked_tasks"))
    add(Figure("tracked_tasks", "task ids tracked at the end", tracked))
    add(Figure("scrape_p50_ms", "scrape p50 at the plateau", percentile(latencies, 0.5), "ms"))
    add(below("scrape_p99_ms", "scrape p99 at the plateau", percentile(latencies, 0.99), "ms",
              TARGET_SCRAPE_P99_MS))  # fmt: skip
    # Scrapes included: one a second of a 30-40k series page is most of it.
    add(Figure("cpu_us_per_event", "exporter CPU per event", 1e6 * cpu / published, "us"))
    add(Figure("cores", "exporter CPU, cores", cpu / seconds))
    left = len(_worker_values(run.final_page) - {STEADY})
    add(equals("pods_left", "pods with task series once all were released", left, 0))
    overflow = int(truth.total(run.final_page, "celery_exporter_label_overflow_total"))
    add(equals("overflow", "label values folded into 'other'", overflow, 0))
    newest = f"celery@worker-{stream.pods - 1:05d}"
    add(equals("newest_own_name", "the last pod exported under its own name",
               newest in _worker_values(run.live_page), True))  # fmt: skip
    # Each twelfth of the run by its highest sample: the sawtooth's top, not a phase of it.
    step = max(1, len(samples) // 12)
    parts = [samples[i : i + step] for i in range(0, len(samples), step)]
    section.notes.append(
        "over time, the most in each twelfth (s: pods started, workers exported, series, KiB, "
        "RSS MiB): "
        + "; ".join(
            f"{part[-1].at:.0f}: {part[-1].pods}, {max(s.workers for s in part)}, "
            f"{max(s.series for s in part)}, {max(s.size for s in part) // 1024}, "
            f"{max(s.rss for s in part) / MIB:.1f}"
            for part in parts
        )
    )
    return section


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__)
    parser.add_argument("--pods", type=int, default=PODS, help=f"pods to start (default {PODS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PODS} pods")
    args = parser.parse_args(argv)
    pods = QUICK_PODS if args.quick else args.pods
    if pods < MIN_PODS:
        parser.error(
            f"--pods must be at least {MIN_PODS}: the plateau needs a run past the warm-up"
        )
    started = time.monotonic()
    load = load_average()
    exporter_args = ("--worker-retention-seconds", str(RETENTION_SECONDS))
    with RedisServer() as redis, ExporterProcess(redis.url, exporter_args) as exporter:
        print(f"{pods} pods at {PODS_PER_SECOND:g}/s, {pods / PODS_PER_SECOND:.0f} s")
        publisher = Publisher(redis.port)
        try:
            outcome = _run(exporter, publisher, pods)
            section = _report(outcome)
        finally:
            publisher.close()
    meta = {"pods": pods, **run_meta(load, time.monotonic() - started)}
    timeline = [sample._asdict() for sample in outcome.samples]
    return finish([section], meta, {"timeline": timeline}, name="churn")


if __name__ == "__main__":
    sys.exit(main())
