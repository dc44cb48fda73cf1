"""The Iris model (worker/examples/iris.py), its shipped artifact and its training through the contract."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from worker.contract import load_model_class
from worker.examples import iris
from worker.examples.iris import CLASS_NAMES, IrisBayesianLogReg, fit_posterior
from worker.train import fit_checked


def load_iris() -> tuple[np.ndarray, np.ndarray]:
    return IrisBayesianLogReg().training_data()

ARTIFACTS = Path(__file__).resolve().parents[2] / "worker" / "artifacts"


@pytest.fixture(scope="module")
def model() -> IrisBayesianLogReg:
    return IrisBayesianLogReg()


@pytest.fixture(scope="module")
def params(model: IrisBayesianLogReg) -> dict[str, jax.Array]:
    return model.load(ARTIFACTS)


@pytest.fixture(scope="module")
def predict(model: IrisBayesianLogReg):
    return jax.jit(model.predict_batch)


def test_class_is_found_by_import_path() -> None:
    model_class = load_model_class("worker.examples.iris:IrisBayesianLogReg")
    assert model_class is IrisBayesianLogReg
    assert model_class.name == "iris-bayes-logreg"
    assert model_class.version == "1"
    assert model_class.input_shape == (4,)
    assert model_class.input_dtype == "float32"
    assert list(model_class.outputs) == ["probabilities", "probabilities_std"]
    assert model_class.labels == CLASS_NAMES


def test_artifact_is_plain_npz_with_documented_shapes() -> None:
    with np.load(ARTIFACTS / "posterior.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    assert sorted(arrays) == ["W", "b", "feature_mean", "feature_std"]
    samples = arrays["W"].shape[0]
    assert samples > 0
    assert arrays["W"].shape == (samples, 4, 3)
    assert arrays["b"].shape == (samples, 3)
    assert arrays["feature_mean"].shape == (4,)
    assert arrays["feature_std"].shape == (4,)
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert np.all(arrays["feature_std"] > 0)


@pytest.mark.parametrize("n", [1, 3, 16, 33])
def test_predict_batch_under_jit(params, predict, n: int) -> None:
    x = np.random.default_rng(n).normal([5.8, 3.0, 3.8, 1.2], [0.8, 0.4, 1.8, 0.8], (n, 4))
    out = predict(params, x.astype(np.float32))
    assert set(out) == {"probabilities", "probabilities_std"}
    probs, std = np.asarray(out["probabilities"]), np.asarray(out["probabilities_std"])
    assert probs.shape == std.shape == (n, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(probs >= 0) and np.all(std >= 0)


def test_classifies_the_training_data(params, predict) -> None:
    x, y = load_iris()
    assert x.shape == (150, 4) and x.dtype == np.float32
    assert y.shape == (150,) and set(np.unique(y)) == {0, 1, 2}
    probs = np.asarray(predict(params, x)["probabilities"])
    assert (probs.argmax(axis=1) == y).mean() > 0.9


def test_postprocess(model, params, predict) -> None:
    setosa = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    out = predict(params, setosa)
    row = {name: np.asarray(value)[0] for name, value in out.items()}

    plain = model.postprocess(row, {})
    assert set(plain) == {"prediction", "class_name", "probabilities", "probabilities_std"}
    assert plain["prediction"] == [0]
    assert plain["class_name"] == CLASS_NAMES[0] == "setosa"
    assert plain["probabilities"] is None
    assert len(plain["probabilities_std"]) == 3
    assert all(isinstance(v, float) for v in plain["probabilities_std"])

    full = model.postprocess(row, {"return_probabilities": True})
    assert len(full["probabilities"]) == 3
    assert all(isinstance(v, float) for v in full["probabilities"])
    assert full["probabilities"][0] > 0.9


def test_fit_through_the_contract_reports_progress_and_saves(tmp_path: Path) -> None:
    model = IrisBayesianLogReg()
    x, y = load_iris()
    calls: list[tuple[int, int]] = []
    arrays = fit_checked(model, x, y, {"num_warmup": 20, "num_samples": 20, "seed": 1},
                         lambda done, total: calls.append((done, total)))
    assert arrays["W"].shape == (20, 4, 3)
    assert arrays["b"].shape == (20, 3)
    assert arrays["feature_mean"].shape == arrays["feature_std"].shape == (4,)
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert len(calls) >= 2
    assert calls[-1] == (40, 40)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)

    # The training job's path: save elsewhere, serve from there.
    model.save(arrays, tmp_path)
    params = IrisBayesianLogReg().load(tmp_path)
    np.testing.assert_array_equal(np.asarray(params["W"]), arrays["W"])


def test_fit_posterior_rejects_bad_labels() -> None:
    x, y = load_iris()
    with pytest.raises(ValueError, match="class indices"):
        fit_posterior(x, y + 1, num_warmup=1, num_samples=1)


def test_fit_options_are_checked() -> None:
    x, y = load_iris()
    with pytest.raises(ValueError, match="options"):
        fit_checked(IrisBayesianLogReg(), x, y, {"num_samples": 0}, lambda done, total: None)


def test_the_training_data_checks_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "iris.csv"
    path.write_text("a,b,c,d,e\n1,2,3,4,0\n")
    monkeypatch.setattr(iris, "DATA_FILE", path)
    with pytest.raises(ValueError, match="header"):
        load_iris()
