"""Every metric the exporter publishes: name, type, help and labels. The only place names live.

Names are a contract with alert rules, dashboards and users; the README table is checked
against this module by the test suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from exporter.metrics.family import HistogramFamily, ScalarFamily

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    def counter(self) -> ScalarFamily:
        assert self.kind == "counter"
        return ScalarFamily(self.name, self.help, "counter", self.labels)

    def gauge(self) -> ScalarFamily:
        assert self.kind == "gauge"
        return ScalarFamily(self.name, self.help, "gauge", self.labels)

    def histogram(self, bounds: Sequence[str]) -> HistogramFamily:
        assert self.kind == "histogram"
        return HistogramFamily(self.name, self.help, self.labels, bounds)


TASK = ("task", "queue", "worker")

# --- tasks (collector "tasks") ---
TASK_SENT = MetricDef(
    "celery_task_sent_total", "counter",
    "Tasks published, from task-sent events (producers need task_send_sent_event).",
    ("task", "queue"),
)  # fmt: skip
TASK_RECEIVED = MetricDef(
    "celery_task_received_total", "counter", "Tasks received by a worker (task-received).", TASK
)
TASK_STARTED = MetricDef(
    "celery_task_started_total", "counter", "Tasks that started executing (task-started).", TASK
)
TASK_SUCCEEDED = MetricDef(
    "celery_task_succeeded_total", "counter", "Tasks that succeeded (task-succeeded).", TASK
)
TASK_FAILED = MetricDef(
    "celery_task_failed_total", "counter",
    "Tasks that failed (task-failed), by exception class.", (*TASK, "exception"),
)  # fmt: skip
TASK_RETRIED = MetricDef(
    "celery_task_retried_total",
    "counter",
    "Task attempts that ended in a retry (task-retried).",
    TASK,
)
TASK_REJECTED = MetricDef(
    "celery_task_rejected_total", "counter", "Tasks rejected by a worker (task-rejected).", TASK
)
TASK_REVOKED = MetricDef(
    "celery_task_revoked_total", "counter", "Tasks revoked (task-revoked).", TASK
)
TASK_TIMEOUTS = MetricDef(
    "celery_task_timeouts_total", "counter",
    "Tasks that hit a time limit (also counted as failed): kind soft or hard.",
    ("task", "queue", "kind"),
)  # fmt: skip
TASK_REDELIVERED = MetricDef(
    "celery_task_redelivered_total", "counter",
    "Tasks the broker delivered again for the same attempt (a second task-received with the same "
    "retries number): a visibility timeout, or a worker lost under task_reject_on_worker_lost.",
    ("task", "queue"),
)  # fmt: skip
TASK_ORPHANED = MetricDef(
    "celery_task_orphaned_total", "counter",
    "Tasks running on a worker that went down before they ended: its heartbeats stopped while "
    "the event stream ran, it restarted (a new pid under the same name), or it was still "
    "running them --worker-shutdown-grace-seconds after worker-offline. They no longer count "
    "as running.",
    ("task", "queue"),
)  # fmt: skip
TASK_RECOVERED = MetricDef(
    "celery_task_recovered_total", "counter",
    "Tasks that succeeded after at least one retry.", ("task", "queue"),
)  # fmt: skip
TASK_RETRIES_EXHAUSTED = MetricDef(
    "celery_task_retries_exhausted_total", "counter",
    "Tasks that failed after at least one retry.", ("task", "queue"),
)  # fmt: skip
TASK_DURATION = MetricDef(
    "celery_task_duration_seconds", "histogram",
    "Task run time: the worker's runtime when it succeeded, started to failed when it failed.",
    (*TASK, "state"),
)  # fmt: skip
TASK_QUEUE_WAIT = MetricDef(
    "celery_task_queue_wait_seconds", "histogram",
    "Time from task-sent (or task-received, or the ETA when later) to task-started.", TASK,
)  # fmt: skip
TASK_RUNNING = MetricDef(
    "celery_task_running", "gauge", "Tasks started and not finished yet.", ("task", "queue")
)
TASK_OLDEST_RUNNING_AGE = MetricDef(
    "celery_task_oldest_running_age_seconds", "gauge",
    "Age of the longest-running unfinished task.", ("task", "queue"),
)  # fmt: skip

TASK_SLA = MetricDef(
    "celery_task_sla_seconds", "gauge",
    "Configured duration SLA of each task seen (task_sla_seconds, else the default).", ("task",),
)  # fmt: skip

# --- workers (collector "workers") ---
WORKER_UP = MetricDef(
    "celery_worker_up", "gauge",
    "1 while the worker's heartbeats arrive on time, 0 after worker-offline or missed heartbeats.",
    ("worker",),
)  # fmt: skip
WORKER_LAST_HEARTBEAT = MetricDef(
    "celery_worker_last_heartbeat_timestamp_seconds", "gauge",
    "When the exporter received the worker's last heartbeat (unix time).", ("worker",),
)  # fmt: skip
WORKER_HEARTBEAT_INTERVAL = MetricDef(
    "celery_worker_heartbeat_interval_seconds", "gauge",
    "The worker's own heartbeat interval (freq).", ("worker",),
)  # fmt: skip
WORKER_TASKS_ACTIVE = MetricDef(
    "celery_worker_tasks_active", "gauge",
    "Tasks executing on the worker, as of its last heartbeat.", ("worker",),
)  # fmt: skip
WORKER_TASKS_PROCESSED = MetricDef(
    "celery_worker_tasks_processed_total", "counter",
    "Tasks the worker process has accepted since it started, as of its last heartbeat.",
    ("worker",),
)  # fmt: skip
WORKER_LOAD1 = MetricDef(
    "celery_worker_load1", "gauge", "One-minute load average of the worker's host.", ("worker",)
)
WORKER_CONCURRENCY = MetricDef(
    "celery_worker_concurrency", "gauge",
    "Pool size of the worker (max concurrency), as learned by inspection.", ("worker",),
)  # fmt: skip
WORKER_TASKS_RESERVED = MetricDef(
    "celery_worker_tasks_reserved", "gauge",
    "Tasks prefetched by the worker and not started, sampled at the last inspection.",
    ("worker",),
)  # fmt: skip
WORKERS_EXPECTED = MetricDef(
    "celery_workers_expected", "gauge", "Live workers expected in all, from the config."
)
QUEUE_WORKERS_EXPECTED = MetricDef(
    "celery_queue_workers_expected", "gauge",
    "Live workers expected to consume the queue, from the config.", ("queue",),
)  # fmt: skip
WORKER_CONSUMING = MetricDef(
    "celery_worker_consuming", "gauge",
    "1 for each queue the worker consumes, as learned by inspection.", ("worker", "queue"),
)  # fmt: skip

# --- the worker's processes (worker sidecar, --sidecar) ---
WORKER_PROCESSES_VISIBLE = MetricDef(
    "celery_worker_processes_visible", "gauge",
    "1 when the sidecar finds the worker's main process in its /proc, 0 when the pod does not "
    "share its process namespace.", ("worker",),
)  # fmt: skip
WORKER_START_TIME = MetricDef(
    "celery_worker_start_time_seconds", "gauge",
    "When the worker's main process started (unix time): it changes when the worker restarts.",
    ("worker",),
)  # fmt: skip
WORKER_MEMORY_RSS = MetricDef(
    "celery_worker_memory_rss_bytes", "gauge",
    "Resident memory of the worker's main process and pool processes together.", ("worker",),
)  # fmt: skip
WORKER_POOL_PROCESS_MAX_RSS = MetricDef(
    "celery_worker_pool_process_max_rss_bytes", "gauge",
    "Resident memory of the worker's largest pool process (the main process's when the pool "
    "has none: threads, solo, gevent, eventlet).", ("worker",),
)  # fmt: skip
WORKER_CPU = MetricDef(
    "celery_worker_cpu_seconds_total", "counter",
    "CPU time of the worker's main and pool processes, recycled and restarted ones included.",
    ("worker",),
)  # fmt: skip
WORKER_POOL_PROCESSES = MetricDef(
    "celery_worker_pool_processes", "gauge",
    "Live child processes of the worker's main process: prefork's pool (0 for other pools).",
    ("worker",),
)  # fmt: skip
WORKER_POOL_REPLACEMENTS = MetricDef(
    "celery_worker_pool_process_replacements_total", "counter",
    "Pool processes that exited and were replaced: max_tasks_per_child, max_memory_per_child, "
    "crashes.", ("worker",),
)  # fmt: skip

# --- queues (collector "queues") ---
QUEUE_LENGTH = MetricDef(
    "celery_queue_length", "gauge",
    "Messages waiting in the queue to be delivered, all priorities summed.", ("queue",),
)  # fmt: skip
QUEUE_LENGTH_BY_PRIORITY = MetricDef(
    "celery_queue_length_by_priority", "gauge",
    "Messages waiting per priority step (Redis; --queue-priority-metrics).", ("queue", "priority"),
)  # fmt: skip
QUEUE_UNACKED = MetricDef(
    "celery_queue_unacked", "gauge",
    "Messages delivered to workers and not acknowledged (prefetched, running, ETA).", ("queue",),
)  # fmt: skip
QUEUE_OLDEST_MESSAGE_AGE = MetricDef(
    "celery_queue_oldest_message_age_seconds", "gauge",
    "Age of the oldest waiting message, where its task-sent was seen (Redis).", ("queue",),
)  # fmt: skip
QUEUE_OLDEST_UNACKED_AGE = MetricDef(
    "celery_queue_oldest_unacked_age_seconds", "gauge",
    "Time since the oldest unacknowledged message was delivered (Redis).", ("queue",),
)  # fmt: skip
QUEUE_CONSUMERS = MetricDef(
    "celery_queue_consumers", "gauge", "Consumers the broker counts on the queue (RabbitMQ).",
    ("queue",),
)  # fmt: skip
QUEUE_CONSUMER_UTILISATION = MetricDef(
    "celery_queue_consumer_utilisation", "gauge",
    "Share of time the queue could deliver to its consumers at once; below 1 the consumers "
    "(prefetch, concurrency) hold it back (RabbitMQ management API).", ("queue",),
)  # fmt: skip
QUEUE_WORKERS = MetricDef(
    "celery_queue_workers", "gauge",
    "Live workers consuming the queue, as learned by inspection.", ("queue",),
)  # fmt: skip

# --- Beat (collector "beat") ---
BEAT_LAST_HEARTBEAT = MetricDef(
    "celery_beat_last_heartbeat_timestamp_seconds", "gauge",
    "Beat's last heartbeat (unix time), by source: events, redis_key or redbeat.", ("source",),
)  # fmt: skip
BEAT_UP = MetricDef(
    "celery_beat_up", "gauge",
    "1 while the source's last Beat heartbeat is younger than beat_max_heartbeat_age_seconds.",
    ("source",),
)  # fmt: skip
REDBEAT_LOCK_TTL = MetricDef(
    "celery_beat_redbeat_lock_ttl_seconds", "gauge",
    "Seconds left on RedBeat's lock (+Inf: held without expiry); absent when nobody holds it.",
)  # fmt: skip
REDBEAT_NEXT_DUE = MetricDef(
    "celery_beat_redbeat_next_due_timestamp_seconds", "gauge",
    "When the most overdue RedBeat schedule entry is or was due (unix time).",
)  # fmt: skip
PERIODIC_LAST_SENT = MetricDef(
    "celery_periodic_task_last_sent_timestamp_seconds", "gauge",
    "Last task-sent (else task-received) of a periodic task: one of the app's beat_schedule "
    "or named in the config; for RedBeat's entries also RedBeat's own last run (unix time).",
    ("task",),
)  # fmt: skip
PERIODIC_NEXT_DUE = MetricDef(
    "celery_periodic_task_next_due_timestamp_seconds", "gauge",
    "When a periodic task is due next after its last task-sent (else exporter start-up), by "
    "its schedule; the earliest of the entries that share the task (unix time).",
    ("task",),
)  # fmt: skip
PERIODIC_MISSED = MetricDef(
    "celery_periodic_task_missed_total", "counter",
    "Due times of a periodic task passed by more than the grace with no task-sent since.",
    ("task",),
)  # fmt: skip
PERIODIC_INTERVAL = MetricDef(
    "celery_periodic_task_expected_interval_seconds", "gauge",
    "The interval a periodic task named in the config is expected to run at.", ("task",),
)  # fmt: skip

# --- the exporter itself (always on) ---
BUILD_INFO = MetricDef(
    "celery_exporter_build_info", "gauge", "Always 1; labels name the versions running.",
    ("version", "python_version", "kombu_version"),
)  # fmt: skip
EVENTS = MetricDef(
    "celery_exporter_events_total", "counter",
    "Events applied, by event type (other: types not tracked).", ("type",),
)  # fmt: skip
EVENTS_DROPPED = MetricDef(
    "celery_exporter_events_dropped_total", "counter",
    "Event messages or events refused, by reason.", ("reason",),
)  # fmt: skip
STATE_EVICTIONS = MetricDef(
    "celery_exporter_state_evictions_total", "counter",
    "Task ids forgotten, by reason (capacity: the map was full; ttl: idle too long).",
    ("reason",),
)  # fmt: skip
TRACKED_TASKS = MetricDef(
    "celery_exporter_tracked_tasks", "gauge", "Task ids currently remembered for correlation."
)
LABEL_OVERFLOW = MetricDef(
    "celery_exporter_label_overflow_total", "counter",
    "Label values folded into 'other' (or queues not polled) because the limit was reached.",
    ("label",),
)  # fmt: skip
SOURCE_UP = MetricDef(
    "celery_exporter_source_up", "gauge",
    "1 while the source is connected to the broker.", ("source",),
)  # fmt: skip
SOURCE_RECONNECTS = MetricDef(
    "celery_exporter_source_reconnects_total", "counter",
    "Connections re-established after the broker connection was lost.", ("source",),
)  # fmt: skip
SOURCE_DISCONNECTS = MetricDef(
    "celery_exporter_source_disconnects_total", "counter",
    "Connections the broker ended, by likely cause (slow_consumer: Redis's pubsub output "
    "buffer limit; closed; error).", ("source", "reason"),
)  # fmt: skip
EVENT_BUFFER = MetricDef(
    "celery_exporter_event_buffer_bytes", "gauge",
    "Bytes read from the broker and not yet decoded (Redis).",
)  # fmt: skip
LAST_EVENT = MetricDef(
    "celery_exporter_last_event_timestamp_seconds", "gauge",
    "Timestamp (unix time) of the last event applied, as its sender stamped it.",
)  # fmt: skip
EVENT_LAG = MetricDef(
    "celery_exporter_event_lag_seconds", "gauge",
    "Receive time minus sender timestamp of the last event applied.",
)  # fmt: skip
INSPECTIONS = MetricDef(
    "celery_exporter_inspections_total", "counter",
    "Worker inspections (broadcasts) made, by result.", ("result",),
)  # fmt: skip
POLL_LAST_SUCCESS = MetricDef(
    "celery_exporter_poll_last_success_timestamp_seconds", "gauge",
    "When the background poller last succeeded (unix time).", ("poller",),
)  # fmt: skip
POLL_DURATION = MetricDef(
    "celery_exporter_poll_duration_seconds", "gauge",
    "How long the poller's last successful poll took.", ("poller",),
)  # fmt: skip
POLL_ERRORS = MetricDef(
    "celery_exporter_poll_errors_total", "counter", "Failed polls, by poller.", ("poller",)
)
COLLECTOR_SUCCESS = MetricDef(
    "celery_exporter_collector_success", "gauge",
    "1 when the collector's last scrape succeeded.", ("collector",),
)  # fmt: skip
COLLECTOR_DURATION = MetricDef(
    "celery_exporter_collector_duration_seconds", "gauge",
    "How long the collector's last scrape took.", ("collector",),
)  # fmt: skip

ALL: Sequence[MetricDef] = tuple(
    value for value in list(globals().values()) if isinstance(value, MetricDef)
)
