"""The README's flag and metric tables match the code (UPDATE_README=1 rewrites them)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from exporter.cli import env_name, flag_name
from exporter.metrics.defs import ALL
from exporter.settings import options

README = Path(__file__).resolve().parent.parent / "README.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def metrics_table() -> str:
    rows = ["| Metric | Type | Labels | Help |", "|---|---|---|---|"]
    rows += [
        f"| `{m.name}` | {m.kind} | {', '.join(f'`{x}`' for x in m.labels) or '-'} "
        f"| {_cell(m.help)} |"
        for m in ALL
    ]
    return "\n".join(rows)


def flags_table() -> str:
    rows = ["| Flag | Environment variable | Default | Meaning |", "|---|---|---|---|"]
    for name, option in options().items():
        default = option.default()
        if hasattr(default, "get_secret_value"):
            default = default.get_secret_value()
        if isinstance(default, list):
            default = ",".join(f"{v:g}" for v in default)
        shown = "-" if default in (None, {}) else f"`{getattr(default, 'value', default)}`"
        flag = flag_name(name)
        if option.type is bool:
            flag = f"{flag}, --no-{flag[2:]}"
        rows.append(f"| `{flag}` | `{env_name(name)}` | {shown} | {_cell(option.description)} |")
    return "\n".join(rows)


@pytest.mark.parametrize(("marker", "render"), [("metrics", metrics_table), ("flags", flags_table)])
def test_readme_table_matches_code(marker: str, render: object) -> None:
    """The table between the README markers is exactly what the code defines."""
    assert callable(render)
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(
        rf"(<!-- {marker}-table:start -->\n)(.*?)(\n<!-- {marker}-table:end -->)", re.S
    )
    match = pattern.search(text)
    assert match, f"README lacks the {marker}-table markers"
    expected = render()
    if os.environ.get("UPDATE_README") == "1" and match.group(2) != expected:
        README.write_text(pattern.sub(lambda m: m.group(1) + expected + m.group(3), text))
        return
    assert match.group(2) == expected, f"README {marker} table is stale: UPDATE_README=1 pytest"
