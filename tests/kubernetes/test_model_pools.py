"""Several models in Kubernetes: `make kubernetes-models MODELS=...` gives each model a worker Deployment and a
KEDA ScaledObject on its queue, copied from the base's, which both overlays render and the API schemas accept.

The shipped manifests serve one model: components/models adds nothing. A two-model set is written by the
script into a copy of the manifests and rendered here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.kubernetes.support import (
    DEPLOY,
    OVERLAYS,
    by_kind,
    containers,
    environment,
    kustomize,
    one,
    render,
    selects,
    write_served_model,
)
from tests.kubernetes.test_schemas import validate

IRIS = "worker.examples.iris:IrisBayesianLogReg"
REGRESSION = "worker.examples.regression:BayesianLinearRegression"
MODEL_LABEL = "jax-inference-gateway/model"


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    deploy = tmp_path_factory.mktemp("two-models") / "kubernetes"
    shutil.copytree(DEPLOY, deploy)
    written = write_served_model(deploy, {"MODELS": f"{IRIS},{REGRESSION}=3"})
    assert written.returncode == 0, written.stderr
    return {overlay: kustomize(deploy / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_model_ships_one_pool(overlay: str) -> None:
    objects = render(overlay)
    assert [o["metadata"]["name"] for o in by_kind(objects, "Deployment") if o["metadata"]["name"].startswith("worker")
            ] == ["worker"]
    assert not [o for o in objects if MODEL_LABEL in o["metadata"].get("labels", {})]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_model_has_its_deployment_and_scaled_object_on_its_queue(two_models, overlay: str) -> None:
    objects = two_models[overlay]
    pools = {"worker": (IRIS, "jobs.iris-bayes-logreg", 2), "worker-bayes-linreg": (REGRESSION, "jobs.bayes-linreg", 3)}
    for name, (model, queue, minimum) in pools.items():
        deployment = one(objects, "Deployment", name)
        assert environment(objects, containers(deployment)["worker"])["MODEL"] == model
        scaled = one(objects, "ScaledObject", name)
        assert scaled["spec"]["scaleTargetRef"]["name"] == name
        assert scaled["spec"]["minReplicaCount"] == minimum
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["metadata"]["queueName"] == queue


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_pool_is_the_base_worker_with_another_model_and_selects_only_its_pods(two_models, overlay: str) -> None:
    objects = two_models[overlay]
    first, second = one(objects, "Deployment", "worker"), one(objects, "Deployment", "worker-bayes-linreg")
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in (("a", first), ("b", second))}
    assert selects(first["spec"]["selector"]["matchLabels"], pods["a"])
    assert not selects(first["spec"]["selector"]["matchLabels"], pods["b"])
    assert selects(second["spec"]["selector"]["matchLabels"], pods["b"])
    assert not selects(second["spec"]["selector"]["matchLabels"], pods["a"])

    def without_model(deployment: dict) -> dict:
        spec = deployment["spec"]["template"]["spec"]
        worker = containers(deployment)["worker"]
        rest = [c for c in spec["containers"] if c["name"] != "worker"]
        env = [v for v in worker["env"] if v["name"] != "MODEL"]
        spread = [{**c, "labelSelector": {"matchLabels": {k: v for k, v in c["labelSelector"]["matchLabels"].items()
                                                          if k != MODEL_LABEL}}}
                  for c in spec.get("topologySpreadConstraints", [])]
        return {**spec, "containers": [{**worker, "env": env}, *rest], "topologySpreadConstraints": spread}

    assert without_model(first) == without_model(second)  # the overlay's patches (GPUs, nodes) reach every pool


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_s_workers_name_finds_every_pool(two_models, overlay: str) -> None:
    objects = two_models[overlay]
    gateway = environment(objects, containers(one(objects, "Deployment", "gateway"))["gateway"])
    service_name = gateway["WORKERS"].split(":")[0]
    service = one(objects, "Service", service_name)
    assert service["spec"]["clusterIP"] == "None"  # headless: one address per ready pod of every pool
    for deployment in ("worker", "worker-bayes-linreg"):
        labels = one(objects, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
        assert selects(service["spec"]["selector"], labels), deployment
        for policy in by_kind(objects, "NetworkPolicy"):
            selector = policy["spec"]["podSelector"].get("matchLabels", {})
            if selector.get("app.kubernetes.io/component") == "worker":
                assert selects(selector, labels), (policy["metadata"]["name"], deployment)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateways_default_model_is_the_first_one_named(two_models, overlay: str) -> None:
    """One DNS name returns every pool's pods in no fixed order: the model /predict answers with is set, not found."""
    from gateway.settings import GatewaySettings

    objects = two_models[overlay]
    gateway = environment(objects, containers(one(objects, "Deployment", "gateway"))["gateway"])
    assert GatewaySettings(default_model=gateway["DEFAULT_MODEL"]).default_model == "iris-bayes-logreg"
    shipped = render(overlay)
    shipped_gateway = environment(shipped, containers(one(shipped, "Deployment", "gateway"))["gateway"])
    assert {k: v for k, v in gateway.items() if k != "DEFAULT_MODEL"} == shipped_gateway, "the base's settings stay"
    assert len([o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith("gateway-config")]) == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_model_leaves_the_default_to_the_workers(overlay: str) -> None:
    objects = render(overlay)
    assert "DEFAULT_MODEL" not in environment(objects, containers(one(objects, "Deployment", "gateway"))["gateway"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_two_models_passes_its_schema(two_models, overlay: str) -> None:
    failures = {f"{o['kind']}/{o['metadata']['name']}": validate(o) for o in two_models[overlay]}
    assert {name: errors for name, errors in failures.items() if errors} == {}


@pytest.mark.parametrize("models, says", [
    (f"{IRIS},{IRIS}=2", "MODELS entry 2 .* serves 'iris-bayes-logreg', as MODELS entry 1"),
    (f"{IRIS},{REGRESSION}@models/linreg", "@folder is the launcher's"),
    (f"{IRIS},worker.examples.mlp:Nothing", "not a subclass"),
])
def test_models_that_cannot_be_deployed_are_named_and_write_nothing(models: str, says: str, tmp_path: Path) -> None:
    deploy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, deploy)
    before = {path: path.read_text() for path in deploy.rglob("*") if path.is_file()}
    written = write_served_model(deploy, {"MODELS": models})
    assert written.returncode == 1 and written.stderr.startswith("served_model.py: ")
    assert re.search(says, written.stderr), written.stderr
    assert {path: path.read_text() for path in deploy.rglob("*") if path.is_file()} == before
