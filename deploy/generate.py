"""Copy the repository's single sources of truth into the Helm chart, which reads them with
.Files (never edit the copies):

    alerts/celery.rules.yml    -> charts/celery-exporter/files/celery.rules.yml (verbatim; the
                                  chart's PrometheusRule holds its groups)
    grafana/dashboards/*.json  -> charts/celery-exporter/files/dashboards/<name>.json
                                  (re-indented; one ConfigMap each)

    python -m deploy.generate          rewrite files/, deleting files left over
    python -m deploy.generate --check  exit 1 naming every stale, missing or extra file

Exit code 2 when a source is missing or malformed, or holds what the chart's objects would
silently drop. The whole of files/ belongs to this generator.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import yaml

REPO: Final = Path(__file__).resolve().parent.parent
RULES_SOURCE: Final = PurePosixPath("alerts/celery.rules.yml")
DASHBOARDS_SOURCE: Final = PurePosixPath("grafana/dashboards")
CHART: Final = PurePosixPath("charts/celery-exporter")
OUTPUT: Final = CHART / "files"
RULES_COPY: Final = OUTPUT / "celery.rules.yml"
DASHBOARDS_COPY: Final = OUTPUT / "dashboards"
README: Final = OUTPUT / "README.md"
README_TEXT: Final = (
    "# Generated: do not edit\n\n"
    "`python -m deploy.generate` copies `alerts/celery.rules.yml` and `grafana/dashboards/*.json`\n"
    "here; the chart's PrometheusRule and dashboard ConfigMaps read them with `.Files`. Change\n"
    "the sources and rerun it (`--check` in the tests fails on a stale copy).\n"
)
# The API server refuses objects over ~1.5 MiB and etcd values over 1 MiB; stay below both.
MAX_CONFIGMAP_BYTES: Final = 1_000_000
# Keys a Prometheus rule file and a PrometheusRule (monitoring.coreos.com/v1) both accept. The
# CRD's structural schema would silently prune any other key, so it is refused here instead.
GROUP_KEYS: Final = frozenset({"name", "interval", "limit", "query_offset", "labels", "rules"})
RULE_KEYS: Final = frozenset(
    {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
)
_DNS_LABEL: Final = re.compile(r"[^a-z0-9-]+")


class SourceError(Exception):
    """A source file is missing or is not what the generator can render."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What --check found: files whose content differs, is missing, or should not be there."""

    stale: tuple[PurePosixPath, ...]
    missing: tuple[PurePosixPath, ...]
    extra: tuple[PurePosixPath, ...]

    @property
    def clean(self) -> bool:
        return not (self.stale or self.missing or self.extra)


def _check_string_map(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SourceError(f"{where}: expected a mapping of strings to strings")


def _check_rule(rule: Any, where: str) -> None:
    if not isinstance(rule, dict):
        raise SourceError(f"{where}: expected a mapping")
    unknown = sorted(set(rule) - RULE_KEYS)
    if unknown:
        raise SourceError(f"{where}: keys {unknown} are not part of a PrometheusRule rule")
    if ("alert" in rule) == ("record" in rule):
        raise SourceError(f"{where}: needs exactly one of 'alert' and 'record'")
    if not isinstance(rule.get("expr"), str | int) or isinstance(rule.get("expr"), bool):
        raise SourceError(f"{where}: 'expr' must be a PromQL string")
    for key in ("alert", "record", "for", "keep_firing_for"):
        if key in rule and not isinstance(rule[key], str):
            raise SourceError(f"{where}: '{key}' must be a string")
    for key in ("labels", "annotations"):
        if key in rule:
            _check_string_map(rule[key], f"{where}.{key}")


def load_rule_groups(path: Path) -> list[dict[str, Any]]:
    """The rule groups of a Prometheus rule file, checked to fit a PrometheusRule."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise SourceError(f"{path}: not found (the alert rules are the source)") from err
    except yaml.YAMLError as err:
        raise SourceError(f"{path}: not valid YAML: {err}") from err
    if (
        not isinstance(data, dict)
        or set(data) != {"groups"}
        or not isinstance(data["groups"], list)
    ):
        raise SourceError(f"{path}: expected a mapping with one key, 'groups' (a list)")
    groups: list[dict[str, Any]] = data["groups"]
    names: set[str] = set()
    for index, group in enumerate(groups):
        where = f"{path}: groups[{index}]"
        if not isinstance(group, dict):
            raise SourceError(f"{where}: expected a mapping")
        unknown = sorted(set(group) - GROUP_KEYS)
        if unknown:
            raise SourceError(f"{where}: keys {unknown} are not part of a PrometheusRule group")
        name = group.get("name")
        if not isinstance(name, str) or not name:
            raise SourceError(f"{where}: 'name' must be a non-empty string")
        if name in names:
            raise SourceError(f"{where}: group name {name!r} appears twice")
        names.add(name)
        if "labels" in group:
            _check_string_map(group["labels"], f"{where}.labels")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            raise SourceError(f"{where}: 'rules' must be a non-empty list")
        for position, rule in enumerate(rules):
            _check_rule(rule, f"{where}.rules[{position}]")
    if not groups:
        raise SourceError(f"{path}: no rule groups")
    return groups


@dataclass(frozen=True, slots=True)
class Dashboard:
    """One Grafana dashboard file, normalised."""

    stem: str
    uid: str
    json_text: str


def load_dashboard(path: Path) -> Dashboard:
    """A dashboard JSON file, re-serialised with two-space indent and ASCII escapes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise SourceError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a JSON object (a dashboard)")
    uid, title = data.get("uid"), data.get("title")
    if not isinstance(uid, str) or not uid or not isinstance(title, str) or not title:
        # Without a stable uid Grafana makes a new dashboard on every provisioning.
        raise SourceError(f"{path}: a dashboard needs a non-empty 'uid' and 'title'")
    stem = _DNS_LABEL.sub("-", path.stem.lower()).strip("-")
    if not stem:
        raise SourceError(f"{path}: the file name gives no usable ConfigMap name")
    # ASCII escapes and no trailing spaces keep the text a plain YAML block scalar.
    return Dashboard(stem=stem, uid=uid, json_text=json.dumps(data, indent=2) + "\n")


def render(root: Path = REPO) -> dict[PurePosixPath, str]:
    """Every file of the chart's files/, by path relative to ``root``."""
    load_rule_groups(root / RULES_SOURCE)
    source_dir = root / DASHBOARDS_SOURCE
    if not source_dir.is_dir():
        raise SourceError(f"{source_dir}: not found (the dashboards are the source)")
    files = sorted(source_dir.glob("*.json"))
    if not files:
        raise SourceError(f"{source_dir}: no *.json dashboards")
    out: dict[PurePosixPath, str] = {
        README: README_TEXT,
        RULES_COPY: (root / RULES_SOURCE).read_text(encoding="utf-8"),
    }
    uids: dict[str, Path] = {}
    stems: dict[str, Path] = {}
    for path in files:
        dashboard = load_dashboard(path)
        for seen, key, what in ((uids, dashboard.uid, "uid"), (stems, dashboard.stem, "name")):
            if key in seen:
                raise SourceError(f"{path}: same dashboard {what} {key!r} as {seen[key]}")
            seen[key] = path
        size = len(dashboard.json_text.encode())
        if size > MAX_CONFIGMAP_BYTES:
            raise SourceError(f"{path}: too large for a ConfigMap ({size} bytes)")
        out[DASHBOARDS_COPY / f"{dashboard.stem}.json"] = dashboard.json_text
    return out


def _existing(root: Path) -> set[PurePosixPath]:
    base = root / OUTPUT
    if not base.is_dir():
        return set()
    return {
        PurePosixPath(path.relative_to(root).as_posix())
        for path in base.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def check(root: Path = REPO) -> Outcome:
    """Compare the committed files/ with a fresh render."""
    wanted = render(root)
    present = _existing(root)
    stale = tuple(
        sorted(
            path
            for path, text in wanted.items()
            if path in present and (root / path).read_text(encoding="utf-8") != text
        )
    )
    missing = tuple(sorted(set(wanted) - present))
    extra = tuple(sorted(present - set(wanted)))
    return Outcome(stale=stale, missing=missing, extra=extra)


def write(root: Path = REPO) -> list[PurePosixPath]:
    """Rewrite files/; return the paths that changed or were removed."""
    wanted = render(root)
    changed: list[PurePosixPath] = []
    for path in sorted(_existing(root) - set(wanted)):
        (root / path).unlink()
        changed.append(path)
    for path, text in wanted.items():
        target = root / path
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        changed.append(path)
    for directory in sorted((root / OUTPUT).rglob("*"), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write, or with --check report staleness; 0 ok, 1 stale, 2 bad source."""
    parser = argparse.ArgumentParser(prog="python -m deploy.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale outputs")
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root: Path = args.root
    try:
        if args.check:
            outcome = check(root)
        else:
            changed = write(root)
    except SourceError as err:
        sys.stderr.write(f"deploy.generate: error: {err}\n")
        return 2
    if not args.check:
        sys.stdout.write("".join(f"wrote {path}\n" for path in changed) or "up to date\n")
        return 0
    if outcome.clean:
        return 0
    lines = [
        f"  {what}: {path}\n"
        for what, paths in (
            ("stale", outcome.stale),
            ("missing", outcome.missing),
            ("not generated", outcome.extra),
        )
        for path in paths
    ]
    sys.stderr.write(
        f"deploy.generate: {OUTPUT}/ is out of date with its sources:\n"
        + "".join(lines)
        + "run `python -m deploy.generate` and commit the result\n"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
