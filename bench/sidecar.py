"""What a stream-reading worker sidecar costs: ``python -m bench.sidecar [--seconds S]``.

A sidecar beside each worker pod (``--worker-filter``) still subscribes to the whole event
stream and decodes every event to find its own worker's, so its cost grows with the cluster's
event rate, and the cluster's with the number of pods. Here the soak's stream (10 workers,
heartbeats, failures and retries) is published at two rates into one standalone exporter and
``SIDECARS`` sidecars, each filtering one worker, all at once: per process CPU and RSS, and
Redis's CPU. The README's placement advice quotes these figures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Sequence

from bench.envelope import EnvelopeEncoder
from bench.procs import ExporterProcess, RedisServer, proc_stats
from bench.publish import Publisher, pack
from bench.report import MIB, Figure, Section, equals, finish, load_average, run_meta
from bench.soak import SPEC, TICK_SECONDS, tasks_per_second
from bench.truth import events_counted, events_per_message
from bench.workload import SimEvent, stream

RATES = (1000.0, 5000.0)
SIDECARS = 4
SECONDS = 60.0
SIDECAR_ARGS = ("--no-collector-queues", "--no-collector-beat")


def _publish(publisher: Publisher, rate: float, seconds: float) -> int:
    """The soak's stream at ``rate`` events/s for ``seconds``; the events published."""
    spec = dataclasses.replace(SPEC, tasks_per_second=tasks_per_second(rate))
    start = time.time()
    events = stream(spec, start + 0.5)
    encoder = EnvelopeEncoder(batched=True)
    upcoming = next(events)
    published = 0
    while (now := time.time()) < start + seconds:
        due: list[SimEvent] = []
        while upcoming.fields["timestamp"] <= now:
            due.append(upcoming)
            upcoming = next(events)
        sent = list(encoder.encode(due))
        for chunk in pack(sent, events_per_message(sent)):
            publisher.send(chunk)
            published += chunk.events
        time.sleep(max(0.0, now + TICK_SECONDS - time.time()))
    return published


def _measure(redis: RedisServer, rate: float, seconds: float) -> Section:
    section = Section(f"sidecar-{rate:.0f}")
    with contextlib.ExitStack() as stack:
        standalone = stack.enter_context(ExporterProcess(redis.url))
        sidecars = [
            stack.enter_context(
                ExporterProcess(redis.url, ("--worker-filter", f"@w{n}$", *SIDECAR_ARGS))
            )
            for n in range(SIDECARS)
        ]
        exporters = [standalone, *sidecars]
        publisher = Publisher(redis.port, subscribers=len(exporters))
        before = [exporter.stats() for exporter in exporters]
        redis_before = proc_stats(redis.pid).cpu_seconds
        began = time.monotonic()
        try:
            published = _publish(publisher, rate, seconds)
        finally:
            publisher.close()
        elapsed = time.monotonic() - began
        after = [exporter.stats() for exporter in exporters]
        redis_cores = (proc_stats(redis.pid).cpu_seconds - redis_before) / elapsed
        counted = [events_counted(exporter.metrics()) for exporter in exporters]
    cores = [(a.cpu_seconds - b.cpu_seconds) / elapsed for a, b in zip(after, before, strict=True)]
    add = section.add
    add(Figure("events_per_second", "events/s published", published / elapsed))
    every = min(counted) == max(counted) == published
    add(equals("all_counted", "every exporter read every event", every, True))
    add(Figure("standalone_cores", "standalone exporter, CPU", cores[0], "cores"))
    add(Figure("standalone_rss_mib", "standalone exporter, RSS", after[0].rss / MIB, "MiB"))
    sidecar_cores = sum(cores[1:]) / SIDECARS
    add(Figure("sidecar_cores", "each sidecar, CPU (mean)", sidecar_cores, "cores"))
    add(Figure("sidecar_rss_mib", "each sidecar, RSS (max)",
               max(a.rss for a in after[1:]) / MIB, "MiB"))  # fmt: skip
    add(Figure("redis_cores", f"redis-server, CPU with {len(exporters)} subscribers",
               redis_cores, "cores"))  # fmt: skip
    add(Figure("sidecar_share", "a sidecar's CPU over the standalone's",
               sidecar_cores / cores[0] if cores[0] else 0.0))  # fmt: skip
    return section


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sidecar", description=__doc__)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per rate (default 60)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    load = load_average()
    sections = []
    with RedisServer() as redis:
        for rate in RATES:
            print(f"{rate:.0f} events/s into 1 standalone exporter and {SIDECARS} sidecars")
            sections.append(_measure(redis, rate, args.seconds))
    meta = {"sidecars": SIDECARS, **run_meta(load, time.monotonic() - started)}
    return finish(sections, meta, name="sidecar")


if __name__ == "__main__":
    sys.exit(main())
