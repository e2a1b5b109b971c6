"""``python -m bench [--quick] [--only NAME ...] [--profile]``: run and print the figures."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis as redis_py

from bench import burst, memory, scrape
from bench.dispatch import cached_recording
from bench.procs import RedisServer
from bench.profile import Profile, PySpy
from bench.report import Section, Value, table, write_json
from bench.synthetic import compatibility_problems
from bench.workload import WorkloadSpec

SCENARIOS = ("unbatched", "batched", "scrape", "memory")
BURST_EVENTS = 100_000
QUICK_BURST_EVENTS = 20_000


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for smoke tests")
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also replay the unbatched burst with py-spy attached and print the top functions",
    )
    return parser.parse_args(argv)


def _print_profile(profile: Profile) -> None:
    print(f"\npy-spy --gil, unbatched burst: {profile.samples} samples of the GIL holder")
    print(f"  {'self':>6} {'total':>6}  function, by own time")
    for entry in profile.top_self:
        print(f"  {entry.self_share:6.1%} {entry.total_share:6.1%}  {entry.function}")
    print(f"  {'self':>6} {'total':>6}  function, by inclusive time")
    for entry in profile.top_total[:10]:
        print(f"  {entry.self_share:6.1%} {entry.total_share:6.1%}  {entry.function}")
    print(f"  {'self':>6}  line")
    for line in profile.top_lines[:10]:
        print(f"  {line.share:6.1%}  {line.line}")


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


def _commit() -> str:
    """The git commit measured, marked dirty when exporter/ differs from it."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "exporter")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _bursts(
    redis: RedisServer, chosen: list[str], quick: bool, profile: bool
) -> tuple[list[Section], Profile | None]:
    spec = WorkloadSpec(task_events=QUICK_BURST_EVENTS if quick else BURST_EVENTS)
    sections: list[Section] = []
    found: Profile | None = None
    for variant in ("unbatched", "batched"):
        profiled = profile and variant == "unbatched"
        if variant not in chosen and not profiled:
            continue
        messages, cached = cached_recording(
            spec, batched=variant == "batched", redis_url=redis.url, redis_port=redis.port
        )
        print(f"{variant} recording: {len(messages)} messages" + (" (cached)" if cached else ""))
        if variant in chosen:
            print(f"running the {variant} burst")
            sections.append(burst.run(redis, messages, variant)[0])
        if profiled and not PySpy.available():
            print("py-spy is not installed (pip install py-spy): no profile")
        elif profiled:
            print("running the unbatched burst again with py-spy attached")
            section, found = burst.run(redis, messages, variant, profile=True)
            sections.append(section)
    return sections, found


def _json_extra(profile: Profile | None) -> dict[str, object]:
    if profile is None:
        return {}
    return {
        "profile": {
            "samples": profile.samples,
            "top_self": [entry._asdict() for entry in profile.top_self],
            "top_total": [entry._asdict() for entry in profile.top_total],
            "top_lines": [entry._asdict() for entry in profile.top_lines],
        }
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    chosen = args.only or list(SCENARIOS)
    started = time.monotonic()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.2f} before starting: other work shares the CPUs")
    with RedisServer() as redis:
        config = redis_py.Redis(port=redis.port).config_get("client-output-buffer-limit")
        print(f"redis-server on port {redis.port}: {config['client-output-buffer-limit']}")
        sections, profile = _bursts(redis, chosen, args.quick, args.profile)
        compatible: list[str] = []
        if "scrape" in chosen or "memory" in chosen:
            compatible = compatibility_problems(redis)
            for problem in compatible:
                print(f"synthetic envelope differs: {problem}")
        if "scrape" in chosen:
            print("running the scrape scenario")
            sections.append(scrape.run(redis, quick=args.quick, compatible=compatible))
        if "memory" in chosen:
            print("running the memory scenario")
            sections.append(memory.run(redis, quick=args.quick, compatible=compatible))
    if profile is not None:
        _print_profile(profile)
    print()
    print(table(sections))
    meta: dict[str, Value] = {
        "quick": args.quick,
        "scenarios": ",".join(chosen),
        "exporter_commit": _commit(),
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_before": round(load, 2),
        "seconds": round(time.monotonic() - started, 1),
    }
    path = write_json(sections, meta, _json_extra(profile))
    print(f"\nwritten to {path}; took {meta['seconds']} s")
    missed = any(figure.ok is False for section in sections for figure in section.figures)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
