"""The images' build steps and commands, run on this machine from the wheel the images install."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.containers.support import REPO, healthcheck_command, image_command, parse_dockerfile, require_tool


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_site(tmp_path_factory: pytest.TempPathFactory, dockerfile: Path) -> Path:
    """The project as an image installs it: a wheel built from what its wheel stage copies."""
    try:
        import setuptools
    except ImportError:
        setuptools = None
    require_tool(setuptools and tuple(map(int, setuptools.__version__.split(".")[:2])) >= (70, 1),
                 "setuptools>=70.1")
    root = tmp_path_factory.mktemp(dockerfile.stem.replace(".", "-"))
    context = root / "src"
    context.mkdir()
    for instruction in parse_dockerfile(dockerfile):
        if instruction.stage == "wheel" and instruction.keyword == "COPY":
            *sources, _ = instruction.rest().split()
            for source in sources:
                path = REPO / source
                if path.is_dir():
                    shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy(path, context / source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(root / "wheels"), str(context)],
        check=True, capture_output=True,
    )
    (wheel,) = (root / "wheels").glob("*.whl")
    site = root / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker image's project code (worker, jobs, common)."""
    return build_site(tmp_path_factory, REPO / "docker/worker.Dockerfile")


@pytest.fixture(scope="module")
def gateway_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gateway image's project code (gateway, jobs, common: no worker)."""
    return build_site(tmp_path_factory, REPO / "docker/gateway.Dockerfile")


def test_wheels_carry_the_code_artifacts_and_data(image_site: Path, gateway_site: Path) -> None:
    for path in ["worker/__main__.py", "worker/model.py", "worker/artifacts", "worker/examples/iris.csv",
                 "jobs/sidecar.py", "common/envelope.py"]:
        assert (image_site / path).exists(), path
    assert any((image_site / "worker/artifacts").iterdir())
    for path in ["gateway/gunicorn_conf.py", "jobs/service.py", "common/envelope.py"]:
        assert (gateway_site / path).exists(), path
    assert not (gateway_site / "worker").exists() and not (image_site / "gateway").exists()


def _start(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def _healthcheck(dockerfile: str, env: dict[str, str]) -> int:
    return subprocess.run(healthcheck_command(REPO / "docker" / dockerfile), env=env, capture_output=True).returncode


def _wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def _image_env(image_site: Path, **settings: str) -> dict[str, str]:
    """The container's environment: the image's ENV, the code only from the wheel."""
    bin_dir = Path(sys.executable).parent
    return {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(image_site.parent),
            "PYTHONPATH": str(image_site), "PYTHONSAFEPATH": "1", **settings}


@pytest.mark.integration
def test_gateway_image_command_serves_and_passes_its_healthcheck(gateway_site: Path) -> None:
    port = _free_port()
    env = _image_env(
        gateway_site, HOST="127.0.0.1", PORT=str(port), GATEWAY_PROCESSES="2",
        PROMETHEUS_MULTIPROC_DIR=str(gateway_site.parent / "prometheus"), WORKERS=f"127.0.0.1:{_free_port()}",
    )
    argv = image_command(REPO / "docker/gateway.Dockerfile")
    assert _healthcheck("gateway.Dockerfile", env) != 0, "the healthcheck passes with no gateway"
    process = _start(argv, env, gateway_site.parent, gateway_site.parent / "gateway.log")
    try:
        assert _wait_for(lambda: _healthcheck("gateway.Dockerfile", env) == 0, 60), (
            (gateway_site.parent / "gateway.log").read_text())
        metrics = subprocess.run(
            [sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen("
                                   f"'http://127.0.0.1:{port}/metrics').read().decode())"],
            capture_output=True, text=True, check=True).stdout
        assert "gateway_backend_up" in metrics
        # The image's gunicorn worker has the gateway's header bound (gateway/gunicorn_worker.py).
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /gateway/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 431")
        probe = (f"import sys, gateway; sys.exit(0 if gateway.__file__.startswith({str(gateway_site)!r}) else 1)")
        assert subprocess.run([sys.executable, "-c", probe], env=env, cwd=gateway_site.parent).returncode == 0
    finally:
        assert _stop(process) == 0, (gateway_site.parent / "gateway.log").read_text()


@pytest.mark.integration
def test_worker_image_command_turns_healthy_after_warm_up(image_site: Path) -> None:
    from tests.support import JAX_CACHE_DIR

    port = _free_port()
    env = _image_env(image_site, HOST="127.0.0.1", PORT=str(port), JAX_PLATFORMS="cpu", HOSTNAME="c0ffee123456",
                     JAX_CACHE_DIR=str(JAX_CACHE_DIR), MAX_BATCH_SIZE="8")
    log = image_site.parent / "worker.log"
    process = _start(image_command(REPO / "docker/worker.Dockerfile"), env, image_site.parent, log)
    try:
        assert _wait_for(lambda: _healthcheck("worker.Dockerfile", env) == 0 or process.poll() is not None, 180)
        assert process.poll() is None, log.read_text()
        health = subprocess.run(
            [sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen("
                                   f"'http://127.0.0.1:{port}/health').read().decode())"],
            capture_output=True, text=True, check=True).stdout
        assert json.loads(health)["worker_id"] == "c0ffee123456", "replicas fall back to their host name"
    finally:
        _stop(process)
