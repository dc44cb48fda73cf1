"""Rows of any served model for load and checks: its published example, moved a little each time.

A model's /metadata names its input's datatype and gives one example row. The
benchmarks, chaos scenarios and tests need several different rows the model
accepts, whatever its shape and dtype: floats are scaled, integers shifted
(clipped to the dtype's range, so a job never carries a value the model's
input refuses), booleans repeated.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def rows_near(metadata: dict[str, Any], count: int) -> list[Any]:
    """``count`` input rows (``input_data`` values) of the model ``metadata`` (its /metadata) describes."""
    [tensor] = metadata["inputs"]
    datatype, example = tensor["datatype"], np.asarray(metadata["example"]["input_data"])
    if datatype == "BOOL":
        return [example.tolist()] * count
    if datatype.startswith(("INT", "UINT")):
        limits = np.iinfo(datatype.lower())
        return [np.clip(example.astype(np.int64) + i, limits.min, limits.max).tolist() for i in range(count)]
    return [(example.astype(np.float64) * (1 + 0.1 * i)).tolist() for i in range(count)]
