"""The model contract: finding the model class, checking what it declares, and the runtime's checks
at start-up (jittable, batch axis, labels, example), each failing with one message naming the model
and the method."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

from worker.contract import ContractError, Model, ModelNotFound, check_declarations, load_model_class
from worker.metrics import WorkerMetrics
from worker.runtime import ModelRuntime


class Doubler(Model):
    name = "doubler"
    input_shape = (2,)

    def load(self, artifacts: Path) -> Any:
        return {"w": jnp.full((2,), 2.0)}

    def predict_batch(self, params: Any, x: Any) -> dict[str, Any]:
        return {"y": x * params["w"], "z": x.sum(axis=1)}


def test_models_load_by_import_path() -> None:
    assert load_model_class("worker.examples.iris:IrisBayesianLogReg").name == "iris-bayes-logreg"
    assert load_model_class("worker.examples.mlp:SmallMLP").name == "mlp-small"


def test_a_module_alone_names_its_one_model_whatever_the_class_is_called() -> None:
    module = types.ModuleType("tests_some_model")
    exec("from worker.contract import Model\nclass Renamed(Model):\n    name = 'r'\n    input_shape = (1,)\n"
         "    def load(self, a): return {}\n    def predict_batch(self, p, x): return {'y': x}\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        assert load_model_class("tests_some_model").__name__ == "Renamed"
    finally:
        del sys.modules[module.__name__]
    assert issubclass(load_model_class("worker.model"), Model)
    assert load_model_class("worker.examples.mlp").__name__ == "MLP"  # a base and its variants: the base


def test_a_module_with_unrelated_models_must_name_one() -> None:
    module = types.ModuleType("tests_two_models")
    exec("from tests.fakes import SumModel, GridModel\nclass A(SumModel): pass\nclass B(GridModel): pass\n",
         module.__dict__)
    sys.modules[module.__name__] = module
    try:
        with pytest.raises(ModelNotFound, match=r"exactly one Model subclass \(found: A, B\)"):
            load_model_class("tests_two_models")
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("worker.settings:WorkerSettings", "not a subclass"),
        ("worker.model:Nope", "not a subclass"),
    ],
)
def test_bad_import_paths_fail_clearly(path: str, message: str) -> None:
    with pytest.raises(ModelNotFound, match=message):
        load_model_class(path)


def declared(**attributes: Any) -> type[Model]:
    return type("Broken", (Doubler,), attributes)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"input_shape": None}, "input_shape: not declared"),
        ({"input_shape": [2]}, "input_shape: must be a tuple of positive ints"),
        ({"input_dtype": "floaty"}, "input_dtype: 'floaty' is not a dtype"),
        ({"example": [1, 2, 3]}, r"example: has shape \(3,\), input_shape is \(2,\)"),
        ({"labels": ()}, "labels: must be a non-empty tuple"),
        ({"response_model": dict}, "response_model: must be a pydantic BaseModel subclass"),
    ],
)
def test_declarations_that_break_the_contract_name_the_model_and_the_attribute(attributes: dict,
                                                                               message: str) -> None:
    with pytest.raises(ContractError, match=rf"model 'doubler' \(.*Broken\): {message}"):
        check_declarations(declared(**attributes))


def test_an_unimplemented_method_is_named() -> None:
    class NoPredict(Model):
        name = "half"
        input_shape = (1,)

        def load(self, artifacts: Path) -> Any:
            return {}

    with pytest.raises(ContractError, match="predict_batch: not implemented"):
        check_declarations(NoPredict)


def start(model_class: type[Model]) -> ModelRuntime:
    runtime = ModelRuntime(model_class(), Path("/nonexistent"), (1, 2), WorkerMetrics(2))
    runtime.load_and_warm_up()
    return runtime


def test_outputs_are_derived_by_tracing() -> None:
    runtime = ModelRuntime(Doubler(), Path("/nonexistent"), (1, 2), WorkerMetrics(2))
    specs = runtime.load_and_warm_up()
    assert [(s.name, s.shape, s.dtype) for s in specs] == [("y", (2,), "float32"), ("z", (), "float32")]
    np.testing.assert_allclose(runtime.infer(np.ones((1, 2), np.float32))["y"], [[2.0, 2.0]])


def failing_load(self: Model, artifacts: Path) -> Any:
    raise FileNotFoundError(f"{artifacts}/weights.npz")


def not_jittable(self: Model, params: Any, x: Any) -> dict[str, Any]:
    if x.sum() > 0:  # Python control flow on a traced value
        return {"y": x}
    return {"y": -x}


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"load": failing_load}, "load: failed on /nonexistent: FileNotFoundError: /nonexistent/weights.npz"),
        ({"predict_batch": not_jittable}, "predict_batch: is not jittable: TracerBoolConversionError"),
        ({"predict_batch": lambda self, p, x: {"y": x.sum()}},
         r"predict_batch: output 'y' has shape \(\) for a batch of 3: every output must keep the leading batch"),
        ({"predict_batch": lambda self, p, x: x}, "predict_batch: must return a non-empty dict"),
        ({"outputs": {"nope": "missing"}}, r"outputs: describes \['nope'\]"),
        ({"labels": ("a", "b", "c")}, r"labels: 3 labels, but the first output 'y' has per-row shape \(2,\)"),
    ],
)
def test_the_runtime_checks_the_contract_at_start(attributes: dict, message: str) -> None:
    with pytest.raises(ContractError, match=rf"model 'doubler' \(.*Broken\): {message}"):
        start(declared(**attributes))


def test_the_default_postprocess_follows_the_outputs_and_labels() -> None:
    row = {"y": np.array([1.5, 2.0]), "z": np.array(0.5)}
    assert Doubler().postprocess(row, {}) == {"prediction": [1.5, 2.0], "z": 0.5}
    labelled = declared(labels=("small", "large"))()
    assert labelled.postprocess(row, {}) == {"prediction": [1], "label": "large", "y": None}
    assert labelled.postprocess(row, {"return_probabilities": True})["y"] == [1.5, 2.0]
