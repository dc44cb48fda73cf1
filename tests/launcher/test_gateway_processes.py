"""GATEWAY_PROCESSES: several gateway processes on the launcher's one socket, each restarted on its own."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.stack import children_running
from launcher.__main__ import build_children, parse_args
from launcher.gateways import metrics_folder
from tests.launcher.hammer import Hammer
from tests.support import JAX_CACHE_DIR, free_port_run, start_process, stop_process, wait_until


def test_gateway_processes_come_from_the_environment_and_must_be_positive(monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_PROCESSES", "3")
    assert parse_args([]).gateway_processes == 3
    assert parse_args(["--gateway-processes", "2"]).gateway_processes == 2
    monkeypatch.delenv("GATEWAY_PROCESSES")
    assert parse_args([]).gateway_processes == 1
    with pytest.raises(SystemExit):
        parse_args(["--gateway-processes", "0"])
    monkeypatch.setenv("GATEWAY_PROCESSES", "two")
    with pytest.raises(SystemExit, match="GATEWAY_PROCESSES must be a whole number"):
        parse_args([])


def test_every_gateway_process_gets_the_socket_and_the_metrics_folder(tmp_path: Path) -> None:
    args = argparse.Namespace(workers=1, port=9090, host="127.0.0.1", no_sidecars=True, gateway_processes=2)
    children = build_children(args, [], listen_fd=7, metrics_dir=tmp_path)
    gateways = [child for child in children if child.argv[-1] == "gateway"]
    assert [child.name for child in gateways] == ["gateway-0", "gateway-1"]
    for child in gateways:
        assert child.pass_fds == (7,) and child.env["LISTEN_FD"] == "7"
        assert child.env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
        assert child.on_exit is not None
    one = build_children(argparse.Namespace(**{**vars(args), "gateway_processes": 1}), [], listen_fd=7)
    assert [child.name for child in one if child.argv[-1] == "gateway"] == ["gateway"]
    assert "PROMETHEUS_MULTIPROC_DIR" not in one[-1].env


def test_the_metrics_folder_is_temporary_unless_given(tmp_path: Path) -> None:
    with metrics_folder(1) as none:
        assert none is None
    with metrics_folder(2, {}) as folder:
        assert folder is not None and folder.is_dir()
    assert not folder.exists()
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_1.db").write_bytes(b"stale")
    (given / "notes.txt").write_text("the user's")
    with metrics_folder(2, {"PROMETHEUS_MULTIPROC_DIR": str(given)}) as folder:
        assert folder == given and not (given / "counter_1.db").exists()
    assert (given / "notes.txt").exists()  # a folder we did not make is emptied of our files only, never removed


def _gateway_pids(launcher_pid: int) -> set[int]:
    """The launcher's children running ``python -m gateway``."""
    return set(children_running(launcher_pid, b"gateway"))


def _two_gateways_without(launcher_pid: int, gone: set[int]) -> set[int] | None:
    pids = _gateway_pids(launcher_pid)
    return pids if len(pids) == 2 and not pids & gone else None


def _listening_socket(pid: int) -> str:
    """What the process's LISTEN_FD is: ``socket:[inode]``."""
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    environ = dict(item.split(b"=", 1) for item in items if b"=" in item)
    return os.readlink(f"/proc/{pid}/fd/{int(environ[b'LISTEN_FD'])}")


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    """``python -m launcher`` with GATEWAY_PROCESSES=2, one worker, no sidecars."""
    folder = tmp_path_factory.mktemp("gateways")
    port = free_port_run(2)
    env = {"GATEWAY_PROCESSES": "2", "JAX_CACHE_DIR": str(JAX_CACHE_DIR), "JAX_PLATFORMS": "cpu",
           "HEALTH_INTERVAL_S": "0.5", "DRAIN_S": "0.5", "ACCESS_LOG": "false", "JOBS_DIR": str(folder / "jobs")}
    log = folder / "launcher.log"
    launcher = start_process(
        [sys.executable, "-m", "launcher", "--workers", "1", "--port", str(port), "--no-sidecars"], env, log
    )
    try:
        wait_until(lambda: launcher.poll() is not None or "ready in" in log.read_text(), 180, "the stack")
        assert launcher.poll() is None, log.read_text()
        url = f"http://127.0.0.1:{port}"
        # "ready" came from whichever process answered; the other may have probed the worker while it loaded.
        wait_until(lambda: all(httpx.get(f"{url}/gateway/health", timeout=5).json()["alive_backends"] == 1
                               for _ in range(10)), 30, "both gateway processes see the worker")
        yield url, launcher.pid, log
    finally:
        stop_process(launcher, timeout_s=30)


@pytest.mark.integration
@pytest.mark.served_model
def test_two_gateway_processes_share_the_port_and_each_is_restarted(two_gateways) -> None:
    url, launcher_pid, log = two_gateways
    assert "starting 2 gateway processes" in log.read_text()
    first = wait_until(lambda: _two_gateways_without(launcher_pid, set()), 20, "two gateway processes")
    assert len({_listening_socket(pid) for pid in first}) == 1  # one socket, inherited by both
    body = httpx.get(f"{url}/metadata", timeout=10).raise_for_status().json()["example"]
    a, b = sorted(first)

    # SIGTERM to one under load: it drains, the other keeps accepting, the launcher starts a new one.
    with Hammer(url, body) as hammer:
        wait_until(lambda: hammer.ok >= 20, 30, "answers before the signal")
        os.kill(a, signal.SIGTERM)
        wait_until(lambda: _two_gateways_without(launcher_pid, {a}), 30, "gateway a restarted")
        counted = hammer.ok
        wait_until(lambda: hammer.ok >= counted + 20, 30, "answers after the restart")
    assert hammer.failures == [], hammer.failures[:5]

    # kill -9 to the other while idle: the restarted one alone answers on the same socket until b is back.
    os.kill(b, signal.SIGKILL)
    wait_until(lambda: b not in _gateway_pids(launcher_pid), 10, "gateway b gone")
    for _ in range(20):
        with httpx.Client(timeout=10) as client:  # a fresh connection each: any process may accept it
            assert client.post(f"{url}/predict", json=body).status_code == 200
    wait_until(lambda: _two_gateways_without(launcher_pid, first), 30, "gateway b restarted")
    assert "exited with code -15 (SIGTERM); restarting" in log.read_text()
    assert "exited with code -9 (SIGKILL); restarting" in log.read_text()

    # /metrics adds up every process's counters, the dead ones' included.
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    served = sum(float(line.rpartition(" ")[2]) for line in metrics.splitlines()
                 if line.startswith('gateway_requests_total{route="/predict",status="200"}'))
    assert served == hammer.ok + 20
