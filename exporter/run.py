"""``python -m exporter.run FD``: the serving process, started by cli.py with valid settings.

It reads them from the file FD refers to (``Settings.to_json``) and imports none of the
validation (config.py, cli.py), so pydantic never takes a place in the daemon's memory.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

from exporter import logs
from exporter.daemon import serve
from exporter.inspect import AppLoadError
from exporter.settings import EXIT_CONFIG, Settings


def serve_settings(settings: Settings) -> int:
    """Run the daemon until SIGTERM or SIGINT; the exit status."""
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except ssl.SSLError as err:
        sys.stderr.write(f"celery-exporter: error: --web-tls-*: cannot load: {err}\n")
        return EXIT_CONFIG
    except AppLoadError as err:
        sys.stderr.write(f"celery-exporter: error: {err}\n")
        return EXIT_CONFIG
    except OSError as err:
        sys.stderr.write(
            f"celery-exporter: error: cannot listen on {settings.host}:{settings.port}: "
            f"{err.strerror}\n"
        )
        return EXIT_CONFIG
    return 0


def read_settings(fd: int) -> Settings:
    """The settings in the file ``fd`` refers to, which is then closed."""
    with os.fdopen(fd, "rb") as handoff:
        return Settings.from_json(handoff.read())


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        sys.stderr.write(
            "celery-exporter: error: exporter.run is started by celery-exporter "
            "(python -m exporter); run that instead\n"
        )
        return EXIT_CONFIG
    return serve_settings(read_settings(int(argv[0])))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
