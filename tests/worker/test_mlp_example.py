"""The MLP examples (worker/examples/mlp.py) satisfy the model contract."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from worker.contract import Model, load_model_class
from worker.examples.mlp import MLP, HeavyMLP, SmallMLP


@pytest.mark.parametrize(
    ("import_path", "name", "hidden"),
    [
        ("worker.examples.mlp:SmallMLP", "mlp-small", (32, 32)),
        ("worker.examples.mlp:HeavyMLP", "mlp-heavy", (1024, 1024, 1024)),
    ],
)
def test_identity(import_path: str, name: str, hidden: tuple[int, ...]) -> None:
    model_class = load_model_class(import_path)
    assert issubclass(model_class, Model)
    assert model_class.name == name
    assert model_class.version == "1"
    assert model_class.input_shape == (4,)
    assert model_class.input_dtype == "float32"
    assert list(model_class.outputs) == ["probabilities"]
    assert model_class.hidden_sizes == hidden


def test_heavy_layer_shapes_without_artifact(tmp_path: Path) -> None:
    params = HeavyMLP().load(tmp_path)
    shapes = [(layer["w"].shape, layer["b"].shape) for layer in params]
    assert shapes == [
        ((4, 1024), (1024,)),
        ((1024, 1024), (1024,)),
        ((1024, 1024), (1024,)),
        ((1024, 3), (3,)),
    ]


@pytest.mark.parametrize("model", [SmallMLP(), HeavyMLP(), MLP(hidden_sizes=(8,))], ids=lambda m: m.name)
def test_predict_batch_under_jit(model: MLP, tmp_path: Path) -> None:
    params = model.load(tmp_path)
    predict = jax.jit(model.predict_batch)
    for n in (1, 8, 13):
        x = np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)
        probs = np.asarray(predict(params, x)["probabilities"])
        assert probs.shape == (n, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_seeded_weights_are_reproducible(tmp_path: Path) -> None:
    first, second = SmallMLP().load(tmp_path), SmallMLP().load(tmp_path)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_loads_mlp_npz_when_present(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = (4, 5, 3)
    arrays = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        arrays[f"w{i}"] = rng.normal(size=(fan_in, fan_out)).astype(np.float32)
        arrays[f"b{i}"] = rng.normal(size=(fan_out,)).astype(np.float32)
    np.savez(tmp_path / "mlp.npz", **arrays)

    params = SmallMLP().load(tmp_path)
    assert len(params) == 2
    np.testing.assert_array_equal(np.asarray(params[1]["w"]), arrays["w1"])


def test_postprocess(tmp_path: Path) -> None:
    model = SmallMLP()
    out = model.predict_batch(model.load(tmp_path), np.zeros((1, 4), np.float32))
    row = {name: np.asarray(value)[0] for name, value in out.items()}
    probs = row["probabilities"]

    plain = model.postprocess(row, {})
    assert plain["prediction"] == [int(np.argmax(probs))]
    assert plain["probabilities"] is None

    full = model.postprocess(row, {"return_probabilities": True})
    assert full["prediction"] == plain["prediction"]
    np.testing.assert_allclose(full["probabilities"], probs, rtol=1e-6)
