"""The worker sidecar's /proc reading on real child processes, and its pool bookkeeping."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.sidecar.pool import PoolTracker
from exporter.sidecar.procfs import Process, ProcReader

PROC = ProcReader(Path("/proc"))
MIB = 1 << 20
RSS_SLACK = 256 * 4096
# Each child writes every page it holds, says so, then idles until stdin closes: its memory is
# stable while the test reads it.
CHILD = "import sys; block = b'x' * ({size}); print('ready', flush=True); sys.stdin.read()"


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two idle children of the test process, one holding 64 MiB more than the other."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD.format(size=size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for size in (64 * MIB, 1)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield procs
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)
            assert proc.stdout is not None
            proc.stdout.close()


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key}")


def test_reads_the_children_of_a_process(children: list[subprocess.Popen[bytes]]) -> None:
    """Children by parent pid, with the resident memory /proc/<pid>/status reports."""
    found = {p.pid: p for p in PROC.children(os.getpid())}
    # Other tests of this process may have left children of their own.
    assert {proc.pid for proc in children} <= set(found)
    assert {p.ppid for p in found.values()} == {os.getpid()}
    for proc in children:
        sample = found[proc.pid]
        assert sample.ppid == os.getpid() and not sample.zombie
        # The kernel's per-CPU RSS counters are summed on each read: status and stat may
        # differ by a few pages.
        assert abs(sample.rss_bytes - _status(proc.pid, "VmRSS") * 1024) <= RSS_SLACK
        # Field 22 of /proc/<pid>/stat, after the parenthesised command name.
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        assert sample.start_ticks == int(stat[stat.rindex(")") + 2 :].split()[19])
    big, small = (found[proc.pid] for proc in children)
    assert big.rss_bytes - small.rss_bytes >= 60 * MIB  # 64 MiB, give or take shared pages
    assert PROC.process(os.getpid()) is not None
    assert PROC.process(2**22 + 1) is None  # above the largest pid_max: no such process
    boot = PROC.boot_time()
    assert boot is not None and boot < time.time()


def test_an_empty_proc_shows_nothing(tmp_path: Path) -> None:
    """Another pid namespace, as the reader sees it: no process, no children, no boot time."""
    reader = ProcReader(tmp_path)
    assert reader.process(1) is None
    assert reader.children(1) == []
    assert reader.boot_time() is None


def _proc(pid: int, ppid: int, cpu: float, rss: int, *, zombie: bool = False) -> Process:
    return Process(pid, ppid, zombie, cpu, start_ticks=pid * 10, rss_bytes=rss)


def test_pool_replacements_cpu_and_memory() -> None:
    """Exited pool processes followed by new ones are replacements, whether both show in one
    sample or in two; a zombie is no pool process but keeps its CPU; the reaped one's CPU
    moves into the main process's; memory sums the live ones."""
    tracker = PoolTracker()
    main = _proc(100, 1, 1.0, 50)
    first = tracker.sample(main, [_proc(101, 100, 0.5, 10), _proc(102, 100, 0.5, 20)])
    assert (first.pool_processes, first.replacements, first.cpu_seconds) == (2, 0, 2.0)
    assert (first.rss_bytes, first.largest_pool_rss_bytes) == (80, 20)
    # 101 exits (a zombie, not reaped yet): one fewer process, its CPU still counted.
    second = tracker.sample(main, [_proc(101, 100, 0.6, 0, zombie=True), _proc(102, 100, 0.5, 20)])
    assert (second.pool_processes, second.replacements, second.cpu_seconds) == (1, 0, 2.1)
    # Reaped (its 0.6 s now in the main's children time) and replaced by 103.
    main = _proc(100, 1, 1.6, 50)
    third = tracker.sample(main, [_proc(102, 100, 0.5, 20), _proc(103, 100, 0.0, 5)])
    assert (third.pool_processes, third.replacements, third.cpu_seconds) == (2, 1, 2.1)
    # Two exit and two start between samples.
    fourth = tracker.sample(main, [_proc(104, 100, 0.0, 5), _proc(105, 100, 0.0, 5)])
    assert (fourth.pool_processes, fourth.replacements) == (2, 3)


def test_pool_shrinking_is_no_replacement_and_a_restart_continues() -> None:
    """Pool processes that exit with none after them (a warm shutdown) are not counted; a new
    main process starts with its pool as is, and both counters continue from where they were."""
    tracker = PoolTracker()
    main = _proc(100, 1, 1.0, 50)
    tracker.sample(main, [_proc(101, 100, 0.5, 10), _proc(102, 100, 0.5, 10)])
    shutting = tracker.sample(main, [])
    assert (shutting.pool_processes, shutting.replacements, shutting.cpu_seconds) == (0, 0, 2.0)
    restarted = _proc(200, 1, 0.25, 40)
    after = tracker.sample(restarted, [_proc(201, 200, 0.0, 10), _proc(202, 200, 0.0, 10)])
    assert (after.main_pid, after.pool_processes, after.replacements) == (200, 2, 0)
    assert after.cpu_seconds == 2.25
    # A child read after its parent reaped it would count twice; the sum never goes back.
    lower = tracker.sample(restarted, [])
    assert lower.cpu_seconds == 2.25
