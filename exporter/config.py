"""Validation: flags, environment and config file -> Settings, or the first thing wrong.

pydantic-settings reads the environment (``CELERY_EXPORTER_*``, and ``CELERY_BROKER_URL`` as a
fallback) and checks every value against the type and bounds its field declares in
settings.py; the model is built from those fields, so an option is declared once. Only the
process that parses the command line loads this module (see cli.py).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Annotated, Any, get_origin

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from exporter import brokers
from exporter.settings import (
    DEFAULT_PORT,
    ENV_PREFIX,
    Option,
    Secret,
    Settings,
    WorkerLabel,
    options,
)

OPTIONS = options()
# Every path option names a file the daemon reads (a secret, a certificate, a URL).
_FILES = tuple(name for name, option in OPTIONS.items() if option.type == Path | None)
_ALIASES = {"broker_url": AliasChoices(f"{ENV_PREFIX}BROKER_URL", "CELERY_BROKER_URL")}
_SECRET_TYPES: dict[Any, Any] = {Secret: SecretStr, Secret | None: SecretStr | None}


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


class _Validated(BaseSettings):
    """The checks of single values; the fields come from Settings (``_MODEL``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    @field_validator("port", mode="before", check_fields=False)
    @classmethod
    def _ignore_service_link(cls, value: Any) -> Any:
        # Kubernetes injects <SERVICE>_PORT=tcp://ip:port for every Service in the namespace:
        # a Service named celery-exporter sets CELERY_EXPORTER_PORT to that. It is no setting.
        if isinstance(value, str) and value.startswith("tcp://"):
            return DEFAULT_PORT
        return value

    @field_validator(
        "task_duration_buckets",
        "task_queue_wait_buckets",
        "queues",
        "sidecar_workers",
        mode="before",
        check_fields=False,
    )
    @classmethod
    def _parse_csv(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("task_duration_buckets", "task_queue_wait_buckets", check_fields=False)
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
        check_fields=False,
    )
    @classmethod
    def _parse_json_objects(cls, value: Any) -> Any:
        return _json_object(value)

    @field_validator("worker_label_regex", check_fields=False)
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

    @field_validator("app", check_fields=False)
    @classmethod
    def _check_app(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError("expected 'module:attribute'")
        return value

    @field_validator(
        "periodic_tasks", "task_sla_seconds", "workers_expected_per_queue", check_fields=False
    )
    @classmethod
    def _check_positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(number <= 0 for number in value.values()):
            raise ValueError("values must be positive")
        return value

    def settings(self) -> Settings:
        """The validated values as the daemon holds them."""
        values: dict[str, Any] = {name: getattr(self, name) for name in OPTIONS}
        for name, value in values.items():
            if isinstance(value, SecretStr):
                values[name] = Secret(value.get_secret_value())
        return Settings(**values)


def _field(option: Option) -> tuple[Any, Any]:
    """A settings field as pydantic checks it: secrets masked, lists and objects parsed by
    the validators above (comma-separated, JSON) rather than pydantic-settings' JSON."""
    kind = _SECRET_TYPES.get(option.type, option.type)
    if get_origin(kind) in (list, dict):
        kind = Annotated[kind, NoDecode]
    extra: dict[str, Any] = {"description": option.description, **option.checks}
    if option.name in _ALIASES:
        extra["validation_alias"] = _ALIASES[option.name]
    default = option.default()  # pydantic copies a list or dict default for each instance
    if isinstance(default, Secret):
        default = SecretStr(default.get_secret_value())
    return kind, Field(default=default, **extra)


_FIELDS: dict[str, Any] = {name: _field(option) for name, option in OPTIONS.items()}
_MODEL = create_model("Settings", __base__=_Validated, **_FIELDS)


def load_settings(flags: dict[str, Any], file_values: dict[str, Any] | None = None) -> Settings:
    """Flags over environment over config file over defaults; pydantic's ValidationError
    for a wrong value (SettingsError for an unreadable variable), InvalidCombination for
    values wrong together."""

    class _Layered(_MODEL):  # type: ignore[misc,valid-type]  # a class built at run time
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                env_settings,
                InitSettingsSource(settings_cls, init_kwargs=file_values or {}),
            )

    validated: _Validated = _Layered(**flags)
    settings = validated.settings()
    check_combinations(settings)
    return settings


class InvalidCombination(ValueError):
    """Settings that are each valid but wrong together, or name a file that is not there."""


def check_combinations(settings: Settings) -> None:
    """Raise InvalidCombination for settings that are each valid but wrong together."""
    for name in _FILES:
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise InvalidCombination(f"{name} {path} is not a readable file")
    _check_web(settings)
    if settings.sidecar_workers and not settings.sidecar:
        raise InvalidCombination("sidecar_workers needs sidecar")
    if settings.worker_label is WorkerLabel.GROUP and not settings.worker_label_regex:
        raise InvalidCombination("worker_label=group needs worker_label_regex")
    problem = brokers.check(settings)
    if problem is not None:
        raise InvalidCombination(problem)


def _check_web(settings: Settings) -> None:
    if (settings.web_tls_cert_file is None) != (settings.web_tls_key_file is None):
        raise InvalidCombination("web_tls_cert_file and web_tls_key_file go together")
    if settings.web_tls_client_ca_file is not None and settings.web_tls_cert_file is None:
        raise InvalidCombination("web_tls_client_ca_file needs web_tls_cert_file")
    has_password = settings.web_auth_password is not None or settings.web_auth_password_file
    if bool(settings.web_auth_username) != bool(has_password):
        raise InvalidCombination("web_auth_username and a web_auth_password(_file) go together")
