"""py-spy attached to the exporter during a burst: where its time goes, by function and line.

``--gil`` samples only the thread holding the GIL: the exporter's Python work, without the
threads that wait (the socket reader in recv, the event loop in epoll). Sampling pauses the
process (py-spy's default, exact stacks), so the profiled burst runs slower than the measured
one; the shares are what count. Time in C extensions (hiredis, orjson, binascii) is charged
to the Python line that calls them.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

RATE = 1000  # samples per second
ATTACH_SECONDS = 1.0  # py-spy needs a moment to read the target's memory layout
_LINE = re.compile(r":\d+\)$")


class FunctionTime(NamedTuple):
    function: str  # "name (file)"
    self_share: float  # of all samples, the function at the top of the stack
    total_share: float  # of all samples, the function anywhere in the stack


class LineTime(NamedTuple):
    line: str  # "name (file:line)"
    share: float  # of all samples, this line at the top of the stack


class Profile(NamedTuple):
    samples: int
    top_self: list[FunctionTime]
    top_total: list[FunctionTime]
    top_lines: list[LineTime]
    areas: list[tuple[str, float]]  # share of samples per AREAS entry, "other" last


# Where a sample's time goes: the first frame, from the top of the stack down, whose file
# starts with one of the prefixes names its area (C extensions count for their caller, so
# orjson.loads is "decode", recv is the broker client's).
AREAS = (
    ("exporter: decode (events/decode.py, orjson)", ("exporter/events/decode.py",)),
    ("exporter: apply to state (pipeline.py, state/)", ("exporter/pipeline.py", "exporter/state/")),
    ("py-amqp + kombu: read, frame, dispatch", ("amqp/", "kombu/")),
    ("redis-py + hiredis: read, frame", ("redis/", "hiredis/")),
    ("exporter: source loop (events/*_source.py)", ("exporter/events/",)),
)


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        where = frame.rpartition(" (")[2]
        for name, prefixes in AREAS:
            if where.startswith(prefixes):
                return name
    return "other"


def _short(text: str) -> str:
    """``f (/x/exporter/events/decode.py:57)`` -> ``f (exporter/events/decode.py:57)``."""
    name, _, where = text.partition(" (")
    parts = where.rstrip(")").split("/")
    for anchor in ("exporter", "site-packages", "lib"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + (anchor != "exporter") :]
            break
    return f"{name} ({'/'.join(parts)})"


def _function(line: str) -> str:
    """``f (exporter/events/decode.py:57)`` -> ``f (exporter/events/decode.py)``."""
    return _LINE.sub(")", line)


def summarise(raw: str, top: int = 15) -> Profile:
    """Top functions by self and inclusive samples from py-spy's ``--format raw`` output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    lines: dict[str, int] = {}
    areas: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        leaf = _short(stack.rsplit(";", 1)[-1])
        lines[leaf] = lines.get(leaf, 0) + count
        frames = [_function(_short(frame)) for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        area = _area(frames)
        areas[area] = areas.get(area, 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[FunctionTime]:
        best = sorted(table.items(), key=lambda item: -item[1])[:top]
        total = max(samples, 1)
        return [
            FunctionTime(name, own.get(name, 0) / total, inclusive[name] / total)
            for name, _ in best
        ]

    hot = sorted(lines.items(), key=lambda item: -item[1])[:top]
    top_lines = [LineTime(where, count / max(samples, 1)) for where, count in hot]
    total = max(samples, 1)
    names = [name for name, _ in AREAS] + ["other"]
    shares = [(name, areas[name] / total) for name in names if name in areas]
    return Profile(samples, ranked(own), ranked(inclusive), top_lines, shares)


class PySpy:
    """``py-spy record`` on a pid for the duration of a ``with`` block."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._dir = Path(tempfile.mkdtemp(prefix="bench-pyspy-"))
        self._output = self._dir / "profile.txt"
        self._proc: subprocess.Popen[bytes] | None = None
        self.profile: Profile | None = None
        self.error: str | None = None

    @staticmethod
    def binary() -> str | None:
        """py-spy from this interpreter's environment (.venv/bin), else from PATH."""
        beside = Path(sys.executable).with_name("py-spy")
        return str(beside) if beside.is_file() else shutil.which("py-spy")

    @classmethod
    def available(cls) -> bool:
        return cls.binary() is not None

    def __enter__(self) -> Self:
        binary = self.binary()
        assert binary is not None, "check available() first"
        argv = [binary, "record", "--pid", str(self._pid), "--format", "raw"]
        argv += ["--rate", str(RATE), "--gil", "-o", str(self._output)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(ATTACH_SECONDS)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            out, _ = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        if self._output.exists():
            self.profile = summarise(self._output.read_text())
        else:
            lines = out.decode(errors="replace").strip().splitlines()
            self.error = lines[-1] if lines else "py-spy wrote no profile"
        shutil.rmtree(self._dir, ignore_errors=True)
