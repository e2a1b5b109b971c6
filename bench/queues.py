"""``python -m bench.queues``: what one Redis queue poll costs with many queues.

A private redis-server gets N queues as Celery leaves them (a kombu binding each, messages
spread over the default priority steps, one delivered-but-unacked message each), then the
exporter's ``RedisQueueProbe`` polls them directly, in-process: one pipelined round trip per
poll (LLEN and LINDEX per queue and step, plus the unacked hash). Prints the median poll time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import orjson
import redis as redis_py

from bench.procs import RedisServer
from exporter.brokers.redis.queues import RedisQueueProbe, queue_key
from exporter.state.queues import QueueState

SEP = "\x06\x16"  # kombu's default
STEPS = (0, 3, 6, 9)  # kombu's default priority steps


def envelope(task_id: str, queue: str, body_bytes: int = 0) -> bytes:
    """A kombu envelope of Celery protocol 2, as LPUSHed by a producer, its body padded to
    about ``body_bytes`` (the task's arguments)."""
    return orjson.dumps(
        {
            "body": "W1tdLCB7fSwge31d" + "A" * body_bytes,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": "bench.noop", "id": task_id, "retries": 0},
            "properties": {
                "correlation_id": task_id,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": f"tag-{task_id}",
            },
        }
    )


def fill(url: str, queues: int, per_queue: int, body_bytes: int) -> None:
    """Bindings, waiting messages and one unacked message per queue."""
    client = redis_py.Redis.from_url(url)
    try:
        pipe = client.pipeline(transaction=False)
        now = time.time()
        for q in range(queues):
            name = f"bench_queue_{q:04d}"
            pipe.sadd(f"_kombu.binding.{name}", SEP.join([name, "", name]))
            for m in range(per_queue):
                step = STEPS[m % len(STEPS)]
                message = envelope(f"{q}-{m}", name, body_bytes)
                pipe.lpush(queue_key(name, step, prefix="", sep=SEP), message)
            tag = f"unacked-{q}"
            raw = envelope(f"{q}-unacked", name).decode()
            pipe.hset("unacked", tag, orjson.dumps([raw, "", name]))
            pipe.zadd("unacked_index", {tag: now})
        pipe.execute()
    finally:
        client.close()


def commands_processed(url: str) -> int:
    client = redis_py.Redis.from_url(url)
    try:
        total: int = client.info("stats")["total_commands_processed"]
        return total
    finally:
        client.close()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.queues", description=__doc__)
    parser.add_argument("--queues", type=int, default=1000, help="queues to create")
    parser.add_argument("--messages", type=int, default=8, help="waiting messages per queue")
    parser.add_argument("--polls", type=int, default=31, help="polls timed (median reported)")
    parser.add_argument(
        "--body-bytes", type=int, default=0, help="extra bytes in each message (task arguments)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    with RedisServer() as server:
        fill(server.url, args.queues, args.messages, args.body_bytes)
        state = QueueState(configured=(), forget_after=3600.0, max_queues=args.queues)
        probe = RedisQueueProbe(
            url=server.url,
            transport_options={},
            timeout=5.0,
            state=state,
            events_exchange="celeryev",
            seen_queues=tuple,
            sent_times=lambda ids: {},
            # The costlier poll: with task-sent seen, the oldest message of each step is read.
            sent_seen=lambda: True,
            clock=time.time,
            discovery_interval=3600.0,
            max_unacked_scan=10_000,
        )
        try:
            start = time.perf_counter()
            probe()  # connects and scans the bindings (SCAN + SMEMBERS), then polls
            first = time.perf_counter() - start
            probe()  # saw the unacked hash non-empty: from now on it is read whole too
            before = commands_processed(server.url)
            durations = []
            for _ in range(args.polls):
                start = time.perf_counter()
                probe()
                durations.append(time.perf_counter() - start)
            commands = (commands_processed(server.url) - before - 1) / args.polls
        finally:
            probe.close()
        readings = state.read()
        waiting = sum(reading.length for reading in readings.values())
        unacked = sum(reading.unacked or 0 for reading in readings.values())
        assert len(readings) == args.queues, f"polled {len(readings)} queues"
        assert waiting == args.queues * args.messages, f"read {waiting} waiting messages"
        assert unacked == args.queues, f"read {unacked} unacked messages"
    median = statistics.median(durations)
    print(
        f"{args.queues} queues x {len(STEPS)} priority steps, {args.messages} waiting and 1 "
        f"unacked message each, bodies +{args.body_bytes} bytes"
    )
    print(f"first poll (connect + binding discovery): {first * 1000:.1f} ms")
    print(
        f"poll: median {median * 1000:.1f} ms, min {min(durations) * 1000:.1f} ms, "
        f"max {max(durations) * 1000:.1f} ms over {args.polls} polls; "
        f"{commands:.0f} Redis commands in one pipelined round trip"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
