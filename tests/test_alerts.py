"""Alert rules: promtool and amtool accept them, their unit tests pass, the rendered file is
fresh, and every metric they read is one the exporter publishes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from alerts import generate
from exporter.metrics.defs import ALL

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULES = ALERTS / "celery.rules.yml"
UNIT_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
ALERTMANAGER = ALERTS / "alertmanager.example.yml"
RUNBOOK = ALERTS / "runbook.md"
GOLDEN = ROOT / "tests" / "golden" / "metrics.txt"
SIDECAR_GOLDEN = ROOT / "tests" / "golden" / "sidecar.txt"
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"

# PromQL words that look like metric names.
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "Inf", "NaN"}
    | {"group_left", "group_right", "atan2", "inf", "nan"}
)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def _code(expr: str) -> str:
    """The expression without string literals' contents and # comments."""
    out: list[str] = []
    quote, comment, escaped = "", False, False
    for char in expr:
        if comment:
            comment = char != "\n"
            if not comment:
                out.append(char)
        elif quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
                out.append(char)
        elif char in "\"'`":
            quote = char
            out.append(char)
        elif char == "#":
            comment = True
        else:
            out.append(char)
    return "".join(out)


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (metrics and recorded rules)."""
    code = _GROUPING.sub(" ", _code(expr))
    code = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", code)
    return {name for name in _NAME.findall(code) if name not in KEYWORDS}


def _mapping(value: object) -> dict[str, object]:
    assert isinstance(value, dict), value
    return value


def _list(value: object) -> list[object]:
    assert isinstance(value, list), value
    return value


def _rules() -> Iterator[dict[str, object]]:
    for group in _list(_mapping(generate.load_yaml(RULES))["groups"]):
        for rule in _list(_mapping(group)["rules"]):
            yield _mapping(rule)


def _exported() -> set[str]:
    names = {m.name for m in ALL}
    names |= {
        m.name + s for m in ALL if m.kind == "histogram" for s in ("_bucket", "_sum", "_count")
    }
    return names


def test_promtool_check_rules_accepts_the_rules() -> None:
    """promtool check rules (syntax, PromQL, duplicate rules lint) exits 0 on the rules file."""
    result = _run(_tool("promtool"), "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", UNIT_TESTS, ids=[p.stem for p in UNIT_TESTS])
def test_promtool_unit_tests_pass(path: Path) -> None:
    """Every promtool alert_rule_test and promql_expr_test case in the file passes."""
    result = _run(_tool("promtool"), "test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_config_accepts_the_alertmanager_example() -> None:
    """amtool check-config exits 0 on the example Alertmanager configuration."""
    result = _run(_tool("amtool"), "check-config", ALERTMANAGER)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("severity", "receiver"),
    [("critical", "celery-pager"), ("warning", "celery-chat"), ("info", "null")],
)
def test_alertmanager_example_routes_each_severity(severity: str, receiver: str) -> None:
    """Critical alerts go to the pager, warnings to chat, info nowhere."""
    result = _run(
        _tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receiver}", f"severity={severity}", "alertname=CeleryQueueTooLong",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_committed_rules_match_a_fresh_render() -> None:
    """alerts/celery.rules.yml is what alerts/config.yml renders to (--check exits 0)."""
    assert generate.main(["--check"]) == 0, "stale: run python -m alerts.generate"


def test_check_fails_on_a_stale_file_and_a_variant_config_renders(tmp_path: Path) -> None:
    """--check exits 1 on a stale file; --config/--out render a lowered variant promtool accepts."""
    stale = tmp_path / "stale.rules.yml"
    stale.write_text(RULES.read_text(encoding="utf-8").replace("> 1000", "> 999"))
    assert generate.main(["--check", "--out", str(stale)]) == 1
    config = (ALERTS / "config.yml").read_text(encoding="utf-8")
    variant = tmp_path / "config.yml"
    variant.write_text(config.replace("for: 15m, max_length: 1000", "for: 10s, max_length: 3"))
    out = tmp_path / "variant.rules.yml"
    assert generate.main(["--config", str(variant), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert '(celery_queue_length{job="celery-exporter"}) > 3\n        for: 10s\n' in text
    result = _run(_tool("promtool"), "check", "rules", out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generate_refuses_a_config_missing_an_alert(tmp_path: Path) -> None:
    """A config without one of the alerts exits 2 and names the missing alert."""
    config = (ALERTS / "config.yml").read_text(encoding="utf-8")
    broken = tmp_path / "config.yml"
    broken.write_text(re.sub(r"  CeleryTaskStuck:.*\n.*\n", "", config))
    assert generate.main(["--config", str(broken), "--out", str(tmp_path / "x.yml")]) == 2
    assert not (tmp_path / "x.yml").exists()


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (job, le) (rate(a_bucket{job="x", type=~"task-.*"}[5m]))', {"a_bucket"}),
        ("time() - max by (job) (b) > on (job) group_left () c * 2", {"b", "c"}),
        ("up{job='x'} == 0 or absent(up{job='x'})", {"up"}),
        (
            "# the queue's depth\nlevel:d:rate5m > 1 unless on (q) e # trailing",
            {"level:d:rate5m", "e"},
        ),
        ("histogram_quantile(0.95, f) + Inf", {"f"}),
    ],
)
def test_metric_names_finds_selected_series_only(expr: str, names: set[str]) -> None:
    """The name extractor skips functions, keywords, label lists, strings and comments."""
    assert metric_names(expr) == names


def test_rules_read_only_metrics_the_exporter_publishes() -> None:
    """Every series a rule reads is in defs.ALL (histogram suffixes allowed), up, or recorded."""
    rules = list(_rules())
    recorded = {str(rule["record"]) for rule in rules if "record" in rule}
    allowed = _exported() | recorded | {"up"}
    used = set().union(*(metric_names(str(rule["expr"])) for rule in rules))
    assert used - allowed == set()
    # The extractor saw the rules: these must be among them.
    assert {"celery_queue_length", "celery_task_duration_seconds_bucket", "up"} <= used


def test_rules_read_only_metrics_in_the_golden_exposition() -> None:
    """Every exporter series a rule reads appears in a golden exposition (tests/golden/)."""
    pages = GOLDEN.read_text(encoding="utf-8") + SIDECAR_GOLDEN.read_text(encoding="utf-8")
    golden = text_string_to_metric_families(pages)
    samples = {sample.name for family in golden for sample in family.samples}
    rules = list(_rules())
    recorded = {str(rule["record"]) for rule in rules if "record" in rule}
    used = set().union(*(metric_names(str(rule["expr"])) for rule in rules))
    assert used - recorded - {"up"} - samples == set()


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings: lowercased, spaces to '-', punctuation dropped."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_is_annotated_and_carries_its_runbook_steps() -> None:
    """Each alert has for:, a severity, a summary ending in '.', a templated description, and
    the Diagnosis and Mitigation of its runbook.md section; no runbook_url by default."""
    runbook = RUNBOOK.read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (\w+)$", runbook, re.M))
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert {str(rule["alert"]) for rule in alerts} == set(generate.PARAMS) == headings
    assert _mapping(generate.load_yaml(ALERTS / "config.yml"))["runbook_base_url"] == ""
    for rule in alerts:
        name = str(rule["alert"])
        labels, notes = _mapping(rule["labels"]), _mapping(rule["annotations"])
        assert re.fullmatch(r"[1-9][0-9]*[smh]", str(rule["for"])), name
        assert labels["severity"] in ("critical", "warning", "info"), name
        assert str(notes["summary"]).endswith("."), name
        assert "{{" not in str(notes["summary"]), name
        assert "$labels." in str(notes["description"]), name
        assert set(notes) == {"summary", "description", "runbook"}, name
        section = runbook.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        steps = str(notes["runbook"])
        # Prometheus expands annotations as templates: the steps must stay plain text.
        assert "{{" not in steps, name
        diagnosis, mitigation = steps.split("\nMitigation: ")
        assert diagnosis.startswith("Diagnosis:"), name
        # Every word of the two paragraphs, in order, and nothing else.
        wanted = section.split("**Diagnosis.**", 1)[1].replace("**Mitigation.**", "")
        got = diagnosis.removeprefix("Diagnosis:") + " " + mitigation
        assert got.split() == wanted.split(), name


def test_runbook_base_url_adds_links_to_existing_sections(tmp_path: Path) -> None:
    """--runbook-base-url gives every alert runbook_url = URL#<lowercased name>, an anchor
    GitHub makes for one of runbook.md's headings."""
    url = "https://github.com/someone/celery-exporter/blob/main/alerts/runbook.md"
    out = tmp_path / "linked.rules.yml"
    assert generate.main(["--runbook-base-url", url, "--out", str(out)]) == 0
    anchors = _anchors(RUNBOOK.read_text(encoding="utf-8"))
    groups = _list(_mapping(generate.load_yaml(out))["groups"])
    alerts = [
        _mapping(rule)
        for group in groups
        for rule in _list(_mapping(group)["rules"])
        if "alert" in _mapping(rule)
    ]
    assert len(alerts) == len([rule for rule in _rules() if "alert" in rule])
    for rule in alerts:
        link = str(_mapping(rule["annotations"])["runbook_url"])
        base, anchor = link.split("#")
        assert base == url and anchor == str(rule["alert"]).lower(), link
        assert anchor in anchors, link
    # Only the links differ from the committed file.
    stripped = re.sub(r'\n +runbook_url: "[^"]*"', "", out.read_text(encoding="utf-8"))
    assert stripped == RULES.read_text(encoding="utf-8")


def test_generate_refuses_a_runbook_section_without_steps(tmp_path: Path) -> None:
    """An alert whose runbook section lacks Mitigation is an error naming both."""
    runbook = tmp_path / "runbook.md"
    text = RUNBOOK.read_text(encoding="utf-8")
    runbook.write_text(text.replace("**Mitigation.** Restart Beat", "Restart Beat"))
    with pytest.raises(generate.ConfigError, match=r"CeleryBeatHeartbeatStale has no .*Mitigation"):
        generate.generate(ALERTS / "config.yml", runbook_path=runbook)


def test_shipped_files_name_no_placeholder_organisation() -> None:
    """No shipped link points at a placeholder GitHub organisation."""
    tracked = _run("git", "ls-files").stdout.split()
    hits = [
        path
        for path in tracked
        if not path.startswith("tests/")
        and (ROOT / path).is_file()
        and "example-org" in (ROOT / path).read_text(encoding="utf-8", errors="replace")
    ]
    assert hits == []


def test_every_rule_has_promtool_cases() -> None:
    """Each alert has a case where it fires and one where it stays silent; each recording rule
    has a promql_expr_test."""
    fires: set[str] = set()
    silent: set[str] = set()
    exprs: set[str] = set()
    for path in UNIT_TESTS:
        for raw_case in _list(_mapping(generate.load_yaml(path))["tests"]):
            case = _mapping(raw_case)
            assert case.get("name"), f"{path.name}: every case is named"
            for raw_test in _list(case.get("alert_rule_test", [])):
                test = _mapping(raw_test)
                (fires if test.get("exp_alerts") else silent).add(str(test["alertname"]))
            exprs |= {str(_mapping(t)["expr"]) for t in _list(case.get("promql_expr_test", []))}
    rules = list(_rules())
    alerts = {str(rule["alert"]) for rule in rules if "alert" in rule}
    assert alerts - fires == set()
    assert alerts - silent == set()
    assert {str(rule["record"]) for rule in rules if "record" in rule} - exprs == set()


def test_generate_runs_as_a_module() -> None:
    """python -m alerts.generate --check works from the repository root."""
    result = _run(sys.executable, "-m", "alerts.generate", "--check")
    assert result.returncode == 0, result.stderr
