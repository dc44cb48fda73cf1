"""gateway/gunicorn_conf.py, the gateway image's process manager config."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

from tests.containers.support import REPO


def test_gunicorn_config_reads_the_process_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("GATEWAY_PROCESSES", "3")
    # Empty counts as unset; setenv (unlike delenv of an absent name) restores it afterwards,
    # so the folder the config picks does not leak into other tests.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    config = runpy.run_path(str(REPO / "gateway/gunicorn_conf.py"))
    assert config["bind"] == "0.0.0.0:9999" and config["workers"] == 3
    assert config["worker_class"] == "gateway.gunicorn_worker.GatewayWorker" and config["backlog"] == 4096
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
