"""A stack with access control on, shared by the access and fuzz tests (one launch per test session)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support import JAX_CACHE_DIR, free_port_run, start_process, stop_process, wait_until


@dataclass
class KeyedStack:
    url: str
    keys: tuple[str, str]  # two API keys: "a" and "b"
    example: dict

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedStack]:
    """``python -m launcher`` with one worker, no sidecars and two API keys (one given only as its digest)."""
    folder = tmp_path_factory.mktemp("keyed")
    keys = ("key-a-for-tests", "key-b-for-tests")
    port = free_port_run(2)
    env = {
        "JAX_CACHE_DIR": str(JAX_CACHE_DIR), "HEALTH_INTERVAL_S": "0.5", "JOBS_DIR": str(folder / "jobs"),
        "API_KEYS": f"{keys[0]},sha256:{hashlib.sha256(keys[1].encode()).hexdigest()}",
        # The fuzzer's requests stay under the limit; the limit itself is tested in tests/gateway/test_auth.py.
        "RATE_LIMIT_PER_S": "1000", "RATE_LIMIT_BURST": "1000", "ACCESS_LOG": "false",
    }
    log = folder / "launcher.log"
    launcher = start_process(
        [sys.executable, "-m", "launcher", "--workers", "1", "--port", str(port), "--no-sidecars"], env, log
    )
    try:
        wait_until(lambda: launcher.poll() is not None or "ready in" in log.read_text(), 180, "the keyed stack")
        assert launcher.poll() is None, log.read_text()
        assert "access control: on, 2 API key(s)" in log.read_text()
        example = httpx.get(f"http://127.0.0.1:{port + 1}/metadata").json()["example"]
        yield KeyedStack(f"http://127.0.0.1:{port}", keys, example)
    finally:
        stop_process(launcher, timeout_s=20)
