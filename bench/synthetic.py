"""Streams built without EventDispatcher, and the check that they look like its output."""

from __future__ import annotations

import base64
import random
import re
import uuid
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from bench.dispatch import cached_recording
from bench.envelope import BUFFER_LIMIT, EnvelopeEncoder, check_compatible
from bench.procs import RedisServer
from bench.recording import Message
from bench.workload import EPOCH, SimEvent, WorkloadSpec, generate, task_names, worker_hostnames

# Small enough to record with the dispatcher in a second, varied enough to hold every shape
# of event (retries with an ETA, failures) that the synthetic streams produce.
SAMPLE_SPEC = WorkloadSpec(task_events=3000, failure_rate=0.1, retry_rate=0.1, seed=3)


class _Task(NamedTuple):
    task_id: str
    worker: str
    name: str
    args: str
    kwargs: str
    received: float
    started: float
    runtime: float
    succeeded: float
    result: str


def _tasks(ids: int, *, names: int, workers: int, seed: int) -> Iterator[_Task]:
    rng = random.Random(seed)
    all_names = task_names(names)
    hosts = worker_hostnames(workers)
    at = EPOCH
    for index in range(ids):
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        name = all_names[rng.randrange(names)]
        args = repr((rng.randint(1, 10**6), "x" * rng.randint(0, 60)))
        kwargs = repr({"user_id": rng.randint(1, 10**5), "force": rng.random() < 0.5})
        at += 0.001
        runtime = round(rng.lognormvariate(-2.0, 1.2), 6)
        result = repr({"ok": True, "rows": rng.randint(0, 5000)})
        started = round(at + 0.01, 6)
        succeeded = round(at + 0.01 + runtime, 6)
        worker = hosts[index % workers]
        yield _Task(
            task_id, worker, name, args, kwargs, round(at, 6), started, runtime, succeeded, result
        )


def lifecycles(ids: int, *, names: int, workers: int, seed: int = 5) -> Iterator[SimEvent]:
    """received, started, succeeded for ``ids`` distinct task ids, spread over workers."""
    for task in _tasks(ids, names=names, workers=workers, seed=seed):
        yield SimEvent(task.worker, "task-received", {
            "uuid": task.task_id, "name": task.name, "args": task.args, "kwargs": task.kwargs,
            "root_id": task.task_id, "parent_id": None, "retries": 0, "eta": None,
            "expires": None, "timestamp": task.received,
        })  # fmt: skip
        yield SimEvent(task.worker, "task-started", {
            "uuid": task.task_id, "timestamp": task.started
        })  # fmt: skip
        yield SimEvent(task.worker, "task-succeeded", {
            "uuid": task.task_id, "result": task.result, "runtime": task.runtime,
            "timestamp": task.succeeded,
        })  # fmt: skip


# json.dumps output of the events and envelope EnvelopeEncoder builds for lifecycles(),
# as string templates: a million ids take seconds instead of a minute. Values are plain
# ASCII without quotes or backslashes, so no JSON escaping is needed; compatibility_problems
# checks the bytes against the generic encoder.
_HEAD = '{{"hostname": "{}", "utcoffset": 0.0, "pid": {}, "clock": {}, "uuid": "{}", '
_RECEIVED = _HEAD + (
    '"name": "{}", "args": "{}", "kwargs": "{}", "root_id": "{}", "parent_id": null, '
    '"retries": 0, "eta": null, "expires": null, "timestamp": {!r}, "type": "task-received"}}'
)
_STARTED = _HEAD + '"timestamp": {!r}, "type": "task-started"}}'
_SUCCEEDED = (
    _HEAD + '"result": "{}", "runtime": {!r}, "timestamp": {!r}, "type": "task-succeeded"}}'
)
_ENVELOPE = (
    '{{"body": "{}", "content-encoding": "utf-8", "content-type": "application/json", '
    '"headers": {{"hostname": "{}"}}, "properties": {{"delivery_mode": 1, "delivery_info": '
    '{{"exchange": "celeryev", "routing_key": "task.multi"}}, "priority": 0, '
    '"body_encoding": "base64", "delivery_tag": "{}"}}}}'
)
_MULTI_CHANNEL = b"/0.celeryev/task.multi"


def lifecycle_messages(
    ids: int, *, names: int, workers: int, seed: int = 5
) -> Iterator[tuple[Message, int]]:
    """What ``EnvelopeEncoder(batched=True).encode(lifecycles(...))`` gives, with event counts."""
    buffers: dict[str, list[str]] = {}
    pids: dict[str, int] = {}
    clock = 0

    def message(hostname: str) -> tuple[Message, int]:
        batch = buffers.pop(hostname)
        body = base64.b64encode(("[" + ", ".join(batch) + "]").encode()).decode()
        payload = _ENVELOPE.format(body, hostname, uuid.uuid4())
        return (_MULTI_CHANNEL, payload.encode()), len(batch)

    for task in _tasks(ids, names=names, workers=workers, seed=seed):
        host, task_id = task.worker, task.task_id
        pid = pids.setdefault(host, 1000 + len(pids))
        for text in (
            _RECEIVED.format(host, pid, clock + 1, task_id, task.name, task.args, task.kwargs,
                             task_id, task.received),
            _STARTED.format(host, pid, clock + 2, task_id, task.started),
            _SUCCEEDED.format(host, pid, clock + 3, task_id, task.result, task.runtime,
                              task.succeeded),
        ):  # fmt: skip
            buffer = buffers.setdefault(host, [])
            buffer.append(text)
            if len(buffer) >= BUFFER_LIMIT:
                yield message(host)
        clock += 3
    for host in list(buffers):
        yield message(host)


def _without_tags(messages: Iterable[Message]) -> list[Message]:
    """Messages with their random delivery_tag blanked, for byte comparison."""
    tag = re.compile(rb'"delivery_tag": "[0-9a-f-]{36}"')
    return [(channel, tag.sub(b'"delivery_tag": ""', payload)) for channel, payload in messages]


def compatibility_problems(redis: RedisServer) -> list[str]:
    """Differences between synthetic envelopes and what EventDispatcher publishes."""
    problems = []
    events = generate(SAMPLE_SPEC)
    for batched in (False, True):
        real, _ = cached_recording(
            SAMPLE_SPEC, batched=batched, redis_url=redis.url, redis_port=redis.port
        )
        synthetic = list(EnvelopeEncoder(batched=batched).encode(events))
        problems += check_compatible(real, synthetic)
        if batched:
            generic = list(
                EnvelopeEncoder(batched=True).encode(lifecycles(500, names=5, workers=3))
            )
            problems += check_compatible(real, generic)
            fast = [message for message, _ in lifecycle_messages(500, names=5, workers=3)]
            if _without_tags(fast) != _without_tags(generic):
                problems.append("lifecycle_messages() differs from EnvelopeEncoder's bytes")
    return problems
