"""A simulated Celery cluster: task lifecycles and worker heartbeats as ordered events.

The events carry the fields Celery itself sends (celery/app/amqp.py, worker/strategy.py,
worker/request.py, worker/heartbeat.py); the dispatcher or the envelope builder adds
hostname, utcoffset, pid, clock and type, as EventDispatcher does.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import heapq
import itertools
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

# A fixed start keeps recordings deterministic (and so cacheable); the exporter's counters
# do not depend on how old the sender's timestamps are.
EPOCH = 1_750_000_000.0
# Bump when the generator changes: cached recordings are keyed by spec and this.
GENERATOR_VERSION = 1
HEARTBEAT_SECONDS = 2.0
MAX_RETRIES = 2
QUEUE_NAMES = ("celery", "default", "emails", "reports", "billing", "media", "search", "sync")
EXCEPTIONS = (
    ("ValueError", "invalid literal for int() with base 10: 'x{}'"),
    ("KeyError", "'field_{}'"),
    ("TimeoutError", "operation timed out after {} s"),
    ("ConnectionError", "Error 111 connecting to db-{}:5432. Connection refused."),
    ("IntegrityError", 'duplicate key value violates unique constraint "pk_{}"'),
    ("PermissionError", "[Errno 13] Permission denied: '/data/{}'"),
)
_MODULES = ("accounts", "billing", "catalog", "emails", "media", "orders", "reports", "search")
_VERBS = ("sync", "send", "build", "refresh", "process", "import", "export", "notify", "resize")
# How a task event changes the number of tasks its worker runs, for heartbeats.
_RUNNING = {"task-started": 1, "task-succeeded": -1, "task-failed": -1, "task-retried": -1}


class SimEvent(NamedTuple):
    """One event as a sender passes it to EventDispatcher.send: type, sender and fields."""

    hostname: str
    type: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class WorkloadSpec:
    """Shape of the simulated traffic; equal specs give identical event streams."""

    task_events: int
    task_names: int = 50
    workers: int = 10
    queues: int = 4
    workers_per_queue: int = 0  # 0: every worker consumes every queue
    producers: int = 3
    tasks_per_second: float = 200.0  # simulated time
    failure_rate: float = 0.04
    retry_rate: float = 0.03
    exceptions_per_task: int = 2
    seed: int = 7

    def key(self) -> str:
        """A short stable digest of the spec, for cache file names."""
        fields = {**dataclasses.asdict(self), "generator": GENERATOR_VERSION}
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def worker_hostnames(count: int) -> list[str]:
    return [f"celery@w{i}" for i in range(count)]


def task_names(count: int) -> list[str]:
    """Distinct dotted task names such as ``orders.tasks.refresh_orders_3``."""
    names = []
    for i in range(count):
        module = _MODULES[i % len(_MODULES)]
        verb = _VERBS[(i // len(_MODULES)) % len(_VERBS)]
        names.append(f"{module}.tasks.{verb}_{module}_{i}")
    return names


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _traceback(rng: random.Random, name: str, exc: str) -> str:
    frames = [
        '  File "/app/.venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, '
        "in trace_task\n    R = retval = fun(*args, **kwargs)\n",
        '  File "/app/.venv/lib/python3.11/site-packages/celery/app/trace.py", line 736, '
        "in __protected_call__\n    return self.run(*args, **kwargs)\n",
    ]
    module = name.rsplit(".", 1)[0].replace(".", "/")
    for depth in range(rng.randint(1, 4)):
        frames.append(
            f'  File "/app/{module}.py", line {rng.randint(10, 900)}, in step_{depth}\n'
            f"    result = handler.run(payload, attempt={depth})\n"
        )
    return "Traceback (most recent call last):\n" + "".join(frames) + exc + "\n"


class _Cluster:
    """Builds the events; one instance per generated stream."""

    def __init__(self, spec: WorkloadSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.names = task_names(spec.task_names)
        self.workers = worker_hostnames(spec.workers)
        self.producers = [f"gen{4100 + i}@web-{i}" for i in range(spec.producers)]
        queues = list(QUEUE_NAMES[: spec.queues])
        self.queue_of = {name: queues[i % len(queues)] for i, name in enumerate(self.names)}
        self.consumers: dict[str, list[str]] = {}
        for index, queue in enumerate(queues):
            if spec.workers_per_queue:
                start = index * spec.workers_per_queue
                picked = [
                    self.workers[(start + j) % len(self.workers)]
                    for j in range(spec.workers_per_queue)
                ]
                self.consumers[queue] = picked
            else:
                self.consumers[queue] = self.workers
        self.exceptions = {
            name: [EXCEPTIONS[(i + j) % len(EXCEPTIONS)] for j in range(spec.exceptions_per_task)]
            for i, name in enumerate(self.names)
        }
        self.timed: list[tuple[float, int, SimEvent]] = []  # (time, emission order, event)
        self._order = itertools.count()
        self.task_event_count = 0
        self.runs: dict[str, list[tuple[float, float]]] = {w: [] for w in self.workers}
        self.received_at: dict[str, list[float]] = {w: [] for w in self.workers}

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def emit(self, at: float, hostname: str, etype: str, **fields: Any) -> None:
        fields["timestamp"] = round(at, 6)  # last, as Event() appends it
        self.timed.append((at, next(self._order), SimEvent(hostname, etype, fields)))
        if etype.startswith("task-"):
            self.task_event_count += 1

    def run_task(self, sent_at: float) -> None:
        rng, spec = self.rng, self.spec
        name = rng.choice(self.names)
        queue = self.queue_of[name]
        task_id = self.uuid()
        args = repr((rng.randint(1, 10**6), "x" * rng.randint(0, 60)))
        kwargs = repr({"user_id": rng.randint(1, 10**5), "force": rng.random() < 0.5})
        sender = rng.choice(self.producers)
        eta: str | None = None
        retries = 0
        at = sent_at
        while True:
            self.emit(at, sender, "task-sent", uuid=task_id, root_id=task_id, parent_id=None,
                      name=name, args=args, kwargs=kwargs, retries=retries, eta=eta,
                      expires=None, queue=queue, exchange="", routing_key=queue)  # fmt: skip
            worker = rng.choice(self.consumers[queue])
            received = at + rng.uniform(0.001, 0.02)
            self.emit(received, worker, "task-received", uuid=task_id, name=name, args=args,
                      kwargs=kwargs, root_id=task_id, parent_id=None, retries=retries, eta=eta,
                      expires=None)  # fmt: skip
            self.received_at[worker].append(received)
            started = max(received, at + rng.expovariate(1 / 0.05)) + 0.0005
            self.emit(started, worker, "task-started", uuid=task_id)
            runtime = rng.lognormvariate(-2.0, 1.2)
            ended = started + runtime
            self.runs[worker].append((started, ended))
            roll = rng.random()
            retry = spec.failure_rate <= roll < spec.failure_rate + spec.retry_rate
            if roll < spec.failure_rate or (retry and retries == MAX_RETRIES):
                exc = self.exception(name)
                self.emit(ended, worker, "task-failed", uuid=task_id, exception=exc,
                          traceback=_traceback(rng, name, exc))  # fmt: skip
                return
            if retry:
                exc = self.exception(name)
                self.emit(ended, worker, "task-retried", uuid=task_id, exception=exc,
                          traceback=_traceback(rng, name, exc))  # fmt: skip
                # Task.retry re-publishes from the worker with a countdown (an ETA).
                retries += 1
                sender = worker
                at = ended + 0.001
                eta = _iso(at + 3.0 * retries)
                continue
            result = repr({"ok": True, "rows": rng.randint(0, 5000)})
            self.emit(ended, worker, "task-succeeded", uuid=task_id, result=result,
                      runtime=round(runtime, 6))  # fmt: skip
            return

    def exception(self, name: str) -> str:
        cls, message = self.rng.choice(self.exceptions[name])
        return f"{cls}({message.format(self.rng.randint(1, 99))!r})"

    def heartbeats(self, start: float, end: float) -> None:
        for index, worker in enumerate(self.workers):
            runs = self.runs[worker]
            starts = sorted(s for s, _ in runs)
            ends = sorted(e for _, e in runs)
            received = sorted(self.received_at[worker])
            at = start + index * HEARTBEAT_SECONDS / len(self.workers)
            etype = "worker-online"
            while at <= end:
                active = bisect.bisect_right(starts, at) - bisect.bisect_right(ends, at)
                self.heartbeat(at, worker, etype, active, bisect.bisect_right(received, at))
                etype = "worker-heartbeat"
                at += HEARTBEAT_SECONDS

    def heartbeat(self, at: float, worker: str, etype: str, active: int, processed: int) -> None:
        load = round(1.0 + active / 4 + self.rng.random() / 10, 2)
        self.emit(at, worker, etype, freq=HEARTBEAT_SECONDS, active=active, processed=processed,
                  loadavg=[load, round(load * 0.9, 2), round(load * 0.8, 2)],
                  sw_ident="py-celery", sw_ver="5.7.0", sw_sys="Linux")  # fmt: skip

    def stream(self, start: float) -> Iterator[SimEvent]:
        """Tasks from ``start`` on, without end, and heartbeats, in send order."""
        # Every event of a task comes at or after its task-sent, so whatever falls due
        # before the next task's task-sent can go. A str is a worker whose heartbeat is due.
        due: list[tuple[float, int, SimEvent | str]] = []
        for index, worker in enumerate(self.workers):
            at = start - 0.5 + index * HEARTBEAT_SECONDS / len(self.workers)
            due.append((at, next(self._order), worker))
        heapq.heapify(due)
        kind = dict.fromkeys(self.workers, "worker-online")
        active = dict.fromkeys(self.workers, 0)
        processed = dict.fromkeys(self.workers, 0)
        at = start
        while True:
            self.run_task(at)
            for emitted in self.timed:
                heapq.heappush(due, emitted)
            self.timed.clear()
            # Only generate()'s heartbeats read these; here the events that went out count.
            for runs in self.runs.values():
                runs.clear()
            for received in self.received_at.values():
                received.clear()
            at += self.rng.expovariate(self.spec.tasks_per_second)
            while due[0][0] <= at:
                moment, _, item = heapq.heappop(due)
                if isinstance(item, str):
                    self.heartbeat(moment, item, kind[item], active[item], processed[item])
                    kind[item] = "worker-heartbeat"
                    yield self.timed.pop()[2]
                    heapq.heappush(due, (moment + HEARTBEAT_SECONDS, next(self._order), item))
                    continue
                if item.hostname in active:  # not a producer's task-sent
                    active[item.hostname] += _RUNNING.get(item.type, 0)
                    processed[item.hostname] += item.type == "task-received"
                yield item


def generate(spec: WorkloadSpec) -> list[SimEvent]:
    """The whole stream in send order: about ``spec.task_events`` task events plus heartbeats."""
    cluster = _Cluster(spec)
    at = EPOCH
    while cluster.task_event_count < spec.task_events:
        cluster.run_task(at)
        at += cluster.rng.expovariate(spec.tasks_per_second)
    last = max(moment for moment, _, _ in cluster.timed)
    cluster.heartbeats(EPOCH - 0.5, last + HEARTBEAT_SECONDS)
    cluster.timed.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in cluster.timed]


def stream(spec: WorkloadSpec, start: float) -> Iterator[SimEvent]:
    """What ``generate`` gives, from ``start`` on and without end, for a sustained replay.

    Tasks come at ``spec.tasks_per_second`` (``task_events`` is not used), each with a new id.
    Heartbeats report what their worker runs and has received as of the events sent before.
    """
    return _Cluster(spec).stream(start)
