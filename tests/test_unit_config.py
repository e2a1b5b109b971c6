"""Settings from flags, environment and config file (exporter/cli.py, config.py), and logs.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from exporter import logs
from exporter.cli import ConfigError, main, parse_settings
from exporter.settings import EXIT_CONFIG, LogFormat, LogLevel, WorkerLabel

SECRET = "hunter2"


pytestmark = pytest.mark.usefixtures("clean_environment")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- sources ---


def test_defaults() -> None:
    """With no flag, variable or file every setting has its documented default."""
    s = parse_settings([])
    assert s.resolved_broker_url() == "redis://localhost:6379/0"
    assert (s.host, s.port) == ("0.0.0.0", 9808)
    assert (s.log_level, s.log_format) == (LogLevel.INFO, LogFormat.TEXT)
    assert s.worker_label is WorkerLabel.FULL
    assert (s.task_state_max_tasks, s.task_name_wait_seconds) == (100_000, 10.0)
    assert (s.collector_tasks, s.collector_workers) == (True, True)
    assert s.broker_transport_options == {}


@pytest.mark.parametrize(
    ("argv", "attr", "value"),
    [
        (["--port", "9999"], "port", 9999),
        (["--host", "127.0.0.1"], "host", "127.0.0.1"),
        (["--log-level", "DEBUG"], "log_level", LogLevel.DEBUG),
        (["--log-format", "json"], "log_format", LogFormat.JSON),
        (["--worker-label", "host"], "worker_label", WorkerLabel.HOST),
        (["--max-task-names", "5"], "max_task_names", 5),
        (["--task-duration-buckets", "0.1, 1,10"], "task_duration_buckets", [0.1, 1.0, 10.0]),
        (["--no-collector-tasks"], "collector_tasks", False),
        (["--collector-workers"], "collector_workers", True),
        (
            ["--broker-transport-options", '{"global_keyprefix": "pfx:", "sep": ":"}'],
            "broker_transport_options",
            {"global_keyprefix": "pfx:", "sep": ":"},
        ),
        (["--task-name-wait-seconds", "0"], "task_name_wait_seconds", 0.0),
    ],
)
def test_flags(argv: list[str], attr: str, value: object) -> None:
    """Each flag sets its field, parsed to the field's type."""
    assert getattr(parse_settings(argv), attr) == value


@pytest.mark.parametrize(
    ("variable", "raw", "attr", "value"),
    [
        ("CELERY_EXPORTER_PORT", "9100", "port", 9100),
        ("CELERY_EXPORTER_LOG_LEVEL", "WARNING", "log_level", LogLevel.WARNING),
        ("CELERY_EXPORTER_COLLECTOR_TASKS", "false", "collector_tasks", False),
        ("CELERY_EXPORTER_TASK_QUEUE_WAIT_BUCKETS", "1,2", "task_queue_wait_buckets", [1.0, 2.0]),
        ("CELERY_EXPORTER_WORKER_TIMEOUT_HEARTBEATS", "4.5", "worker_timeout_heartbeats", 4.5),
        (
            "CELERY_EXPORTER_BROKER_TRANSPORT_OPTIONS",
            '{"master_name": "mymaster"}',
            "broker_transport_options",
            {"master_name": "mymaster"},
        ),
    ],
)
def test_environment_variables(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, attr: str, value: object
) -> None:
    """Each CELERY_EXPORTER_<FIELD> variable sets its field."""
    monkeypatch.setenv(variable, raw)
    assert getattr(parse_settings([]), attr) == value


def test_celery_broker_url_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """CELERY_BROKER_URL is used when CELERY_EXPORTER_BROKER_URL is unset, and only then."""
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@rabbit:5672//")
    assert parse_settings([]).resolved_broker_url() == "amqp://guest:guest@rabbit:5672//"
    monkeypatch.setenv("CELERY_EXPORTER_BROKER_URL", "redis://own:6379/1")
    assert parse_settings([]).resolved_broker_url() == "redis://own:6379/1"
    assert (
        parse_settings(["--broker-url", "redis://flag:6379/2"]).resolved_broker_url()
        == "redis://flag:6379/2"
    )


def test_broker_url_file(tmp_path: Path) -> None:
    """--broker-url-file reads the URL from a file (a mounted Secret), stripped."""
    secret = write(tmp_path / "url", "rediss://:s3cret@redis.example:6380/0\n")
    s = parse_settings(["--broker-url-file", str(secret)])
    assert s.resolved_broker_url() == "rediss://:s3cret@redis.example:6380/0"


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_precedence_flags_over_env_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """A setting comes from the flag, else the variable, else the file, else the default."""
    values = {"port": 1111, "host": "10.0.0.1", "max_queues": 7, "log_format": "json"}
    if suffix == ".toml":
        text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "\n"
    else:
        text = json.dumps(values)
    config = write(tmp_path / f"exporter{suffix}", text)
    monkeypatch.setenv("CELERY_EXPORTER_PORT", "2222")
    monkeypatch.setenv("CELERY_EXPORTER_HOST", "10.0.0.2")
    s = parse_settings(["--config-file", str(config), "--port", "3333"])
    assert s.port == 3333  # flag > env > file
    assert s.host == "10.0.0.2"  # env > file
    assert s.max_queues == 7  # file > default
    assert s.log_format is LogFormat.JSON
    assert s.max_workers == 1000  # default


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CELERY_EXPORTER_CONFIG_FILE names the config file when --config-file is absent."""
    config = write(tmp_path / "c.toml", 'broker_url = "amqp://file-host//"\nport = 4444\n')
    monkeypatch.setenv("CELERY_EXPORTER_CONFIG_FILE", str(config))
    s = parse_settings([])
    assert (s.resolved_broker_url(), s.port) == ("amqp://file-host//", 4444)


def test_celery_broker_url_beats_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment (CELERY_BROKER_URL included) wins over the file's broker_url."""
    config = write(tmp_path / "c.json", json.dumps({"broker_url": "redis://file:6379/0"}))
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://env:6379/0")
    s = parse_settings(["--config-file", str(config)])
    assert s.resolved_broker_url() == "redis://env:6379/0"


# --- errors ---


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["--port", "70000"],
            {},
            "--port / CELERY_EXPORTER_PORT: Input should be less than or equal to 65535 "
            "(got '70000')",
        ),
        (
            [],
            {"CELERY_EXPORTER_PORT": "abc"},
            "--port / CELERY_EXPORTER_PORT: Input should be a valid integer, unable to parse "
            "string as an integer (got 'abc')",
        ),
        (
            ["--task-duration-buckets", "1,0.5"],
            {},
            "--task-duration-buckets / CELERY_EXPORTER_TASK_DURATION_BUCKETS: buckets must be "
            "strictly increasing (got '1,0.5')",
        ),
        (
            ["--worker-label", "bogus"],
            {},
            "--worker-label / CELERY_EXPORTER_WORKER_LABEL: Input should be 'full', 'host', "
            "'group' or 'none' (got 'bogus')",
        ),
        (
            ["--worker-label-regex", "no-group"],
            {},
            "--worker-label-regex / CELERY_EXPORTER_WORKER_LABEL_REGEX: needs a capturing group "
            "(got 'no-group')",
        ),
        (
            ["--max-label-length", "3"],
            {},
            "--max-label-length / CELERY_EXPORTER_MAX_LABEL_LENGTH: Input should be greater than "
            "or equal to 16 (got '3')",
        ),
        (
            ["--app", "not an app"],
            {},
            "--app / CELERY_EXPORTER_APP: expected 'module:attribute' (got 'not an app')",
        ),
        (
            ["--worker-label", "group"],
            {},
            "invalid settings: worker_label=group needs worker_label_regex",
        ),
        (
            [],
            {"CELERY_BROKER_URL": "ftp://files:21"},
            "invalid settings: broker_url scheme 'ftp' is not supported; use one of amqp, "
            "amqps, pyamqp, redis, rediss, sentinel",
        ),
        (
            ["--broker-url", "amqps://rabbit:5671//?ssl_ca_certs=/ca.pem"],
            {},
            "invalid settings: broker_url: ssl_* URL parameters are for Redis; for amqps give "
            'TLS options as broker_transport_options {"ssl": {"ca_certs": ..., ...}}',
        ),
    ],
)
def test_bad_values_name_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], message: str
) -> None:
    """A wrong value raises ConfigError naming the flag and its variable, and what is wrong."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        parse_settings(argv)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "port = = 3\n", "not valid TOML or JSON: Invalid value (at line 1, column 8)"),
        ("bad.json", "{", "not valid TOML or JSON: Expecting property name enclosed in double "
         "quotes: line 1 column 2 (char 1)"),
        ("list.json", "[1, 2]", "expected a table of settings"),
    ],
)  # fmt: skip
def test_bad_config_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    """An unreadable config file is a ConfigError naming --config-file and the path."""
    path = write(tmp_path / name, text)
    with pytest.raises(ConfigError) as caught:
        parse_settings(["--config-file", str(path)])
    assert str(caught.value) == f"--config-file {path}: {message}"


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that does not exist is a ConfigError saying so."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        parse_settings(["--config-file", str(path)])
    assert str(caught.value) == f"--config-file {path}: cannot read it: No such file or directory"


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    """An unknown key in the file is refused by name, not ignored."""
    path = write(tmp_path / "c.toml", "prot = 1\n")
    with pytest.raises(ConfigError) as caught:
        parse_settings(["--config-file", str(path)])
    assert str(caught.value) == (
        "unknown setting 'prot' (config file or environment): Extra inputs are not permitted"
    )


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(
            ["--port", "x", "--broker-url", f"amqp://user:{SECRET}@rabbit//"], id="other-field"
        ),
        pytest.param(["--broker-url", f"gopher://user:{SECRET}@host/"], id="bad-scheme"),
        pytest.param(["--broker-url", f"redis:/:{SECRET}@host:6379/0"], id="typo-one-slash"),
        pytest.param(["--broker-url", f"redis//user:{SECRET}@host:6379/0"], id="typo-no-colon"),
        pytest.param(
            [
                "--broker-transport-options",
                f'{{"sentinel_kwargs": {{"password": "{SECRET}"}}',  # unbalanced brace
            ],
            id="sentinel-password-in-bad-transport-options",
        ),
    ],
)
def test_main_config_error_is_one_line_without_password(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """main() returns 2 and writes exactly one stderr line, which never holds the password."""
    assert main(argv) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.endswith("\n")
    assert err.startswith("celery-exporter: error: ")
    assert SECRET not in err


def test_main_broker_url_file_error_has_no_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad URL read from --broker-url-file is reported without its password."""
    url_file = write(tmp_path / "url", f"ftp://user:{SECRET}@host/\n")
    assert main(["--broker-url-file", str(url_file)]) == EXIT_CONFIG
    _, err = capsys.readouterr()
    assert err == (
        "celery-exporter: error: invalid settings: broker_url scheme 'ftp' is not supported; "
        "use one of amqp, amqps, pyamqp, redis, rediss, sentinel\n"
    )


@pytest.mark.parametrize(
    "name",
    [
        "broker_url_file",
        "web_tls_cert_file",
        "web_tls_key_file",
        "web_tls_client_ca_file",
        "web_auth_password_file",
        "web_auth_bearer_token_file",
        "rabbitmq_management_password_file",
    ],
)
def test_every_path_option_must_name_a_file(tmp_path: Path, name: str) -> None:
    """Each option naming a file is refused when the file is not there, before any check
    that pairs it with another option."""
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as caught:
        parse_settings([f"--{name.replace('_', '-')}", str(missing)])
    assert str(caught.value) == f"invalid settings: {name} {missing} is not a readable file"


def test_main_missing_broker_url_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --broker-url-file that does not exist is one clear line, exit 2."""
    missing = tmp_path / "nope"
    assert main(["--broker-url-file", str(missing)]) == EXIT_CONFIG
    _, err = capsys.readouterr()
    assert err == (
        f"celery-exporter: error: invalid settings: broker_url_file {missing} "
        "is not a readable file\n"
    )


def test_unknown_flag_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown flag is an argparse error: exit status 2, one line, no usage dump."""
    with pytest.raises(SystemExit) as caught:
        main(["--bogus"])
    assert caught.value.code == EXIT_CONFIG
    _, err = capsys.readouterr()
    assert err == "celery-exporter: error: unrecognized arguments: --bogus\n"


# --- redaction ---


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("amqp://user:pw@host//", "amqp://user:***@host//"),
        ("amqps://user:pw@host:5671/vhost", "amqps://user:***@host:5671/vhost"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://default:p%40ss@host:6380/1?ssl_cert_reqs=required",
         "rediss://default:***@host:6380/1?ssl_cert_reqs=required"),
        ("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379;sentinel://:pw@s3:26379",
         "sentinel://:***@s1:26379;sentinel://:***@s2:26379;sentinel://:***@s3:26379"),
        ("amqp://u:a@h1//;amqp://u:b@h2//", "amqp://u:***@h1//;amqp://u:***@h2//"),
        ("Error 111 connecting to redis://:pw@10.0.0.5:6379/0. Connection refused.",
         "Error 111 connecting to redis://:***@10.0.0.5:6379/0. Connection refused."),
        ("AMQP://USER:PW@HOST//", "AMQP://USER:***@HOST//"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("amqp://guest@host//", "amqp://guest@host//"),
        ("no url here: a:b@c", "no url here: a:b@c"),
    ],
)  # fmt: skip
def test_redact_url(text: str, redacted: str) -> None:
    """redact_url replaces every URL password with *** and leaves everything else alone."""
    assert logs.redact_url(text) == redacted


def test_redacting_filter_rewrites_log_records() -> None:
    """The log filter redacts passwords in the rendered message, arguments included."""
    record = logging.LogRecord(
        "kombu", logging.ERROR, __file__, 1, "cannot reach %s", ("redis://:pw@h:6379/0",), None
    )
    assert logs.RedactingFilter().filter(record) is True
    assert record.getMessage() == "cannot reach redis://:***@h:6379/0"
