"""A model whose row is 2-D: a small convolutional classifier of 8 x 8 digit images.

It shows the contract with an input of rank 2 and the defaults derived from
``labels``: no ``postprocess``, no response model. The weights are drawn from
``jax.random.PRNGKey(0)`` unless the artifact folder holds ``digits-cnn.npz``,
so it serves out of the box (untrained: its answers are deterministic, not
meaningful).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from worker.contract import Model, Params, load_npz

FILTERS = 8
CLASSES = 10
#: A "1": a vertical stroke, in the 0..16 grey levels of the classic 8 x 8 digits data.
ONE = [[0, 0, 0, 12, 16, 0, 0, 0]] * 8


class DigitsCNN(Model):
    name = "digits-cnn"
    version = "1"
    input_shape = (8, 8)
    input_description = "An 8 x 8 grey image, values 0 (white) to 16 (black)."
    example = ONE
    outputs = {"probabilities": "Softmax probability of each digit."}
    labels = tuple(str(digit) for digit in range(CLASSES))

    def load(self, artifacts: Path) -> Params:
        path = self.params_file(artifacts)
        if path.is_file():
            return {key: jnp.asarray(value) for key, value in load_npz(path).items()}
        conv_key, dense_key = jax.random.split(jax.random.PRNGKey(0))
        return {
            "conv": jax.random.normal(conv_key, (3, 3, 1, FILTERS)) * 0.3,  # HWIO
            "dense": jax.random.normal(dense_key, (8 * 8 * FILTERS, CLASSES)) * 0.05,
            "bias": jnp.zeros((CLASSES,)),
        }

    def predict_batch(self, params: Params, x: Any) -> dict[str, Any]:
        images = (x / 16.0)[..., None]  # NHWC with one channel
        features = jax.lax.conv_general_dilated(
            images, params["conv"], window_strides=(1, 1), padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        hidden = jax.nn.relu(features).reshape(x.shape[0], -1)
        return {"probabilities": jax.nn.softmax(hidden @ params["dense"] + params["bias"], axis=-1)}
