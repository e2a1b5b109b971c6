"""Logging set-up and the one helper that keeps credentials out of every log line."""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import time
from typing import Any

from exporter.settings import LogFormat, LogLevel

# scheme://user:password@host -> scheme://user:***@host; kombu joins failover URLs with ';'.
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@;\s]*:)[^@/;\s]*(?P<at>@)", re.I)


def redact_url(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<at>", text)


class RedactingFilter(logging.Filter):
    """Redacts URL passwords in the rendered message, whoever logged it (kombu included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_url(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = redact_url(self.formatException(record.exc_info))
        return json.dumps(entry)


def configure(level: LogLevel, fmt: LogFormat) -> None:
    """Route our loggers at ``level`` and third-party ones at WARNING to stderr."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if fmt is LogFormat.JSON
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"redact": {"()": RedactingFilter}},
            "formatters": {"default": formatter},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "stream": sys.stderr,
                    "formatter": "default",
                    "filters": ["redact"],
                }
            },
            "root": {"level": "WARNING", "handlers": ["stderr"]},
            "loggers": {"exporter": {"level": level.value}},
        }
    )
    logging.Formatter.converter = time.gmtime
