"""Train the served model through its contract (``make train``, and the ``train`` job).

    python -m worker.train [--out FOLDER] [--option NAME=VALUE ...]

Fits the model that ``MODEL`` names on its own ``training_data()`` and writes
the parameters with its ``save`` into ``--out`` (default: ``MODEL_ARTIFACTS``,
the folder the worker loads). The ``train`` job calls :func:`fit_checked` with
the rows it was sent.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from worker.contract import Model, Params, Progress, implements, load_model_class
from worker.settings import WorkerSettings


def fit_checked(model: Model, x: np.ndarray, y: np.ndarray, options: Mapping[str, Any], progress: Progress) -> Params:
    """``model.fit`` on rows of the declared shapes and options of the declared model.

    Raises ValueError, naming what is wrong, for anything a retry would repeat.
    """
    if not implements(model, "fit"):
        raise ValueError(f"model {model.name!r} has no fit(): it cannot be trained by a job")
    x = np.asarray(x, dtype=model.input_dtype)
    y = np.asarray(y, dtype=model.target_dtype)
    if x.shape[1:] != model.input_shape or y.shape != (len(x), *model.target_shape):
        raise ValueError(
            f"expected rows of shape {model.input_shape} and targets of shape {model.target_shape}, "
            f"got x {x.shape} and y {y.shape}"
        )
    if model.fit_options is not None:
        try:
            options = model.fit_options.model_validate(dict(options)).model_dump()
        except ValidationError as exc:
            raise ValueError(f"options: {exc.errors()[0]['msg']}") from None
    return model.fit(x, y, options, progress)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["num_samples=200"]`` -> ``{"num_samples": 200}``; values are JSON when they parse."""
    import json

    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option {pair!r}: expected NAME=VALUE")
        try:
            options[name] = json.loads(value)
        except ValueError:
            options[name] = value
    return options


def main(argv: list[str] | None = None) -> None:
    settings = WorkerSettings()
    parser = argparse.ArgumentParser(prog="python -m worker.train", description="Train the served model.")
    parser.add_argument("--out", type=Path, default=settings.model_artifacts,
                        help="artifact folder (default: MODEL_ARTIFACTS, %(default)s)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a fit option of the model, e.g. --option num_samples=200")
    args = parser.parse_args(argv)

    model = load_model_class(settings.model)()
    data = model.training_data()
    if not implements(model, "fit") or data is None:
        sys.exit(f"model {model.name!r} has no fit() and training_data(): there is nothing to train here")
    x, y = data
    started = time.monotonic()
    try:
        params = fit_checked(model, x, y, parse_options(args.option),
                             lambda done, total: print(f"  fit {done}/{total}", flush=True))
    except ValueError as exc:
        sys.exit(f"training {model.name!r} failed: {exc}")
    model.save(params, args.out)
    print(f"trained {model.name!r} on {len(x)} rows in {time.monotonic() - started:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
