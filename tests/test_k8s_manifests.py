"""The Kubernetes recipe (deploy/k8s/) read structurally with PyYAML: kinds and API versions, labels that the
selectors match, the HPA aimed at the Deployment, probes on real routes of the app, ports that line up, settings
that exist, and a scaling metric that the Prometheus adapter derives from a counter the API really exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.api.metrics import ApiMetrics
from shared.settings import ENV_PREFIX, Settings, load_settings

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
README = Path(__file__).resolve().parents[1] / "README.md"
API_VERSIONS = {"Deployment": "apps/v1", "Service": "v1", "HorizontalPodAutoscaler": "autoscaling/v2",
                "Kustomization": "kustomize.config.k8s.io/v1beta1"}


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "prometheus-adapter-values.yaml":  # Helm values, not a manifest
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def adapter_rule() -> dict[str, Any]:
    values = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    rules = values["rules"]["custom"]
    assert len(rules) == 1
    return rules[0]  # type: ignore[no-any-return]


def test_every_manifest_has_a_known_kind_and_api_version():
    docs = documents()
    assert {d["kind"] for d in docs} == set(API_VERSIONS)
    for d in docs:
        assert d["apiVersion"] == API_VERSIONS[d["kind"]], d["kind"]
    listed = one("Kustomization")["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml")
                                    if p.name not in ("kustomization.yaml", "prometheus-adapter-values.yaml"))


def test_selectors_match_the_pod_labels():
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels.items()
    service_selector = one("Service")["spec"]["selector"]
    assert service_selector and service_selector.items() <= pod_labels.items()


def test_the_hpa_scales_the_deployment_by_name():
    hpa, deployment = one("HorizontalPodAutoscaler"), one("Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def _port_number(port: int | str) -> int:
    """A probe's or Service's port, named or numbered, as the container's port number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert port in named, f"no container port named {port!r}"
    return int(named[port])


def test_the_service_targets_the_container_port_and_the_server_listens_on_it():
    (port,) = container()["ports"]
    for service_port in one("Service")["spec"]["ports"]:
        assert _port_number(service_port["targetPort"]) == port["containerPort"]
    command = container()["command"]
    assert command[:2] == ["medqa", "serve"]
    assert int(command[command.index("--port") + 1]) == port["containerPort"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]


def _routes() -> set[tuple[str, str]]:
    """(method, path) of the paths the recipe names that the app's router matches fully: its own matching
    logic, so routers included into the app count too."""
    from starlette.routing import Match

    from services.api.app import create_app

    app = create_app(load_settings(data_dir="/tmp/medqa-k8s-test"))  # builds the routes; starts nothing
    wanted = {("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/v1/answer"), ("GET", "/no-such-route")}
    wanted |= {("GET", p["httpGet"]["path"]) for k, p in container().items() if k.endswith("Probe") and "httpGet" in p}
    found = set()
    for method, path in wanted:
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "app": app, "headers": []}
        if any(route.matches(scope)[0] == Match.FULL for route in app.router.routes):
            found.add((method, path))
    assert ("GET", "/no-such-route") not in found  # the check can fail
    return found


def test_probes_and_the_scrape_path_are_real_get_routes():
    routes = _routes()
    probes = {k: v for k, v in container().items() if k.endswith("Probe")}
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(probes)
    for name, probe in probes.items():
        if "httpGet" in probe:
            assert ("GET", probe["httpGet"]["path"]) in routes, name
            assert _port_number(probe["httpGet"]["port"]) == container()["ports"][0]["containerPort"]
        else:
            assert _port_number(probe["tcpSocket"]["port"]) == container()["ports"][0]["containerPort"]
    assert container()["readinessProbe"]["httpGet"]["path"] == "/healthz"
    scrape = one("Deployment")["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    assert ("GET", scrape) in routes


def test_secrets_come_from_the_secret_and_every_setting_exists():
    env = {e["name"]: e for e in container()["env"]}
    for name in ("MEDQA_API_TOKEN", "MEDQA_DATABASE_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "medqa-api" and not ref.get("optional", False), name
        assert "value" not in env[name]
    fields = set(Settings.model_fields)
    for name in env:
        if name.startswith(ENV_PREFIX):
            assert name[len(ENV_PREFIX):].lower() in fields, f"{name} is no setting"
    # README's recipe creates that Secret with exactly the keys the Deployment reads.
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})}
    recipe = README.read_text()
    assert "kubectl create secret generic medqa-api" in recipe
    assert all(f"--from-literal={key}=" in recipe for key in keys)
    resources = container()["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def test_the_scaling_metric_comes_from_a_counter_the_api_exports():
    metric = one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["type"] for m in metric] == ["Pods"]
    name = metric[0]["pods"]["metric"]["name"]
    rule = adapter_rule()
    assert rule["name"]["as"] == name
    series = re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
    assert re.fullmatch(rule["name"]["matches"].strip("^$"), series)
    exported = {}
    for family in ApiMetrics().registry.collect():
        if family.type == "counter":
            exported[family.name + "_total"] = family
    assert series in exported, f"{series} is not a counter in services/api/metrics.py"
    # The query keeps answers only, with labels the counter has and values the app writes.
    query = rule["metricsQuery"]
    assert 'endpoint="/v1/answer"' in query and 'method="POST"' in query
    assert ("POST", "/v1/answer") in _routes()
    metrics_py = (Path(__file__).resolve().parents[1] / "services" / "api" / "metrics.py").read_text()
    assert f'"{series.removesuffix("_total")}"' in metrics_py
    assert '["endpoint", "method", "status"]' in metrics_py


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_no_secret_value_is_written_in_the_recipe(path):
    text = path.read_text()
    assert "kind: Secret" not in text
    assert not re.search(r"(?i)(password|token|secret)[\w-]*:\s*['\"]?\w{6,}", text.replace("secretKeyRef", ""))
