"""The model contract: loading a model by import path, and the default postprocess."""

from __future__ import annotations

import numpy as np
import pytest

from worker.contract import Model, load_model_class


class Doubler(Model):
    name = "doubler"
    input_shape = (2,)
    output_names = ("y", "z")


def test_models_load_by_import_path() -> None:
    assert load_model_class("worker.model:IrisBayesianLogReg").name == "iris-bayes-logreg"
    assert load_model_class("worker.examples.mlp:SmallMLP").name == "mlp-small"


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("worker.model", ValueError),
        ("worker.settings:WorkerSettings", TypeError),
        ("worker.model:Nope", AttributeError),
    ],
)
def test_bad_import_paths_fail_clearly(path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        load_model_class(path)


def test_the_default_postprocess_returns_the_first_output_as_a_list() -> None:
    assert Doubler().postprocess({"y": np.array([1.5, 2.0]), "z": np.array(0)}, {}) == {"prediction": [1.5, 2.0]}


def test_the_base_class_methods_must_be_implemented() -> None:
    with pytest.raises(NotImplementedError):
        Doubler().predict_batch({}, np.zeros((1, 2)))
