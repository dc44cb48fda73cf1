"""The model contract: the only thing a user implements to serve a model.

A model knows nothing of HTTP, queues, devices or timing. The runtime
(``worker/runtime.py``) holds an instance and does the rest: it calls ``load``
once, jit-compiles ``predict_batch`` for every batch bucket, pads and splits
batches, and calls ``postprocess`` per row outside jit.

This module imports no JAX so that the batcher, the schemas and their tests
can use it anywhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

#: Parameters are any pytree of arrays (dicts of arrays in practice).
Params = Any
#: The outputs of ``predict_batch`` for one row, already on the host.
RowOutputs = Mapping[str, np.ndarray]


class Model:
    """Base class of a servable model. Subclass it in ``worker/model.py``.

    Class attributes describe the model; the three methods hold its logic.
    ``predict_batch`` must be pure and jittable: parameters are an argument,
    not closed over, so a new version with the same shapes needs no
    recompilation.
    """

    name: ClassVar[str] = "model"
    version: ClassVar[str] = "0"
    #: Shape of one input row, without the batch axis.
    input_shape: ClassVar[tuple[int, ...]] = ()
    input_dtype: ClassVar[str] = "float32"
    #: Keys of the dict ``predict_batch`` returns.
    output_names: ClassVar[tuple[str, ...]] = ()

    def load(self, artifacts: Path) -> Params:
        """Read parameters from an artifact folder (safetensors or npz, never pickle)."""
        raise NotImplementedError

    def predict_batch(self, params: Params, x: Any) -> dict[str, Any]:
        """Map a batch ``x`` of shape ``(n, *input_shape)`` to arrays with leading axis ``n``."""
        raise NotImplementedError

    def postprocess(self, row: RowOutputs, options: Mapping[str, Any]) -> dict[str, Any]:
        """Turn one row of outputs into JSON-ready values; runs outside jit.

        ``options`` holds the request's flags (``return_probabilities``).
        The result must contain ``prediction``; the default returns the
        first output as a list.
        """
        return {"prediction": np.asarray(row[self.output_names[0]]).tolist()}


def load_model_class(import_path: str) -> type[Model]:
    """Resolve ``"package.module:ClassName"`` to a :class:`Model` subclass."""
    module_name, _, class_name = import_path.partition(":")
    if not class_name:
        raise ValueError(f"model path {import_path!r} must look like 'package.module:ClassName'")
    model_class = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(model_class, type) and issubclass(model_class, Model)):
        raise TypeError(f"{import_path} is not a subclass of worker.contract.Model")
    return model_class
