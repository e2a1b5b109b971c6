"""Figures, their targets, the printed table and the JSON file under bench/.cache/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from bench.recording import CACHE_DIR

MIB = 1024 * 1024
Value = float | int | str | bool | None


class Figure(NamedTuple):
    key: str  # name in the JSON output
    label: str  # text in the table
    value: Value
    unit: str = ""
    target: str = ""  # e.g. ">= 60000"; empty when there is none
    ok: bool | None = None  # None: no target


def at_least(key: str, label: str, value: float, unit: str, target: float) -> Figure:
    return Figure(key, label, value, unit, f">= {_number(target)}", value >= target)


def equals(key: str, label: str, value: Value, target: Value) -> Figure:
    return Figure(key, label, value, "", _number(target), value == target)


def below(key: str, label: str, value: float, unit: str, target: float) -> Figure:
    return Figure(key, label, value, unit, f"< {_number(target)}", value < target)


@dataclass
class Section:
    name: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)


def _number(value: Value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return value


def table(sections: list[Section]) -> str:
    rows = [("scenario", "figure", "value", "target", "")]
    for section in sections:
        for figure in section.figures:
            value = f"{_number(figure.value)} {figure.unit}".strip()
            verdict = {True: "ok", False: "MISS", None: ""}[figure.ok]
            rows.append((section.name, figure.label, value, figure.target, verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    for section in sections:
        lines += [f"{section.name}: {note}" for note in section.notes]
    return "\n".join(line.rstrip() for line in lines)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, round(share * len(ordered) + 0.5) - 1)]


def load_average() -> float:
    """The one-minute load average, noted when other work shares the CPUs."""
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.2f} before starting: other work shares the CPUs")
    return load


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


def _commit() -> str:
    """The git commit measured, marked dirty when exporter/ differs from it."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "exporter")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def run_meta(load: float, seconds: float) -> dict[str, Value]:
    """What every result file records about the run besides its figures."""
    return {
        "exporter_commit": _commit(),
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_before": round(load, 2),
        "seconds": round(seconds, 1),
    }


def finish(
    sections: list[Section],
    meta: dict[str, Value],
    extra: dict[str, object] | None = None,
    *,
    name: str = "last",
) -> int:
    """Print the table, write bench/.cache/<name>.json; the exit status: 1 on a missed target."""
    print()
    print(table(sections))
    path = write_json(sections, meta, extra, name=name)
    print(f"\nwritten to {path}; took {meta['seconds']} s")
    missed = any(figure.ok is False for section in sections for figure in section.figures)
    return 1 if missed else 0


def write_json(
    sections: list[Section],
    meta: dict[str, Value],
    extra: dict[str, object] | None = None,
    *,
    name: str = "last",
) -> Path:
    data: dict[str, object] = {"meta": meta, **(extra or {})}
    for section in sections:
        data[section.name] = {
            "figures": {
                figure.key: {
                    "value": figure.value,
                    "unit": figure.unit,
                    "target": figure.target,
                    "ok": figure.ok,
                }
                for figure in section.figures
            },
            "notes": section.notes,
        }
    path = CACHE_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
