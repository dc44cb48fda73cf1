"""The Open Inference Protocol end to end, driven by Triton's own unmodified HTTP client.

For the served model and for a model whose answer is its raw outputs (the regression example):
the client reads server and model metadata, and ``infer`` with JSON and with binary tensors
through the gateway gives the numbers a direct call to the worker gives, and ``/predict`` answers
what the model's own ``postprocess`` makes of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.test_models import launched_stack, numbers
from tests.support import REPO, rows_near, same_answer, served_model
from worker.contract import load_model_class

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (the dev extra) is not installed")
from tritonclient.utils import InferenceServerException, triton_to_np_dtype  # noqa: E402 - after the skip

pytestmark = pytest.mark.integration
REGRESSION = "worker.examples.regression:BayesianLinearRegression"


#: The served model (a ``served_model`` test: CI serves a second model too) and, unless it is that, the regression.
MODELS = [pytest.param(served_model(), marks=pytest.mark.served_model),
          *([REGRESSION] if served_model() != REGRESSION else [])]


@pytest.fixture(scope="module", params=MODELS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running stack, its worker's address and the served model's /metadata."""
    with launched_stack(request.param, tmp_path_factory.mktemp("protocol")) as url:
        metadata = httpx.get(f"{url}/metadata").json()
        port = int(url.rsplit(":", 1)[1])
        yield {"model": request.param, "gateway": url.removeprefix("http://"), "worker": f"127.0.0.1:{port + 1}",
               "metadata": metadata}


def rows_of(metadata: dict[str, Any]) -> np.ndarray:
    """Three rows near the model's example (whatever its shape and dtype)."""
    [tensor] = metadata["inputs"]
    return np.asarray(rows_near(metadata, 3), dtype=triton_to_np_dtype(tensor["datatype"]))


def postprocessed(metadata: dict[str, Any], outputs: dict[str, np.ndarray], count: int) -> list[Any]:
    """What /predict answers for rows whose outputs are ``outputs``: the model's own postprocess of each, as JSON."""
    model = load_model_class(metadata["model_class"])()
    return json.loads(json.dumps([model.postprocess({name: values[i] for name, values in outputs.items()},
                                                    {"return_probabilities": True}) for i in range(count)]))


def infer(address: str, metadata: dict[str, Any], rows: np.ndarray, binary: bool) -> dict[str, np.ndarray]:
    [tensor] = metadata["inputs"]
    client = httpclient.InferenceServerClient(address)
    try:
        given = httpclient.InferInput(tensor["name"], list(rows.shape), tensor["datatype"])
        given.set_data_from_numpy(rows, binary_data=binary)
        # Binary: no outputs named, so the client asks for every output as binary (binary_data_output).
        outputs = None if binary else [httpclient.InferRequestedOutput(o["name"], binary_data=False)
                                       for o in metadata["outputs"]]
        result = client.infer(metadata["name"], [given], outputs=outputs)
        return {o["name"]: result.as_numpy(o["name"]) for o in metadata["outputs"]}
    finally:
        client.close()


def test_the_client_reads_health_and_metadata(stack: dict[str, Any]) -> None:
    client = httpclient.InferenceServerClient(stack["gateway"])
    try:
        metadata = stack["metadata"]
        assert client.is_server_live() and client.is_server_ready()
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        assert client.is_model_ready(metadata["name"])
        assert client.is_model_ready(metadata["name"], metadata["version"])
        model = client.get_model_metadata(metadata["name"])
        assert model["name"] == metadata["name"] and model["versions"] == [metadata["version"]]
        keys = ("name", "datatype", "shape")
        for kind in ("inputs", "outputs"):
            assert model[kind] == [{key: tensor[key] for key in keys} for tensor in metadata[kind]]
            assert all(tensor["shape"][0] == -1 for tensor in model[kind])
        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_metadata("no-such-model")
        assert unknown.value.status() == "404" and "no worker serves model" in unknown.value.message()
    finally:
        client.close()


def test_json_and_binary_infer_give_the_worker_s_and_predict_s_numbers(stack: dict[str, Any]) -> None:
    metadata = stack["metadata"]
    rows = rows_of(metadata)
    as_json = infer(stack["gateway"], metadata, rows, binary=False)
    as_binary = infer(stack["gateway"], metadata, rows, binary=True)
    direct = infer(stack["worker"], metadata, rows, binary=True)
    for output in metadata["outputs"]:
        name = output["name"]
        assert as_json[name].shape == (len(rows), *output["shape"][1:])
        np.testing.assert_allclose(as_binary[name], as_json[name], rtol=1e-6)
        np.testing.assert_allclose(direct[name], as_json[name], rtol=1e-6)
    answers = httpx.post(f"http://{stack['gateway']}/batch_predict",
                         json=[{"input_data": row.tolist(), "return_probabilities": True} for row in rows]).json()
    assert same_answer([numbers(answer) for answer in answers], postprocessed(metadata, as_json, len(rows)))


def test_bad_infer_requests_are_refused_with_the_protocol_s_error(stack: dict[str, Any]) -> None:
    metadata = stack["metadata"]
    [tensor] = metadata["inputs"]
    client = httpclient.InferenceServerClient(stack["gateway"])
    try:
        rows = rows_of(metadata)
        wrong = httpclient.InferInput(tensor["name"], [1, rows[0].size + 1], tensor["datatype"])
        wrong.set_data_from_numpy(np.zeros((1, rows[0].size + 1), rows.dtype))
        with pytest.raises(InferenceServerException) as bad_shape:
            client.infer(metadata["name"], [wrong])
        assert bad_shape.value.status() == "400" and "the model takes" in bad_shape.value.message()
        given = httpclient.InferInput(tensor["name"], list(rows.shape), tensor["datatype"])
        given.set_data_from_numpy(rows)
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("no-such-model", [given])
        assert unknown.value.status() == "404"
    finally:
        client.close()


def test_the_readme_s_tritonclient_example_runs(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    section = (REPO / "README.md").read_text().split("## Open Inference Protocol", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(code.replace("127.0.0.1:8080", stack["gateway"]), {})  # noqa: S102 - the README's own code
    printed = capsys.readouterr().out
    for output in httpx.get(f"http://{stack['gateway']}/metadata").json()["outputs"]:
        assert f"'{output['name']}'" in printed
