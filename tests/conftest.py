"""Shared fixtures."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest

from tests.support import free_port, http_ok, start_process, stop_process, wait_until, worker_env

#: The Iris model, for the tests that are about it: they name it, whatever worker/model.py serves.
IRIS_MODEL = "worker.examples.iris:IrisBayesianLogReg"


@contextlib.contextmanager
def worker_process(tmp_path_factory: pytest.TempPathFactory, **env: str) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_process([sys.executable, "-m", "worker"], worker_env(port, **env), log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/health") or process.poll() is not None, 120, "the worker")
        assert process.poll() is None, log.read_text()
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def running_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real worker serving the served model (worker/model.py unless MODEL says otherwise)."""
    with worker_process(tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def iris_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real worker serving the Iris model, by name."""
    with worker_process(tmp_path_factory, MODEL=IRIS_MODEL) as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on ``running_worker`` runs the served model, so it is ``served_model``: CI runs it with a second one."""
    for item in items:
        if "running_worker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.served_model)
