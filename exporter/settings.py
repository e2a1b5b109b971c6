"""Settings: what the daemon can be told, as the running process holds it.

Every field is a flag (``--field-name``) and an environment variable
(``CELERY_EXPORTER_FIELD_NAME``). ``config.py`` validates flags, environment and config file
into this class; ``cli.py`` builds the flags from it and the README table is checked against
it, so this file is the one place an option is defined.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

ENV_PREFIX = "CELERY_EXPORTER_"
DEFAULT_PORT = 9808  # the port Celery exporters conventionally use
# Exit status for a configuration error.
EXIT_CONFIG = 2

# 5 ms to 1 h: short web-request tasks and hour-long batch jobs both land inside the range.
DEFAULT_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
# Queue wait spans the same range: a backlog can hold work for an hour as easily as a task runs.
DEFAULT_QUEUE_WAIT_BUCKETS = DEFAULT_DURATION_BUCKETS


class WorkerLabel(enum.StrEnum):
    """How the ``worker`` label of task metrics is derived from the worker's nodename."""

    FULL = "full"
    HOST = "host"
    GROUP = "group"
    NONE = "none"


class HeartbeatFormat(enum.StrEnum):
    """How the Beat heartbeat key's value is written."""

    AUTO = "auto"
    UNIX = "unix"
    ISO8601 = "iso8601"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class Secret:
    """A string that may hold a password: its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def option(
    *,
    description: str,
    default: Any = dataclasses.MISSING,
    default_factory: Callable[[], Any] | None = None,
    **checks: float,
) -> Any:
    """A settings field: its default, its help text and the bounds config.py checks
    (``gt``, ``ge``, ``le``, ``min_length``, as pydantic names them)."""
    metadata = {"description": description, "checks": checks}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the daemon can be told."""

    # --- broker ---
    broker_url: Secret = option(
        default=Secret("redis://localhost:6379/0"),
        description="Broker URL (redis://, rediss://, sentinel://, amqp://, amqps://); "
        "CELERY_BROKER_URL is read when the exporter's own variable is unset.",
    )
    broker_url_file: Path | None = option(
        default=None, description="Read the broker URL from this file (a mounted Secret)."
    )
    broker_transport_options: dict[str, Any] = option(
        default_factory=dict,
        description="kombu transport options as a JSON object, as in the app's "
        "broker_transport_options (priority_steps, sep, global_keyprefix, master_name, ...).",
    )
    events_exchange: str = option(
        default="celeryev", min_length=1, description="Celery's event exchange (event_exchange)."
    )
    broker_connect_timeout_seconds: float = option(
        default=5.0, gt=0, description="Timeout of every broker connect and call."
    )
    reconnect_max_delay_seconds: float = option(
        default=30.0, gt=0, description="Cap of the exponential backoff between reconnects."
    )
    # With ~62 MiB idle, the bench's 85 MB burst peaks under the pod's 128 MiB request, and less
    # of it waits in Redis (32 MiB pub/sub limit) than with 48 MiB (bench/README.md).
    event_buffer_bytes: int = option(
        default=56 * 1024 * 1024,
        ge=1024 * 1024,
        description="Redis: bytes read off the socket but not yet decoded, at most; past it the "
        "reader stops reading and the backlog waits in Redis.",
    )
    max_event_bytes: int = option(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Event messages larger than this are dropped (reason oversized).",
    )
    amqp_event_queue_ttl_seconds: float = option(
        default=60.0, gt=0, description="RabbitMQ: message TTL of the exporter's event queue."
    )
    amqp_event_queue_max_length: int = option(
        default=100_000,
        ge=1,
        description="RabbitMQ: messages the exporter's event queue holds at most (oldest "
        "dropped first, and counted).",
    )
    amqp_event_queue_max_bytes: int = option(
        default=128 * 1024 * 1024,
        ge=1024,
        description="RabbitMQ: bytes the exporter's event queue holds at most.",
    )
    amqp_dead_letter_max_bytes: int = option(
        default=256 * 1024 * 1024,
        ge=1024,
        description="RabbitMQ: bytes of dropped messages waiting to be counted at most (it "
        "fills only while the exporter is stalled).",
    )
    amqp_heartbeat_seconds: int = option(
        default=30,
        ge=0,
        description="RabbitMQ: AMQP heartbeat interval asked for, whole seconds (the broker may "
        "lower it; 0 turns heartbeats off). Silence for two intervals ends the connection.",
    )

    # --- HTTP ---
    host: str = option(default="0.0.0.0", description="Address to listen on.")  # noqa: S104
    port: int = option(default=DEFAULT_PORT, ge=0, le=65535, description="Port to listen on.")
    ready_max_event_age_seconds: float = option(
        default=0.0,
        ge=0,
        description="/readyz also requires an event younger than this (0: only the connection).",
    )

    web_tls_cert_file: Path | None = option(
        default=None, description="Serve HTTPS with this certificate (PEM, with web_tls_key_file)."
    )
    web_tls_key_file: Path | None = option(
        default=None, description="Private key of the certificate."
    )
    web_tls_client_ca_file: Path | None = option(
        default=None, description="Require client certificates signed by this CA (mTLS)."
    )
    web_auth_username: str | None = option(
        default=None, description="Basic auth user required on /metrics (with a password)."
    )
    web_auth_password: Secret | None = option(
        default=None, description="Basic auth password (prefer web_auth_password_file)."
    )
    web_auth_password_file: Path | None = option(
        default=None, description="Read the basic auth password from this file."
    )
    web_auth_bearer_token_file: Path | None = option(
        default=None, description="Require 'Authorization: Bearer <token>' with the file's token."
    )
    web_protect_health: bool = option(
        default=False, description="Also require auth on /healthz and /readyz."
    )

    # --- logging ---
    log_level: LogLevel = option(default=LogLevel.INFO, description="Level of our own loggers.")
    log_format: LogFormat = option(
        default=LogFormat.TEXT, description="text or json (one object per line)."
    )

    # --- task metrics ---
    worker_label: WorkerLabel = option(
        default=WorkerLabel.FULL,
        description="worker label of task metrics: full nodename, host part, regex group or none.",
    )
    worker_label_regex: str | None = option(
        default=None,
        description="With worker_label=group: a regex whose first group (or group named "
        "'group') becomes the label; nodenames that do not match keep their full name.",
    )
    task_state_max_tasks: int = option(
        default=100_000, ge=100, description="Tasks whose id is remembered at most (LRU)."
    )
    task_state_ttl_seconds: float = option(
        default=7200.0, gt=0, description="A task id not seen for this long is forgotten."
    )
    task_name_wait_seconds: float = option(
        default=10.0,
        ge=0,
        description="How long events of a task whose name is not known yet are held back "
        "before they are counted as task 'unknown'.",
    )
    task_duration_buckets: list[float] = option(
        default_factory=lambda: list(DEFAULT_DURATION_BUCKETS),
        description="Buckets of celery_task_duration_seconds (comma-separated seconds).",
    )
    task_queue_wait_buckets: list[float] = option(
        default_factory=lambda: list(DEFAULT_QUEUE_WAIT_BUCKETS),
        description="Buckets of celery_task_queue_wait_seconds (comma-separated seconds).",
    )
    max_task_names: int = option(
        default=1000, ge=1, description="Distinct task label values at most."
    )
    max_queues: int = option(
        default=500, ge=1, description="Distinct queue label values alive at once, at most."
    )
    max_workers: int = option(
        default=1000, ge=1, description="Distinct worker label values alive at once, at most."
    )
    max_exception_types: int = option(
        default=200, ge=1, description="Distinct exception label values at most."
    )
    max_label_length: int = option(
        default=200, ge=16, description="Longer label values are cut to this many characters."
    )

    task_sla_seconds: dict[str, float] = option(
        default_factory=dict,
        description='Duration SLA per task, JSON {"task name": seconds}; published as '
        "celery_task_sla_seconds for alert rules.",
    )
    task_sla_default_seconds: float = option(
        default=300.0, gt=0, description="SLA of tasks not named in task_sla_seconds."
    )

    # --- worker sidecar ---
    sidecar: bool = option(
        default=False,
        description="Worker sidecar: watch this host's worker(s) (nodename *@<hostname>) "
        "through /proc and inspections addressed to them alone, without the event stream: "
        "memory, CPU, pool processes and their replacements, concurrency, active and reserved "
        "tasks. In Kubernetes the pod needs shareProcessNamespace: true.",
    )
    sidecar_workers: list[str] = option(
        default_factory=list,
        description="Sidecar: the worker nodenames to watch (comma-separated; default: the "
        "ones answering a ping addressed to *@<hostname>).",
    )
    sidecar_proc_interval_seconds: float = option(
        default=5.0, gt=0, description="Sidecar: how often the workers' processes are read."
    )
    sidecar_inspect_interval_seconds: float = option(
        default=15.0,
        gt=0,
        description="Sidecar: how often the workers are asked for stats, active and reserved.",
    )
    sidecar_proc_root: str = option(
        default="/proc", min_length=1, description="Sidecar: where the process table is mounted."
    )

    # --- worker metrics ---
    worker_timeout_heartbeats: float = option(
        default=3.0,
        gt=1,
        description="A worker is down after this many of its own heartbeat intervals without one.",
    )
    worker_shutdown_grace_seconds: float = option(
        default=300.0,
        ge=0,
        description="Tasks still running this long after their worker's worker-offline are "
        "counted as orphaned (a warm shutdown sends it first, then lets running tasks finish).",
    )
    worker_retention_seconds: float = option(
        default=3600.0,
        ge=0,
        description="A worker that went away keeps celery_worker_up 0 this long, then every "
        "series with its worker label is removed and the label value freed.",
    )

    workers_expected: int = option(
        default=0,
        ge=0,
        description="Live workers expected in all (celery_workers_expected; 0: not published).",
    )
    workers_expected_per_queue: dict[str, int] = option(
        default_factory=dict,
        description='Live workers expected per queue, JSON {"queue": count} '
        "(celery_queue_workers_expected).",
    )

    # --- queue label of task metrics ---
    app: str | None = option(
        default=None,
        description="Celery app 'module:attribute' whose task_routes name each task's queue "
        "and whose beat_schedule entries are watched (needs the app importable).",
    )
    inspect_interval_seconds: float = option(
        default=60.0,
        ge=0,
        description="Ask workers which queues they consume this often, and when a new worker "
        "appears (0: never).",
    )
    inspect_timeout_seconds: float = option(
        default=1.0, gt=0, description="How long an inspection waits for replies."
    )

    # --- queues ---
    queues: list[str] = option(
        default_factory=list,
        description="Queues always polled (comma-separated); a missing one reads 0. Others are "
        "found in kombu's bindings (Redis), events and worker inspection.",
    )
    queue_poll_interval_seconds: float = option(
        default=5.0, gt=0, description="How often queue depths are read from the broker."
    )
    queue_discovery_interval_seconds: float = option(
        default=60.0, gt=0, description="How often kombu's binding tables are scanned (Redis)."
    )
    queue_forget_seconds: float = option(
        default=900.0,
        gt=0,
        description="A discovered queue no longer seen anywhere is dropped after this long, "
        "with every task series of its queue label.",
    )
    queue_priority_metrics: bool = option(
        default=False, description="Also export celery_queue_length_by_priority (Redis)."
    )
    queue_max_unacked_scan: int = option(
        default=10_000,
        ge=0,
        description="Read the unacked hash to attribute it to queues only while it holds at "
        "most this many messages (Redis).",
    )
    rabbitmq_management_url: Secret | None = option(
        default=None,
        description="RabbitMQ management API (http://user:password@host:15672): every queue of "
        "the broker URL's vhost is discovered there, with unacked counts and consumer "
        "utilisation; user and password default to the broker URL's.",
    )
    rabbitmq_management_password: Secret | None = option(
        default=None,
        description="Management API password (prefer rabbitmq_management_password_file).",
    )
    rabbitmq_management_password_file: Path | None = option(
        default=None, description="Read the management API password from this file."
    )

    # --- Beat ---
    beat_heartbeat_task: str | None = option(
        default="exporter.beat.heartbeat",
        description="Task whose task-sent (else task-received) time is Beat's heartbeat "
        "(source events); the default is the task exporter.beat ships. Empty: off.",
    )
    beat_redis_key: str | None = option(
        default=None,
        description="Redis key holding Beat's last heartbeat (source redis_key); "
        "exporter.beat's task writes celery_beat_heartbeat.",
    )
    beat_redis_key_format: HeartbeatFormat = option(
        default=HeartbeatFormat.AUTO,
        description="Value of the heartbeat key: unix, iso8601 or auto.",
    )
    beat_redis_url: Secret | None = option(
        default=None,
        description="Redis holding the heartbeat key and RedBeat's keys (default: the broker).",
    )
    beat_redbeat: bool = option(
        default=False,
        description="Watch RedBeat's lock and schedule (source redbeat); with app, also each "
        "RedBeat entry as a periodic task (needs celery-redbeat).",
    )
    beat_redbeat_key_prefix: str = option(
        default="redbeat:", description="RedBeat's redbeat_key_prefix."
    )
    beat_redbeat_lock_key: str | None = option(
        default=None, description="RedBeat's lock key (default: <prefix>:lock)."
    )
    beat_redbeat_lock_timeout_seconds: float = option(
        default=1500.0,
        gt=0,
        description="RedBeat's lock timeout (redbeat_lock_timeout, else 5 times max_interval).",
    )
    beat_poll_interval_seconds: float = option(
        default=10.0, gt=0, description="How often the Redis Beat sources are read."
    )
    beat_max_heartbeat_age_seconds: float = option(
        default=120.0,
        gt=0,
        description="celery_beat_up is 0 once the newest heartbeat is older than this.",
    )
    periodic_tasks: dict[str, float] = option(
        default_factory=dict,
        description='Periodic tasks to watch, JSON {"task name": expected interval seconds}, '
        "for apps the exporter cannot import; with --app every beat_schedule entry is watched.",
    )
    periodic_task_grace_seconds: float = option(
        default=60.0,
        ge=0,
        description="A periodic task's due time counts as missed once passed by this long "
        "with no task-sent.",
    )

    # --- collectors ---
    collector_tasks: bool = option(default=True, description="Export task metrics.")
    collector_workers: bool = option(default=True, description="Export worker metrics.")
    collector_queues: bool = option(default=True, description="Export queue metrics.")
    collector_beat: bool = option(
        default=True, description="Export Beat and periodic task metrics."
    )
    collector_process: bool = option(
        default=True,
        description="Export the exporter's own process_* metrics and python_info "
        "(client_python's process and platform collectors).",
    )

    def rabbitmq_management_password_value(self) -> str | None:
        """The management API password given apart from the URL (its file wins), if any."""
        if self.rabbitmq_management_password_file is not None:
            text = self.rabbitmq_management_password_file.read_text(encoding="utf-8")
            return text.strip()
        if self.rabbitmq_management_password is not None:
            return self.rabbitmq_management_password.get_secret_value()
        return None

    def web_password(self) -> str | None:
        """The basic auth password, from its file when given."""
        if self.web_auth_password_file is not None:
            return self.web_auth_password_file.read_text(encoding="utf-8").strip()
        return self.web_auth_password.get_secret_value() if self.web_auth_password else None

    def web_bearer_token(self) -> str | None:
        if self.web_auth_bearer_token_file is None:
            return None
        return self.web_auth_bearer_token_file.read_text(encoding="utf-8").strip() or None

    def beat_redis_sources(self) -> bool:
        """Whether a Redis Beat source (heartbeat key or RedBeat) is configured."""
        return bool(self.beat_redis_key) or self.beat_redbeat

    def resolved_beat_redis_url(self) -> str:
        """The Redis holding Beat's keys: beat_redis_url, else the broker."""
        if self.beat_redis_url is not None:
            return self.beat_redis_url.get_secret_value()
        return self.resolved_broker_url()

    def resolved_broker_url(self) -> str:
        """The broker URL, read from broker_url_file when that is set."""
        if self.broker_url_file is not None:
            return self.broker_url_file.read_text(encoding="utf-8").strip()
        return self.broker_url.get_secret_value()


class Option(NamedTuple):
    """One settings field as cli.py, config.py and the docs see it."""

    name: str
    type: Any
    description: str
    checks: Mapping[str, float]
    field: dataclasses.Field[Any]

    def default(self) -> Any:
        """The value a run given nothing about this option gets."""
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default


def options() -> dict[str, Option]:
    """Every settings field by name, in declaration order."""
    hints = typing.get_type_hints(Settings)
    return {
        field.name: Option(
            field.name,
            hints[field.name],
            field.metadata["description"],
            field.metadata["checks"],
            field,
        )
        for field in dataclasses.fields(Settings)
    }
