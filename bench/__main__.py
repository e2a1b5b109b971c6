"""``python -m bench [--quick] [--only NAME ...] [--repeat N] [--profile] [--peer NAME]``: run
and print the figures."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import redis as redis_py

from bench import burst, memory, peers, rabbitmq, scrape, soak
from bench.dispatch import cached_recording
from bench.procs import RedisServer
from bench.profile import Profile, PySpy
from bench.report import Section, Value, equals, finish, load_average, run_meta
from bench.synthetic import compatibility_problems
from bench.workload import WorkloadSpec

REDIS_SCENARIOS = ("unbatched", "batched", "scrape", "memory")
RABBITMQ_SCENARIOS = ("rabbitmq-unbatched", "rabbitmq-batched", "rabbitmq-bounded")
DEFAULT_SCENARIOS = REDIS_SCENARIOS + RABBITMQ_SCENARIOS
# Ten minutes long (one with --quick): only when asked for; also python -m bench.soak.
OPT_IN_SCENARIOS = ("soak",)
SCENARIOS = DEFAULT_SCENARIOS + OPT_IN_SCENARIOS
BURST_EVENTS = 100_000
QUICK_BURST_EVENTS = 20_000


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for smoke tests")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable); soak runs only when named",
    )
    parser.add_argument(
        "--pubsub-limit",
        metavar="SIZE",
        help="Redis's hard client-output-buffer-limit for pub/sub subscribers, e.g. 20mb "
        "(default: Redis's own, 32mb); the exporter is cut off when Redis holds more of a burst",
    )
    parser.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        metavar="N",
        help="run each Redis burst N times, each into a fresh exporter, and summarise them: "
        "peak RSS moves by a few MiB from run to run with how the CPUs are shared",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also replay the unbatched burst (of each broker chosen) with py-spy attached "
        "and print the top functions",
    )
    parser.add_argument(
        "--peer",
        choices=sorted(peers.PEERS),
        help="also replay each Redis burst into this peer, installed from PyPI into "
        "bench/.peers/NAME/, and print both side by side; alone, runs the unbatched and "
        "batched bursts only",
    )
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of runs, 1 or more: {text!r}")
    return value


def _print_profile(profile: Profile, burst_name: str) -> None:
    print(f"\npy-spy --gil, {burst_name}: {profile.samples} samples of the GIL holder")
    print(f"  {'self':>6} {'total':>6}  function, by own time")
    for entry in profile.top_self:
        print(f"  {entry.self_share:6.1%} {entry.total_share:6.1%}  {entry.function}")
    print(f"  {'self':>6} {'total':>6}  function, by inclusive time")
    for entry in profile.top_total[:10]:
        print(f"  {entry.self_share:6.1%} {entry.total_share:6.1%}  {entry.function}")
    print(f"  {'share':>6}  area (the topmost frame that belongs to one)")
    for area, share in profile.areas:
        print(f"  {share:6.1%}  {area}")
    print(f"  {'self':>6}  line")
    for line in profile.top_lines[:10]:
        print(f"  {line.share:6.1%}  {line.line}")


def _bursts(
    redis: RedisServer,
    chosen: list[str],
    quick: bool,
    profile: bool,
    repeat: int,
    *,
    peer: peers.Peer | None,
) -> tuple[list[Section], Profile | None, list[tuple[Section, Section]]]:
    """The Redis bursts; with a peer, (exporter's, peer's) section of each run too."""
    spec = WorkloadSpec(task_events=QUICK_BURST_EVENTS if quick else BURST_EVENTS)
    sections: list[Section] = []
    found: Profile | None = None
    pairs: list[tuple[Section, Section]] = []
    for variant in ("unbatched", "batched"):
        profiled = profile and variant == "unbatched"
        if variant not in chosen and not profiled:
            continue
        messages, cached = cached_recording(
            spec, batched=variant == "batched", redis_url=redis.url, redis_port=redis.port
        )
        print(f"{variant} recording: {len(messages)} messages" + (" (cached)" if cached else ""))
        if variant in chosen:
            runs: list[Section] = []
            peer_runs: list[Section] = []
            for number in range(1, repeat + 1):
                of = f" ({number} of {repeat})" if repeat > 1 else ""
                numbered = number if of else None
                print(f"running the {variant} burst{of}")
                runs.append(burst.run(redis, messages, variant, number=numbered)[0])
                if peer is not None:
                    print(f"running the {variant} burst{of} into {peer.name}")
                    peer_runs.append(peers.run(redis, messages, variant, peer, number=numbered))
                    pairs.append((runs[-1], peer_runs[-1]))
            sections += runs + peer_runs
            if repeat > 1:
                sections.append(burst.summary(variant, runs))
        if profiled and not PySpy.available():
            print("py-spy is not installed (scripts/setup.sh test): no profile")
        elif profiled:
            print("running the unbatched burst again with py-spy attached")
            section, found = burst.run(redis, messages, variant, profile=True)
            sections.append(section)
    return sections, found, pairs


def _rabbitmq(
    redis: RedisServer, chosen: list[str], quick: bool, profile: bool
) -> tuple[list[Section], Profile | None]:
    """The RabbitMQ scenarios, on one private broker, replaying the Redis recordings."""
    spec = WorkloadSpec(task_events=QUICK_BURST_EVENTS if quick else BURST_EVENTS)
    bound = rabbitmq.QUICK_BOUNDED_LENGTH if quick else rabbitmq.BOUNDED_LENGTH
    sections: list[Section] = []
    found: Profile | None = None
    with rabbitmq.Broker() as broker:
        print(f"rabbitmq-server on port {broker.port}: {broker.version()}")
        problems = rabbitmq.compatibility(redis, broker)
        for problem in problems:
            print(f"replayed AMQP message differs from EventDispatcher's: {problem}")
        check = Section("rabbitmq messages")
        label = "AMQP messages = EventDispatcher's (but pid)"
        check.add(equals("compatible", label, not problems, True))
        sections.append(check)
        for variant in ("unbatched", "batched"):
            runs: list[tuple[int | None, bool]] = []  # (bound, profiled)
            if f"rabbitmq-{variant}" in chosen:
                runs.append((None, False))
            if variant == "unbatched" and "rabbitmq-bounded" in chosen:
                runs.append((bound, False))
            if variant == "unbatched" and profile:
                if PySpy.available():
                    runs.append((None, True))
                else:
                    print("py-spy is not installed (scripts/setup.sh test): no profile")
            if not runs:
                continue
            messages, cached = cached_recording(
                spec, batched=variant == "batched", redis_url=redis.url, redis_port=redis.port
            )
            prepared = rabbitmq.prepare(messages)
            print(
                f"{variant} recording: {len(messages)} messages"
                + (" (cached)" if cached else "")
                + f", framed for AMQP in {prepared.seconds:.1f} s"
            )
            for limit, profiled in runs:
                what = f"max-length {limit}" if limit else "py-spy attached" if profiled else ""
                print(f"running the rabbitmq {variant} burst" + (f" ({what})" if what else ""))
                section, measured = rabbitmq.run(
                    broker, prepared, variant, bound=limit, profile=profiled
                )
                sections.append(section)
                found = measured or found
    return sections, found


def _profile_json(profile: Profile) -> dict[str, object]:
    return {
        "samples": profile.samples,
        "top_self": [entry._asdict() for entry in profile.top_self],
        "top_total": [entry._asdict() for entry in profile.top_total],
        "top_lines": [entry._asdict() for entry in profile.top_lines],
        "areas": dict(profile.areas),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    peer = peers.PEERS[args.peer] if args.peer else None
    chosen = args.only or (["unbatched", "batched"] if peer else list(DEFAULT_SCENARIOS))
    if peer is not None and not {"unbatched", "batched"} & set(chosen):
        print("--peer compares the unbatched and batched bursts: choose one of them")
        return 2
    started = time.monotonic()
    load = load_average()
    on_redis = [name for name in chosen if name in REDIS_SCENARIOS]
    on_rabbitmq = [name for name in chosen if name in RABBITMQ_SCENARIOS]
    sections: list[Section] = []
    profiles: dict[str, Profile] = {}
    with RedisServer() as redis:
        client = redis_py.Redis(port=redis.port)
        if args.pubsub_limit:
            client.config_set("client-output-buffer-limit", f"pubsub {args.pubsub_limit} 8mb 60")
        buffer_limits = client.config_get("client-output-buffer-limit")[
            "client-output-buffer-limit"
        ]
        client.close()
        print(f"redis-server on port {redis.port}: {buffer_limits}")
        found, profile, pairs = _bursts(
            redis, chosen, args.quick, args.profile and bool(on_redis), args.repeat, peer=peer
        )
        sections += found
        if profile is not None:
            profiles["unbatched burst (Redis)"] = profile
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
        if "soak" in chosen:
            seconds = soak.QUICK_SECONDS if args.quick else soak.DEFAULT_SECONDS
            print(f"running the soak scenario ({seconds:.0f} s)")
            sections.append(soak.run(redis, duration=seconds, rate=soak.DEFAULT_RATE))
        if on_rabbitmq:
            found, profile = _rabbitmq(redis, on_rabbitmq, args.quick, args.profile)
            sections += found
            if profile is not None:
                profiles["unbatched burst (RabbitMQ)"] = profile
    for name, profile in profiles.items():
        _print_profile(profile, name)
    meta: dict[str, Value] = {
        "quick": args.quick,
        "scenarios": ",".join(chosen),
        "repeat": args.repeat,
        "peer": " ".join(peer.requirements) if peer else None,
        "redis_output_buffer_limits": buffer_limits,
        **run_meta(load, time.monotonic() - started),
    }
    keys = {"unbatched burst (Redis)": "profile", "unbatched burst (RabbitMQ)": "profile_rabbitmq"}
    extra: dict[str, object] = {
        keys[name]: _profile_json(profile) for name, profile in profiles.items()
    }
    status = finish(sections, meta, extra)
    if pairs:
        print(f"\nthe exporter and {args.peer} on the same bursts (a peer has no targets)")
        print(peers.side_by_side(pairs))
    return status


if __name__ == "__main__":
    sys.exit(main())
