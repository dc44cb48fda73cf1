"""The Makefile's docker targets, run against a fake `docker compose`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.settings import JobsSettings
from tests.containers.support import REPO

DOCKER_TARGETS = ["build", "build-gpu", "up", "up-gpu", "down", "logs", "logs-gateway", "logs-workers", "restart",
                  "clean", "info", "scale-workers", "rebuild-worker", "rebuild-gateway"]

FAKE_COMPOSE = f"""#!{sys.executable}
# Stands in for `docker compose`: records the call, answers `port`, `ps` and `config`.
import os, sys, yaml
args = sys.argv[1:]
with open(os.environ["FAKE_COMPOSE_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
files = [args[i + 1] for i, a in enumerate(args) if a == "-f"]
while args and args[0].startswith("-"):
    args = args[2:]
command = args[0]
if command == "version":
    print("2.29.7" if "--short" in args else "Docker Compose version v2.29.7")
elif command == "port":
    ports = {{"gateway": "0.0.0.0:8080", "rabbitmq": "127.0.0.1:15672", "minio": "127.0.0.1:" + args[2]}}
    if args[1] not in ports:
        sys.exit(1)
    print(ports[args[1]])
elif command == "ps":
    if os.environ.get("FAKE_GPU_RUNNING") and files == ["docker-compose.gpu.yml"]:
        print("gateway\\nworker-gpu0\\nworker-gpu1")
elif command == "config":
    services = yaml.safe_load(open(files[0]))["services"]
    for name, service in services.items():
        if "profiles" not in service:
            print(service["image"] if "--images" in args else name)
"""


@pytest.fixture
def make_docker(tmp_path: Path):
    for name in ["Makefile", ".env.example", "docker-compose.yml", "docker-compose.gpu.yml"]:
        shutil.copy(REPO / name, tmp_path / name)
    fake = tmp_path / "fake-compose"
    fake.write_text(FAKE_COMPOSE)
    fake.chmod(0o755)
    log = tmp_path / "compose.log"
    docker = tmp_path / "fake-docker"  # `docker info`: an engine answers
    docker.write_text("#!/bin/sh\nexit 0\n")
    docker.chmod(0o755)

    def run(*args: str, gpu_running: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
        log.write_text("")
        env = {**os.environ, "FAKE_COMPOSE_LOG": str(log), "FAKE_GPU_RUNNING": "1" if gpu_running else ""}
        result = subprocess.run(["make", "--no-print-directory", f"COMPOSE={fake}", f"DOCKER={docker}", *args],
                                cwd=tmp_path, env=env, capture_output=True, text=True)
        return result, log.read_text().splitlines()

    return run


def test_makefile_lists_every_docker_target(make_docker) -> None:
    makefile = (REPO / "Makefile").read_text()
    phony = set(" ".join(re.findall(r"(?m)^\.PHONY:((?:.*\\\n)*.*)", makefile)).replace("\\", " ").split())
    result, _ = make_docker("help")
    for target in DOCKER_TARGETS:
        assert target in phony, f"{target} is not .PHONY"
        assert re.search(rf"(?m)^{re.escape(target)}:.*## ", makefile), f"{target} has no ## help"
        assert target in result.stdout


def test_make_help_lines_up_every_target_after_the_longest_name(make_docker) -> None:
    documented = re.findall(r"(?m)^([a-zA-Z_-]+):.*?## (.*)$", (REPO / "Makefile").read_text())
    width = max(len(name) for name, _ in documented)
    result, _ = make_docker("help")
    lines = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout).splitlines()
    assert lines == [f"  {name.ljust(width)}  {text}" for name, text in documented]


def test_make_up_writes_env_waits_and_prints_the_urls(make_docker, tmp_path: Path) -> None:
    result, calls = make_docker("up")
    assert result.returncode == 0, result.stderr
    env = (tmp_path / ".env").read_text()
    passwords = re.findall(r"(?m)^\w*PASSWORD=(.*)$", env)
    assert len(passwords) == 4 and all(len(p) == 32 for p in passwords)
    keys = re.findall(r"(?m)^\w*API_KEY=(.*)$", env)
    assert len(keys) == 3 and all(len(k) == 32 for k in keys) and len(set(keys)) == 3
    [secret] = re.findall(r"(?m)^WEBHOOK_SECRET=(whsec_.+)$", env)
    JobsSettings(webhook_secret=secret)  # a secret the job path accepts
    assert oct((tmp_path / ".env").stat().st_mode & 0o777) == "0o600"
    assert "-f docker-compose.yml up -d --remove-orphans --wait --wait-timeout 900" in calls
    for url in ["http://localhost:8080", "http://localhost:8080/docs", "http://127.0.0.1:15672",
                "http://127.0.0.1:9001"]:
        assert url in result.stdout
    assert "Prometheus" not in result.stdout  # the monitoring profile is off
    make_docker("up")
    assert (tmp_path / ".env").read_text() == env, "a second `make up` must keep the passwords"


def test_make_targets_follow_the_running_stack(make_docker) -> None:
    result, calls = make_docker("logs-workers")
    assert "-f docker-compose.yml logs -f --tail=100 worker sidecar" in calls
    result, calls = make_docker("logs-workers", gpu_running=True)
    assert "-f docker-compose.gpu.yml logs -f --tail=100 worker-gpu0 worker-gpu1 sidecar" in calls
    result, calls = make_docker("up-gpu")
    assert "-f docker-compose.gpu.yml up -d --remove-orphans --wait --wait-timeout 900" in calls
    result, calls = make_docker("down", gpu_running=True)
    assert "-f docker-compose.yml --profile monitoring down --remove-orphans" in calls


def test_make_scale_workers(make_docker) -> None:
    result, calls = make_docker("scale-workers", "N=4")
    assert result.returncode == 0 and any(c.endswith("--scale worker=4") for c in calls)
    result, _ = make_docker("scale-workers")
    assert result.returncode != 0 and "N=4" in result.stdout
    result, _ = make_docker("scale-workers", "N=4", gpu_running=True)
    assert result.returncode != 0 and "worker-gpuN" in result.stdout


def _docker_only(tmp_path: Path, script: str) -> Path:
    """A PATH with make's tools and a ``docker`` that runs ``script`` (or no docker at all if empty)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "sh", "cat", "grep", "chmod", "env", sys.executable):
        found = shutil.which(tool)
        if found:
            (bin_dir / Path(tool).name).symlink_to(found)
    if script:
        (bin_dir / "docker").write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / "docker").chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    ("script", "sentence"),
    [
        ("", "Docker Compose v2 is missing"),  # no docker at all
        ('[ "$1" = compose ] && exit 1; exit 0', "Docker Compose v2 is missing"),  # a client without the plugin
        ('[ "$1" = compose ] && echo 1.29.2 && exit 0; exit 0', "Docker Compose v2 is missing"),
        ('[ "$1" = compose ] && echo 2.29.7 && exit 0; exit 1', "No Docker engine answers"),  # client, no engine
    ],
)
@pytest.mark.parametrize("target", ["up", "up-gpu"])
def test_make_up_without_compose_v2_or_an_engine_stops_first_with_one_sentence(
    tmp_path: Path, script: str, sentence: str, target: str
) -> None:
    for name in ["Makefile", ".env.example", "docker-compose.yml", "docker-compose.gpu.yml"]:
        shutil.copy(REPO / name, tmp_path / name)
    path = _docker_only(tmp_path, script)
    result = subprocess.run(["make", "--no-print-directory", target, f"PYTHON={sys.executable}"], cwd=tmp_path,
                            env={"PATH": str(path), "HOME": str(tmp_path)}, capture_output=True, text=True)
    assert result.returncode != 0
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(sentence) and lines[0].endswith("then run make again."), result
    assert "is up" not in result.stdout + result.stderr
    assert not (tmp_path / ".env").exists()  # nothing was done before the check
