"""Settings: one typed model fed by flags, environment variables and a config file.

Every field is a flag (``--field-name``) and an environment variable
(``CELERY_EXPORTER_FIELD_NAME``); ``cli.py`` builds the flags from this model and the README
table is checked against it, so this file is the one place an option is defined.
"""

from __future__ import annotations

import enum
import itertools
import json
import re
import socket
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "CELERY_EXPORTER_"
REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
SUPPORTED_SCHEMES = REDIS_SCHEMES | AMQP_SCHEMES
DEFAULT_PORT = 9808  # the port Celery exporters conventionally use

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


def url_scheme(url: str) -> str:
    """The lowercased scheme of ``url``; empty when it has no ``scheme://`` (never the rest,
    which may hold a password)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep and scheme.isascii() and scheme.isidentifier() else ""


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _json_object(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"not a JSON object: {err.msg}") from err
    return value


Buckets = Annotated[list[float], NoDecode]


class Settings(BaseSettings):
    """Everything the daemon can be told."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    # --- broker ---
    broker_url: SecretStr = Field(
        default=SecretStr("redis://localhost:6379/0"),
        validation_alias=AliasChoices(f"{ENV_PREFIX}BROKER_URL", "CELERY_BROKER_URL"),
        description="Broker URL (redis://, rediss://, sentinel://, amqp://, amqps://); "
        "CELERY_BROKER_URL is read when the exporter's own variable is unset.",
    )
    broker_url_file: Path | None = Field(
        default=None, description="Read the broker URL from this file (a mounted Secret)."
    )
    broker_transport_options: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description="kombu transport options as a JSON object, as in the app's "
        "broker_transport_options (priority_steps, sep, global_keyprefix, master_name, ...).",
    )
    events_exchange: str = Field(
        default="celeryev", min_length=1, description="Celery's event exchange (event_exchange)."
    )
    broker_connect_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Timeout of every broker connect and call."
    )
    reconnect_max_delay_seconds: float = Field(
        default=30.0, gt=0, description="Cap of the exponential backoff between reconnects."
    )
    event_buffer_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Redis: bytes read off the socket but not yet decoded, at most, as held "
        "(past 4 MiB they are kept zstd-compressed); past it the reader stops reading and the "
        "backlog waits in Redis.",
    )
    max_event_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Event messages larger than this are dropped (reason oversized).",
    )
    amqp_event_queue_ttl_seconds: float = Field(
        default=60.0, gt=0, description="RabbitMQ: message TTL of the exporter's event queue."
    )
    amqp_event_queue_max_length: int = Field(
        default=100_000,
        ge=1,
        description="RabbitMQ: messages the exporter's event queue holds at most (oldest "
        "dropped first, and counted).",
    )
    amqp_event_queue_max_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=1024,
        description="RabbitMQ: bytes the exporter's event queue holds at most.",
    )
    amqp_dead_letter_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="RabbitMQ: bytes of dropped messages waiting to be counted at most (it "
        "fills only while the exporter is stalled).",
    )
    amqp_heartbeat_seconds: int = Field(
        default=30,
        ge=0,
        description="RabbitMQ: AMQP heartbeat interval asked for, whole seconds (the broker may "
        "lower it; 0 turns heartbeats off). Silence for two intervals ends the connection.",
    )

    # --- HTTP ---
    host: str = Field(default="0.0.0.0", description="Address to listen on.")  # noqa: S104
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="Port to listen on.")
    ready_max_event_age_seconds: float = Field(
        default=0.0,
        ge=0,
        description="/readyz also requires an event younger than this (0: only the connection).",
    )

    web_tls_cert_file: Path | None = Field(
        default=None, description="Serve HTTPS with this certificate (PEM, with web_tls_key_file)."
    )
    web_tls_key_file: Path | None = Field(
        default=None, description="Private key of the certificate."
    )
    web_tls_client_ca_file: Path | None = Field(
        default=None, description="Require client certificates signed by this CA (mTLS)."
    )
    web_auth_username: str | None = Field(
        default=None, description="Basic auth user required on /metrics (with a password)."
    )
    web_auth_password: SecretStr | None = Field(
        default=None, description="Basic auth password (prefer web_auth_password_file)."
    )
    web_auth_password_file: Path | None = Field(
        default=None, description="Read the basic auth password from this file."
    )
    web_auth_bearer_token_file: Path | None = Field(
        default=None, description="Require 'Authorization: Bearer <token>' with the file's token."
    )
    web_protect_health: bool = Field(
        default=False, description="Also require auth on /healthz and /readyz."
    )

    # --- logging ---
    log_level: LogLevel = Field(default=LogLevel.INFO, description="Level of our own loggers.")
    log_format: LogFormat = Field(
        default=LogFormat.TEXT, description="text or json (one object per line)."
    )

    # --- task metrics ---
    worker_label: WorkerLabel = Field(
        default=WorkerLabel.FULL,
        description="worker label of task metrics: full nodename, host part, regex group or none.",
    )
    worker_label_regex: str | None = Field(
        default=None,
        description="With worker_label=group: a regex whose first group (or group named "
        "'group') becomes the label; nodenames that do not match keep their full name.",
    )
    task_state_max_tasks: int = Field(
        default=100_000, ge=100, description="Tasks whose id is remembered at most (LRU)."
    )
    task_state_ttl_seconds: float = Field(
        default=7200.0, gt=0, description="A task id not seen for this long is forgotten."
    )
    task_name_wait_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long events of a task whose name is not known yet are held back "
        "before they are counted as task 'unknown'.",
    )
    task_duration_buckets: Buckets = Field(
        default_factory=lambda: list(DEFAULT_DURATION_BUCKETS),
        description="Buckets of celery_task_duration_seconds (comma-separated seconds).",
    )
    task_queue_wait_buckets: Buckets = Field(
        default_factory=lambda: list(DEFAULT_QUEUE_WAIT_BUCKETS),
        description="Buckets of celery_task_queue_wait_seconds (comma-separated seconds).",
    )
    max_task_names: int = Field(
        default=1000, ge=1, description="Distinct task label values at most."
    )
    max_queues: int = Field(default=500, ge=1, description="Distinct queue label values at most.")
    max_workers: int = Field(
        default=1000, ge=1, description="Distinct worker label values at most."
    )
    max_exception_types: int = Field(
        default=200, ge=1, description="Distinct exception label values at most."
    )
    max_label_length: int = Field(
        default=200, ge=16, description="Longer label values are cut to this many characters."
    )

    task_sla_seconds: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description='Duration SLA per task, JSON {"task name": seconds}; published as '
        "celery_task_sla_seconds for alert rules.",
    )
    task_sla_default_seconds: float = Field(
        default=300.0, gt=0, description="SLA of tasks not named in task_sla_seconds."
    )

    # --- sidecar mode ---
    worker_filter: str | None = Field(
        default=None,
        description="Sidecar mode: export task and worker series only of workers whose nodename "
        "matches this regex; task-sent (producers) is then not counted.",
    )
    worker_filter_hostname: bool = Field(
        default=False,
        description="Sidecar mode with worker_filter '@<this host's name>$' (the pod's name).",
    )

    # --- worker metrics ---
    worker_timeout_heartbeats: float = Field(
        default=3.0,
        gt=1,
        description="A worker is down after this many of its own heartbeat intervals without one.",
    )
    worker_retention_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="A worker that went away keeps celery_worker_up 0 this long, then its "
        "series are removed.",
    )

    workers_expected: int = Field(
        default=0,
        ge=0,
        description="Live workers expected in all (celery_workers_expected; 0: not published).",
    )
    workers_expected_per_queue: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description='Live workers expected per queue, JSON {"queue": count} '
        "(celery_queue_workers_expected).",
    )

    # --- queue label of task metrics ---
    app: str | None = Field(
        default=None,
        description="Celery app 'module:attribute' whose task_routes name each task's queue "
        "(needs the app importable).",
    )
    inspect_interval_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Ask workers which queues they consume this often, and when a new worker "
        "appears (0: never).",
    )
    inspect_timeout_seconds: float = Field(
        default=1.0, gt=0, description="How long an inspection waits for replies."
    )

    # --- queues ---
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Queues always polled (comma-separated); a missing one reads 0. Others are "
        "found in kombu's bindings (Redis), events and worker inspection.",
    )
    queue_poll_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often queue depths are read from the broker."
    )
    queue_discovery_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often kombu's binding tables are scanned (Redis)."
    )
    queue_forget_seconds: float = Field(
        default=900.0,
        gt=0,
        description="A discovered queue no longer seen anywhere is dropped after this long.",
    )
    queue_priority_metrics: bool = Field(
        default=False, description="Also export celery_queue_length_by_priority (Redis)."
    )
    queue_max_unacked_scan: int = Field(
        default=10_000,
        ge=0,
        description="Read the unacked hash to attribute it to queues only while it holds at "
        "most this many messages (Redis).",
    )
    rabbitmq_management_url: SecretStr | None = Field(
        default=None,
        description="RabbitMQ management API (http://user:password@host:15672): every queue of "
        "the broker URL's vhost is discovered there, with unacked counts and consumer "
        "utilisation; user and password default to the broker URL's.",
    )
    rabbitmq_management_password: SecretStr | None = Field(
        default=None,
        description="Management API password (prefer rabbitmq_management_password_file).",
    )
    rabbitmq_management_password_file: Path | None = Field(
        default=None, description="Read the management API password from this file."
    )

    # --- Beat ---
    beat_heartbeat_task: str | None = Field(
        default="exporter.beat.heartbeat",
        description="Task whose task-sent (else task-received) time is Beat's heartbeat "
        "(source events); the default is the task exporter.beat ships. Empty: off.",
    )
    beat_redis_key: str | None = Field(
        default=None,
        description="Redis key holding Beat's last heartbeat (source redis_key); "
        "exporter.beat's task writes celery_beat_heartbeat.",
    )
    beat_redis_key_format: HeartbeatFormat = Field(
        default=HeartbeatFormat.AUTO,
        description="Value of the heartbeat key: unix, iso8601 or auto.",
    )
    beat_redis_url: SecretStr | None = Field(
        default=None,
        description="Redis holding the heartbeat key and RedBeat's keys (default: the broker).",
    )
    beat_redbeat: bool = Field(
        default=False, description="Watch RedBeat's lock and schedule (source redbeat)."
    )
    beat_redbeat_key_prefix: str = Field(
        default="redbeat:", description="RedBeat's redbeat_key_prefix."
    )
    beat_redbeat_lock_key: str | None = Field(
        default=None, description="RedBeat's lock key (default: <prefix>:lock)."
    )
    beat_redbeat_lock_timeout_seconds: float = Field(
        default=1500.0,
        gt=0,
        description="RedBeat's lock timeout (redbeat_lock_timeout, else 5 times max_interval).",
    )
    beat_poll_interval_seconds: float = Field(
        default=10.0, gt=0, description="How often the Redis Beat sources are read."
    )
    beat_max_heartbeat_age_seconds: float = Field(
        default=120.0,
        gt=0,
        description="celery_beat_up is 0 once the newest heartbeat is older than this.",
    )
    periodic_tasks: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description='Periodic tasks to watch, JSON {"task name": expected interval seconds}.',
    )

    # --- collectors ---
    collector_tasks: bool = Field(default=True, description="Export task metrics.")
    collector_workers: bool = Field(default=True, description="Export worker metrics.")
    collector_queues: bool = Field(default=True, description="Export queue metrics.")
    collector_beat: bool = Field(default=True, description="Export Beat and periodic task metrics.")

    @field_validator("port", mode="before")
    @classmethod
    def _ignore_service_link(cls, value: Any) -> Any:
        # Kubernetes injects <SERVICE>_PORT=tcp://ip:port for every Service in the namespace:
        # a Service named celery-exporter sets CELERY_EXPORTER_PORT to that. It is no setting.
        if isinstance(value, str) and value.startswith("tcp://"):
            return DEFAULT_PORT
        return value

    @field_validator("task_duration_buckets", "task_queue_wait_buckets", "queues", mode="before")
    @classmethod
    def _parse_csv(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("task_duration_buckets", "task_queue_wait_buckets")
    @classmethod
    def _check_buckets(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("needs at least one bucket")
        if any(b <= 0 for b in value):
            raise ValueError("buckets must be positive")
        if any(a >= b for a, b in itertools.pairwise(value)):
            raise ValueError("buckets must be strictly increasing")
        return value

    @field_validator(
        "broker_transport_options",
        "periodic_tasks",
        "task_sla_seconds",
        "workers_expected_per_queue",
        mode="before",
    )
    @classmethod
    def _parse_json_objects(cls, value: Any) -> Any:
        return _json_object(value)

    @field_validator("worker_label_regex", "worker_filter")
    @classmethod
    def _check_regex(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            pattern = re.compile(value)
        except re.error as err:
            raise ValueError(f"invalid regex: {err}") from err
        if info.field_name == "worker_label_regex" and pattern.groups < 1:
            raise ValueError("needs a capturing group")
        return value

    @field_validator("app")
    @classmethod
    def _check_app(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError("expected 'module:attribute'")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        self._check_web()
        if self.worker_filter and self.worker_filter_hostname:
            raise ValueError("worker_filter and worker_filter_hostname exclude each other")
        if self.worker_label is WorkerLabel.GROUP and not self.worker_label_regex:
            raise ValueError("worker_label=group needs worker_label_regex")
        if self.broker_url_file is not None and not self.broker_url_file.is_file():
            raise ValueError(f"broker_url_file {self.broker_url_file} is not a readable file")
        scheme = url_scheme(self.resolved_broker_url())
        if scheme not in SUPPORTED_SCHEMES:
            shown = f"scheme {scheme!r}" if scheme else "without a scheme://"
            raise ValueError(
                f"broker_url {shown} is not supported; use one of "
                + ", ".join(sorted(SUPPORTED_SCHEMES))
            )
        if scheme in AMQP_SCHEMES and "ssl_" in urlsplit(self.resolved_broker_url()).query:
            # kombu hands them to py-amqp as socket-wrapping arguments, which it rejects on
            # every connection attempt: a broker that never connects, far from the cause.
            raise ValueError(
                "broker_url: ssl_* URL parameters are for Redis; for amqps give TLS options "
                'as broker_transport_options {"ssl": {"ca_certs": ..., ...}}'
            )
        self._check_rabbitmq_management(scheme)
        beat_scheme = url_scheme(self.resolved_beat_redis_url())
        if self.beat_redis_sources() and beat_scheme not in REDIS_SCHEMES:
            raise ValueError(
                "beat_redis_key and beat_redbeat read Redis: set beat_redis_url "
                "when the broker is not Redis"
            )
        return self

    @field_validator("periodic_tasks", "task_sla_seconds", "workers_expected_per_queue")
    @classmethod
    def _check_positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(number <= 0 for number in value.values()):
            raise ValueError("values must be positive")
        return value

    def _check_web(self) -> None:
        if (self.web_tls_cert_file is None) != (self.web_tls_key_file is None):
            raise ValueError("web_tls_cert_file and web_tls_key_file go together")
        if self.web_tls_client_ca_file is not None and self.web_tls_cert_file is None:
            raise ValueError("web_tls_client_ca_file needs web_tls_cert_file")
        has_password = self.web_auth_password is not None or self.web_auth_password_file
        if bool(self.web_auth_username) != bool(has_password):
            raise ValueError("web_auth_username and a web_auth_password(_file) go together")
        for name in (
            "web_tls_cert_file",
            "web_tls_key_file",
            "web_tls_client_ca_file",
            "web_auth_password_file",
            "web_auth_bearer_token_file",
        ):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a readable file")

    def _check_rabbitmq_management(self, broker_scheme: str) -> None:
        if self.rabbitmq_management_url is None:
            return
        if broker_scheme not in AMQP_SCHEMES:
            raise ValueError("rabbitmq_management_url needs an amqp:// broker_url")
        if url_scheme(self.rabbitmq_management_url.get_secret_value()) not in ("http", "https"):
            raise ValueError("rabbitmq_management_url must be an http:// or https:// URL")
        path = self.rabbitmq_management_password_file
        if path is not None and not path.is_file():
            raise ValueError(f"rabbitmq_management_password_file {path} is not a readable file")

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

    def worker_pattern(self) -> str | None:
        """The sidecar filter on worker nodenames, if any."""
        if self.worker_filter_hostname:
            return f"@{re.escape(socket.gethostname())}$"
        return self.worker_filter

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
