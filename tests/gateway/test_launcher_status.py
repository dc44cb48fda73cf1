"""The launcher's processes in /gateway/info and /metrics, read from the file it writes; a bad file shows nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.launcher_status import read_processes
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from launcher.status import ProcessStatus, StatusFile

PROCESSES = [
    ProcessStatus("worker-0", "worker", "iris", "backing-off", None, 3, 3, -9, 1733300000.5, 4.0),
    ProcessStatus("worker-1", "worker", "iris", "running", 4242),
]


@pytest.fixture
def status_file(tmp_path: Path) -> Path:
    path = tmp_path / "processes.json"
    StatusFile(path).write(PROCESSES)  # the launcher's own writer: the file is the interface
    return path


def client(jobs_settings: JobsSettings, status_file: Path | None) -> TestClient:
    return TestClient(create_app(GatewaySettings(workers=["127.0.0.1:9"], launcher_status_file=status_file),
                                 jobs_settings))


def test_gateway_info_shows_each_supervised_process(jobs_settings: JobsSettings, status_file: Path) -> None:
    with client(jobs_settings, status_file) as gateway:
        processes = gateway.get("/gateway/info").json()["processes"]
    assert processes[0] == {
        "name": "worker-0", "group": "worker", "model": "iris", "state": "backing-off", "pid": None, "restarts": 3,
        "fast_failures": 3, "last_exit_code": -9, "last_exit_at": 1733300000.5, "backoff_s": 4.0,
    }
    assert processes[1]["state"] == "running" and processes[1]["pid"] == 4242


@pytest.mark.parametrize(
    "content",
    [None, b"", b"{not json", b"[]", b'{"processes": {}}', b'{"processes": [{"restarts": 1}]}',
     b'{"processes": [{"name": "worker-0", "restarts": NaN}]}', b"\xff\xfe"],
)
def test_a_missing_or_malformed_file_is_left_out_never_an_error(
    jobs_settings: JobsSettings, tmp_path: Path, content: bytes | None,
) -> None:
    path = tmp_path / "processes.json"
    if content is not None:
        path.write_bytes(content)
    assert read_processes(path) is None
    with client(jobs_settings, path) as gateway:
        info = gateway.get("/gateway/info")
        metrics = gateway.get("/metrics")
    assert info.status_code == 200 and "processes" not in info.json()
    assert metrics.status_code == 200 and "gateway_supervised" not in metrics.text


def test_unset_shows_nothing(jobs_settings: JobsSettings) -> None:
    assert read_processes(None) is None
    with client(jobs_settings, None) as gateway:
        assert "processes" not in gateway.get("/gateway/info").json()
        assert "gateway_supervised" not in gateway.get("/metrics").text


@pytest.mark.parametrize("multiprocess", [False, True])
def test_metrics_count_restarts_and_say_which_process_is_up(
    jobs_settings: JobsSettings, status_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    multiprocess: bool,
) -> None:
    with client(jobs_settings, status_file) as gateway:
        if multiprocess:  # several gateway processes: /metrics is a registry built at each scrape
            (tmp_path / "prometheus").mkdir()
            monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prometheus"))
        text = gateway.get("/metrics").text
        assert 'gateway_supervised_restarts_total{process="worker-0"} 3.0' in text
        assert 'gateway_supervised_restarts_total{process="worker-1"} 0.0' in text
        assert 'gateway_supervised_up{process="worker-0"} 0.0' in text
        assert 'gateway_supervised_up{process="worker-1"} 1.0' in text
        # Read at each scrape: the launcher's next write shows at once.
        status_file.write_text(json.dumps({"processes": [{"name": "worker-0", "state": "running", "restarts": 4}]}))
        text = gateway.get("/metrics").text
        assert 'gateway_supervised_restarts_total{process="worker-0"} 4.0' in text
        assert 'gateway_supervised_up{process="worker-0"} 1.0' in text and "worker-1" not in text
