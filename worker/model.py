"""The served model. Edit this file (or point the worker at another class) to serve your own.

The contract is :class:`worker.contract.Model`: identity as class attributes,
``load`` for the parameters, a pure ``predict_batch`` that the runtime jits, pads
and batches, and ``postprocess`` for one row's JSON outside jit.

The default is a Bayesian multinomial logistic regression on the Iris data, fitted
with NUTS by ``worker/train.py`` (``make train``). Its parameters are posterior
samples, so a prediction is the posterior mean of the class probabilities and their
posterior standard deviation (the model's uncertainty).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from worker.contract import Model, Params, RowOutputs

CLASS_NAMES = ("setosa", "versicolor", "virginica")
FEATURE_NAMES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
ARTIFACT_FILE = "posterior.npz"
PARAM_NAMES = ("W", "b", "feature_mean", "feature_std")


class IrisBayesianLogReg(Model):
    name = "iris-bayes-logreg"
    version = "1"
    input_shape = (len(FEATURE_NAMES),)
    input_dtype = "float32"
    output_names = ("probabilities", "probabilities_std")

    def load(self, artifacts: Path) -> Params:
        """Read the posterior samples: W (S, 4, 3), b (S, 3) and the feature scaling (4,)."""
        with np.load(Path(artifacts) / ARTIFACT_FILE, allow_pickle=False) as npz:
            params = {key: jnp.asarray(npz[key], dtype=jnp.float32) for key in PARAM_NAMES}
        d, k = len(FEATURE_NAMES), len(CLASS_NAMES)
        if params["W"].shape[1:] != (d, k) or params["b"].shape[1:] != (k,):
            raise ValueError(f"{ARTIFACT_FILE}: expected W (S, {d}, {k}) and b (S, {k})")
        return params

    def predict_batch(self, params: Params, x: Any) -> dict[str, Any]:
        z = (x - params["feature_mean"]) / params["feature_std"]
        # One set of logits per posterior sample: (S, n, 3).
        logits = jnp.einsum("nd,sdk->snk", z, params["W"]) + params["b"][:, None, :]
        probs = jax.nn.softmax(logits, axis=-1)
        return {"probabilities": probs.mean(axis=0), "probabilities_std": probs.std(axis=0)}

    def postprocess(self, row: RowOutputs, options: Mapping[str, Any]) -> dict[str, Any]:
        probs = np.asarray(row["probabilities"], dtype=np.float64)
        label = int(np.argmax(probs))
        return {
            "prediction": [label],
            "class_name": CLASS_NAMES[label],
            "probabilities": probs.tolist() if options.get("return_probabilities") else None,
            "probabilities_std": np.asarray(row["probabilities_std"], dtype=np.float64).tolist(),
        }
