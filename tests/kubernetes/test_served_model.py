"""The served model is set in one place: base/served-model.env, written from MODEL by deploy/kubernetes/served_model.py.

Whatever MODEL names, the workers serve it and KEDA scales them on its job queue. The
committed file is checked against the served model by test_manifests.py; here the
script writes it for other models, in a copy of the manifests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kubernetes.support import DEPLOY, OVERLAYS, containers, environment, kustomize, one

MODELS = ["worker.examples.mlp:SmallMLP", "worker.examples.regression", "worker.examples.digits:DigitsCNN"]


def _write_served_model(base: Path, model: str) -> subprocess.CompletedProcess:
    """Run the script as `make kubernetes-model` does: MODEL from the environment."""
    return subprocess.run([sys.executable, str(base.parent / "served_model.py"), "--base", str(base)],
                          env={**os.environ, "MODEL": model}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("model", MODELS)
def test_workers_serve_the_model_and_keda_watches_its_queue(model: str, tmp_path: Path) -> None:
    from jobs.routing import model_queue
    from jobs.settings import JobsSettings
    from worker.contract import load_model_class

    deploy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, deploy)
    written = _write_served_model(deploy / "base", model)
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
    base = tmp_path / "kubernetes" / "base"
    shutil.copytree(DEPLOY, tmp_path / "kubernetes")
    before = (base / "served-model.env").read_text()
    written = _write_served_model(base, model)
    assert written.returncode == 1
    assert written.stderr.startswith("served_model.py: ") and model.split(":")[0] in written.stderr
    assert (base / "served-model.env").read_text() == before
