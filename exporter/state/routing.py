"""Which queue a task came from, when its task-sent event does not say.

Producers send task-sent (the only event naming the queue) only with task_send_sent_event. Without
it the queue is learned, in this order: the worker consumes exactly one queue (learned by
inspection), or the app's task_routes (``--app``) name it. Otherwise it is ``unknown``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

_ROUTE_CACHE_SIZE = 10_000


class QueueResolver:
    """Answers ``resolve(task, worker)`` from data swapped in whole by the inspector and app."""

    def __init__(self, *, route: Callable[[str], str | None] | None = None) -> None:
        self._route = route
        self._route_cache: dict[str, str | None] = {}
        self._single_queue: dict[str, str] = {}
        self.worker_queues: dict[str, tuple[str, ...]] = {}

    def set_worker_queues(self, queues: Mapping[str, tuple[str, ...]]) -> None:
        """Replace what is known of the queues each worker consumes."""
        self._install({**self.worker_queues, **queues})

    def forget_worker(self, worker: str) -> None:
        """Drop a worker that left for good."""
        if worker in self.worker_queues:
            self._install({w: qs for w, qs in self.worker_queues.items() if w != worker})

    def _install(self, merged: dict[str, tuple[str, ...]]) -> None:
        single = {worker: qs[0] for worker, qs in merged.items() if len(qs) == 1}
        # Swapped, never mutated: readers on the event thread see one version or the other.
        self.worker_queues, self._single_queue = merged, single

    def resolve(self, task: str | None, worker: str) -> str | None:
        """The queue ``task`` run by ``worker`` came from, or None when it cannot be known."""
        queue = self._single_queue.get(worker)
        if queue is not None or self._route is None or task is None:
            return queue
        try:
            return self._route_cache[task]
        except KeyError:
            pass
        queue = self._route(task)
        if len(self._route_cache) >= _ROUTE_CACHE_SIZE:
            self._route_cache.clear()
        self._route_cache[task] = queue
        return queue
