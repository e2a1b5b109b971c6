"""One worker's processes over time: its pool, pool processes replaced, CPU that never goes back.

A sample is the worker's main process and its children as /proc shows them. Pool processes
that exit while the same main process lives, and are followed by new children, were replaced
(``max_tasks_per_child``, ``max_memory_per_child``, a crash). CPU time is the main process's,
including the children it reaped, plus its live (and exited, unreaped) children's: a
recycled pool process's time moves into its parent's reaped-children time, so the sum does
not drop. A new main process (the worker restarted in the pod) starts a new sum on top of
the last one reported, so both counters continue.
"""

from __future__ import annotations

from typing import NamedTuple

from exporter.sidecar.procfs import Process


class PoolSnapshot(NamedTuple):
    """What one worker's processes add up to, as of the last sample."""

    main_pid: int
    main_start_ticks: int  # clock ticks after boot
    pool_processes: int
    replacements: int
    cpu_seconds: float
    rss_bytes: int
    largest_pool_rss_bytes: int  # the main process's when the pool has no processes


class PoolTracker:
    """Fed one sample at a time; counts replacements and keeps CPU monotonic."""

    def __init__(self) -> None:
        self._main: tuple[int, int] | None = None  # (pid, start_ticks)
        self._pool: set[tuple[int, int]] = set()
        self._exited = 0  # pool processes gone and not yet matched by a new one
        self._replacements = 0
        self._cpu_base = 0.0  # CPU of earlier main processes
        self._cpu = 0.0
        self.snapshot: PoolSnapshot | None = None

    def sample(self, main: Process, children: list[Process]) -> PoolSnapshot:
        identity = (main.pid, main.start_ticks)
        live = [child for child in children if not child.zombie]
        pool = {(child.pid, child.start_ticks) for child in live}
        if identity != self._main:
            # A new main process: its first children are its pool, not replacements.
            self._main = identity
            self._cpu_base = self._cpu
            self._exited = 0
        else:
            self._exited += len(self._pool - pool)
            replaced = min(self._exited, len(pool - self._pool))
            self._replacements += replaced
            self._exited -= replaced
        self._pool = pool
        cpu = self._cpu_base + main.cpu_seconds + sum(child.cpu_seconds for child in children)
        # A child reaped between reading it and reading its parent is briefly in neither.
        self._cpu = max(self._cpu, cpu)
        self.snapshot = PoolSnapshot(
            main_pid=main.pid,
            main_start_ticks=main.start_ticks,
            pool_processes=len(live),
            replacements=self._replacements,
            cpu_seconds=self._cpu,
            rss_bytes=main.rss_bytes + sum(child.rss_bytes for child in live),
            largest_pool_rss_bytes=max((child.rss_bytes for child in live), default=main.rss_bytes),
        )
        return self.snapshot
