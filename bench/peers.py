"""Peers on the same Redis bursts as the exporter: Flower, installed from PyPI into a venv of its
own (bench/.peers/NAME/, made once and reused while its pins stay the same).

A peer runs alone, as the exporter does: started on the bench's redis-server, it is measured
once it has subscribed (CLIENT LIST) and its CPU has been idle for SETTLE_SECONDS (Flower
inspects the workers when it starts); then the same packed burst is published, the bench waits
for its CPU to go idle and polls /metrics until the count stops moving (monitor.wait_counted).
The end of the burst is when its CPU went idle, or the count last moved if it moved after.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import redis as redis_py
from prometheus_client.parser import text_string_to_metric_families

from bench import truth
from bench.monitor import publish_until_idle, wait_counted
from bench.procs import CLOCK_TICKS, HttpProcess, RedisServer, free_port
from bench.publish import Publisher, pack
from bench.recording import Message
from bench.report import MIB, Figure, Section

ENVIRONMENTS = Path(__file__).resolve().parent / ".peers"
SETTLE_SECONDS = 1.0
START_SECONDS = 60.0
# (type, task) -> events; the task as the peer names it, "unknown" when it has no name
TypedCounts = dict[tuple[str, str], int]


class Peer(NamedTuple):
    name: str
    requirements: tuple[str, ...]  # every package of its venv, name==version
    argv: Callable[[Path, str, int], list[str]]  # (venv, broker URL, port) -> command
    ready_path: str
    counted: Callable[[str], TypedCounts]  # events counted, read off its /metrics


def flower_counts(page: str) -> TypedCounts:
    """``flower_events_total{worker,type,task}`` summed over workers.

    Flower counts task events only, labelled with the name its task state holds at that moment
    ('' once the task left its LRU map of --max_tasks, 10,000 by default).
    """
    counts: TypedCounts = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == "flower_events_total":
                key = (sample.labels["type"], sample.labels["task"] or "unknown")
                counts[key] = counts.get(key, 0) + int(sample.value)
    return counts


def _flower_argv(venv: Path, broker_url: str, port: int) -> list[str]:
    # Flower's defaults otherwise, as `celery flower` runs in a deployment.
    celery = str(venv / "bin" / "celery")
    return [celery, "--broker", broker_url, "flower", f"--port={port}", "--address=127.0.0.1"]


PEERS = {
    "flower": Peer(
        "flower",
        # The broker client (celery, kombu, redis-py, hiredis) and prometheus-client at the
        # versions requirements.lock gives the exporter (tests/test_unit_bench_peers.py checks it).
        (
            "flower==2.2.0",
            "celery[redis]==5.7.0",
            "kombu==5.7.0",
            "redis==8.2.0",
            "hiredis==3.5.0",
            "prometheus-client==0.26.0",
            "amqp==5.4.2",
            "billiard==4.3.2",
            "vine==5.1.0",
            "click==8.5.1",
            "click-didyoumean==0.3.1",
            "click-plugins==1.1.1.2",
            "click-repl==0.4.1",
            "prompt-toolkit==3.0.53",
            "wcwidth==0.9.5",
            "humanize==4.17.0",
            "packaging==26.3",
            "python-dateutil==2.9.0.post0",
            "six==1.17.0",
            "pytz==2026.6",
            "tornado==6.6.1",
            "typing-extensions==4.16.0",
            "tzlocal==5.4.5",
        ),
        _flower_argv,
        "/healthcheck",
        flower_counts,
    ),
}


def pins(requirements: tuple[str, ...]) -> dict[str, str]:
    """{normalised name: version} of exact pins; anything else is refused."""
    found: dict[str, str] = {}
    for requirement in requirements:
        name, sep, version = requirement.partition("==")
        name = name.split("[", 1)[0].strip().lower().replace("_", "-")
        if not sep or not name or not version or any(c in version for c in "<>=~*, "):
            raise ValueError(f"not an exact pin: {requirement!r}")
        if name in found:
            raise ValueError(f"pinned twice: {name}")
        found[name] = version
    return found


def environment(peer: Peer) -> Path:
    """The peer's venv with exactly its pins installed; made again when they change."""
    pins(peer.requirements)
    venv = ENVIRONMENTS / peer.name
    installed = venv / "bench-requirements.txt"  # written once the install succeeded
    wanted = "".join(f"{line}\n" for line in peer.requirements)
    if installed.is_file() and installed.read_text() == wanted:
        return venv
    print(f"installing {peer.name} into {venv}")
    # The exporter's interpreter, so both run on the same Python.
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "--no-deps", *peer.requirements], check=True)
    # --no-deps installs the pins alone: a dependency they miss fails here.
    subprocess.run([*pip, "check"], check=True)
    installed.write_text(wanted)
    return venv


def _subscribers(redis: RedisServer) -> set[int]:
    """Ids of the clients subscribed to a channel or pattern."""
    client = redis_py.Redis(port=redis.port)
    try:
        return {
            int(entry["id"])
            for entry in client.client_list()
            if int(entry["sub"]) or int(entry["psub"])
        }
    finally:
        client.close()


def _wait_ready(process: HttpProcess, redis: RedisServer, before: set[int]) -> set[int]:
    """Wait until the peer has subscribed and then idled for SETTLE_SECONDS; its subscribers.

    ``before``: the subscribers before it started (Redis may not have dropped the exporter's yet).
    """
    deadline = time.monotonic() + START_SECONDS
    while not (subscribed := _subscribers(redis) - before):
        process.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.name} never subscribed:\n{process.log_tail()}")
        time.sleep(0.05)
    cpu, since = process.stats().cpu_seconds, time.monotonic()
    while time.monotonic() - since < SETTLE_SECONDS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.name} never went idle:\n{process.log_tail()}")
        time.sleep(0.1)
        now_cpu = process.stats().cpu_seconds
        if now_cpu - cpu > 1 / CLOCK_TICKS + 1e-9:
            cpu, since = now_cpu, time.monotonic()
    return subscribed


def expected_counts(expected: truth.Truth) -> TypedCounts:
    """The truth by (task event type, task), summed over exception classes."""
    types = {metric: etype for etype, metric in truth.TASK_COUNTERS.items()}
    counts: TypedCounts = {}
    for (metric, task, _exception), value in expected.counters.items():
        key = (types[metric], task)
        counts[key] = counts.get(key, 0) + value
    return counts


def run(
    redis: RedisServer, messages: list[Message], variant: str, peer: Peer, number: int | None
) -> Section:
    """Replay ``messages`` into a fresh ``peer``, as burst.run does into the exporter.

    ``number`` numbers the section when the burst is repeated.
    """
    venv = environment(peer)
    want = expected_counts(truth.truth_of(messages))
    total = sum(want.values())
    chunks = list(pack(messages, truth.events_per_message(messages)))
    port = free_port()

    def counted(page: str) -> int:
        return sum(peer.counted(page).values())

    before = _subscribers(redis)
    with HttpProcess(peer.name, peer.argv(venv, redis.url, port), port, peer.ready_path) as proc:
        subscribed = _wait_ready(proc, redis, before)
        idle_rss = proc.stats().rss
        publisher = Publisher(redis.port)
        try:
            burst = publish_until_idle(proc, publisher, chunks)
        finally:
            publisher.close()
        kept = subscribed <= _subscribers(redis)
        first = counted(proc.metrics())
        done, changed, page = wait_counted(proc, total, counted)
        finished = burst.idle_at if done == first else changed
        stats = proc.stats()
        log = proc.log_tail()
    got = peer.counted(page)
    wrong = sorted(key for key in want.keys() | got.keys() if want.get(key, 0) != got.get(key, 0))
    published = burst.published
    seconds = finished - published.started
    cut_off = not kept or published.unheard > 0

    section = Section(f"{variant} burst" + (f" {number}" if number else "") + f", {peer.name}")
    add = section.add
    add(Figure("events", "task events in the burst (what it counts)", total))
    add(Figure("counted", "events counted", done))
    add(Figure("counted_percent", "share counted", 100.0 * done / total, "%"))
    add(Figure("exact", "every counter equals the truth (type, task)", not wrong))
    add(Figure("events_per_second", "events/s counted", done / max(seconds, 1e-9), "ev/s"))
    add(Figure("seconds", "first publish -> last event counted", seconds, "s"))
    add(Figure("peak_rss_mib", "peak RSS (VmHWM)", stats.peak_rss / MIB, "MiB"))
    add(Figure("idle_rss_mib", "RSS before the burst", idle_rss / MIB, "MiB"))
    cpu = stats.cpu_seconds - burst.cpu_before
    add(Figure("cpu_us_per_event", "CPU per event", 1e6 * cpu / max(done, 1), "us"))
    add(Figure("disconnected", "cut off by Redis", cut_off))
    add(Figure("unheard", "messages published while unsubscribed", published.unheard))
    if wrong:
        section.notes.append(f"{len(wrong)} of {len(want)} (type, task) counts differ, e.g.:")
        for key in wrong[:3]:
            etype, task = key
            section.notes.append(
                f"  {task} {etype}: expected {want.get(key, 0)}, got {got.get(key, 0)}"
            )
    if cut_off:
        lines = [line for line in log.splitlines() if "[E " in line or "[W " in line]
        section.notes += [f"  {peer.name} log: {line}" for line in lines[-3:]]
    return section


def _value(section: Section, key: str) -> object:
    for figure in section.figures:
        if figure.key == key:
            return figure.value
    raise KeyError(f"{section.name} has no figure {key!r}")


def side_by_side(pairs: list[tuple[Section, Section]]) -> str:
    """(exporter's burst, peer's burst) of each scenario, figure by figure."""
    rows = [("scenario", "figure", "exporter", "peer")]
    for ours, theirs in pairs:
        scenario = ours.name
        cut_off = bool(_value(ours, "reconnects")) or bool(_value(ours, "unheard"))
        for label, mine, peer in (
            ("events counted", _value(ours, "counted"), _value(theirs, "counted")),
            ("of", _value(ours, "events"), _value(theirs, "events")),
            ("share counted", _value(ours, "counted_percent"), _value(theirs, "counted_percent")),
            ("counters exact", _value(ours, "exact"), _value(theirs, "exact")),
            ("events/s", _value(ours, "events_per_second"), _value(theirs, "events_per_second")),
            ("seconds to the last", _value(ours, "seconds"), _value(theirs, "seconds")),
            ("peak RSS, MiB", _value(ours, "peak_rss_mib"), _value(theirs, "peak_rss_mib")),
            ("CPU/event, us", _value(ours, "cpu_us_per_event"), _value(theirs, "cpu_us_per_event")),
            ("disconnected", cut_off, _value(theirs, "disconnected")),
        ):
            rows.append((scenario, label, _cell(mine), _cell(peer)))
            scenario = ""
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if column >= 2 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
    return str(value)
