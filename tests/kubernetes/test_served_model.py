"""The served model is set in one place: base/served-model.env, written from MODEL by deploy/kubernetes/served_model.py.

Whatever MODEL names, the workers serve it and KEDA scales them on its job queue. The file is
generated, never committed; test_manifests.py checks the one the overlays render with (this
checkout's, or one written from MODEL); here the script writes it for other models, in a copy of
the manifests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.kubernetes.support import (
    DEPLOY,
    OVERLAYS,
    SERVED_MODEL_ENV,
    containers,
    environment,
    kustomize,
    one,
    write_served_model,
)

MODELS = ["worker.examples.mlp:SmallMLP", "worker.examples.regression", "worker.examples.digits:DigitsCNN"]


@pytest.mark.parametrize("model", MODELS)
def test_workers_serve_the_model_and_keda_watches_its_queue(model: str, tmp_path: Path) -> None:
    from jobs.routing import model_queue
    from jobs.settings import JobsSettings
    from worker.contract import load_model_class

    deploy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, deploy)
    written = write_served_model(deploy, {"MODEL": model})
    assert written.returncode == 0, written.stderr
    queue = model_queue(JobsSettings.model_fields["job_queue"].default, load_model_class(model).name)
    for overlay in OVERLAYS:
        objects = kustomize(deploy / "overlays" / overlay)
        pod = containers(one(objects, "Deployment", "worker"))
        assert environment(objects, pod["worker"])["MODEL"] == model, overlay
        (trigger,) = one(objects, "ScaledObject", "worker")["spec"]["triggers"]
        assert trigger["metadata"]["queueName"] == queue, overlay
        assert "served-model" not in {o["metadata"]["name"] for o in objects}, "local config is never applied"


@pytest.mark.parametrize("model", ["worker.examples.mlp:NoSuchModel", "no_such_module"])
def test_a_model_that_does_not_load_is_named_and_writes_nothing(model: str, tmp_path: Path) -> None:
    deploy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, deploy)
    env = deploy / SERVED_MODEL_ENV
    before = env.read_text() if env.exists() else None  # this checkout's, if it wrote one
    written = write_served_model(deploy, {"MODEL": model})
    assert written.returncode == 1
    assert written.stderr.startswith("served_model.py: ") and model.split(":")[0] in written.stderr
    assert (env.read_text() if env.exists() else None) == before
