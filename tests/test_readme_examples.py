"""Every shell and Python example of the README runs as written against real local stacks.

The rules for each block are the comments before it (tests/readme_examples.py). The stacks, each
``python -m launcher`` with one worker: one with its job sidecar and access control off, for most blocks;
one with ``API_KEYS`` holding the digest of ``MY_KEY`` (no sidecars), for the blocks that need a key; one
serving each model module the README defines (no sidecars). The last two start only when a block needs them.
The README's address (localhost:8080 or 127.0.0.1:8080) is replaced by the stack's, and ``GATEWAY_URL`` is
set, as a user's shell would have it. A bash block runs under ``set -eo pipefail``, curl failing on an HTTP
error (``--fail-with-body``); a Python block runs with this interpreter; each must exit 0. The launcher's
printed ``try:`` line runs too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.readme_examples import README_PATH, Example, readme_examples
from tests.support import (
    JAX_CACHE_DIR,
    free_port_run,
    http_ok,
    same_answer,
    start_process,
    stop_process,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.served_model]

EXAMPLES = readme_examples()
#: Seconds one block may run: the jobs example waits up to 30 s for a job.
EXAMPLE_TIMEOUT_S = 120
STACK_START_TIMEOUT_S = 180
BASH_PRELUDE = 'set -eo pipefail\ncurl() { command curl --fail-with-body --show-error "$@"; }\n'
TRY_LINE = re.compile(r"^\s*try:\s+(?P<command>curl .*)$", re.MULTILINE)


@dataclass
class Stack:
    url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # what a user's shell would export for this stack

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    def try_line(self) -> str:
        match = TRY_LINE.search(self.log.read_text())
        assert match, f"no try: line in the launcher's output:\n{self.log.read_text()[-2000:]}"
        return match["command"]


def start_stack(folder: Path, extra_env: dict[str, str], *launcher_args: str) -> tuple[subprocess.Popen, Stack]:
    folder.mkdir(exist_ok=True)
    port = free_port_run(2)
    log = folder / "launcher.log"
    env = {
        "JAX_CACHE_DIR": str(JAX_CACHE_DIR), "HEALTH_INTERVAL_S": "0.5", "JOBS_DIR": str(folder / "jobs"),
        "EMBEDDED_POLL_INTERVAL_S": "0.05", **extra_env,
    }
    argv = [sys.executable, "-m", "launcher", "--workers", "1", "--port", str(port), *launcher_args]
    launcher = start_process(argv, env, log)
    try:
        wait_until(lambda: launcher.poll() is not None or "ready in" in log.read_text(), STACK_START_TIMEOUT_S,
                   "the stack")
        assert launcher.poll() is None, log.read_text()[-3000:]
    except BaseException:
        stop_process(launcher, timeout_s=20)
        raise
    return launcher, Stack(f"http://127.0.0.1:{port}", log)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack most examples run against: one worker, its sidecar, no API keys."""
    launcher, running = start_stack(tmp_path_factory.mktemp("readme-stack"), {})
    try:
        yield running
    finally:
        stop_process(launcher, timeout_s=20)


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with access control on, as the README's Access control section starts it: API_KEYS=sha256:<MY_KEY's>."""
    my_key = secrets.token_urlsafe(24)
    api_keys = f"sha256:{hashlib.sha256(my_key.encode()).hexdigest()}"
    launcher, running = start_stack(tmp_path_factory.mktemp("readme-keyed"), {"API_KEYS": api_keys}, "--no-sidecars")
    running.env["MY_KEY"] = my_key
    try:
        yield running
    finally:
        stop_process(launcher, timeout_s=20)


@pytest.fixture(scope="module")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    """A stack (one worker, no sidecars) serving each model module the README defines (``example model: name``)."""
    folder = tmp_path_factory.mktemp("readme-models")
    python_path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    launchers: list[subprocess.Popen] = []
    served: dict[str, Stack] = {}
    try:
        for example in EXAMPLES:
            if example.rule is None or example.rule.name != "model":
                continue
            module = "readme_model_" + re.sub(r"\W", "_", example.rule.argument)
            (folder / f"{module}.py").write_text(example.code)
            launcher, served[example.rule.argument] = start_stack(
                folder / module, {"MODEL": module, "PYTHONPATH": python_path}, "--no-sidecars"
            )
            launchers.append(launcher)
        yield served
    finally:
        for launcher in launchers:
            stop_process(launcher, timeout_s=20)


def run_bash(code: str, stack: Stack, cwd: Path) -> str:
    return run(["bash", "-c", BASH_PRELUDE + code], stack, cwd)


def run(argv: list[str], stack: Stack, cwd: Path) -> str:
    """Run a block as a user would: the venv's python first on PATH, GATEWAY_URL the stack's."""
    env = {
        **os.environ, **stack.env, "GATEWAY_URL": stack.url,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S)
    assert done.returncode == 0, f"exit status {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def check_answer(example: Example, printed: str) -> None:
    """The JSON the README shows after the block has the fields of the real answer, and its prediction."""
    if example.answer is None:
        return
    shown, real = json.loads(example.answer), json.loads(printed)
    assert shown.keys() == real.keys(), f"the README shows {sorted(shown)}, the answer has {sorted(real)}"
    assert same_answer(shown["prediction"], real["prediction"]), (shown["prediction"], real["prediction"])


def served_model_class(stack: Stack) -> str:
    return httpx.get(f"{stack.url}/metadata", timeout=5).raise_for_status().json()["model_class"]


def skip_unless_runnable(example: Example, request: pytest.FixtureRequest) -> Stack:
    """The stack this example runs against, or a skip that says why it does not run here."""
    rule = example.rule
    if rule is None or rule.name in ("with the default model", "needs"):
        stack: Stack = request.getfixturevalue("stack")
        if rule is not None and rule.name == "needs" and importlib.util.find_spec(rule.argument) is None:
            pytest.skip(f"{rule.argument} is not installed")
        if rule is not None and rule.name == "with the default model" and served_model_class(stack) != rule.argument:
            pytest.skip(f"written for the default model {rule.argument}; this stack serves {served_model_class(stack)}")
        return stack
    if rule.name == "not run":
        pytest.skip(f"not run: {rule.argument}")
    if rule.name == "with API keys":
        return request.getfixturevalue("keyed_stack")
    served: dict[str, Stack] = request.getfixturevalue("served_model")
    return served[rule.argument]  # "model" and "against model"


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.name for example in EXAMPLES])
def test_the_example_runs_as_written(example: Example, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    target = skip_unless_runnable(example, request)
    if example.rule is not None and example.rule.name == "model":
        assert http_ok(f"{target.url}/health"), "the README's model is served: its worker is healthy"
        return
    code = example.code_for(target.address)
    if example.language == "bash":
        if "jq " in code and shutil.which("jq") is None:
            pytest.skip("jq is not installed")
        printed = run_bash(code, target, tmp_path)
    else:
        (tmp_path / "example.py").write_text(code)
        printed = run([sys.executable, "example.py"], target, tmp_path)
    check_answer(example, printed)


def test_the_launchers_try_line_runs(stack: Stack, tmp_path: Path) -> None:
    answer = json.loads(run_bash(stack.try_line(), stack, tmp_path))
    assert "prediction" in answer


def test_the_launchers_try_line_sends_my_key_as_the_readme_says(keyed_stack: Stack, tmp_path: Path) -> None:
    line = keyed_stack.try_line()
    assert '"Authorization: Bearer $MY_KEY"' in line
    assert "prediction" in json.loads(run_bash(line, keyed_stack, tmp_path))


@pytest.mark.parametrize("route", ["/health", "/gateway/health"])
def test_the_endpoint_table_lists_the_fields_the_route_answers(route: str, stack: Stack) -> None:
    table_row = rf"^\| `GET {re.escape(route)}` \| [^|]+ \| `\{{(?P<fields>[^`]*)\}}`"
    row = re.search(table_row, README_PATH.read_text(), re.MULTILINE)
    assert row, f"the README's endpoint table has no row for GET {route} starting with its fields"
    listed = {re.match(r'"(\w+)"', field)[1] for field in row["fields"].split(", ")}  # "name" or "name": values
    assert listed == set(httpx.get(f"{stack.url}{route}", timeout=5).json())
