"""A model that passes every check before loading and fails in ``load``: its worker exits 78 (common.exit_codes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.contract import Model, Params


class BrokenLoad(Model):
    name = "broken-load"
    version = "1"
    input_shape = (2,)
    example = [1.0, 2.0]

    def load(self, artifacts: Path) -> Params:
        raise RuntimeError("these parameters were never saved")

    def predict_batch(self, params: Params, x: Any) -> dict[str, Any]:
        return {"y": x.sum(axis=1)}
