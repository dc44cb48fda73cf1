"""Model versions from both clients and the CLI: what is sent, what comes back, what is retried."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from inference_client import ActivationResult, InvalidInputError, ModelVersion, ModelVersions
from inference_client._cli import main
from tests.client.fakes import Gateway, envelope, job_status

MANIFEST = {"model_name": "iris", "version": "2", "created_at": 1.5, "source": "upload", "job_id": None,
            "trained_from": None, "files": [{"name": "params.npz", "size": 3, "sha256": "ab"}], "inputs": None,
            "outputs": None, "metrics": {}}
SWITCHED = {"model_name": "iris", "active": "2", "canary": None, "canary_traffic": 0, "loaded": True,
            "generation": 3, "took_ms": 12.5,
            "workers": [{"worker": "http://w1", "ok": True, "compilations": 0, "load_ms": 3.0, "error": None}]}


def test_versions_reads_the_model_s_versions(client) -> None:
    info = {"version": "1", "created_at": 1.0, "source": "shipped", "job_id": None, "trained_from": None,
            "manifest": MANIFEST}
    gateway = Gateway(httpx.Response(200, json={"model_name": "iris", "active": "1", "canary": None,
                                                "canary_traffic": 0, "loaded": True, "versions": [info],
                                                "history": [{"action": "first start"}], "workers": []}))
    answer = client(gateway).versions("iris")
    assert isinstance(answer, ModelVersions) and answer.active == "1" and answer.versions[0].source == "shipped"
    assert gateway.requests[0].method == "GET" and gateway.requests[0].url.path == "/models/iris/versions"


def test_upload_sends_each_file_as_a_files_field_and_is_not_retried(client, tmp_path: Path) -> None:
    (tmp_path / "params.npz").write_bytes(b"abc")
    (tmp_path / "meta.json").write_bytes(b"{}")
    gateway = Gateway(httpx.Response(201, json=MANIFEST))
    answer = client(gateway).upload("iris", [tmp_path / "params.npz", str(tmp_path / "meta.json")])
    assert isinstance(answer, ModelVersion) and answer.version == "2" and answer.manifest["files"][0]["size"] == 3
    request = gateway.requests[0]
    assert request.url.path == "/models/iris/versions"
    assert request.headers["content-type"].startswith("multipart/form-data")
    body = request.content
    assert body.count(b'name="files"') == 2 and b'filename="params.npz"' in body and b"abc" in body

    refused = Gateway(envelope(503, "no_worker_available"), httpx.Response(201, json=MANIFEST))
    with pytest.raises(Exception, match="it went wrong"):
        client(refused, max_retries=3).upload("iris", [tmp_path / "params.npz"])
    assert len(refused.requests) == 1


def test_a_refused_upload_raises_with_the_reason(client, tmp_path: Path) -> None:
    (tmp_path / "params.npz").write_bytes(b"garbage")
    gateway = Gateway(envelope(422, "version_refused", "load: params.npz is not a NumPy archive"))
    with pytest.raises(InvalidInputError, match="not a NumPy archive"):
        client(gateway).upload("iris", [tmp_path / "params.npz"])


@pytest.mark.parametrize(("traffic", "body"), [(None, b""), (10, b'{"traffic":10}')])
def test_activate_sends_the_traffic_share_only_when_given(client, traffic: int | None, body: bytes) -> None:
    gateway = Gateway(httpx.Response(200, json=SWITCHED))
    answer = client(gateway).activate("iris", 2, traffic=traffic)
    assert isinstance(answer, ActivationResult) and answer.active == "2" and answer.workers[0].compilations == 0
    request = gateway.requests[0]
    assert request.url.path == "/models/iris/versions/2/activate"
    assert request.content.replace(b" ", b"") == body


def test_rollback_posts_once(client) -> None:
    gateway = Gateway(envelope(503, "jobs_unavailable"), httpx.Response(200, json=SWITCHED))
    with pytest.raises(Exception, match="it went wrong"):
        client(gateway, max_retries=3).rollback("iris")
    assert len(gateway.requests) == 1 and gateway.requests[0].url.path == "/models/iris/rollback"


def test_the_cli_activates_and_rolls_back(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    gateway = Gateway(httpx.Response(200, json=SWITCHED))
    real_client = httpx.Client

    def scripted(*args: object, **kwargs: object) -> httpx.Client:
        kwargs["transport"] = httpx.MockTransport(gateway)
        return real_client(*args, **kwargs)

    monkeypatch.setattr(httpx, "Client", scripted)
    assert main(["--url", "http://gateway.test", "activate", "iris", "2", "--traffic", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["active"] == "2"
    assert json.loads(gateway.requests[-1].content) == {"traffic": 10}
    assert main(["--url", "http://gateway.test", "rollback", "iris"]) == 0
    assert gateway.requests[-1].url.path == "/models/iris/rollback"
    assert main(["--url", "http://gateway.test", "upload", "iris", str(tmp_path / "missing.npz")]) == 2
    assert "not a file" in capsys.readouterr().err


def test_a_train_job_asks_for_promotion_only_when_told(client) -> None:
    gateway = Gateway(httpx.Response(202, json=job_status("queued")))
    caller = client(gateway)
    caller.submit_job("train", promote=True)
    caller.submit_job("train")
    assert json.loads(gateway.requests[0].content) == {"task": "train", "options": {}, "promote": True}
    assert "promote" not in json.loads(gateway.requests[1].content)
