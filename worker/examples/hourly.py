"""A model whose row is one integer: the hour of the day in, the expected load at that hour out.

It shows the contract with a scalar input of an integer dtype (``input_shape = ()``, ``int32``) and
continuous outputs without labels: the default ``postprocess`` answers the first output as
``prediction`` and every other output by its name. The daily curve is a Fourier series of two
harmonics; its weights come from ``hourly-load.npz`` when the artifact folder holds one, else the
shipped curve below, so it serves out of the box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from worker.contract import Model, Params, load_npz

HOURS_PER_DAY = 24
#: A working day: quiet at night, busy from morning to evening. Mean, then cosine and sine of each harmonic.
DAILY_CURVE = np.array([100.0, -45.0, -20.0, -10.0, 8.0], dtype=np.float32)


class HourlyLoad(Model):
    name = "hourly-load"
    version = "1"
    input_shape = ()
    input_dtype = "int32"
    input_description = "The hour of the day, 0 to 23 (other integers wrap around the day)."
    example = 9
    outputs = {
        "load": "Expected requests per second at that hour.",
        "relative": "That load over the day's mean load.",
    }

    def load(self, artifacts: Path) -> Params:
        path = self.params_file(artifacts)
        weights = load_npz(path)["weights"] if path.is_file() else DAILY_CURVE
        return {"weights": jnp.asarray(weights, dtype=jnp.float32)}

    def predict_batch(self, params: Params, x: Any) -> dict[str, Any]:
        angle = 2 * jnp.pi * (x % HOURS_PER_DAY).astype(jnp.float32) / HOURS_PER_DAY
        features = jnp.stack(
            [jnp.ones_like(angle), jnp.cos(angle), jnp.sin(angle), jnp.cos(2 * angle), jnp.sin(2 * angle)], axis=-1
        )
        load = features @ params["weights"]
        return {"load": load, "relative": load / params["weights"][0]}
