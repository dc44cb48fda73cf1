"""Fit the default model with NUTS and write its posterior samples (``make train``).

    python -m worker.train [--out PATH] [--samples N] [--warmup N] [--seed N]

A Bayesian multinomial logistic regression on standardized features:
``W ~ Normal(0, 1)`` (4, 3), ``b ~ Normal(0, 1)`` (3,),
``y ~ Categorical(logits=x_std @ W + b)``. The artifact is a plain ``.npz``
(no pickle) with float32 ``W`` (S, 4, 3), ``b`` (S, 3), ``feature_mean`` (4,)
and ``feature_std`` (4,), which :class:`worker.model.IrisBayesianLogReg` loads.

The functions are reusable: a training job calls :func:`fit_posterior` on its
own rows and :func:`save_posterior` to write the artifact elsewhere.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.diagnostics import summary
from numpyro.infer import MCMC, NUTS

from worker.model import ARTIFACT_FILE, CLASS_NAMES, FEATURE_NAMES, IrisBayesianLogReg

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_DATA = PACKAGE_DIR / "data" / "iris.csv"
DEFAULT_OUT = PACKAGE_DIR / "artifacts" / ARTIFACT_FILE
#: Sampling runs in this many chunks after warm-up, so ``progress`` is called this often.
PROGRESS_CHUNKS = 5


def load_iris(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read the Iris CSV: features float32 (n, 4) and species int32 (n,) in 0..2."""
    path = DEFAULT_DATA if path is None else Path(path)
    expected = ",".join((*FEATURE_NAMES, "species"))
    with path.open(encoding="utf-8") as f:
        header = f.readline().strip()
        if header != expected:
            raise ValueError(f"{path}: header {header!r}, expected {expected!r}")
        table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int32)


def _logistic_regression(x: jax.Array, y: jax.Array | None, num_classes: int) -> None:
    d = x.shape[1]
    w = numpyro.sample("W", dist.Normal(0.0, 1.0).expand([d, num_classes]).to_event(2))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([num_classes]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=x @ w + b), obs=y)


def fit_posterior(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Sample the posterior with one NUTS chain; return the artifact's four float32 arrays.

    ``x`` is raw (unstandardized) features (n, 4) and ``y`` class indices in 0..2.
    ``progress(done, total)`` counts NUTS iterations, warm-up included; it is
    called after warm-up and after each of the ``PROGRESS_CHUNKS`` sampling chunks.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    num_classes = len(CLASS_NAMES)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES) or y.shape != (x.shape[0],):
        raise ValueError(f"expected x (n, {len(FEATURE_NAMES)}) and y (n,), got {x.shape} and {y.shape}")
    if y.size == 0 or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"y must hold class indices in 0..{num_classes - 1}")
    if num_warmup < 1 or num_samples < 1:
        raise ValueError("num_warmup and num_samples must be positive")

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


def save_posterior(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write the arrays as an uncompressed ``.npz`` of float32 (loads without pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A file object, so numpy does not append ".npz" to a path lacking it.
    with path.open("wb") as f:
        np.savez(f, **{name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m worker.train", description="Fit the default model with NUTS."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="artifact path (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=500, help="posterior samples kept")
    parser.add_argument("--warmup", type=int, default=500, help="NUTS warm-up iterations")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    args = parser.parse_args(argv)

    x, y = load_iris()
    started = time.monotonic()
    arrays = fit_posterior(
        x,
        y,
        num_warmup=args.warmup,
        num_samples=args.samples,
        seed=args.seed,
        progress=lambda done, total: print(f"  NUTS {done}/{total}", flush=True),
    )
    elapsed = time.monotonic() - started

    model = IrisBayesianLogReg()
    params = {name: jnp.asarray(value) for name, value in arrays.items()}
    probs = np.asarray(model.predict_batch(params, jnp.asarray(x))["probabilities"])
    accuracy = float((probs.argmax(axis=1) == y).mean())
    stats = summary({"W": arrays["W"][None], "b": arrays["b"][None]})  # one chain
    n_eff = min(float(np.min(site["n_eff"])) for site in stats.values())
    r_hat = max(float(np.max(site["r_hat"])) for site in stats.values())
    save_posterior(arrays, args.out)

    print(f"fitted {args.samples} posterior samples in {elapsed:.1f} s")
    print(f"min n_eff {n_eff:.0f}, max split r_hat {r_hat:.3f}")
    print(f"accuracy on the {len(y)} training rows (posterior mean): {accuracy:.3f}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
