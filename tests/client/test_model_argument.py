"""``model=`` everywhere in both clients and ``--model`` in the CLI: the routes and bodies they send."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import httpx
import pytest

from inference_client._cli import main
from tests.client.fakes import Gateway, job_status

PREDICTION = {"prediction": [1.0], "worker_id": "1"}


def test_predictions_go_to_the_named_models_routes(client) -> None:
    gateway = Gateway(httpx.Response(200, json=PREDICTION), httpx.Response(200, json=[PREDICTION]),
                      httpx.Response(200, json=PREDICTION), httpx.Response(200, json=[PREDICTION]))
    caller = client(gateway)
    caller.predict([1.0], model="iris")
    caller.batch_predict([[1.0]], model="a b/c")
    caller.predict([1.0])
    caller.batch_predict([[1.0]])
    assert [request.url.raw_path for request in gateway.requests] == [
        b"/models/iris/predict", b"/models/a%20b%2Fc/batch_predict", b"/predict", b"/batch_predict"]


def test_jobs_name_their_model_only_when_given(client) -> None:
    gateway = Gateway(httpx.Response(202, json=job_status("queued")), httpx.Response(202, json=job_status("queued")),
                      httpx.Response(202, json={"job_ids": ["j1", "j2"], "replayed": [False, False]}))
    caller = client(gateway)
    caller.submit_job(inputs=[{"input_data": [1.0]}], model="iris")
    caller.submit_job(inputs=[{"input_data": [1.0]}])
    ids = caller.submit_jobs([{"inputs": []}, {"inputs": [], "model": "other"}], model="iris")
    first, second, batch = (json.loads(request.content) for request in gateway.requests)
    assert first["model"] == "iris" and "model" not in second
    assert [job["model"] for job in batch["jobs"]] == ["iris", "other"] and ids == ["j1", "j2"]


def test_the_job_listing_filters_by_model_and_follows_the_cursor(client) -> None:
    done = {**job_status("succeeded"), "model_name": "iris", "model_version": "2", "result_model_name": "iris"}
    gateway = Gateway(httpx.Response(200, json={"jobs": [done], "next_cursor": "c1"}),
                      httpx.Response(200, json={"jobs": [done, done], "next_cursor": None}))
    jobs = client(gateway).list_jobs(model="iris", status="succeeded", limit=5)
    assert [(job.model_name, job.model_version, job.result_model_name) for job in jobs] == [("iris", "2", "iris")] * 3
    first, second = (parse_qs(request.url.query.decode()) for request in gateway.requests)
    assert first == {"model": ["iris"], "status": ["succeeded"], "limit": ["5"]}
    assert second == {"model": ["iris"], "status": ["succeeded"], "limit": ["4"], "cursor": ["c1"]}


def test_the_job_listing_stops_at_its_limit(client) -> None:
    gateway = Gateway(httpx.Response(200, json={"jobs": [job_status("queued")] * 2, "next_cursor": "more"}))
    assert len(client(gateway).list_jobs(limit=2)) == 2 and len(gateway.requests) == 1


@pytest.mark.parametrize(("argv", "path", "field"), [
    (["predict", "--model", "iris", "[1.0]"], "/models/iris/predict", None),
    (["batch-predict", "--model", "iris", "ROWS"], "/models/iris/batch_predict", None),
    (["submit", "--model", "iris", "--inputs", "ROWS"], "/jobs", "iris"),
    (["submit", "--model", "iris", "--inputs", "ROWS", "--split", "1"], "/jobs/batch", "iris"),
    (["jobs", "--model", "iris"], "/jobs", None),
])
def test_the_cli_takes_model(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys, argv: list[str], path: str,
                             field: str | None) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text("[[1.0]]")
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("batch_predict"):
            return httpx.Response(200, json=[PREDICTION])
        if request.url.path.endswith("predict"):
            return httpx.Response(200, json=PREDICTION)
        if request.url.path == "/jobs/batch":
            return httpx.Response(202, json={"job_ids": ["j1"], "replayed": [False]})
        if request.method == "GET":
            return httpx.Response(200, json={"jobs": [job_status("queued")], "next_cursor": None})
        return httpx.Response(202, json=job_status("queued"))

    real_client = httpx.Client

    def mocked(*args, **kwargs) -> httpx.Client:
        kwargs["transport"] = httpx.MockTransport(answer)
        return real_client(*args, **kwargs)

    monkeypatch.setattr(httpx, "Client", mocked)
    assert main(["--url", "http://gateway.test", *[str(rows) if part == "ROWS" else part for part in argv]]) == 0
    assert seen[0].url.path == path
    if field is not None:
        sent = json.loads(seen[0].content)
        assert (sent["jobs"][0] if "jobs" in sent else sent)["model"] == field
    if argv[0] == "jobs":
        assert parse_qs(seen[0].url.query.decode())["model"] == ["iris"]
        assert json.loads(capsys.readouterr().out)[0]["job_id"] == "j1"
