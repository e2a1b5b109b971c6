"""The Grafana dashboards: generated from grafana/generate.py, complete, valid PromQL and JSON."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from exporter.metrics.defs import ALL
from grafana import generate

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL_HINT = "promtool not found: apt-get install prometheus"
# The uids are links and bookmarks: changing one breaks them, so it must be deliberate.
UIDS = {
    "overview.json": "celery-overview",
    "tasks.json": "celery-tasks",
    "queues.json": "celery-queues",
    "workers.json": "celery-workers",
    "exporter.json": "celery-exporter-health",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMETHEUS_BUILTINS = frozenset({"up"})
# Grafana's own variables get a value of the right kind; dashboard variables become "x".
GRAFANA_VALUES = {"__rate_interval": "5m", "__range": "1h", "__interval": "1m"}
FILTER_VARIABLES = ("queue", "task", "worker")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A name not inside a number and not called as a function.
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*\w+\)$")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, matchers, ranges, groupings removed)."""
    bare = _GROUPING.sub(" ", _RANGES.sub(" ", _MATCHERS.sub(" ", _STRING.sub('""', expr))))
    return {name for name in _IDENTIFIER.findall(bare) if name not in _KEYWORDS}


def substitute(expr: str) -> str:
    """The expression with every Grafana variable replaced by a valid value."""
    return _VARIABLE.sub(lambda m: GRAFANA_VALUES.get(m[1], "x"), expr)


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels of collapsed rows."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(board: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel-and-refId, target) of every panel query."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target


def expressions(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel query and of every variable's label_values selector."""
    for where, target in panel_queries(board):
        yield where, target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            found = _LABEL_VALUES.match(variable["query"])
            assert found, f"variable {variable['name']}: {variable['query']}"
            yield f"variable {variable['name']}", found[1]


def base_name(name: str) -> str:
    """The defined metric a series name belongs to (a histogram's _bucket/_sum/_count)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


HISTOGRAMS = frozenset(m.name for m in ALL if m.kind == "histogram")
# Series names Prometheus stores: a histogram only as its three suffixed series.
SERIES = frozenset(
    {m.name for m in ALL if m.kind != "histogram"}
    | {h + suffix for h in HISTOGRAMS for suffix in HISTOGRAM_SUFFIXES}
)


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    """The committed dashboards by file name."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(generate.DASHBOARD_DIR.glob("*.json"))
    }


def test_committed_json_is_up_to_date() -> None:
    """grafana/dashboards/*.json is exactly what grafana/generate.py renders, no more files."""
    assert generate.stale_files(generate.DASHBOARD_DIR, generate.render_all()) == [], (
        "run: python -m grafana.generate"
    )


def test_check_flag_fails_on_stale_files(tmp_path: Path) -> None:
    """--check exits 1 on missing, edited and extra files, 0 once they are regenerated."""
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "extra.json").write_text("{}", encoding="utf-8")
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
    (tmp_path / "extra.json").unlink()
    tasks = tmp_path / "tasks.json"
    tasks.write_text(tasks.read_text(encoding="utf-8").replace("p95", "p96"), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "grafana.generate", "--check", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert "tasks.json" in result.stderr
    assert "overview.json" not in result.stderr


def test_every_defined_metric_is_on_a_panel(boards: dict[str, dict[str, Any]]) -> None:
    """Each metric of exporter.metrics.defs.ALL is selected by some panel query."""
    used = {
        base_name(name)
        for board in boards.values()
        for _, target in panel_queries(board)
        for name in metric_names(target["expr"])
    }
    assert sorted({m.name for m in ALL} - used) == []


def test_every_metric_used_is_defined(boards: dict[str, dict[str, Any]]) -> None:
    """Panels and variables select only defined series (histograms by suffix) and `up`."""
    unknown = {
        f"{file} {where}: {name}"
        for file, board in boards.items()
        for where, expr in expressions(board)
        for name in metric_names(expr)
        if name not in SERIES | PROMETHEUS_BUILTINS
    }
    assert sorted(unknown) == []


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (task, le) (rate(a_bucket{job=~"$job", le="0.5"}[$__rate_interval]))',
            {"a_bucket"},
        ),
        ("time() - max by (worker) (b:c) / on (x) group_left () d", {"b:c", "d"}),
        ("histogram_quantile(0.95, e) > 1e3 or vector(0) and bool f", {"e", "f"}),
    ],
)
def test_metric_names_reads_selectors_only(expr: str, names: set[str]) -> None:
    """The name extractor skips functions, labels, strings, ranges, numbers and keywords."""
    assert metric_names(expr) == names


def test_promtool_parses_every_expression(
    boards: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Every expression, variables substituted, is a valid recording rule for promtool."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(PROMTOOL_HINT, pytrace=False)
    rules = [
        {
            "record": f"dashboard:{Path(file).stem}:{re.sub(r'[^a-zA-Z0-9]+', '_', where)}",
            "expr": substitute(expr),
        }
        for file, board in boards.items()
        for where, expr in expressions(board)
    ]
    assert all("$" not in rule["expr"] for rule in rules)
    rules_file = tmp_path / "dashboards.rules.yml"
    # JSON is YAML, so promtool reads it as is.
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboards_round_trip_with_stable_uids_units_and_ids(
    boards: dict[str, dict[str, Any]],
) -> None:
    """Each file round-trips through the SDK's Dashboard model, keeps its uid, has unique
    panel ids and a unit on every panel but rows."""
    assert {file: board["uid"] for file, board in boards.items()} == UIDS
    for file, board in boards.items():
        again = json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder))
        assert again == board, file
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{file}: duplicate panel ids {sorted(ids)}"
        no_unit = [
            panel["title"]
            for panel in panels(board)
            if panel["type"] != "row" and not panel["fieldConfig"]["defaults"].get("unit")
        ]
        assert no_unit == [], file


def test_queries_use_the_datasource_variables_and_rate_interval(
    boards: dict[str, dict[str, Any]],
) -> None:
    """Queries use ${datasource}, defined variables only, $__rate_interval ranges and legends;
    every board filters by job and namespace and uses each queue/task/worker filter it has."""
    for file, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus", file
        assert {"job", "namespace"} <= variables.keys(), file
        used: set[str] = set()
        for where, target in panel_queries(board):
            expr = target["expr"]
            assert target["datasource"]["uid"] == "${datasource}", f"{file} {where}"
            assert target["legendFormat"] or target.get("format") == "table", f"{file} {where}"
            assert set(_RANGES.findall(expr)) <= {"[$__rate_interval]"}, f"{file} {where}"
            used |= {m[1] for m in _VARIABLE.finditer(expr)} - GRAFANA_VALUES.keys()
        assert used <= variables.keys(), f"{file}: undefined {used - variables.keys()}"
        filters = {name for name in variables if name in FILTER_VARIABLES}
        assert filters <= used, f"{file}: unused variables {filters - used}"
        for panel in panels(board):
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", f"{file} {panel['title']}"
