"""Task correlation: which task, queue and attempt each event belongs to, and when to count it.

Only task-sent and task-received name the task, so later events are joined to them by uuid through
a bounded map. Events of a uuid whose name is not known yet (started arriving before received,
or a task-sent that is late) are held for ``name_wait`` seconds and counted once the name (and,
where producers send task-sent, the queue) comes, or with ``unknown`` when it does not. What an
event counts towards lives in ``exporter.state.accounts``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from exporter.events.model import (
    TASK_FAILED,
    TASK_RECEIVED,
    TASK_SENT,
    TASK_STARTED,
    TASK_SUCCEEDED,
    TaskEvent,
)
from exporter.settings import Settings
from exporter.state.accounts import Key3, RunningTask, TaskAccounts, TaskSnapshot
from exporter.state.bounded import BoundedMap
from exporter.state.labels import (
    OVERFLOW,
    UNKNOWN,
    TaskLabels,
    exception_class,
)
from exporter.state.routing import QueueResolver

# How long after the last task-sent producers are still assumed to send them.
SENT_MEMORY = 600.0


class Stage(enum.Enum):
    """Where a task id stands: held back, or as of the latest event counted for it."""

    HELD = enum.auto()  # events wait for the name or the queue (``pending``); nothing counted
    WAITING = enum.auto()  # named; no attempt started yet
    RUNNING = enum.auto()  # an attempt started
    ENDED = enum.auto()  # an attempt ended; a retry may follow
    FAILED = enum.auto()  # an attempt ended with task-failed (a second one is a duplicate)


class _Record:
    """What is remembered of one task id between its events."""

    __slots__ = (
        "attempts",
        "ends",
        "label",
        "name",
        "next_attempt",
        "pending",
        "queue",
        "received_at",
        "received_next",
        "stage",
        "started_at",
        "starts",
        "touched",
    )

    def __init__(self) -> None:
        self.name: str | None = None
        self.label: str | None = None  # the task label, through the limiter once per record
        self.queue: str | None = None
        # Attempts not started yet, by retries number: (enqueued at, ETA, from task-sent).
        # Retries of a prefork worker overlap: attempt n+1's task-sent and task-received can
        # arrive before attempt n's task-started.
        self.attempts: dict[int, tuple[float, float | None, bool]] | None = None
        self.next_attempt = 0  # the lowest attempt number not started yet
        # Attempts below this one were received; the latest task-received's worker timestamp
        # tells a redelivery (a new one) from the same event twice.
        self.received_next = 0
        self.received_at: float | None = None
        self.starts = 0
        self.ends = 0
        self.started_at: float | None = None
        self.stage = Stage.WAITING
        self.pending: list[TaskEvent] | None = None  # while HELD
        self.touched = 0.0  # last use, for the bounded map's LRU order and TTL


def parse_eta(text: str | None) -> float | None:
    """Unix time of an ISO-8601 ETA (naive means UTC); None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class TaskState:
    """Applies task events; not thread-safe on its own (the pipeline holds the lock)."""

    def __init__(
        self,
        *,
        labels: TaskLabels,
        resolver: QueueResolver,
        max_tasks: int,
        ttl: float,
        name_wait: float,
        duration_buckets: Sequence[float],
        queue_wait_buckets: Sequence[float],
        watched: frozenset[str] = frozenset(),
        worker_retention: float,
        queue_forget: float,
        configured_queues: frozenset[str] = frozenset(),
    ) -> None:
        self.labels = labels
        self._resolver = resolver
        self._name_wait = name_wait
        self.accounts = TaskAccounts(
            duration_buckets=duration_buckets, queue_wait_buckets=queue_wait_buckets
        )
        self._records: BoundedMap[str, _Record] = BoundedMap(
            max_size=max_tasks, ttl=ttl, on_evict=self._on_evict
        )
        self._now = 0.0  # the latest time given to apply() or sweep()
        self._held: dict[str, float] = {}  # uuid -> when its first event was held back
        self._last_sent = -math.inf  # our time of the latest task-sent
        self.duplicates = 0  # repeated end events of one attempt, not counted again
        # Task names whose latest task-sent (else task-received) time is kept: Beat's
        # heartbeat task and the periodic tasks named in the config.
        self._watched = watched
        self.last_seen: dict[str, float] = {}
        self._worker_retention = worker_retention
        self._queue_forget = queue_forget
        self._configured_queues = configured_queues

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        resolver: QueueResolver,
        watched: Iterable[str] = (),
    ) -> TaskState:
        """The task state the settings describe; watches Beat's and the periodic tasks (those
        of the config and ``watched``, the app's schedule)."""
        return cls(
            labels=TaskLabels(settings),
            resolver=resolver,
            max_tasks=settings.task_state_max_tasks,
            ttl=settings.task_state_ttl_seconds,
            name_wait=settings.task_name_wait_seconds,
            duration_buckets=settings.task_duration_buckets,
            queue_wait_buckets=settings.task_queue_wait_buckets,
            watched=frozenset(
                [*settings.periodic_tasks, *watched, *filter(None, [settings.beat_heartbeat_task])]
            ),
            worker_retention=settings.worker_retention_seconds,
            queue_forget=settings.queue_forget_seconds,
            configured_queues=frozenset(settings.queues),
        )

    # --- events ---

    def apply(self, event: TaskEvent, now: float) -> None:
        """Account for one task event received at ``now`` (our clock)."""
        self._now = now  # for evictions, which release held events
        record = self._records.get(event.uuid, now)
        if record is None:
            record = _Record()
            self._records.put(event.uuid, record, now)
        kind = event.type
        if kind == TASK_SENT:
            self._on_sent(record, event, now)
        elif kind == TASK_RECEIVED:
            self._on_received(record, event, now)
        elif record.name is None or record.stage is Stage.HELD:
            self._hold(event, record, now)
            return
        else:
            self._count(record, event, now)
            return
        if record.stage is Stage.HELD and not self._awaits_sent(record, event.hostname, now):
            self._release(event.uuid, record, now)

    def _on_sent(self, record: _Record, event: TaskEvent, now: float) -> None:
        self._last_sent = now
        if event.name:
            self._name(record, event.name)
            if event.name in self._watched:
                self._seen(event.name, event.timestamp)
        if event.queue:
            record.queue = self.labels.queue(event.queue, now)
        attempt = record.next_attempt if event.retries is None else event.retries
        if attempt >= record.next_attempt:
            # task-sent says when the attempt entered the queue, better than task-received.
            self._attempts(record)[attempt] = (event.timestamp, parse_eta(event.eta), True)
        key = (record.label or UNKNOWN, record.queue or self.labels.queue(UNKNOWN, now))
        self.accounts.add(self.accounts.sent, key)

    def _on_received(self, record: _Record, event: TaskEvent, now: float) -> None:
        if event.name:
            self._name(record, event.name)
        attempt = record.next_attempt if event.retries is None else event.retries
        attempts = self._attempts(record)
        if attempt >= record.next_attempt and attempt not in attempts:
            # No task-sent (yet) for this attempt: task-received stands in for it.
            if record.name is not None and record.name in self._watched:
                self._seen(record.name, event.timestamp)
            attempts[attempt] = (event.timestamp, parse_eta(event.eta), False)
        if record.stage is Stage.HELD or self._awaits_sent(record, event.hostname, now):
            self._hold(event, record, now)
        else:
            self._count(record, event, now)

    @staticmethod
    def _attempts(record: _Record) -> dict[int, tuple[float, float | None, bool]]:
        if record.attempts is None:
            record.attempts = {}
        return record.attempts

    def _name(self, record: _Record, name: str) -> None:
        if name != record.name:
            label = self.labels.task(name)
            # Records outlive events: the limiter's copy of an admitted name, so one copy per
            # task name rather than one per task (a cut or overflowing name keeps its own).
            record.name = label if label == name else name
            record.label = label

    def _seen(self, name: str, timestamp: float) -> None:
        if timestamp > self.last_seen.get(name, 0.0):
            self.last_seen[name] = timestamp

    def _awaits_sent(self, record: _Record, hostname: str, now: float) -> bool:
        """Whether to hold a task's events for the task-sent that names its queue.

        Celery publishes task-sent after the task message itself, so a fast worker's
        task-received can arrive first. When nothing else names the queue, the events wait
        for it (up to ``name_wait``), as long as producers send task-sent at all: one was seen
        in the last ``SENT_MEMORY`` seconds. Without task-sent nothing is held back.
        """
        # Cheapest first: without task-sent producers the resolver is not consulted at all.
        return (
            record.queue is None
            and self.sent_recently(now)
            and not self._resolver.resolve(record.name, hostname)
        )

    def sent_recently(self, now: float) -> bool:
        """Whether a task-sent arrived within the last ``SENT_MEMORY`` seconds."""
        return now - self._last_sent < SENT_MEMORY

    def _hold(self, event: TaskEvent, record: _Record, now: float) -> None:
        if record.pending is None:
            record.stage = Stage.HELD
            record.pending = []
            self._held[event.uuid] = now
        record.pending.append(event)

    def _labels(self, record: _Record, hostname: str, now: float) -> Key3:
        if record.queue is None:
            record.queue = self._resolver.resolve(record.name, hostname) or UNKNOWN
        # Every use keeps the queue alive; one released since comes back through the limit.
        record.queue = self.labels.queue(record.queue, now)
        return (record.label or UNKNOWN, record.queue, self.labels.worker(hostname, now))

    def _count(self, record: _Record, event: TaskEvent, now: float) -> None:
        kind = event.type
        redelivered = kind == TASK_RECEIVED and self._received_again(record, event)
        # Celery 5.7 sends task-failed twice for a hard time limit (pool and request).
        if redelivered is None or (kind == TASK_FAILED and record.stage is Stage.FAILED):
            self.duplicates += 1
            return
        key = self._labels(record, event.hostname, now)
        accounts = self.accounts
        if redelivered:
            accounts.add(accounts.redelivered, key[:2])
        if kind == TASK_FAILED:
            exception = exception_class(event.exception)
            accounts.count_failed(key, exception, self.labels.exception(exception))
        else:
            accounts.count(kind, key)
        if kind == TASK_STARTED:
            self._on_started(record, event, key, now)
        elif kind != TASK_RECEIVED:
            self._on_ended(record, event, key)

    def _on_ended(self, record: _Record, event: TaskEvent, key: Key3) -> None:
        """Succeeded, failed, retried, rejected or revoked: the attempt ends."""
        kind = event.type
        if kind in (TASK_SUCCEEDED, TASK_FAILED):
            accounts = self.accounts
            succeeded = kind == TASK_SUCCEEDED
            runtime = event.runtime if succeeded else None
            if runtime is None and record.started_at is not None:
                runtime = event.timestamp - record.started_at
            if runtime is not None:
                accounts.observe_duration((*key, "succeeded" if succeeded else "failed"), runtime)
            if record.next_attempt > 1:  # the attempt that ended was a retry
                accounts.add(accounts.recovered if succeeded else accounts.exhausted, key[:2])
        self._finish(record, event.uuid, kind)

    def _received_again(self, record: _Record, event: TaskEvent) -> bool | None:
        """Whether this task-received delivers an attempt that was received before: True for a
        redelivery by the broker, None for the same event twice, False for a first delivery."""
        attempt = event.retries
        if attempt is None:  # an old Celery's event: attempts cannot be told apart
            return False
        if attempt >= record.received_next:
            record.received_next = attempt + 1
            record.received_at = event.timestamp
            return False
        if event.timestamp == record.received_at:
            return None
        record.received_at = event.timestamp
        if attempt < record.next_attempt:
            # It had started: the attempt waits in the queue again, from now.
            record.next_attempt = attempt
            self._attempts(record)[attempt] = (event.timestamp, parse_eta(event.eta), False)
            if record.stage is Stage.RUNNING:
                # Handed out again before its worker was seen lost (RabbitMQ requeues a dead
                # consumer's messages at once): that run is over, uncounted as orphaned.
                record.ends = record.starts
                record.started_at = None
                record.stage = Stage.ENDED
                self.accounts.end(event.uuid)
        return True

    def _on_started(self, record: _Record, event: TaskEvent, key: Key3, now: float) -> None:
        record.started_at = event.timestamp
        record.stage = Stage.RUNNING
        record.starts += 1
        self.accounts.start(
            event.uuid, RunningTask(key[0], key[1], event.hostname, event.timestamp, now)
        )
        if not record.attempts:
            record.next_attempt += 1
            return
        # task-started names no attempt: it starts the lowest one still waiting.
        attempt = min(record.attempts)
        enqueued_at, eta, _from_sent = record.attempts.pop(attempt)
        if not record.attempts:
            record.attempts = None  # an emptied dict keeps its table: ~200 bytes per task id
        record.next_attempt = attempt + 1
        since = enqueued_at if eta is None else max(enqueued_at, eta)
        self.accounts.observe_wait(key, event.timestamp - since)

    def _finish(self, record: _Record, uuid: str, kind: str) -> None:
        record.stage = Stage.FAILED if kind == TASK_FAILED else Stage.ENDED
        record.ends += 1
        # A late task-retried of attempt n may arrive after attempt n+1 started: the task is
        # running until every started attempt has ended.
        if record.ends >= record.starts:
            record.started_at = None
            self.accounts.end(uuid)

    def _release(self, uuid: str, record: _Record, now: float) -> None:
        """Count the events held back for ``uuid`` now that its name is known or overdue."""
        held, record.pending = record.pending or [], None
        record.stage = Stage.WAITING
        self._held.pop(uuid, None)
        for event in held:
            self._count(record, event, now)

    def _on_evict(self, uuid: str, record: _Record) -> None:
        if record.stage is Stage.HELD:
            self._release(uuid, record, self._now)

    # --- upkeep ---

    def sweep(self, now: float) -> None:
        """Count held events whose name never came, then forget idle task ids."""
        self._now = now
        deadline = now - self._name_wait
        held = self._held
        while held:
            uuid, since = next(iter(held.items()))
            if since > deadline:
                break
            record = self._records.peek(uuid)
            if record is None:
                del held[uuid]
            else:
                self._release(uuid, record, now)
        self._records.expire(now)

    def expire_labels(self, now: float, worker_known: Callable[[str], bool]) -> None:
        """Remove every series of a worker or queue value nothing used lately.

        A worker value goes once none of its nodenames is known to the worker state (alive or
        retained), runs a task, or sent an event within the retention; a queue value once no
        task of it runs or had an event for ``queue_forget`` seconds and it is not configured.
        Their limiter slots free up with them.
        """
        running_queues = {task.queue for task in self.accounts.running.values()}
        running_workers = self.accounts.running_by_host.keys()
        workers = self.labels.worker.expire(
            now - self._worker_retention,
            lambda hostname: hostname in running_workers or worker_known(hostname),
        )
        queues = self.labels.queue.expire(
            now - self._queue_forget,
            lambda queue: queue in running_queues or queue in self._configured_queues,
        )
        if workers or queues:
            self.accounts.purge(workers, queues)

    def end_running(
        self, hostname: str, *, started_before: float | None = None, orphaned: bool = False
    ) -> None:
        """End the attempts running on ``hostname`` (those started before ``started_before``):
        its worker went down with them (``orphaned``, counted), or it reports none active and
        their final events were lost."""
        accounts = self.accounts
        stale = [
            (uuid, task)
            for uuid, task in accounts.running_by_host.get(hostname, {}).items()
            if started_before is None or task.started_at < started_before
        ]
        for uuid, task in stale:
            record = self._records.peek(uuid)
            if record is not None:
                record.ends = record.starts
                record.started_at = None
                record.stage = Stage.ENDED
            if orphaned:
                accounts.add(accounts.orphaned, (task.task, task.queue))
            accounts.end(uuid)

    def running_on(self) -> set[str]:
        """Nodenames of the workers running a task."""
        return set(self.accounts.running_by_host)

    # --- reading ---

    def sent_at(self, uuids: list[str]) -> dict[str, float]:
        """When each task, still waiting to start, was sent (task-sent seen only)."""
        found: dict[str, float] = {}
        for uuid in uuids:
            record = self._records.peek(uuid)
            waiting = record.attempts if record is not None else None
            sent = [at for at, _eta, from_sent in (waiting or {}).values() if from_sent]
            if sent:
                found[uuid] = min(sent)
        return found

    def queues_seen(self) -> set[str]:
        """Queue label values task-sent events named."""
        return {queue for _task, queue in self.accounts.sent if queue not in (UNKNOWN, OVERFLOW)}

    @property
    def tracked(self) -> int:
        return len(self._records)

    @property
    def evictions(self) -> dict[str, int]:
        return {"capacity": self._records.evicted_capacity, "ttl": self._records.evicted_ttl}

    def snapshot(self) -> TaskSnapshot:
        """Copy everything a scrape needs; call with the lock held, render without it."""
        return self.accounts.snapshot(last_seen=dict(self.last_seen))
