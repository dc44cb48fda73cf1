"""A multilayer perceptron classifier: a second model proving the contract.

It needs no artifact: when the artifact folder has no ``mlp.npz``, ``load`` draws
the weights from ``jax.random.PRNGKey(0)``, so every worker serves the same
function. ``HeavyMLP`` (4 -> 1024 -> 1024 -> 1024 -> 3) is the benchmark model;
its cost is the matrix multiplies, not the Python around them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from worker.contract import Model, Params

ARTIFACT_FILE = "mlp.npz"


class MLP(Model):
    """ReLU hidden layers and a softmax over ``num_classes`` outputs.

    Params are a list of ``{"w", "b"}`` layers; ``mlp.npz``, if present, holds them
    as ``w0, b0, w1, b1, ...``.
    """

    name = "mlp"
    version = "1"
    input_shape = (4,)
    input_dtype = "float32"
    example = [5.1, 3.5, 1.4, 0.2]
    outputs = {"probabilities": "Softmax probability of each class."}
    labels = ("class_0", "class_1", "class_2")
    #: Widths of the hidden layers; a subclass or the constructor changes them.
    hidden_sizes: tuple[int, ...] = (64, 64)
    num_classes: ClassVar[int] = 3

    def __init__(self, hidden_sizes: tuple[int, ...] | None = None) -> None:
        if hidden_sizes is not None:
            self.hidden_sizes = tuple(hidden_sizes)

    def layer_sizes(self) -> tuple[int, ...]:
        return (*self.input_shape, *self.hidden_sizes, self.num_classes)

    def load(self, artifacts: Path) -> Params:
        path = Path(artifacts) / ARTIFACT_FILE
        if path.is_file():
            with np.load(path, allow_pickle=False) as npz:
                return [
                    {"w": jnp.asarray(npz[f"w{i}"]), "b": jnp.asarray(npz[f"b{i}"])}
                    for i in range(len(npz.files) // 2)
                ]
        sizes = self.layer_sizes()
        keys = jax.random.split(jax.random.PRNGKey(0), len(sizes) - 1)
        # He initialisation keeps activations at a similar scale through the ReLUs.
        return [
            {
                "w": jax.random.normal(key, (fan_in, fan_out), jnp.float32) * np.sqrt(2.0 / fan_in),
                "b": jnp.zeros((fan_out,), jnp.float32),
            }
            for key, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
        ]

    def predict_batch(self, params: Params, x: Any) -> dict[str, Any]:
        h = x
        for layer in params[:-1]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        logits = h @ params[-1]["w"] + params[-1]["b"]
        return {"probabilities": jax.nn.softmax(logits, axis=-1)}


class SmallMLP(MLP):
    name = "mlp-small"
    hidden_sizes = (32, 32)


class HeavyMLP(MLP):
    """The benchmark model: about 2.1 M parameters, 4 -> 1024 -> 1024 -> 1024 -> 3."""

    name = "mlp-heavy"
    hidden_sizes = (1024, 1024, 1024)
