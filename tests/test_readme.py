"""The README for users: its metric table (and docs/configuration.md's flag table) match the
code (UPDATE_README=1 rewrites them), it stays short, and its links lead somewhere."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from exporter.cli import env_name, flag_name
from exporter.metrics.defs import ALL
from exporter.settings import options

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
MAX_README_BYTES = 25 * 1024


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


@pytest.mark.parametrize(
    ("path", "marker", "render"),
    [(README, "metrics", metrics_table), (CONFIGURATION, "flags", flags_table)],
    ids=["metrics", "flags"],
)
def test_table_matches_code(path: Path, marker: str, render: object) -> None:
    """The table between the markers is exactly what the code defines."""
    assert callable(render)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(
        rf"(<!-- {marker}-table:start -->\n)(.*?)(\n<!-- {marker}-table:end -->)", re.S
    )
    match = pattern.search(text)
    assert match, f"{path.name} lacks the {marker}-table markers"
    expected = render()
    if os.environ.get("UPDATE_README") == "1" and match.group(2) != expected:
        path.write_text(pattern.sub(lambda m: m.group(1) + expected + m.group(3), text))
        return
    assert match.group(2) == expected, f"{path.name} {marker} table is stale: UPDATE_README=1"


def test_readme_is_short() -> None:
    """What a user reads first fits in 25 KB; the rest lives in docs/."""
    assert len(README.read_bytes()) <= MAX_README_BYTES


@pytest.mark.parametrize("path", [README, *sorted((REPO / "docs").glob("*.md"))], ids=str)
def test_relative_links_lead_to_files(path: Path) -> None:
    """Every relative link of the README and docs/ names a file of the repository."""
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    missing = [t for t in targets if not (path.parent / t).exists()]
    assert missing == []
