"""A regression model with continuous outputs and no labels: Bayesian linear regression.

The posterior of the weights is Gaussian and has a closed form (a conjugate
prior with known noise), so ``fit`` is a few lines of linear algebra and a
prediction carries its predictive standard deviation. Without a saved artifact
``load`` fits the shipped synthetic data, so the model serves out of the box.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worker.contract import Model, Params, Progress, load_npz

TRUE_WEIGHTS = np.array([1.5, -2.0, 0.5], dtype=np.float32)
TRUE_BIAS = 3.0


class RidgeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prior_precision: float = Field(1.0, gt=0, description="Precision of the Normal prior on the weights.")
    noise_std: float = Field(0.5, gt=0, description="Standard deviation of the observation noise.")


class BayesianLinearRegression(Model):
    name = "bayes-linreg"
    version = "1"
    input_shape = (3,)
    input_description = "Three real-valued features."
    example = [0.5, -1.0, 2.0]
    outputs = {"mean": "Posterior predictive mean.", "std": "Posterior predictive standard deviation."}
    target_shape = ()
    target_dtype = "float32"
    fit_options = RidgeOptions

    def load(self, artifacts: Path) -> Params:
        path = self.params_file(artifacts)
        if path.is_file():
            return {key: jnp.asarray(value) for key, value in load_npz(path).items()}
        x, y = self.training_data()
        return self.fit(x, y, {}, lambda done, total: None)

    def predict_batch(self, params: Params, x: Any) -> dict[str, Any]:
        features = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
        mean = features @ params["mean"]
        variance = params["noise_var"] + jnp.einsum("ni,ij,nj->n", features, params["cov"], features)
        return {"mean": mean, "std": jnp.sqrt(variance)}

    def training_data(self) -> tuple[np.ndarray, np.ndarray]:
        """200 synthetic rows: y = x @ (1.5, -2, 0.5) + 3 + Normal(0, 0.5) noise."""
        rng = np.random.default_rng(0)
        x = rng.normal(size=(200, 3)).astype(np.float32)
        y = (x @ TRUE_WEIGHTS + TRUE_BIAS + rng.normal(scale=0.5, size=200)).astype(np.float32)
        return x, y

    def fit(self, x: np.ndarray, y: np.ndarray, options: Mapping[str, Any], progress: Progress) -> Params:
        opts = RidgeOptions.model_validate(dict(options))
        if len(x) == 0:
            raise ValueError("no rows to fit")
        features = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
        noise_var = opts.noise_std**2
        precision = opts.prior_precision * np.eye(features.shape[1]) + features.T @ features / noise_var
        cov = np.linalg.inv(precision)
        mean = cov @ features.T @ y / noise_var
        progress(1, 1)
        return {"mean": mean.astype(np.float32), "cov": cov.astype(np.float32),
                "noise_var": np.float32(noise_var)}
