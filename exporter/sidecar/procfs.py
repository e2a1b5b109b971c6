"""The worker's processes as /proc shows them: parentage, CPU time and resident memory.

Only ``/proc/<pid>/stat`` is read, one file per process: it holds the parent, the state, the
CPU times (own and reaped children's, in clock ticks), the start time (which tells a reused
pid apart) and the resident set in pages, the same counters ``VmRSS`` sums.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class Process(NamedTuple):
    """One process at one moment."""

    pid: int
    ppid: int
    zombie: bool  # exited, not reaped by its parent yet: its CPU times are still here
    cpu_seconds: float  # its own user + system time, and that of the children it reaped
    start_ticks: int  # start time after boot: (pid, start_ticks) names one process for good
    rss_bytes: int


def parse_stat(pid: int, text: str) -> Process:
    """``/proc/<pid>/stat`` -> Process; the command name is skipped (it may hold spaces)."""
    # Fields from the state on (field 3); utime..cstime are fields 14-17, starttime 22, rss 24.
    fields = text[text.rindex(")") + 2 :].split()
    ticks = sum(int(value) for value in fields[11:15])
    return Process(
        pid=pid,
        ppid=int(fields[1]),
        zombie=fields[0] == "Z",
        cpu_seconds=ticks / CLOCK_TICKS,
        start_ticks=int(fields[19]),
        rss_bytes=int(fields[21]) * PAGE_SIZE,
    )


class ProcReader:
    """Reads processes under ``root`` (``/proc``, or another mount of it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def boot_time(self) -> float | None:
        """When the host booted (unix time, ``btime`` in ``stat``): process start times count
        from it."""
        try:
            text = (self.root / "stat").read_text()
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
        return None

    def process(self, pid: int) -> Process | None:
        """The process, or None when there is none with that pid (it exited, or lives in
        another pid namespace)."""
        try:
            return parse_stat(pid, (self.root / str(pid) / "stat").read_text())
        except (FileNotFoundError, ProcessLookupError):
            return None

    def children(self, ppid: int) -> list[Process]:
        """Every process whose parent is ``ppid`` (zombies included)."""
        found = []
        try:
            entries = [entry.name for entry in self.root.iterdir()]
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.isdigit():
                process = self.process(int(entry))
                if process is not None and process.ppid == ppid:
                    found.append(process)
        return found
