"""A model whose load() raises, for the start-up failure tests."""

from __future__ import annotations

from typing import Any

from worker.contract import Model


class MissingWeights(Model):
    name = "missing-weights"
    input_shape = (2,)

    def load(self, artifacts: Any) -> Any:
        raise FileNotFoundError(f"{artifacts}/weights.safetensors: no such file")

    def predict_batch(self, params: Any, x: Any) -> dict[str, Any]:
        return {"y": x}
