"""Fake models for tests that must not depend on the served model (no JAX needed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.contract import Model, TensorSpec
from worker.metadata import build_metadata


class SumModel(Model):
    """Sums each row of 4 numbers; the fake runtime of tests/worker computes it."""

    name = "sum"
    version = "3"
    input_shape = (4,)
    outputs = {"total": "The sum of the row."}

    def load(self, artifacts: Any) -> Any:
        return {}

    def predict_batch(self, params: Any, x: Any) -> dict[str, Any]:
        return {"total": x.sum(axis=1, keepdims=True)}


class GridModel(Model):
    """A 2 x 3 input, two outputs and no labels: shapes nothing else in the project has."""

    name = "grid"
    version = "1"
    input_shape = (2, 3)
    example = [[1, 2, 3], [4, 5, 6]]
    outputs = {"mean": "Mean of the grid.", "spread": "Max minus min."}

    def load(self, artifacts: Any) -> Any:
        return {}

    def predict_batch(self, params: Any, x: Any) -> dict[str, Any]:
        flat = x.reshape(x.shape[0], -1)
        return {"mean": flat.mean(axis=1), "spread": flat.max(axis=1) - flat.min(axis=1)}


def traced_outputs(model_class: type[Model]) -> tuple[TensorSpec, ...]:
    """Output specs as the runtime would derive them, computed with numpy on one example row."""
    model = model_class()
    outputs = model.predict_batch(model.load(None), np.zeros((1, *model_class.input_shape), np.float32))
    return tuple(TensorSpec(name, np.shape(value)[1:], str(np.asarray(value).dtype), model.outputs.get(name, ""))
                 for name, value in outputs.items())


def metadata_of(model_class: type[Model]) -> dict[str, Any]:
    return build_metadata(model_class(), traced_outputs(model_class), f"tests.fakes:{model_class.__name__}")
