"""The default model: a Bayesian multinomial logistic regression on the Iris data.

Its parameters are posterior samples drawn with NUTS (NumPyro), so a prediction
is the posterior mean of the class probabilities and their posterior standard
deviation (the model's uncertainty). ``fit`` samples a new posterior; ``make
train`` and the ``train`` job call it through the contract.

Model: ``W ~ Normal(0, 1)`` (4, 3), ``b ~ Normal(0, 1)`` (3,),
``y ~ Categorical(logits=x_std @ W + b)`` on standardized features. The artifact
is a plain ``posterior.npz`` (no pickle): float32 ``W`` (S, 4, 3), ``b`` (S, 3),
``feature_mean`` (4,) and ``feature_std`` (4,).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from pydantic import BaseModel, ConfigDict, Field

from worker.contract import Model, Params, Progress, RowOutputs, load_npz, save_npz

CLASS_NAMES = ("setosa", "versicolor", "virginica")
FEATURE_NAMES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
ARTIFACT_FILE = "posterior.npz"
PARAM_NAMES = ("W", "b", "feature_mean", "feature_std")
DATA_FILE = Path(__file__).with_name("iris.csv")
#: Sampling runs in this many chunks after warm-up, so ``progress`` is called this often.
PROGRESS_CHUNKS = 5


class IrisPrediction(BaseModel):
    prediction: list[int] = Field(description="Index of the most probable class.", min_length=1, max_length=1)
    class_name: str = Field(description=f"Its name: one of {', '.join(CLASS_NAMES)}.")
    probabilities: list[float] | None = Field(
        None, description="Posterior mean class probabilities, when asked for (return_probabilities)."
    )
    probabilities_std: list[float] = Field(description="Posterior standard deviation of each class probability.")


class NutsOptions(BaseModel):
    """Options of a ``train`` job for this model."""

    model_config = ConfigDict(extra="forbid")

    num_warmup: int = Field(500, ge=1, le=10_000, description="NUTS warm-up iterations.")
    num_samples: int = Field(500, ge=1, le=10_000, description="Posterior samples kept.")
    seed: int = Field(0, ge=0, description="PRNG seed.")


class IrisBayesianLogReg(Model):
    name = "iris-bayes-logreg"
    version = "1"
    input_shape = (len(FEATURE_NAMES),)
    input_description = f"The four features in cm: {', '.join(FEATURE_NAMES)}."
    example = [5.1, 3.5, 1.4, 0.2]
    outputs = {
        "probabilities": "Posterior mean probability of each class.",
        "probabilities_std": "Posterior standard deviation of each class probability.",
    }
    labels = CLASS_NAMES
    response_model = IrisPrediction
    target_shape = ()
    target_dtype = "int32"
    fit_options = NutsOptions

    def load(self, artifacts: Path) -> Params:
        """Read the posterior samples: W (S, 4, 3), b (S, 3) and the feature scaling (4,)."""
        arrays = load_npz(Path(artifacts) / ARTIFACT_FILE)
        params = {key: jnp.asarray(arrays[key], dtype=jnp.float32) for key in PARAM_NAMES}
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

    def training_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The 150 rows of the shipped Iris CSV: features float32 (n, 4), species int32 (n,)."""
        expected = ",".join((*FEATURE_NAMES, "species"))
        with DATA_FILE.open(encoding="utf-8") as f:
            header = f.readline().strip()
            if header != expected:
                raise ValueError(f"{DATA_FILE}: header {header!r}, expected {expected!r}")
            table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
        return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int32)

    def fit(self, x: np.ndarray, y: np.ndarray, options: Mapping[str, Any], progress: Progress) -> Params:
        """Sample the posterior with one NUTS chain; ``progress`` counts NUTS iterations."""
        opts = NutsOptions.model_validate(dict(options))
        return fit_posterior(x, y, num_warmup=opts.num_warmup, num_samples=opts.num_samples,
                             seed=opts.seed, progress=progress)

    def save(self, params: Params, folder: Path) -> None:
        save_npz({key: np.asarray(params[key], dtype=np.float32) for key in PARAM_NAMES}, Path(folder) / ARTIFACT_FILE)


def _logistic_regression(x: jax.Array, y: jax.Array | None, num_classes: int) -> None:
    d = x.shape[1]
    w = numpyro.sample("W", dist.Normal(0.0, 1.0).expand([d, num_classes]).to_event(2))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([num_classes]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=x @ w + b), obs=y)


def fit_posterior(
    x: np.ndarray, y: np.ndarray, *, num_warmup: int = 500, num_samples: int = 500, seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Sample the posterior with one NUTS chain; return the artifact's four float32 arrays.

    ``x`` is raw (unstandardized) features (n, 4) and ``y`` class indices in 0..2.
    ``progress(done, total)`` is called after warm-up and after each of the
    ``PROGRESS_CHUNKS`` sampling chunks.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    num_classes = len(CLASS_NAMES)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES) or y.shape != (x.shape[0],):
        raise ValueError(f"expected x (n, {len(FEATURE_NAMES)}) and y (n,), got {x.shape} and {y.shape}")
    if y.size == 0 or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"targets must be class indices in 0..{num_classes - 1}")

    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 0, std, 1.0).astype(np.float32)  # a constant column stays finite
    x_std = jnp.asarray((x - mean) / std)
    y_obs = jnp.asarray(y, dtype=jnp.int32)

    # Sampling in equal chunks from the warm-up state gives the same chain as one run,
    # compiled once; the last chunk may overshoot and is trimmed.
    chunk = math.ceil(num_samples / PROGRESS_CHUNKS)
    total = num_warmup + num_samples
    mcmc = MCMC(NUTS(_logistic_regression), num_warmup=num_warmup, num_samples=chunk, progress_bar=False)
    mcmc.warmup(jax.random.PRNGKey(seed), x_std, y_obs, num_classes)
    if progress is not None:
        progress(num_warmup, total)
    draws: dict[str, list[np.ndarray]] = {"W": [], "b": []}
    done = 0
    while done < num_samples:
        mcmc.run(mcmc.post_warmup_state.rng_key, x_std, y_obs, num_classes)
        mcmc.post_warmup_state = mcmc.last_state
        for name, value in mcmc.get_samples().items():
            draws[name].append(np.asarray(value))
        done = min(done + chunk, num_samples)
        if progress is not None:
            progress(num_warmup + done, total)

    return {
        "W": np.concatenate(draws["W"])[:num_samples].astype(np.float32),
        "b": np.concatenate(draws["b"])[:num_samples].astype(np.float32),
        "feature_mean": mean.astype(np.float32),
        "feature_std": std,
    }
