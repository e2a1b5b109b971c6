"""Task metrics, built at scrape time from a copy of the task state."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client.metrics_core import Metric

from exporter.metrics import defs
from exporter.metrics.family import HistogramFamily
from exporter.pipeline import StateView
from exporter.state.accounts import HistogramSnapshot, Key2, Key3, Key4


def _histogram(
    family: HistogramFamily,
    series: Mapping[Key3, HistogramSnapshot] | Mapping[Key4, HistogramSnapshot],
) -> HistogramFamily:
    for labels, hist in series.items():
        family.add_metric(labels, hist.counts, hist.total)
    return family


def _from_zero(seen: Mapping[Key3, int], counts: Mapping[Key2, int]) -> dict[Key2, int]:
    """``counts``, with 0 for every (task, queue) of ``seen`` it lacks."""
    return {**dict.fromkeys([(task, queue) for task, queue, _worker in seen], 0), **counts}


def bounds_text(buckets: Sequence[float]) -> list[str]:
    """Bucket bounds as Prometheus writes them (1.0 -> "1.0"), with "+Inf" last."""
    return [repr(float(value)) for value in buckets] + ["+Inf"]


class TaskCollector:
    """Counters, histograms and running-task gauges per task, queue and worker."""

    def __init__(
        self,
        *,
        view: StateView,
        clock: Callable[[], float],
        sla: Mapping[str, float],
        sla_default: float,
    ) -> None:
        self._view = view
        self._clock = clock
        self._sla = dict(sla)
        self._sla_default = sla_default
        # Formatted once: they never change while the process lives.
        self._duration_bounds = bounds_text(view.duration_buckets)
        self._queue_wait_bounds = bounds_text(view.queue_wait_buckets)

    def collect(self) -> Iterable[Metric]:
        snap = self._view.tasks()
        now = self._clock()
        for definition, values in (
            (defs.TASK_SENT, snap.sent),
            (defs.TASK_RECEIVED, snap.received),
            (defs.TASK_STARTED, snap.started),
            (defs.TASK_SUCCEEDED, snap.succeeded),
            (defs.TASK_FAILED, snap.failed),
            (defs.TASK_RETRIED, snap.retried),
            (defs.TASK_REJECTED, snap.rejected),
            (defs.TASK_REVOKED, snap.revoked),
            (defs.TASK_TIMEOUTS, snap.timeouts),
            # 0 rather than absent once the task and queue had one, so that the first
            # redelivery or orphan is an increase that rate() and increase() see.
            (defs.TASK_REDELIVERED, _from_zero(snap.received, snap.redelivered)),
            (defs.TASK_ORPHANED, _from_zero(snap.started, snap.orphaned)),
            (defs.TASK_RECOVERED, snap.recovered),
            (defs.TASK_RETRIES_EXHAUSTED, snap.exhausted),
        ):
            family = definition.counter()
            family.add_rows(values.items())
            yield family
        yield _histogram(defs.TASK_DURATION.histogram(self._duration_bounds), snap.duration)
        yield _histogram(defs.TASK_QUEUE_WAIT.histogram(self._queue_wait_bounds), snap.queue_wait)
        # 0 rather than absent for every task and queue that ran here, until their series go:
        # a panel then says 0 when nothing runs, not "No data".
        running = dict.fromkeys([(task, queue) for task, queue, _worker in snap.started], 0)
        oldest: dict[tuple[str, str], float] = {}
        for task in snap.running:
            key = (task.task, task.queue)
            running[key] = running.get(key, 0) + 1
            oldest[key] = min(oldest.get(key, task.seen_at), task.seen_at)
        count_family = defs.TASK_RUNNING.gauge()
        age_family = defs.TASK_OLDEST_RUNNING_AGE.gauge()
        for key, count in running.items():
            count_family.add_metric(key, count)
            age_family.add_metric(key, max(0.0, now - oldest[key]) if key in oldest else 0.0)
        yield count_family
        yield age_family
        # One SLA series per task seen, so rules compare `on(task)` without a default clause.
        sla = defs.TASK_SLA.gauge()
        for name in sorted({key[0] for key in snap.started} | set(self._sla)):
            sla.add_metric([name], self._sla.get(name, self._sla_default))
        yield sla
